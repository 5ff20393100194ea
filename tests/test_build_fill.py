"""Build fills every cell on both sides, never duplicates an item, and says when the sources cannot."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from buildsupport import recipe_variant
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from medscout_data.cli import cli
from medscout_data.layout import Layout
from medscout_data.recipe import load_recipe
from medscout_data.stages.build import BuildOptions, build_modality
from medscout_data.stages.build.planning import spread_choices
from medscout_data.stages.plan import load_plan
from medscout_data.stages.pool import listed_shards, pool_problems, read_pool_record
from medscout_data.stages.split import SplitOptions, split_pool


def _digests(root: Path, modality: str) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in listed_shards(Layout.at(root), modality)
    }


def _rows(root: Path, modality: str, columns: list[str]) -> list[dict]:
    return [
        row
        for path in listed_shards(Layout.at(root), modality)
        for row in pq.read_table(path, columns=columns).to_pylist()
    ]


@pytest.fixture(scope="module")
def hard_recipe(tmp_path_factory: pytest.TempPathFactory, test_recipe: Path) -> Path:
    """The test recipe with a visibility threshold most anomaly references fail."""
    return recipe_variant(tmp_path_factory.mktemp("hard"), test_recipe, "min_cell_difference = 50.0")


@pytest.fixture(scope="module")
def hard_pools(tmp_path_factory: pytest.TempPathFactory, hard_recipe: Path, sample_sources) -> dict:
    """The CT and MRI anomaly cells under the hard recipe, built with 1 and with 2 workers."""
    out = {}
    for workers in (1, 2):
        root = tmp_path_factory.mktemp(f"hard-w{workers}")
        for modality, source in (("ct", "totalseg-ct"), ("mri", "totalseg-mri")):
            options = BuildOptions(
                modality=modality,
                root=sample_sources[source],
                tasks=("anomaly",),
                workers=workers,
                progress=False,
            )
            out[workers, modality] = build_modality(Layout.at(root), load_recipe(hard_recipe), options)
        out[workers] = root
    return out


def test_a_recipe_most_items_fail_still_fills_every_cell_on_both_sides(hard_pools: dict) -> None:
    for modality in ("ct", "mri"):
        report = hard_pools[1, modality]
        assert report.counts["fallback_images"] >= 12, "the recipe must make many first attempts fail"
        assert report.counts["replaced_items"] >= 1, "some items must need another subject's images"
        assert report.info["made"]["anomaly"] == {"bench": 6, "train": 18}
        assert not report.info["shortfall"]
        record = read_pool_record(Layout.at(hard_pools[1]), modality)
        assert record["complete"] and not pool_problems(Layout.at(hard_pools[1]), modality)


def test_the_filled_pool_is_byte_identical_for_1_and_2_workers(hard_pools: dict) -> None:
    for modality in ("ct", "mri"):
        one, two = _digests(hard_pools[1], modality), _digests(hard_pools[2], modality)
        assert one and one == two
        assert any("-r01-" in name for name in one), "replacements live in round shards"


def test_replacements_keep_the_side_the_ids_and_the_balance(hard_pools: dict, test_recipe: Path) -> None:
    root = hard_pools[1]
    for modality in ("ct", "mri"):
        plan = load_plan(Layout.at(root).plan(modality))
        rows = _rows(root, modality, ["id", "subject_id", "reference_subject_id", "target"])
        assert sorted(r["id"] for r in rows) == [f"{modality}-anomaly-{n:06d}" for n in range(24)]
        for row in rows:
            bench = int(row["id"][-6:]) < 6  # the plan puts the bench side's items first
            assert (plan.side(row["subject_id"]) == "bench") == bench
            assert row["reference_subject_id"] == row["subject_id"]
        cells = Counter(json.loads(r["target"])["cell"] for r in rows if int(r["id"][-6:]) < 6)
        assert max(cells.values()) - min(cells.values()) <= 1, cells
    split_pool(Layout.at(root), SplitOptions(progress=False))  # the balanced bench can be drawn


def test_an_impossible_recipe_reports_the_shortfall_per_side(
    tmp_path: Path, test_recipe: Path, sample_sources
) -> None:
    recipe = recipe_variant(tmp_path, test_recipe, "min_cell_difference = 255.0")
    args = ["build", "--modality", "ct", "--root", str(sample_sources["totalseg-ct"]), "--task", "anomaly"]
    args += ["--out", str(tmp_path / "out"), "--recipe", str(recipe), "--quiet"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert "SHORT anomaly bench side: 0 of 6" in result.output
    assert "SHORT anomaly train side: 0 of 18" in result.output
    assert "min_cell_difference (now 255)" in result.output and "more bench-side subjects" in result.output
    record = read_pool_record(Layout.at(tmp_path / "out"), "ct")
    short = record["shortfall"]["anomaly"]
    assert short["bench"]["made"] == 0 and short["bench"]["planned"] == 6
    assert short["train"]["planned"] == 18
    assert "differ visibly" in next(iter(short["train"]["reasons"]))


def test_no_two_items_of_a_cell_have_the_same_images(
    tmp_path: Path, test_recipe: Path, sample_sources
) -> None:
    """X-ray sample: few images per subject, so each image carries many items of a cell."""
    recipe = recipe_variant(tmp_path, test_recipe, "items_per_cell = 160", "bench_per_cell = 40")
    layout = Layout.at(tmp_path / "out")
    options = BuildOptions(modality="xray", root=sample_sources["mimic-cxr-jpg"], tasks=("jigsaw", "anomaly"))
    report = build_modality(
        layout, load_recipe(recipe), BuildOptions(**{**options.__dict__, "progress": False})
    )
    for task in ("jigsaw", "anomaly"):
        rows = [r for r in _rows(tmp_path / "out", "xray", ["task", "images", "source"]) if r["task"] == task]
        keys = [hashlib.sha256(b"".join(i["bytes"] for i in r["images"])).hexdigest() for r in rows]
        assert len(rows) > 0 and len(set(keys)) == len(keys), task
        sources = Counter(json.loads(r["source"])["image_id"] for r in rows)
        assert max(sources.values()) > 1, "the test must reuse images"
    assert report.info["items_sharing_source_image"]["jigsaw"] > 0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 12), min_size=1, max_size=120),
    st.integers(2, 23),
    st.integers(0, 2**32 - 1),
)
def test_spread_choices_balance_and_spread_each_image(images: list[int], n_options: int, seed: int) -> None:
    options = list(range(n_options))
    chosen = spread_choices([str(i) for i in images], options, np.random.default_rng(seed))
    counts = Counter(chosen)
    assert max(counts.values()) - min(counts.get(o, 0) for o in options) <= 1
    per_image: dict[int, Counter] = {}
    for image, option in zip(images, chosen, strict=True):
        per_image.setdefault(image, Counter())[option] += 1
    for image, used in per_image.items():
        uses = sum(used.values())
        if uses <= n_options:  # distinct whenever the image carries no more items than there are options
            assert max(used.values()) == 1, (image, used)


def test_dry_run_forecasts_every_cell_and_writes_nothing(
    built_pool: Path, test_recipe: Path, tmp_path: Path
) -> None:
    root = tmp_path / "copy"

    for folder in ("catalogue", "cache", "plan", "index"):
        shutil.copytree(built_pool / folder, root / folder)
    impossible = recipe_variant(tmp_path, test_recipe, "min_cell_difference = 255.0")
    result = CliRunner().invoke(
        cli, ["build", "--modality", "xray", "--out", str(root), "--recipe", str(impossible), "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    for task in ("scale", "jigsaw", "anomaly"):
        assert f"  {task} " in result.output
    assert "GB of pool" in result.output and "min of making" in result.output
    assert "WARNING xray/anomaly" in result.output
    assert not (root / "pool").exists() and not (root / "reports").exists()
