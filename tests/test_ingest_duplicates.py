"""Duplicate sources are caught at ingest: one radiograph under two patient ids is kept once, the
drop recorded with both ids, the same for any worker count or rank split (issue 21, deliverable 3)."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from medscout_data.cli import cli
from medscout_data.layout import Layout
from medscout_data.ranks import Rank
from medscout_data.recipe import load_recipe
from medscout_data.sources import merge_ranks, run_ingest

METADATA = "mimic-cxr-2.0.0-metadata.csv.gz"
SPLIT = "mimic-cxr-2.0.0-split.csv.gz"
TWIN = ("99999999", "59999999", "twin0000-dicom")  # the second patient id, its study, the copy's dicom_id


def _read(path: Path) -> pl.DataFrame:
    with gzip.open(path, "rb") as handle:
        return pl.read_csv(handle.read(), infer_schema=False)


def _write(frame: pl.DataFrame, path: Path) -> None:
    with gzip.open(path, "wb") as handle:
        frame.write_csv(handle)


@pytest.fixture(scope="module")
def twin_source(tmp_path_factory: pytest.TempPathFactory, sample_sources) -> tuple[Path, str]:
    """The JPG sample with one frontal radiograph copied, byte for byte, under a second patient id."""
    root = tmp_path_factory.mktemp("twin") / "mimic-cxr-jpg"
    shutil.copytree(sample_sources["mimic-cxr-jpg"], root)
    metadata = _read(root / METADATA)
    original = metadata.filter(pl.col("ViewPosition") == "PA").row(0, named=True)
    subject, study, dicom_id = TWIN
    source = root / "files" / f"p{original['subject_id'][:2]}" / f"p{original['subject_id']}"
    source = source / f"s{original['study_id']}" / f"{original['dicom_id']}.jpg"
    target = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom_id}.jpg"
    target.parent.mkdir(parents=True)
    shutil.copyfile(source, target)
    twin = {**original, "dicom_id": dicom_id, "subject_id": subject, "study_id": study}
    _write(pl.concat([metadata, pl.DataFrame([twin], schema=metadata.schema)]), root / METADATA)
    split = _read(root / SPLIT)
    row = split.filter(pl.col("dicom_id") == original["dicom_id"]).row(0, named=True)
    extra = {**row, "dicom_id": dicom_id, "subject_id": subject, "study_id": study}
    _write(pl.concat([split, pl.DataFrame([extra], schema=split.schema)]), root / SPLIT)
    return root, original["dicom_id"]


def _catalogue_bytes(out: Path) -> str:
    return hashlib.sha256(Layout.at(out).catalogue("xray").read_bytes()).hexdigest()


def test_one_radiograph_under_two_patient_ids_is_kept_once(twin_source, tmp_path: Path) -> None:
    root, original = twin_source
    recipe = load_recipe("sample")
    digests = set()
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        report = run_ingest(Layout.at(out), recipe, "xray", root=root, workers=workers, progress=False)
        ids = set(pq.read_table(Layout.at(out).catalogue("xray"), columns=["image_id"]).column(0).to_pylist())
        assert len({original, TWIN[2]} & ids) == 1  # one of the two, never both
        (skip,) = [s for s in report.skips if s.reason == "duplicate-image"]
        assert original in skip.message and TWIN[2] in skip.message and TWIN[0] in skip.message
        assert report.counts["duplicate_images"] == 1
        errors = pq.read_table(Layout.at(out).catalogue_dir("xray") / "errors.parquet").to_pylist()
        assert [e["reason"] for e in errors].count("duplicate-image") == 1
        digests.add(_catalogue_bytes(out))
    # ranks: each its share, then the merge; the same catalogue, byte for byte
    out = tmp_path / "ranks"
    for rank in range(2):
        run_ingest(Layout.at(out), recipe, "xray", root=root, rank=Rank(rank, 2), progress=False)
    merge_ranks(Layout.at(out), recipe, "xray", root=root, world_size=2, progress=False)
    digests.add(_catalogue_bytes(out))
    assert len(digests) == 1


def test_build_summary_says_how_many_duplicates_ingest_dropped(twin_source, tmp_path: Path) -> None:
    root, _ = twin_source
    args = ["build", "--modality", "xray", "--root", str(root), "--task", "jigsaw", "--limit", "8"]
    result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "out"), "--quiet"])
    assert "duplicate images dropped at ingest (one kept of each): 1" in result.output, result.output
