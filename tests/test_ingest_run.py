"""Ingest runs: detection, schema, determinism across workers, resume, staleness, the CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from medscout_data.cli import cli
from medscout_data.cli.ingest import SOURCE_CHOICES
from medscout_data.layout import Layout
from medscout_data.recipe import IngestConfig, Window, load_recipe
from medscout_data.schema import CATALOGUE_SCHEMA
from medscout_data.sources import (
    SOURCE_KINDS,
    IngestError,
    catalogue_info,
    detect_source,
    ensure_catalogue,
    run_ingest,
)


def recipe_with(**ingest):
    recipe = load_recipe("sample")
    base = IngestConfig(min_body_fraction=0.1, max_size=256, xray_chunk_images=4)
    return dataclasses.replace(recipe, ingest=dataclasses.replace(base, **ingest))


def digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "report.json" and not p.name.startswith(".lock-")
    }


# ------------------------------------------------------------- detection


def test_source_kind_is_detected_from_the_tree(sample_sources: dict[str, Path], tmp_path: Path) -> None:
    assert detect_source(sample_sources["totalseg-ct"], "ct") == "totalseg"
    assert detect_source(sample_sources["totalseg-mri"], "mri") == "totalseg"
    assert detect_source(sample_sources["mimic-cxr-jpg"], "xray") == "mimic-cxr-jpg"
    assert detect_source(sample_sources["mimic-cxr"], "xray") == "mimic-cxr"
    bare = tmp_path / "bare"
    shutil.copytree(sample_sources["mimic-cxr"], bare)
    (bare / "cxr-record-list.csv.gz").unlink()
    assert detect_source(bare, "xray") == "mimic-cxr"  # from a .dcm under files/
    with pytest.raises(IngestError, match="--root"):
        detect_source(tmp_path / "empty-does-not-exist", "ct")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match="no xray source layout"):
        detect_source(tmp_path / "empty", "xray")
    with pytest.raises(IngestError, match="no ct source layout"):
        detect_source(sample_sources["mimic-cxr-jpg"], "ct")


def test_wrong_source_for_the_modality_is_refused(sample_sources: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="cannot hold ct"):
        run_ingest(Layout.at(tmp_path), recipe_with(), "ct", sample_sources["totalseg-ct"], "mimic-cxr")
    with pytest.raises(IngestError, match="does not exist"):
        run_ingest(Layout.at(tmp_path), recipe_with(), "ct", tmp_path / "nowhere")
    assert set(SOURCE_CHOICES) == set(SOURCE_KINDS)


# ------------------------------------------------------------- the catalogue


def test_catalogue_has_the_declared_schema_relative_paths_and_provenance(
    sample_sources: dict[str, Path], tmp_path: Path
) -> None:
    layout = Layout.at(tmp_path)
    root = sample_sources["totalseg-ct"]
    run_ingest(layout, recipe_with(), "ct", root, progress=False)
    table = pq.read_table(layout.catalogue("ct"))
    assert table.schema.remove_metadata() == CATALOGUE_SCHEMA
    frame = pl.from_arrow(table)
    assert frame["image_id"].n_unique() == frame.height > 0
    assert not any(os.path.isabs(p) or str(tmp_path) in p for p in frame["path"].to_list())
    assert not any(str(root) in m for m in frame["meta"].to_list())
    info = catalogue_info(layout.catalogue("ct"))
    assert info["source_kind"] == "totalseg" and info["source_root"] == str(root.resolve())
    assert info["ingest_digest"] and info["modality"] == "ct"
    assert (layout.catalogue_dir("ct") / "errors.parquet").is_file()
    assert (layout.catalogue_dir("ct") / "report.json").is_file()


# -------------------------------------------------- determinism and resume


@pytest.mark.parametrize("modality,source", [("ct", "totalseg-ct"), ("xray", "mimic-cxr")])
def test_one_and_two_workers_write_identical_bytes(
    sample_sources: dict[str, Path], tmp_path: Path, modality: str, source: str
) -> None:
    results = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        report = run_ingest(
            Layout.at(out), recipe_with(), modality, sample_sources[source], workers=workers, progress=False
        )
        assert report.counts["units_run"] >= 2
        results[workers] = (digests(out / "catalogue"), digests(out / "cache"))
    assert results[1] == results[2]
    assert any(name.endswith(".stack") for name in results[1][1])


def test_rerun_skips_finished_units_and_redoes_only_a_missing_part(
    sample_sources: dict[str, Path], tmp_path: Path
) -> None:
    layout = Layout.at(tmp_path)
    recipe, root = recipe_with(), sample_sources["totalseg-ct"]
    first = run_ingest(layout, recipe, "ct", root, progress=False)
    assert first.counts["units_run"] == 6 and first.counts["units_reused"] == 0
    catalogue_bytes = layout.catalogue("ct").read_bytes()
    parts = sorted((layout.catalogue_dir("ct") / "parts").glob("*.parquet"))
    mtimes = {p: p.stat().st_mtime_ns for p in parts}
    second = run_ingest(layout, recipe, "ct", root, progress=False)
    assert second.counts["units_run"] == 0 and second.counts["units_reused"] == 6
    assert {p: p.stat().st_mtime_ns for p in parts} == mtimes
    assert second.counts["images"] == first.counts["images"]
    parts[2].unlink()
    third = run_ingest(layout, recipe, "ct", root, progress=False)
    assert third.counts["units_run"] == 1 and third.counts["units_reused"] == 5
    assert layout.catalogue("ct").read_bytes() == catalogue_bytes


def test_changed_input_or_recipe_redoes_what_it_touches(
    sample_sources: dict[str, Path], tmp_path: Path
) -> None:
    root = tmp_path / "src"
    shutil.copytree(sample_sources["totalseg-ct"], root)
    layout = Layout.at(tmp_path / "out")
    run_ingest(layout, recipe_with(), "ct", root, progress=False)
    os.utime(root / "s0001" / "ct.nii.gz", ns=(1, 1))
    report = run_ingest(layout, recipe_with(), "ct", root, progress=False)
    assert report.counts["units_run"] == 1
    windows = (Window("soft-tissue", 400.0, 40.0), Window("bone", 1800.0, 400.0))
    report = run_ingest(layout, recipe_with(ct_windows=windows), "ct", root, progress=False)
    assert report.counts["units_run"] == 6
    assert (layout.cache_dir("ct") / "s0000.bone.stack").is_file()
    run_ingest(layout, recipe_with(), "ct", root, progress=False)
    assert not (layout.cache_dir("ct") / "s0000.bone.stack").exists(), "unreferenced cache files are removed"


def test_killed_unit_leaves_no_part_and_is_redone(sample_sources: dict[str, Path], tmp_path: Path) -> None:
    layout = Layout.at(tmp_path)
    recipe, root = recipe_with(), sample_sources["mimic-cxr-jpg"]
    run_ingest(layout, recipe, "xray", root, progress=False)
    before = layout.catalogue("xray").read_bytes()
    part = layout.catalogue_dir("xray") / "parts" / "chunk-00001.parquet"
    part.rename(part.with_name(part.name + ".tmp"))  # as a kill mid-write leaves it
    (layout.cache_dir("xray") / "chunk-00001.stack").write_bytes(b"half a stack")
    report = run_ingest(layout, recipe, "xray", root, progress=False)
    assert report.counts["units_run"] == 1
    assert layout.catalogue("xray").read_bytes() == before


# ---------------------------------------------------------- ensure_catalogue


def test_ensure_catalogue_reuses_a_fresh_catalogue_and_rebuilds_a_stale_one(
    sample_sources: dict[str, Path], tmp_path: Path
) -> None:
    layout = Layout.at(tmp_path)
    root = sample_sources["mimic-cxr-jpg"]
    path = ensure_catalogue(layout, recipe_with(), "xray", root)
    assert path == layout.catalogue("xray") and path.is_file()
    stamp = path.stat().st_mtime_ns
    assert ensure_catalogue(layout, recipe_with(), "xray", root) == path
    assert path.stat().st_mtime_ns == stamp, "a fresh catalogue is not rewritten"
    ensure_catalogue(layout, recipe_with(max_size=48), "xray", root)
    assert path.stat().st_mtime_ns != stamp
    assert pl.read_parquet(path)["height"].max() == 48


def test_ensure_catalogue_without_root_uses_the_embedded_sample(tmp_path: Path) -> None:
    recipe = load_recipe("sample")
    recipe = dataclasses.replace(
        recipe, sample=dataclasses.replace(recipe.sample, subjects=2, size=32, slices=6)
    )
    recipe = dataclasses.replace(recipe, ingest=dataclasses.replace(recipe.ingest, min_body_fraction=0.1))
    layout = Layout.at(tmp_path)
    path = ensure_catalogue(layout, recipe, "mri")
    info = catalogue_info(path)
    assert info["source_root"] == str(layout.sample_source("mri").resolve())
    assert pl.read_parquet(path).height > 0


# --------------------------------------------------------------------- CLI


def test_cli_ingests_and_prints_a_summary(sample_sources: dict[str, Path], tmp_path: Path) -> None:
    args = [
        "ingest",
        "--modality",
        "xray",
        "--root",
        str(sample_sources["mimic-cxr"]),
        "--out",
        str(tmp_path),
    ]
    result = CliRunner().invoke(cli, [*args, "--workers", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "found=" in result.output and "view-filtered" in result.output
    assert "PhysioNet" in result.output
    assert Layout.at(tmp_path).catalogue("xray").is_file()
    result = CliRunner().invoke(
        cli, ["ingest", "--modality", "ct", "--source", "mimic-cxr", "--out", str(tmp_path)]
    )
    assert result.exit_code == 1 and "cannot hold ct" in result.output
