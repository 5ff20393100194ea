"""MIMIC-CXR views when `ViewPosition` is empty, and source releases (issue 21, deliverable 6)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from pydicom.dataset import Dataset

from medscout_data.hub.push import source_dataset
from medscout_data.layout import Layout
from medscout_data.recipe import load_recipe
from medscout_data.sources import run_ingest
from medscout_data.sources.releases import (
    mimic_jpg_release,
    totalseg_release,
    view_of_dataset,
    view_of_row,
)
from medscout_data.stages.build.catalog import read_catalogue

METADATA = "mimic-cxr-2.0.0-metadata.csv.gz"


# Rows shaped like the real mimic-cxr-2.0.0-metadata.csv (ViewPosition empty for ~15,800 images).
@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"ViewPosition": "PA", "ViewCodeSequence_CodeMeaning": "postero-anterior"}, ("PA", "ViewPosition")),
        (
            {"ViewPosition": "", "ViewCodeSequence_CodeMeaning": "postero-anterior"},
            ("PA", "ViewCodeSequence_CodeMeaning"),
        ),
        (
            {"ViewPosition": None, "ViewCodeSequence_CodeMeaning": "antero-posterior"},
            ("AP", "ViewCodeSequence_CodeMeaning"),
        ),
        (
            {"ViewPosition": "", "ViewCodeSequence_CodeMeaning": "lateral"},
            ("LATERAL", "ViewCodeSequence_CodeMeaning"),
        ),
        (
            {
                "ViewPosition": "",
                "ViewCodeSequence_CodeMeaning": "",
                "PerformedProcedureStepDescription": "CHEST (PORTABLE AP)",
            },
            ("AP", "PerformedProcedureStepDescription"),
        ),
        (  # names two views: decides nothing
            {
                "ViewPosition": "",
                "ViewCodeSequence_CodeMeaning": "",
                "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
            },
            ("", ""),
        ),
        ({"ViewPosition": "", "PerformedProcedureStepDescription": "CHEST (PRE-OP PA AND LAT)"}, ("", "")),
        ({}, ("", "")),
    ],
)
def test_an_empty_view_position_falls_back_on_the_code_meaning_then_the_description(row, expected) -> None:
    assert view_of_row(row) == expected


def test_a_dicom_without_view_position_falls_back_on_its_view_code_sequence() -> None:
    ds = Dataset()
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "R-10214", "SRT", "antero-posterior"
    ds.ViewCodeSequence = [code]
    assert view_of_dataset(ds) == ("AP", "ViewCodeSequence")
    ds.ViewPosition = "PA"
    assert view_of_dataset(ds) == ("PA", "ViewPosition")
    assert view_of_dataset(Dataset()) == ("", "")


def _rewrite_metadata(root: Path, change) -> pl.DataFrame:
    with gzip.open(root / METADATA, "rb") as handle:
        frame = pl.read_csv(handle.read(), infer_schema=False)
    frame = change(frame)
    with gzip.open(root / METADATA, "wb") as handle:
        frame.write_csv(handle)
    return frame


def test_ingest_keeps_frontal_images_whose_view_position_is_empty(sample_sources, tmp_path: Path) -> None:
    root = tmp_path / "jpg"
    shutil.copytree(sample_sources["mimic-cxr-jpg"], root)
    (root / ".sample.json").unlink(missing_ok=True)  # a real-looking tree: release told from its files
    frame = _rewrite_metadata(root, lambda f: f)
    pa_ids = frame.filter(pl.col("ViewPosition") == "PA")["dicom_id"].to_list()
    code_id, description_id, both_id = pa_ids[:3]
    meanings = {code_id: "postero-anterior"}
    descriptions = {description_id: "CHEST (PORTABLE AP)", both_id: "CHEST (PA AND LAT)"}

    def blank(f: pl.DataFrame) -> pl.DataFrame:
        ids = pl.col("dicom_id")
        return f.with_columns(
            ViewPosition=pl.when(ids.is_in([code_id, description_id, both_id]))
            .then(pl.lit(""))
            .otherwise(pl.col("ViewPosition")),
            ViewCodeSequence_CodeMeaning=ids.replace_strict(meanings, default=""),
            PerformedProcedureStepDescription=ids.replace_strict(descriptions, default="CHEST (PA AND LAT)"),
        )

    _rewrite_metadata(root, blank)
    layout = Layout.at(tmp_path / "out")
    report = run_ingest(layout, load_recipe("sample"), "xray", root=root, progress=False)
    catalogue = pl.read_parquet(layout.catalogue("xray")).filter(
        pl.col("image_id").is_in([code_id, description_id, both_id])
    )
    found = {r["image_id"]: (r["view"], r["view_source"]) for r in catalogue.iter_rows(named=True)}
    assert found == {
        code_id: ("PA", "ViewCodeSequence_CodeMeaning"),
        description_id: ("AP", "PerformedProcedureStepDescription"),
    }
    (skip,) = [s for s in report.skips if both_id in s.path]
    assert skip.reason == "no-view"
    assert report.counts["views_from_ViewCodeSequence_CodeMeaning"] == 1
    assert report.info["source_release"]["release"] == "2.0.0"
    # the item's `source` names the release and the field that decided the view
    refs = {ref.image_id: ref for ref in read_catalogue(layout.catalogue("xray"))}
    source = refs[code_id].provenance()
    assert source["release"] == "2.0.0" and source["view_from"] == "ViewCodeSequence_CodeMeaning"
    assert source_dataset(json.dumps(source)) == "mimic-cxr-jpg 2.0.0"  # what the card lists


def test_mimic_cxr_jpg_release_from_its_files(tmp_path: Path) -> None:
    (tmp_path / METADATA).write_bytes(b"")
    assert mimic_jpg_release(tmp_path)[0] == "2.0.0"
    (tmp_path / "IMAGE_FILENAMES").write_text("files/p10/p10000032/s50414267/x.jpg\n")
    assert mimic_jpg_release(tmp_path)[0] == "2.1.0"
    (tmp_path / "IMAGE_FILENAMES").unlink()
    (tmp_path / "mimic-cxr-2.1.0-test-set-labeled.csv").write_text("study_id\n")
    assert mimic_jpg_release(tmp_path)[0] == "2.1.0"


V1_HEADER = "\ufeffimage_id;age;gender;institute;study_type;split\n"
V2_HEADER = (
    "\ufeffimage_id;age;gender;institute;study_type;split;manufacturer;scanner_model;kvp;pathology;"
    "pathology_location\n"
)


def test_totalsegmentator_release_from_meta_columns_and_subjects(tmp_path: Path) -> None:
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "meta.csv").write_text(V1_HEADER + "s0000;60;m;A;ct;train\n", encoding="utf-8")
    assert totalseg_release(v1, ["s0000", "s1428"])[0] == "v1"
    release, evidence = totalseg_release(v1, ["s0000", "s1452"])
    assert release == "v2" and "s1452" in evidence
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "meta.csv").write_text(V2_HEADER, encoding="utf-8")
    release, evidence = totalseg_release(v2, ["s0000"])
    assert release == "v2" and "pathology" in evidence
    assert totalseg_release(tmp_path / "none", ["s0000"])[0] == ""
