"""Build: items as DESIGN.md defines them, shards that `datasets` decodes, determinism, resume."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from medscout_data.cache import ImageCache
from medscout_data.cli import cli
from medscout_data.layout import Layout
from medscout_data.recipe import load_recipe
from medscout_data.schema import ITEM_COLUMNS
from medscout_data.stages.build import BuildOptions, balanced, build_modality, quotas, spread
from medscout_data.stages.plan import BENCH, PlanError, load_plan
from medscout_data.tasks.geometry import cell_box, cell_difference, fit_to_grid

MODALITIES = ("ct", "mri", "xray")


def _pool(root: Path, modality: str) -> pl.DataFrame:
    files = sorted((root / "pool" / modality).glob("*.parquet"))
    return pl.concat([pl.read_parquet(f) for f in files])


def _catalogue(root: Path, modality: str) -> dict[str, dict]:
    frame = pl.read_parquet(Layout.at(root).catalogue(modality))
    return {row["image_id"]: row for row in frame.iter_rows(named=True)}


def _decode(image: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image["bytes"])))


def test_pool_has_every_cell_in_named_bounded_shards(built_pool: Path, test_recipe: Path) -> None:
    recipe = load_recipe(test_recipe)
    for modality in MODALITIES:
        folder = built_pool / "pool" / modality
        for task in ("scale", "jigsaw", "anomaly"):
            files = sorted(folder.glob(f"{task}-*.parquet"))
            assert [f.name for f in files] == [f"{task}-{i:05d}.parquet" for i in range(len(files))]
            rows = [pq.ParquetFile(f).metadata.num_rows for f in files]
            assert all(0 < n <= recipe.pool.shard_max_items for n in rows)
            assert sum(rows) == recipe.pool.items_per_cell, (modality, task)
        frame = _pool(built_pool, modality)
        assert frame["id"].n_unique() == frame.height


def test_datasets_decodes_images_as_pil_with_every_column(built_pool: Path) -> None:
    import datasets

    files = sorted(str(p) for p in (built_pool / "pool" / "xray").glob("*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    assert ds.column_names == ITEM_COLUMNS
    counts = {"scale": 4, "jigsaw": 1, "anomaly": 1}
    for row in ds.select(range(0, len(ds), 7)):
        assert len(row["images"]) == counts[row["task"]]
        assert all(isinstance(image, Image.Image) and image.mode == "L" for image in row["images"])
        assert row["question_cot"].endswith("inside <answer>...</answer>.")
        assert row["modality"] == "xray"


def test_answers_are_exactly_the_design_formats(built_pool: Path) -> None:
    import re

    patterns = {
        ("scale", "tier"): r"Label [12](, Label [12]){2}",
        ("scale", "box"): r"\(\d+, \d+, \d+, \d+\)(, \(\d+, \d+, \d+, \d+\)){2}",
        ("jigsaw", ""): r"[0-3]( [0-3]){3}",
        ("anomaly", ""): r"(5|6|9|10)",
    }
    for modality in MODALITIES:
        for row in (
            _pool(built_pool, modality).select(["task", "variant", "answer", "target"]).iter_rows(named=True)
        ):
            assert re.fullmatch(patterns[row["task"], row["variant"]], row["answer"]), row
            target = json.loads(row["target"])
            if row["task"] == "scale":
                boxes = [tuple(b) for b in target["boxes_1000"]]
                if row["variant"] == "box":
                    assert row["answer"] == ", ".join(f"({a}, {b}, {c}, {d})" for a, b, c, d in boxes)
                else:
                    assert row["answer"] == ", ".join(f"Label {v}" for v in target["levels"])


def test_scale_crops_match_their_boxes_and_share_one_size(built_pool: Path) -> None:
    frame = _pool(built_pool, "ct").filter(pl.col("task") == "scale")
    for row in frame.head(12).iter_rows(named=True):
        full, *crops = (_decode(image) for image in row["images"])
        assert len({c.shape for c in crops}) == 1
        source = json.loads(row["source"])
        for crop, (x0, y0, x1, y1) in zip(crops, source["crops_px"], strict=True):
            import cv2

            back = cv2.resize(crop, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA).astype(int)
            assert np.abs(back - full[y0:y1, x0:x1]).mean() < 12


def test_jigsaw_permutations_balanced_over_the_23(built_pool: Path) -> None:
    frame = pl.concat([_pool(built_pool, m).filter(pl.col("task") == "jigsaw") for m in MODALITIES])
    perms = Counter(tuple(json.loads(t)["permutation"]) for t in frame["target"])
    assert len(perms) == 23 and (0, 1, 2, 3) not in perms
    assert max(perms.values()) - min(perms.values()) <= 3  # 72 items, three balanced cells


def test_anomaly_only_the_cell_differs_and_visibly(built_pool: Path, test_recipe: Path) -> None:
    recipe = load_recipe(test_recipe)
    low, high = recipe.anomaly.ref_distance_mm
    for modality in MODALITIES:
        catalogue = _catalogue(built_pool, modality)
        cache = ImageCache(Layout.at(built_pool).cache_dir(modality))
        frame = _pool(built_pool, modality).filter(pl.col("task") == "anomaly")
        cells = Counter()
        for row in frame.iter_rows(named=True):
            source = json.loads(row["source"])
            cell = json.loads(row["target"])["cell"]
            cells[cell] += 1
            original = fit_to_grid(cache.image(catalogue[source["image_id"]]), 4)
            tampered = _decode(row["images"][0])
            x0, y0, x1, y1 = cell_box(*original.shape, cell, 4)
            outside = np.ones(original.shape, bool)
            outside[y0:y1, x0:x1] = False
            assert np.array_equal(tampered[outside], original[outside])
            assert cell_difference(original, tampered, (x0, y0, x1, y1)) >= recipe.anomaly.min_cell_difference
            reference = source["reference"]
            if modality == "xray":
                assert row["reference_subject_id"] != row["subject_id"]
                assert reference["rank"] >= 1
            else:
                assert row["reference_subject_id"] == row["subject_id"]
                assert reference["path"] == source["path"]
                assert low <= reference["distance_mm"] <= high
        assert set(cells) == {5, 6, 9, 10} and max(cells.values()) - min(cells.values()) <= 2


def test_references_never_cross_the_subject_partition(built_pool: Path) -> None:
    for modality in MODALITIES:
        plan = load_plan(Layout.at(built_pool).plan(modality))
        for row in _pool(built_pool, modality).iter_rows(named=True):
            if row["reference_subject_id"]:
                assert plan.side(row["reference_subject_id"]) == plan.side(row["subject_id"])


def test_items_spread_evenly_over_subjects_and_along_volumes(built_pool: Path, test_recipe: Path) -> None:
    recipe = load_recipe(test_recipe)
    for modality in ("ct", "mri"):
        plan = load_plan(Layout.at(built_pool).plan(modality))
        frame = _pool(built_pool, modality)
        for task in ("scale", "jigsaw", "anomaly"):
            per_side: dict[str, Counter] = defaultdict(Counter)
            for subject in frame.filter(pl.col("task") == task)["subject_id"]:
                per_side[plan.side(subject)][subject] += 1
            for side, counts in per_side.items():
                expected = recipe.pool.bench_per_cell if side == BENCH else 24 - recipe.pool.bench_per_cell
                assert sum(counts.values()) == expected
                assert max(counts.values()) - min(counts.values()) <= 1, (modality, task, side, counts)
        slices = defaultdict(list)
        for row in frame.filter(pl.col("task") == "jigsaw").iter_rows(named=True):
            slices[row["subject_id"]].append(json.loads(row["source"])["slice"])
        catalogue = pl.read_parquet(Layout.at(built_pool).catalogue(modality))
        for subject, used in slices.items():
            kept = catalogue.filter(pl.col("subject_id") == subject)["slice_index"]
            if len(used) >= 3:
                assert (max(used) - min(used)) >= 0.4 * (kept.max() - kept.min()), (subject, used)


def test_planning_helpers_are_even_and_seeded() -> None:
    rng = np.random.default_rng(0)
    q = quotas(["a", "b", "c"], 10, rng)
    assert sum(q.values()) == 10 and max(q.values()) - min(q.values()) == 1
    picks = spread(4, 100, np.random.default_rng(1))
    assert [p // 25 for p in picks] == [0, 1, 2, 3]
    assert sorted(spread(6, 3, np.random.default_rng(2))) == [0, 0, 1, 1, 2, 2]
    draws = balanced(["x", "y", "z"], 10, np.random.default_rng(3))
    assert sorted(Counter(draws).values()) == [3, 3, 4]
    assert balanced(["x", "y", "z"], 10, np.random.default_rng(3)) == draws


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((root / "pool").rglob("*.parquet"))
    }


@pytest.fixture(scope="module")
def ct_only_pools(
    tmp_path_factory: pytest.TempPathFactory, test_recipe: Path, sample_sources
) -> dict[str, Path]:
    """The CT pool built with 1 and with 2 workers, from the same sample tree."""
    recipe = load_recipe(test_recipe)
    roots = {}
    for workers in (1, 2):
        root = tmp_path_factory.mktemp(f"w{workers}")
        options = BuildOptions(
            modality="ct", root=sample_sources["totalseg-ct"], workers=workers, progress=False
        )
        build_modality(Layout.at(root), recipe, options)
        roots[f"w{workers}"] = root
    return roots


def _row_differences(one: Path, two: Path) -> str:
    """Which items of the shards that differ between two pools differ, and in which columns."""
    lines, theirs = [], _digests(two)
    for name, digest in _digests(one).items():
        if theirs.get(name) == digest:
            continue
        rows_one, rows_two = pq.read_table(one / name).to_pylist(), pq.read_table(two / name).to_pylist()
        lines.append(f"{name}: {len(rows_one)} vs {len(rows_two)} rows")
        for a, b in zip(rows_one, rows_two, strict=False):
            if a != b:
                columns = [k for k in a if a[k] != b.get(k)]
                lines.append(f"  {a['id']} / {b['id']}: {columns}; {a['source']} / {b['source']}")
    return "\n".join(lines)


def test_workers_1_and_2_give_byte_identical_shards(ct_only_pools: dict[str, Path]) -> None:
    one, two = _digests(ct_only_pools["w1"]), _digests(ct_only_pools["w2"])
    assert one and one == two, _row_differences(ct_only_pools["w1"], ct_only_pools["w2"])


def test_rerun_reuses_shards_and_changes_nothing(
    ct_only_pools: dict[str, Path], test_recipe: Path, sample_sources
) -> None:
    root = ct_only_pools["w1"]
    before = _digests(root)
    options = BuildOptions(modality="ct", root=sample_sources["totalseg-ct"], progress=False)
    report = build_modality(Layout.at(root), load_recipe(test_recipe), options)
    assert report.counts["shards_written"] == 0 and report.counts["shards_reused"] == len(before)
    assert _digests(root) == before


def test_killed_build_resumes_to_exactly_the_uninterrupted_items(
    tmp_path: Path, ct_only_pools: dict[str, Path], test_recipe: Path, sample_sources
) -> None:
    root = tmp_path / "killed"
    args = [sys.executable, "-m", "medscout_data.cli", "build", "--modality", "ct", "--out", str(root)]
    args += ["--recipe", str(test_recipe), "--root", str(sample_sources["totalseg-ct"])]
    subprocess.run([*args[:3], "ingest", *args[4:]], check=True, capture_output=True)  # catalogue first
    args.append("--quiet")
    expected = _digests(ct_only_pools["w1"])
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list((root / "pool" / "ct").glob("*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_at_kill = len(list((root / "pool" / "ct").glob("*.parquet")))
    assert 0 < done_at_kill < len(expected), "the kill must land part-way"
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "reused" in result.stdout
    assert _digests(root) == expected, _row_differences(ct_only_pools["w1"], root)
    assert not list(root.rglob("*.tmp"))


def test_seed_that_contradicts_the_plan_is_refused(
    ct_only_pools: dict[str, Path], test_recipe: Path, sample_sources
) -> None:
    recipe = load_recipe(test_recipe).with_seed(12345)
    options = BuildOptions(modality="ct", root=sample_sources["totalseg-ct"], progress=False)
    with pytest.raises(PlanError, match="seed 11"):
        build_modality(Layout.at(ct_only_pools["w2"]), recipe, options)


def test_cli_build_prints_a_summary_and_limit_bounds_items(
    tmp_path: Path, test_recipe: Path, sample_sources
) -> None:
    args = ["build", "--modality", "mri", "--root", str(sample_sources["totalseg-mri"])]
    args += ["--out", str(tmp_path)]
    args += ["--recipe", str(test_recipe), "--limit", "10", "--task", "jigsaw", "--quiet"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "items/s" in result.output and "jigsaw 10" in result.output
    assert not list((tmp_path / "pool" / "mri").glob("scale-*"))


def test_limit_shrinking_removes_stale_shards(tmp_path: Path, test_recipe: Path, sample_sources) -> None:
    layout, recipe = Layout.at(tmp_path), load_recipe(test_recipe)
    options = dict(modality="ct", root=sample_sources["totalseg-ct"], tasks=("jigsaw",), progress=False)
    build_modality(layout, recipe, BuildOptions(**options, limit=20))
    assert len(list((tmp_path / "pool" / "ct").glob("jigsaw-*.parquet"))) == 3
    build_modality(layout, recipe, BuildOptions(**options, limit=6))
    files = list((tmp_path / "pool" / "ct").glob("jigsaw-*.parquet"))
    assert len(files) == 1 and pq.ParquetFile(files[0]).metadata.num_rows == 6


def test_shards_are_written_to_a_temporary_name_then_renamed(tmp_path: Path) -> None:
    from medscout_data.schema import ITEM_SCHEMA
    from medscout_data.shards import ShardWriter

    target = tmp_path / "scale-00000.parquet"
    writer = ShardWriter(target, ITEM_SCHEMA, 2)
    assert not target.exists() and (tmp_path / "scale-00000.parquet.tmp").exists()
    writer.close()
    assert target.exists() and not (tmp_path / "scale-00000.parquet.tmp").exists()


def test_build_copes_when_output_root_is_moved(built_pool: Path, tmp_path: Path) -> None:
    # Catalogue and cache paths are relative: a moved output root still reads.
    moved = tmp_path / "moved"
    shutil.copytree(built_pool / "catalogue", moved / "catalogue")
    shutil.copytree(built_pool / "cache", moved / "cache")
    frame = pl.read_parquet(Layout.at(moved).catalogue("ct"))
    assert not any(os.path.isabs(p) for p in frame["cache_file"]) and not any(
        os.path.isabs(p) for p in frame["path"]
    )
    cache = ImageCache(Layout.at(moved).cache_dir("ct"))
    assert cache.image(frame.row(0, named=True)).shape == (frame["height"][0], frame["width"][0])


def _table_without_pandas() -> tuple[int, bool]:
    """In a build worker: build an Arrow table from Python values, as make_chunk does."""
    import sys

    import pyarrow as pa

    table = pa.Table.from_pydict({"id": ["a", "b"]})
    return table.num_rows, "pandas" in sys.modules


def test_build_workers_make_tables_without_importing_pandas() -> None:
    from medscout_data.stages.build.making import init_worker
    from medscout_data.workers import process_pool

    with process_pool(1, initializer=init_worker) as pool:
        assert pool.submit(_table_without_pandas).result() == (2, False)
