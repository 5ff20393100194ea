"""Split under faults: a pool killed or damaged part-way, short bench cells, user files in pool/,
bench/ and train/, a full disk, a read-only split, two splits at once. Each is refused with one
clear message naming the file and the fix, never a traceback, and nothing of the user's is lost."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from faultkit import (
    CLI,
    child_env,
    cli,
    command_args,
    copy_pool,
    copy_split,
    fail_on_call,
    kill_when,
    no_traceback,
    on_small_disk,
    read_only,
    resume,
    start_frozen_holder,
)

from medscout_data.layout import Layout
from medscout_data.recipe import load_recipe
from medscout_data.shards import ShardWriter
from medscout_data.stages import split as split_module
from medscout_data.stages.build import BuildOptions, build_modality
from medscout_data.stages.plan import BENCH
from medscout_data.stages.pool import listed_shards
from medscout_data.stages.split import SplitError, SplitOptions, run_split, split_pool
from medscout_data.stages.validate import validate_report, validate_split


def _split(layout: Layout, **options) -> dict:
    return split_pool(layout, SplitOptions(progress=False, **options))


def _state(layout: Layout) -> dict[str, bytes]:
    """Every file of the split (manifest, bench/, train/) by path: to show it is untouched."""
    files = [layout.manifest(), *layout.split_dir("bench").rglob("*"), *layout.split_dir("train").rglob("*")]
    return {str(p.relative_to(layout.root)): p.read_bytes() for p in files if p.is_file()}


# ------------------------------------------------------------------ a partial pool


def test_killed_build_is_refused_until_its_rerun_completes(
    sample_sources: dict[str, Path], test_recipe: Path, tmp_path: Path
) -> None:
    """A real `medscout-data build` killed (SIGKILL) after a few shards: split, validate and
    push-bench refuse, naming the missing shards and the command; that command completes it."""
    recipe = tmp_path / "kill.toml"
    big = test_recipe.read_text().replace("items_per_cell = 24", "items_per_cell = 400")
    recipe.write_text(big.replace("bench_per_cell = 6", "bench_per_cell = 100"), encoding="utf-8")
    out = tmp_path / "out"
    args = [
        "build",
        "--modality",
        "ct",
        "--root",
        str(sample_sources["totalseg-ct"]),
        "--recipe",
        str(recipe),
    ]
    args += ["--out", str(out), "--task", "jigsaw", "--quiet"]
    build = subprocess.Popen([*CLI, *args], env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pool = out / "pool" / "ct"
    kill_when(build, lambda: len(list(pool.glob("jigsaw-*.parquet"))) >= 3)
    record = json.loads((pool / "pool.json").read_text())
    assert record["complete"] is False and len(record["shards"]) == 50
    made = len(list(pool.glob("jigsaw-*.parquet")))
    assert made < 50

    refused = cli("split", "--shards", str(out), "--quiet")
    assert refused.returncode == 1, refused.stdout
    no_traceback(refused.stdout)
    assert "the build has not finished" in refused.stdout and "planned but missing" in refused.stdout
    assert record["rerun"] in refused.stdout and f"and {50 - made + 1 - 8} more" in refused.stdout
    assert not (out / "bench").exists() and not (out / "manifest.json").exists()
    for stage in (["validate"], ["push-bench", "--repo-id", "me/x", "--dry-run"]):
        result = cli(*stage, "--shards", str(out), "--quiet")
        assert result.returncode == 1 and "no manifest" in result.stdout, result.stdout
        no_traceback(result.stdout)

    rerun = cli(*command_args(record["rerun"]))
    assert rerun.returncode == 0, rerun.stdout
    assert json.loads((pool / "pool.json").read_text())["complete"] is True
    done = cli("split", "--shards", str(out), "--quiet")
    assert done.returncode == 0 and "bench 100" in done.stdout, done.stdout
    problems = validate_report(Layout.at(out), progress=False).problems
    # Items repeating another's images are the build's to prevent (issue 17); validate reports them
    # (tested in test_validate.py), and this deliberately over-asked 400-item cell has some.
    assert [p for p in problems if "byte-identical images" not in p] == []


def test_a_shard_removed_after_the_build_is_refused_everywhere(built_pool: Path, tmp_path: Path) -> None:
    layout = copy_pool(built_pool, tmp_path / "s")
    _split(layout)
    before = _state(layout)
    removed = layout.pool_dir("mri") / "scale-00001.parquet"
    removed.unlink()
    with pytest.raises(
        SplitError, match=r"(?s)not complete.*scale-00001.parquet: planned but missing.*build"
    ):
        _split(layout)
    assert _state(layout) == before  # the previous split is untouched
    problems = validate_split(layout, progress=False)
    assert any("not whole" in p and "scale-00001.parquet" in p for p in problems), problems
    result = cli("push-bench", "--repo-id", "me/x", "--shards", str(layout.root), "--dry-run", "--quiet")
    assert result.returncode == 1 and "planned but missing" in result.stdout
    no_traceback(result.stdout)


@pytest.mark.parametrize("edit", ["drop-a-row", "another-plans-shard"])
def test_a_shard_edited_after_the_build_is_refused(built_pool: Path, tmp_path: Path, edit: str) -> None:
    layout = copy_pool(built_pool, tmp_path / "s")
    path = layout.pool_dir("ct") / "anomaly-00002.parquet"
    if edit == "drop-a-row":
        table = pq.read_table(path)
        pq.write_table(table.slice(1), path)  # keeps the schema metadata, digest included
        expected = r"anomaly-00002.parquet: 7 rows, pool.json says 8"
    else:
        shutil.copy(layout.pool_dir("ct") / "anomaly-00000.parquet", path)
        expected = r"anomaly-00002.parquet: holds another plan's items"
    with pytest.raises(SplitError, match=expected):
        _split(layout)


def test_user_files_in_pool_are_neither_read_nor_deleted(
    built_pool: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    layout = copy_pool(built_pool, tmp_path / "s", modalities=("ct",))
    mine = layout.pool_dir("ct") / "scale-99999.parquet"
    shutil.copy(layout.pool_dir("ct") / "scale-00000.parquet", mine)  # looks like a shard, is not listed
    notes = layout.pool_dir("ct") / "notes.txt"
    notes.write_text("mine")
    manifest = _split(layout)
    assert manifest["cells"]["ct/scale"]["pool"] == 24  # the extra 8 rows were not read
    assert mine.exists() and notes.read_text() == "mine"
    assert "scale-99999.parquet" in caplog.text and "not in pool.json" in caplog.text
    assert validate_split(layout, progress=False) == []


def test_a_pool_shard_damaged_inside_is_named(built_pool: Path, tmp_path: Path) -> None:
    """The footer (digest, row count) survives, the data pages do not."""
    layout = copy_pool(built_pool, tmp_path / "s", modalities=("ct",))
    path = layout.pool_dir("ct") / "jigsaw-00001.parquet"
    data = bytearray(path.read_bytes())
    data[4:2000] = b"\0" * 1996
    path.write_bytes(bytes(data))
    with pytest.raises(SplitError, match=r"jigsaw-00001.parquet: this pool shard cannot be read .*delete it"):
        _split(layout)


def test_an_unreadable_subject_plan_is_named(built_pool: Path, tmp_path: Path) -> None:
    layout = copy_pool(built_pool, tmp_path / "s", modalities=("ct",))
    layout.plan("ct").write_text("{not json", encoding="utf-8")
    result = cli("split", "--shards", str(layout.root), "--quiet")
    assert result.returncode == 1 and "ct.json: the ct subject plan cannot be read" in result.stdout
    no_traceback(result.stdout)


# ------------------------------------------------------------------ short cells


@pytest.fixture(scope="module")
def short_pool(sample_sources: dict[str, Path], test_recipe: Path, tmp_path_factory) -> Path:
    """A real ct anomaly pool the sources cannot fill: no reference differs by 120 grey levels."""
    base = load_recipe(test_recipe)
    recipe = dataclasses.replace(base, anomaly=dataclasses.replace(base.anomaly, min_cell_difference=120.0))
    root = tmp_path_factory.mktemp("short")
    source = sample_sources["totalseg-ct"]
    options = BuildOptions(modality="ct", root=source, tasks=("anomaly",), progress=False)
    build_modality(Layout.at(root), recipe, options)
    return root


def _bench_side_rows(layout: Layout) -> int:
    plan = json.loads(layout.plan("ct").read_text())
    shards = listed_shards(layout, "ct")
    subjects = [s for p in shards for s in pq.read_table(p, columns=["subject_id"])["subject_id"].to_pylist()]
    return sum(s in plan["bench"] for s in subjects)


def test_short_bench_names_the_shortfall_the_build_recorded(short_pool: Path, tmp_path: Path) -> None:
    layout = Layout.at(copy_split(short_pool, tmp_path / "s"))
    have = _bench_side_rows(layout)
    shortfall = json.loads(layout.pool_record("ct").read_text())["shortfall"]["anomaly"]["bench"]
    assert have < 6 and shortfall["made"] == have and shortfall["planned"] == 6
    result = cli("split", "--shards", str(layout.root), "--quiet")
    assert result.returncode == 1, result.stdout
    no_traceback(result.stdout)
    text = " ".join(result.stdout.split())
    assert f"the build made {have} of the 6 bench-side items it planned" in text
    reason, count = next(iter(shortfall["reasons"].items()))
    assert f"{reason}: {count}" in text and " ".join(shortfall["advice"].split()) in text
    assert "min_cell_difference" in text and "--limit" not in text
    assert not (layout.root / "bench").exists()


def test_short_bench_without_a_recorded_cause_never_blames_limit(short_pool: Path, tmp_path: Path) -> None:
    layout = Layout.at(copy_split(short_pool, tmp_path / "s"))
    record = json.loads(layout.pool_record("ct").read_text())
    record.pop("shortfall")
    layout.pool_record("ct").write_text(json.dumps(record))
    with pytest.raises(SplitError) as caught:
        _split(layout)
    assert "--limit" not in str(caught.value) and "errors.parquet" in str(caught.value)


def test_short_bench_after_limit_says_so(
    sample_sources: dict[str, Path], test_recipe: Path, tmp_path: Path
) -> None:
    layout = Layout.at(tmp_path / "s")
    options = BuildOptions(
        modality="ct",
        root=sample_sources["totalseg-ct"],
        tasks=("jigsaw",),
        limit=10,
        progress=False,
        command="medscout-data build --modality ct --limit 10",
    )
    build_modality(layout, load_recipe(test_recipe), options)
    with pytest.raises(
        SplitError, match=r"built with --limit: 10 of the recipe's 24 items.*--bench-per-cell 2"
    ):
        _split(layout)


def test_bench_per_cell_beyond_the_recipe_says_what_sizes_the_bench(built_pool: Path, tmp_path: Path) -> None:
    layout = copy_pool(built_pool, tmp_path / "s", modalities=("ct",))
    with pytest.raises(SplitError, match=r"needs 7 .*recipe's bench_per_cell 6") as caught:
        _split(layout, bench_per_cell=7)
    assert "--limit" not in str(caught.value)


# ------------------------------------------------------------------ the user's files in bench/ and train/


def test_user_files_under_bench_and_train_are_refused_then_removed_with_force(
    built_pool: Path, tmp_path: Path
) -> None:
    layout = copy_pool(built_pool, tmp_path / "s", modalities=("ct",))
    _split(layout)
    notes = layout.root / "bench" / "notes.txt"
    notes.write_text("my notes")
    mine = layout.root / "train" / "ct" / "scale" / "my-edit.parquet"
    shutil.copy(next((layout.root / "train" / "ct" / "scale").glob("*.parquet")), mine)
    before = _state(layout)
    result = cli("split", "--shards", str(layout.root), "--quiet")
    assert result.returncode == 1 and "bench/notes.txt" in result.stdout and "--force" in result.stdout
    assert "train/ct/scale/my-edit.parquet" in result.stdout
    no_traceback(result.stdout)
    assert _state(layout) == before
    forced = cli("split", "--shards", str(layout.root), "--force", "--quiet")
    assert forced.returncode == 0, forced.stdout
    assert "removed (--force): bench/notes.txt" in forced.stdout
    assert "removed (--force): train/ct/scale/my-edit.parquet" in forced.stdout
    assert not notes.exists() and not mine.exists()
    assert validate_split(layout, progress=False) == []


def test_a_rerun_replaces_only_what_split_wrote(built_pool: Path, tmp_path: Path) -> None:
    layout = copy_pool(built_pool, tmp_path / "s", modalities=("ct",))
    first = _split(layout)
    outside = layout.root / "notes.txt"  # beside bench/, not inside: not split's business
    outside.write_text("keep")
    user_tmp = layout.root / ".split-tmp"  # the old fixed work name is no longer touched
    user_tmp.mkdir()
    (user_tmp / "x").write_text("keep")
    outcome = run_split(layout, SplitOptions(progress=False))
    assert outcome.manifest["shards"] == first["shards"]
    assert outcome.replaced == len(first["shards"]) + 2  # the shards and the two side records
    assert outside.read_text() == "keep" and (user_tmp / "x").read_text() == "keep"
    assert not [p for p in layout.root.glob(".split-work-*")]


def test_an_unreadable_previous_manifest_leaves_nothing_presumed_ours(
    built_pool: Path, tmp_path: Path
) -> None:
    layout = copy_pool(built_pool, tmp_path / "s", modalities=("ct",))
    _split(layout)
    for side in ("bench", "train"):
        (layout.split_dir(side) / split_module.SIDE_RECORD).unlink()
    layout.manifest().write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(SplitError, match="that split did not write"):
        _split(layout)
    _split(layout, force=True)
    assert validate_split(layout, progress=False) == []


# ------------------------------------------------------------------ full disk, read-only, two at once


def test_disk_full_mid_split_keeps_the_previous_split(
    built_pool: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC raised by pyarrow's writer after a few shards (as a full disk does)."""
    layout = copy_pool(built_pool, tmp_path / "s")
    _split(layout)
    before = _state(layout)
    full = OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")
    writer = ShardWriter
    monkeypatch.setattr(writer, "write_table", fail_on_call(writer.write_table, 6, full))
    with pytest.raises(SplitError) as caught:
        _split(layout)
    message = str(caught.value)
    assert "\n" not in message and "no space left on the device" in message
    assert "the previous split is left as it was" in message
    assert re.search(r"about the pool's size, [\d.]+ [KMG]iB", message)
    assert str(layout.root / "bench") in message or str(layout.root / "train") in message
    assert _state(layout) == before
    assert not list(layout.root.glob(".split-work-*"))
    assert validate_split(layout, progress=False) == []


def test_a_failed_swap_puts_the_previous_split_back(
    built_pool: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = copy_pool(built_pool, tmp_path / "s", modalities=("ct",))
    _split(layout)
    before = _state(layout)
    broken = OSError(errno.EIO, "Input/output error", str(layout.root / "bench"))
    # calls 1-3 move the manifest, bench and train out; the 4th would move the new bench in
    monkeypatch.setattr(os, "rename", fail_on_call(os.rename, 4, broken, last=4))
    with pytest.raises(SplitError, match="the previous split is left as it was"):
        _split(layout)
    monkeypatch.undo()
    assert _state(layout) == before


def test_real_full_disk_keeps_the_previous_split(built_pool: Path, tmp_path: Path) -> None:
    """A tmpfs just large enough for the pool and one split, so a second split runs out of space."""
    source = copy_pool(built_pool, tmp_path / "src")
    _split(source)
    pool_kib = sum(p.stat().st_size for p in (source.root / "pool").rglob("*") if p.is_file()) // 1024
    disk = tmp_path / "disk"
    script = f"""
cd {source.root} && cp -r pool plan bench train manifest.json {disk}/ && cd {disk}
cp -r bench keep-bench
head -c $(( ($(df --output=avail -k . | tail -1) - {pool_kib // 3}) * 1024 )) /dev/zero > filler || true
set +e
$CLI split --shards {disk} --quiet; echo "split-rc=$?"
$CLI validate --shards {disk} --quiet; echo "validate-rc=$?"
diff -r {disk}/bench {disk}/keep-bench && echo "bench-unchanged"
rm {disk}/filler
$CLI split --shards {disk} --quiet; echo "resplit-rc=$?"
ls -a {disk}
"""
    result = on_small_disk(script, disk, size_kib=pool_kib * 4 + 4096)
    out = result.stdout
    assert "split-rc=1" in out and "no space left on the device" in out, out
    assert "the previous split is left as it was" in out
    no_traceback(out)
    assert "validate-rc=0" in out and "bench-unchanged" in out
    assert "resplit-rc=0" in out and ".split-work-" not in out


def test_read_only_split_validates_and_split_says_it_cannot_write(built_pool: Path, tmp_path: Path) -> None:
    layout = copy_pool(built_pool, tmp_path / "s", modalities=("ct",))
    _split(layout)
    with read_only(layout.root) as prefix:
        checked = cli("validate", "--shards", str(layout.root), "--quiet", prefix=prefix)
        again = cli("split", "--shards", str(layout.root), "--quiet", prefix=prefix)
    assert checked.returncode == 0 and "split is valid" in checked.stdout, checked.stdout
    assert again.returncode == 1 and "cannot write here" in again.stdout, again.stdout
    assert ("Read-only file system" in again.stdout) or ("Permission denied" in again.stdout)
    no_traceback(again.stdout)
    assert validate_split(layout, progress=False) == []


def test_a_second_split_on_the_same_folder_is_refused(built_pool: Path, tmp_path: Path) -> None:
    """Two real processes: the first frozen while it holds the lock, the second refused."""
    layout = copy_pool(built_pool, tmp_path / "s")
    first = start_frozen_holder(
        ["split", "--shards", str(layout.root), "--quiet"], layout.root / ".lock-split"
    )
    try:
        second = cli("split", "--shards", str(layout.root), "--quiet")
    finally:
        code, output = resume(first)
    assert second.returncode == 1 and "is already writing here" in second.stdout, second.stdout
    assert "medscout-data split --shards" in second.stdout and f"pid {first.pid}" in second.stdout
    no_traceback(second.stdout)
    assert code == 0, output
    assert validate_split(layout, progress=False) == []


def test_bench_side_record_lists_exactly_the_shards(built_pool: Path, tmp_path: Path) -> None:
    layout = copy_pool(built_pool, tmp_path / "s", modalities=("xray",))
    manifest = _split(layout)
    record = json.loads((layout.split_dir(BENCH) / split_module.SIDE_RECORD).read_text())
    assert record["files"] == sorted(n for n in manifest["shards"] if n.startswith("bench/"))
    report = validate_report(layout, progress=False)
    assert report.valid and report.counts["items"] == 72
