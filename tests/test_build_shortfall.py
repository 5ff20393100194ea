"""Build says what it could not make and which rule stopped it: the binding rule with its value
(issue 21, deliverable 8), and choices a side cannot balance (deliverable 4)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from buildsupport import recipe_variant
from click.testing import CliRunner

from medscout_data.cli import cli
from medscout_data.layout import Layout
from medscout_data.recipe import load_recipe
from medscout_data.stages.build import BuildOptions, build_modality, making
from medscout_data.stages.build.shortfall import rule_of
from medscout_data.stages.pool import listed_shards, read_pool_record
from medscout_data.stages.split import SplitOptions, split_pool
from medscout_data.tasks.content import TaskRejected


def _build_cli(tmp_path: Path, recipe: Path, source: Path, task: str) -> str:
    args = ["build", "--modality", "ct", "--root", str(source), "--task", task]
    args += ["--out", str(tmp_path / "out"), "--recipe", str(recipe), "--quiet"]
    result = CliRunner().invoke(cli, args)
    return result.output


def test_scale_too_small_for_max_enlargement_names_that_rule(
    tmp_path: Path, test_recipe: Path, sample_sources
) -> None:
    """Images too small for scale.max_enlargement: the advice names it (with its value), never
    scale.min_anatomy_fraction, which rejected nothing."""
    recipe = recipe_variant(tmp_path, test_recipe, "crop_size = 256")  # 64 px images: > 3x enlargement
    output = _build_cli(tmp_path, recipe, sample_sources["totalseg-ct"], "scale")
    short = read_pool_record(Layout.at(tmp_path / "out"), "ct")["shortfall"]["scale"]
    for side in ("bench", "train"):
        assert short[side]["made"] == 0
        assert short[side]["rules"] == ["scale.max_enlargement"]
        assert "scale.max_enlargement (now 3)" in short[side]["advice"]
        assert "min_anatomy_fraction" not in short[side]["advice"]
    assert "scale.max_enlargement (now 3)" in output and "min_anatomy_fraction" not in output


def test_jigsaw_short_names_the_content_rule_that_rejected_it(
    tmp_path: Path, test_recipe: Path, sample_sources
) -> None:
    recipe = tmp_path / "strict.toml"
    recipe.write_text(test_recipe.read_text() + "\n[jigsaw]\nmin_tile_difference = 250.0\n")
    _build_cli(tmp_path, recipe, sample_sources["totalseg-ct"], "jigsaw")
    short = read_pool_record(Layout.at(tmp_path / "out"), "ct")["shortfall"]["jigsaw"]
    assert short["bench"]["rules"] == ["jigsaw.min_tile_difference"]
    assert "jigsaw.min_tile_difference (now 250)" in short["bench"]["advice"]


@pytest.mark.parametrize(
    ("reason", "rule"),
    [
        ("image 60x60 too small: ... (scale.max_enlargement 3)", "scale.max_enlargement"),
        ("no crop of area 0.2 (scale.min_anatomy_fraction 0.6) in 64 draws", "scale.min_anatomy_fraction"),
        ("tile 2 is featureless (structure 1.0 < jigsaw.min_structure 3)", "jigsaw.min_structure"),
        ("cell 9 is featureless (structure 0.4 < anomaly.min_structure 3)", "anomaly.min_structure"),
        ("no image and choice of its side was left to try", "capacity"),
    ],
)
def test_rule_of_reads_the_rule_a_reason_names(reason: str, rule: str) -> None:
    assert rule_of(reason) == rule


def _posterior_fossa(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-in for a brain CT whose cells 9 and 10 fall on the featureless posterior fossa: the
    anomaly maker rejects those two cells, as the content check does on such a head."""
    real = making.anomaly_item

    def anomaly_item(image, reference, cell, recipe, modality):
        if cell in (9, 10):
            raise TaskRejected(f"cell {cell} is featureless (structure 0.4 < anomaly.min_structure 3)")
        return real(image, reference, cell, recipe, modality)

    monkeypatch.setattr(making, "anomaly_item", anomaly_item)


def test_build_reports_an_anomaly_cell_it_cannot_balance_and_split_names_it(
    tmp_path: Path, test_recipe: Path, sample_sources, monkeypatch: pytest.MonkeyPatch
) -> None:
    _posterior_fossa(monkeypatch)
    layout = Layout.at(tmp_path / "out")
    options = BuildOptions(
        modality="ct", root=sample_sources["totalseg-ct"], tasks=("anomaly",), progress=False
    )
    report = build_modality(layout, load_recipe(test_recipe), options)
    record = read_pool_record(layout, "ct")
    assert not record["shortfall"]  # the count is full: replacements took cells 5 and 6
    cells = Counter(
        json.loads(t)["cell"]
        for p in listed_shards(layout, "ct")
        for t in pq.read_table(p, columns=["target"]).column("target").to_pylist()
    )
    assert set(cells) == {5, 6}
    short = record["balance_short"]["anomaly"]
    assert report.info["balance_short"] == record["balance_short"]
    for side, planned in (("bench", 6), ("train", 18)):
        entries = {e["choice"]: e for e in short[side]}
        assert set(entries) == {"cell 9", "cell 10"}
        for entry in entries.values():
            assert entry["made"] == 0 and entry["needed"] == planned // 4 and entry["short"] == planned // 4
            assert "anomaly.min_structure" in next(iter(entry["reasons"]))  # the most common reason
            assert "anomaly.min_structure (now 3)" in entry["advice"]
            assert "out of anomaly.cells (now [5, 6, 9, 10])" in entry["advice"]
    manifest = split_pool(layout, SplitOptions(progress=False))
    warnings = [w for w in manifest["warnings"] if "cannot be balanced" in w]
    assert any("ct/anomaly bench side" in w and "cell 9 0 times" in w for w in warnings), warnings
    assert any("ct/anomaly bench side" in w and "cell 10 0 times" in w for w in warnings), warnings


def test_build_cli_prints_an_unbalanced_bench_side_and_fails(
    tmp_path: Path, test_recipe: Path, sample_sources, monkeypatch: pytest.MonkeyPatch
) -> None:
    _posterior_fossa(monkeypatch)
    args = ["build", "--modality", "ct", "--root", str(sample_sources["totalseg-ct"]), "--task", "anomaly"]
    result = CliRunner().invoke(cli, [*args, "--recipe", str(test_recipe), "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 1, result.output
    assert "UNBALANCED anomaly bench side: cell 9 made 0 times, an even share needs 1" in result.output
    assert "out of anomaly.cells (now [5, 6, 9, 10])" in result.output


def test_a_balanced_build_reports_no_balance_shortfall(built_pool: Path) -> None:
    for modality in ("ct", "mri", "xray"):
        assert read_pool_record(Layout.at(built_pool), modality)["balance_short"] == {}


def test_dry_run_names_the_rule_that_rejects_a_cell(
    built_pool: Path, test_recipe: Path, tmp_path: Path
) -> None:
    root = tmp_path / "copy"
    for folder in ("catalogue", "cache", "plan"):
        shutil.copytree(built_pool / folder, root / folder)
    recipe = recipe_variant(tmp_path, test_recipe, "crop_size = 256")
    args = ["build", "--modality", "ct", "--out", str(root), "--recipe", str(recipe), "--dry-run"]
    result = CliRunner().invoke(cli, [*args, "--task", "scale"])
    assert result.exit_code == 0, result.output
    assert "what rejected their attempts: scale.max_enlargement (now 3)" in result.output, result.output
    assert "min_anatomy_fraction" not in result.output
