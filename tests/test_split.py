"""Split and validate: subject-disjoint, exactly balanced bench, reproducible, and every
property `validate` promises shown to fail when corrupted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from faultkit import copy_pool, reseal, shard

from medscout_data.cli import cli
from medscout_data.layout import Layout
from medscout_data.recipe import load_recipe
from medscout_data.stages.build import BuildOptions, build_modality
from medscout_data.stages.plan import load_plan
from medscout_data.stages.split import SplitError, SplitOptions, split_pool
from medscout_data.stages.validate import validate_split


@pytest.fixture()
def split_root(built_pool: Path, tmp_path: Path) -> Layout:
    layout = copy_pool(built_pool, tmp_path / "s")
    split_pool(layout, SplitOptions(progress=False))
    return layout


def test_bench_is_exact_balanced_disjoint_and_valid(split_root: Layout) -> None:
    manifest = json.loads(split_root.manifest().read_text())
    assert manifest["bench_per_cell"] == 6 and manifest["seed"] == 11
    assert len(manifest["cells"]) == 9
    for cell, counts in manifest["cells"].items():
        assert counts["bench"] == 6 and counts["train"] == 18 and counts["dropped"] == 0, cell
        values = list(counts["bench_balance"].values())
        if cell.endswith("scale"):
            assert counts["bench_balance"] == {"box": 3, "tier": 3}
        elif cell.endswith("anomaly"):
            assert sorted(values) == [1, 1, 2, 2]
        else:
            assert values == [1] * 6
    assert manifest["totals"] == {"pool": 216, "train": 162, "bench": 54, "dropped": 0}
    assert validate_split(split_root, deep=True, progress=False) == []
    names = sorted(manifest["shards"])
    assert "bench/ct/scale/test-00000-of-00001.parquet" in names
    assert "train/xray/anomaly/train-00002-of-00003.parquet" in names


def test_bench_loads_with_datasets(split_root: Layout) -> None:
    import datasets

    files = sorted(str(p) for p in (split_root.root / "bench").rglob("*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    assert len(ds) == 54
    assert ds[0]["images"][0].mode == "L"


def test_no_subject_or_reference_on_both_sides(split_root: Layout) -> None:
    for modality in ("ct", "mri", "xray"):
        plan = load_plan(split_root.plan(modality))
        for side in ("bench", "train"):
            table = pa.concat_tables(
                pq.read_table(p, columns=["subject_id", "reference_subject_id"])
                for p in (split_root.root / side / modality).rglob("*.parquet")
            )
            subjects = set(table["subject_id"].to_pylist()) | set(
                table["reference_subject_id"].to_pylist()
            ) - {""}
            assert all(plan.side(s) == side for s in subjects)


def test_same_seed_gives_byte_identical_split(built_pool: Path, split_root: Layout, tmp_path: Path) -> None:
    again = copy_pool(built_pool, tmp_path / "again")
    split_pool(again, SplitOptions(seed=11, progress=False))
    first = json.loads(split_root.manifest().read_text())["shards"]
    second = json.loads(again.manifest().read_text())["shards"]
    assert first == second


def test_another_seed_gives_another_split(test_recipe: Path, sample_sources, tmp_path: Path) -> None:
    benches = []
    for seed in (11, 12):
        layout = Layout.at(tmp_path / f"seed{seed}")
        recipe = load_recipe(test_recipe).with_seed(seed)
        options = BuildOptions(
            modality="ct", root=sample_sources["totalseg-ct"], tasks=("jigsaw",), progress=False
        )
        build_modality(layout, recipe, options)
        split_pool(layout, SplitOptions(progress=False))
        table = pq.read_table(next((layout.root / "bench").rglob("*.parquet")), columns=["subject_id", "id"])
        benches.append((sorted(set(table["subject_id"].to_pylist())), table["id"].to_pylist()))
    assert benches[0] != benches[1]


def test_seed_contradicting_the_plan_is_refused(built_pool: Path, tmp_path: Path) -> None:
    layout = copy_pool(built_pool, tmp_path / "p")
    with pytest.raises(SplitError, match=r"--seed 11"):
        split_pool(layout, SplitOptions(seed=99, progress=False))
    result = CliRunner().invoke(cli, ["split", "--shards", str(layout.root), "--seed", "99"])
    assert result.exit_code != 0 and "seed 11" in result.output


def test_ct_only_pool_gives_ct_cells_only(built_pool: Path, tmp_path: Path) -> None:
    layout = copy_pool(built_pool, tmp_path / "ct", modalities=("ct",))
    manifest = split_pool(layout, SplitOptions(progress=False))
    assert sorted(manifest["cells"]) == ["ct/anomaly", "ct/jigsaw", "ct/scale"]
    assert validate_split(layout, progress=False) == []


def test_dropping_one_percent_or_more_is_refused(built_pool: Path, tmp_path: Path) -> None:
    layout = copy_pool(built_pool, tmp_path / "d")
    with pytest.raises(SplitError, match="dropped"):
        split_pool(layout, SplitOptions(bench_per_cell=5, progress=False))
    with pytest.raises(SplitError, match="needs 7"):
        split_pool(layout, SplitOptions(bench_per_cell=7, progress=False))


def test_cli_split_and_validate(built_pool: Path, tmp_path: Path) -> None:
    layout = copy_pool(built_pool, tmp_path / "cli")
    result = CliRunner().invoke(cli, ["split", "--shards", str(layout.root), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "bench 54" in result.output
    result = CliRunner().invoke(cli, ["validate", "--shards", str(layout.root), "--quiet"])
    assert result.exit_code == 0 and "valid" in result.output


# ------------------------------------------------------------------ corruption


def _rewrite(path: Path, edit) -> None:
    table = pq.read_table(path)
    table = edit(table)
    pq.write_table(table, path)


def _invalid(layout: Layout, expected: str) -> None:
    problems = validate_split(layout, progress=False)
    assert any(expected in p for p in problems), problems
    result = CliRunner().invoke(cli, ["validate", "--shards", str(layout.root), "--quiet"])
    assert result.exit_code == 1 and expected in result.output


def test_validate_catches_a_changed_shard(split_root: Layout) -> None:
    path = shard(split_root.root, "bench", "ct", "scale")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    _invalid(split_root, "sha256 differs")


def test_validate_catches_unlisted_and_missing_shards(split_root: Layout) -> None:
    path = shard(split_root.root, "bench", "mri", "jigsaw")
    shutil.copy(path, path.with_name("test-extra.parquet"))
    _invalid(split_root, "not in the manifest")
    path.with_name("test-extra.parquet").unlink()
    path.unlink()
    _invalid(split_root, "missing")


def test_validate_catches_a_subject_on_both_sides(split_root: Layout) -> None:
    train_row = pq.read_table(shard(split_root.root, "train", "ct", "jigsaw")).slice(0, 1)
    _rewrite(
        shard(split_root.root, "bench", "ct", "jigsaw"),
        lambda t: pa.concat_tables([t, train_row.cast(t.schema)]),
    )
    reseal(split_root.root)
    _invalid(split_root, "on both sides")
    _invalid(split_root, "expected 6")
    _invalid(split_root, "duplicate item id")


def test_validate_catches_a_reference_across_the_partition(split_root: Layout) -> None:
    train_subject = pq.read_table(shard(split_root.root, "train", "xray", "anomaly"))["subject_id"][0].as_py()

    def edit(table: pa.Table) -> pa.Table:
        refs = table["reference_subject_id"].to_pylist()
        refs[0] = train_subject
        return table.set_column(
            table.schema.get_field_index("reference_subject_id"), "reference_subject_id", pa.array(refs)
        )

    _rewrite(shard(split_root.root, "bench", "xray", "anomaly"), edit)
    reseal(split_root.root)
    _invalid(split_root, "uses pixels of train-side subject")


def test_validate_catches_an_unbalanced_cell(split_root: Layout) -> None:
    def edit(table: pa.Table) -> pa.Table:
        variants = ["tier"] * table.num_rows
        return table.set_column(table.schema.get_field_index("variant"), "variant", pa.array(variants))

    _rewrite(shard(split_root.root, "bench", "mri", "scale"), edit)
    reseal(split_root.root)
    _invalid(split_root, "unbalanced")


def test_validate_catches_lost_huggingface_metadata(split_root: Layout) -> None:
    _rewrite(shard(split_root.root, "bench", "ct", "anomaly"), lambda t: t.replace_schema_metadata({}))
    reseal(split_root.root)
    _invalid(split_root, "huggingface")


def test_validate_catches_images_that_are_not_png(split_root: Layout) -> None:
    def edit(table: pa.Table) -> pa.Table:
        images = table["images"].to_pylist()
        images[0][0]["bytes"] = b"\xff\xd8\xff\xe0 not a png"
        column = pa.array(images, table.schema.field("images").type)
        return table.set_column(table.schema.get_field_index("images"), "images", column)

    _rewrite(shard(split_root.root, "bench", "xray", "jigsaw"), edit)
    reseal(split_root.root)
    _invalid(split_root, "is not a PNG")


def test_validate_catches_counts_that_disagree_with_the_manifest(split_root: Layout) -> None:
    manifest = json.loads(split_root.manifest().read_text())
    manifest["cells"]["ct/scale"]["train"] += 1
    split_root.manifest().write_text(json.dumps(manifest))
    _invalid(split_root, "manifest says")


def test_validate_without_a_manifest(tmp_path: Path) -> None:
    _invalid(Layout.at(tmp_path), "no manifest")
