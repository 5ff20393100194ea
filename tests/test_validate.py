"""validate (and push-bench through it) on a damaged split: every bad manifest is one clear error in
every stage that reads it; row counts, seeds, subject lists, answers, image counts, crop sizes,
duplicate items and the pool behind the split are each caught when changed, even with the
manifest re-hashed to match."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from faultkit import copy_split, edit_column, reseal, shard

from medscout_data.cli import cli
from medscout_data.imaging import encode_png
from medscout_data.layout import Layout
from medscout_data.recipe import load_recipe
from medscout_data.stages.build import BuildOptions, build_modality
from medscout_data.stages.split import SplitOptions, split_pool
from medscout_data.stages.validate import validate_report


@pytest.fixture()
def split_copy(split_shards: Path, tmp_path: Path) -> Path:
    return copy_split(split_shards, tmp_path / "s")


def _problems(root: Path, deep: bool = False) -> list[str]:
    return validate_report(Layout.at(root), deep=deep, progress=False).problems


def _invalid(root: Path, expected: str, deep: bool = False) -> None:
    problems = _problems(root, deep)
    assert any(expected in p for p in problems), problems
    args = ["validate", "--shards", str(root), "--quiet", *(["--deep"] if deep else [])]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and expected in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def _edit_manifest(root: Path, edit) -> None:
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


# ------------------------------------------------------------------ bad manifests, everywhere


def _deep_nesting() -> bytes:
    return b"[" * 100_000 + b"]" * 100_000


BAD_MANIFESTS = {
    "invalid-json": (b'{"seed": 11,', "not valid JSON"),
    "not-utf8": (b'{"seed": "\xff\xfe"}', "not UTF-8"),
    "a-list": (b"[1, 2, 3]", "must be a JSON object, got list"),
    "empty": (b"", "not valid JSON"),
    "deeply-nested": (_deep_nesting(), "nested too deeply"),
}

BAD_FIELDS = {
    "null-shard-entry": (
        lambda m: m["shards"].update({next(iter(m["shards"])): None}),
        "entry must be an object",
    ),
    "seed-as-text": (lambda m: m.update(seed="11"), "`seed` must be a int, got str"),
    "null-recipe": (lambda m: m.update(recipe=None), "`recipe` must be a dict, got null"),
    "count-as-text": (lambda m: m["cells"]["ct/scale"].update(bench="6"), "`bench` must be a int, got str"),
    "count-as-bool": (lambda m: m["cells"]["ct/scale"].update(pool=True), "`pool` must be a int, got bool"),
    "rows-as-float": (
        lambda m: next(iter(m["shards"].values())).update(rows=1.5),
        "`rows` must be an integer, got float",
    ),
    "shard-outside": (lambda m: m["shards"].update({"../../etc/passwd": {"sha256": "0"}}), "must be a path"),
    "subjects-a-list": (lambda m: m.update(subjects=[]), "`subjects` must be a dict, got list"),
    "balance-counts-text": (
        lambda m: m["cells"]["ct/jigsaw"].update(bench_balance={"1 0 2 3": "one"}),
        "`bench_balance` must map options to integer counts",
    ),
    "null-subject-hash": (
        lambda m: m["subjects"]["ct"].update(bench_sha256=None),
        "`bench_sha256` must be a str",
    ),
}


def _stages(root: Path, tmp_path: Path) -> dict[str, list[str]]:
    return {
        "validate": ["validate", "--shards", str(root), "--quiet"],
        "push-bench": [
            "push-bench",
            "--repo-id",
            "me/bench",
            "--shards",
            str(root),
            "--dry-run",
            "--stage-dir",
            str(tmp_path / "stage"),
            "--quiet",
        ],
    }


def _refused_everywhere(root: Path, tmp_path: Path, expected: str) -> None:
    for name, args in _stages(root, tmp_path).items():
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1, (name, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), (name, result.exception)
        assert "manifest.json" in result.output and expected in result.output, (name, result.output)
    assert not (tmp_path / "stage").exists()


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_unreadable_manifest_is_one_clear_error_in_every_stage(
    split_copy: Path, tmp_path: Path, case: str
) -> None:
    data, expected = BAD_MANIFESTS[case]
    (split_copy / "manifest.json").write_bytes(data)
    _refused_everywhere(split_copy, tmp_path, expected)


@pytest.mark.parametrize("case", sorted(BAD_FIELDS))
def test_mistyped_manifest_entries_are_one_clear_error_in_every_stage(
    split_copy: Path, tmp_path: Path, case: str
) -> None:
    edit, expected = BAD_FIELDS[case]
    _edit_manifest(split_copy, edit)
    _refused_everywhere(split_copy, tmp_path, expected)


def test_manifest_that_is_a_folder(split_copy: Path, tmp_path: Path) -> None:
    (split_copy / "manifest.json").unlink()
    (split_copy / "manifest.json").mkdir()
    _refused_everywhere(split_copy, tmp_path, "is a folder")


def test_split_rewrites_a_damaged_manifest(split_copy: Path) -> None:
    """The side records still say which files split wrote, so a rerun repairs the split."""
    (split_copy / "manifest.json").write_bytes(b"\x00garbage")
    result = CliRunner().invoke(cli, ["split", "--shards", str(split_copy), "--quiet"])
    assert result.exit_code == 0, result.output
    assert _problems(split_copy) == []


# ------------------------------------------------------------------ integrity


def test_a_changed_per_shard_row_count(split_copy: Path) -> None:
    name = "bench/mri/anomaly/test-00000-of-00001.parquet"
    _edit_manifest(split_copy, lambda m: m["shards"][name].update(rows=m["shards"][name]["rows"] + 1))
    _invalid(split_copy, "6 rows, the manifest says 7")


def test_a_changed_seed(split_copy: Path) -> None:
    _edit_manifest(split_copy, lambda m: m.update(seed=12))
    _invalid(split_copy, "seed 12, but the ct pool's subject plan has seed 11")


@pytest.mark.parametrize("key", ["bench_sha256", "train_sha256", "plan_sha256", "bench"])
def test_a_changed_subject_list(split_copy: Path, key: str) -> None:
    value = 99 if key == "bench" else "0" * 64
    _edit_manifest(split_copy, lambda m: m["subjects"]["xray"].update({key: value}))
    _invalid(split_copy, f"the xray subject {key} differ from the subject plan")


def test_a_missing_subject_plan(split_copy: Path) -> None:
    (split_copy / "plan" / "mri.json").unlink()
    _invalid(split_copy, "the mri subject plan cannot be read")


@pytest.mark.parametrize("deep", [False, True])
def test_an_answer_changed_with_the_manifest_rehashed(split_copy: Path, deep: bool) -> None:
    path = shard(split_copy, "bench", "ct", "jigsaw")
    edit_column(path, "answer", lambda answers: ["3 2 1 0" if a != "3 2 1 0" else "2 3 0 1" for a in answers])
    reseal(split_copy)
    _invalid(split_copy, "does not follow from its target", deep=deep)


def test_a_tier_answer_changed(split_copy: Path) -> None:
    path = shard(split_copy, "bench", "mri", "scale")

    def flip(answers: list[str]) -> list[str]:
        row = next(i for i, a in enumerate(answers) if a.startswith("Label"))  # a tier item
        answers[row] = (
            answers[row].replace("Label 1", "X").replace("Label 2", "Label 1").replace("X", "Label 2")
        )
        return answers

    edit_column(path, "answer", flip)
    reseal(split_copy)
    _invalid(split_copy, "does not follow from its target")


@pytest.mark.parametrize(
    ("task", "edit", "expected"),
    [
        ("jigsaw", lambda t: {**t, "permutation": [0, 1, 2, 3]}, "identity"),
        ("jigsaw", lambda t: {**t, "permutation": [0, 0, 2, 3]}, "is not a permutation"),
        ("anomaly", lambda t: {**t, "cell": 0, "row": 0, "col": 0}, "is not one of the recipe's cells"),
        ("anomaly", lambda t: {**t, "row": 3}, "do not locate cell"),
        ("scale", lambda t: {**t, "levels": [3, 1, 2]}, "tiers run from 1 to 2"),
        ("scale", lambda t: {**t, "boxes_1000": [[0, 0, 1000, 1000]] * 3}, "is not box"),
        ("scale", lambda t: {**t, "levels": [2 if v == 1 else 1 for v in t["levels"]]}, "a Label"),
        ("scale", lambda t: {"levels": t["levels"]}, "lacks or mistypes a field"),
    ],
)
def test_a_target_that_describes_no_possible_item(split_copy: Path, task: str, edit, expected: str) -> None:
    path = shard(split_copy, "bench", "ct", task)
    edit_column(path, "target", lambda targets: [json.dumps(edit(json.loads(targets[0]))), *targets[1:]])
    reseal(split_copy)
    _invalid(split_copy, expected)


def test_an_item_with_an_image_missing(split_copy: Path) -> None:
    path = shard(split_copy, "bench", "xray", "scale")
    edit_column(path, "images", lambda images: [images[0][:3], *images[1:]])
    reseal(split_copy)
    _invalid(split_copy, "shows 3 image(s), a scale item shows 4")


def test_deep_catches_crops_of_different_sizes(split_copy: Path) -> None:
    path = shard(split_copy, "bench", "ct", "scale")
    other = {"bytes": encode_png(np.full((20, 24), 128, np.uint8)), "path": None}
    edit_column(path, "images", lambda images: [[*images[0][:3], other], *images[1:]])
    reseal(split_copy)
    assert not any("different sizes" in p for p in _problems(split_copy))  # a sample is decoded
    _invalid(split_copy, "crops of different sizes", deep=True)


def test_deep_validate_with_two_workers_finds_what_one_finds(split_copy: Path) -> None:
    path = shard(split_copy, "bench", "ct", "jigsaw")
    broken = {"bytes": encode_png(np.full((32, 32), 9, np.uint8))[:16] + b"damage" * 8, "path": None}
    edit_column(path, "images", lambda images: [[broken], *images[1:]])
    reseal(split_copy)
    one = validate_report(Layout.at(split_copy), deep=True, progress=False)
    two = validate_report(Layout.at(split_copy), deep=True, progress=False, workers=2)
    assert any("image 0 does not decode" in p for p in one.problems), one.problems
    assert (two.problems, two.warnings, two.counts) == (one.problems, one.warnings, one.counts)
    result = CliRunner().invoke(
        cli, ["validate", "--shards", str(split_copy), "--deep", "--workers", "2", "--quiet"]
    )
    assert result.exit_code == 1 and "does not decode" in result.output, result.output


# ------------------------------------------------------------------ duplicates


def test_duplicate_items_on_the_bench_are_an_error(split_copy: Path) -> None:
    path = shard(split_copy, "bench", "ct", "jigsaw")
    edit_column(path, "images", lambda images: [images[0], images[0], *images[2:]])
    reseal(split_copy)
    _invalid(split_copy, "bench ct/jigsaw: 1 group(s) of items with byte-identical images")


def test_duplicate_across_sides_is_an_error(split_copy: Path) -> None:
    bench_images = pq.read_table(shard(split_copy, "bench", "mri", "anomaly"))["images"].to_pylist()
    edit_column(shard(split_copy, "train", "mri", "anomaly"), "images", lambda i: [bench_images[0], *i[1:]])
    reseal(split_copy)
    _invalid(split_copy, "bench/train mri/anomaly: 1 group(s)")


def test_duplicates_inside_train_are_a_warning(split_copy: Path) -> None:
    path = shard(split_copy, "train", "ct", "scale")
    edit_column(path, "images", lambda images: [images[0], images[0], *images[2:]])
    reseal(split_copy)
    report = validate_report(Layout.at(split_copy), progress=False)
    assert report.valid, report.problems
    assert any(w.startswith("train ct/scale: 1 group(s)") for w in report.warnings), report.warnings
    result = CliRunner().invoke(cli, ["validate", "--shards", str(split_copy), "--quiet"])
    assert result.exit_code == 0 and "WARNING train ct/scale" in result.output


# ------------------------------------------------------------------ the pool behind the split


def test_a_split_whose_pool_was_removed_stays_valid(split_copy: Path) -> None:
    shutil.rmtree(split_copy / "pool")
    assert _problems(split_copy) == []


def test_a_split_from_an_older_manifest_without_pools_is_invalid(split_copy: Path) -> None:
    _edit_manifest(split_copy, lambda m: m.pop("pools"))
    _invalid(split_copy, "does not record a complete ct pool")


def test_a_pool_rebuilt_after_the_split_is_flagged(
    built_pool: Path, tmp_path: Path, test_recipe: Path
) -> None:
    root = copy_split(built_pool, tmp_path / "s")
    split_pool(Layout.at(root), SplitOptions(progress=False))
    assert _problems(root) == []
    build_modality(
        Layout.at(root), load_recipe(test_recipe), BuildOptions("ct", tasks=("jigsaw",), progress=False)
    )
    _invalid(root, "holds another pool than the one this split was made from")


def test_a_pool_made_incomplete_after_the_split_is_flagged(split_copy: Path) -> None:
    record_path = split_copy / "pool" / "ct" / "pool.json"
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "complete": False}))
    _invalid(split_copy, "the pool behind this split is not whole")
