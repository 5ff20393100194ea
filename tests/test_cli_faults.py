"""One line, never a traceback: export (every format), baseline and preview into a read-only or a
full folder (a real read-only bind mount and a real small tmpfs, tests/faultkit.py), evaluate
onto a full disk, and recipes whose numbers would crash a stage. The one place that turns a
failure into one line is the CLI group (medscout_data/cli/__init__.py)."""

from __future__ import annotations

import errno
import re
import shlex
from pathlib import Path

import pytest
from chatserver import BenchResponder, ChatServer, bench_rows
from faultkit import cli, fail_on_call, no_traceback, on_small_disk, read_only

from medscout_data.integrations import vendor

RUNTIMES = {  # the modules whose scorer copy each export ships in OUT/_medscout/
    "export swift": "medscout_data.integrations.swift",
    "export lmms-eval": "medscout_data.integrations.lmms_eval",
    "export vlmeval": "medscout_data.integrations.vlmeval",
}
WRITERS = {
    "export swift": ["export", "--format", "swift", "--split", "bench"],
    "export jsonl": ["export", "--format", "jsonl", "--split", "train", "--modality", "ct"],
    "export lmms-eval": ["export", "--format", "lmms-eval"],
    "export vlmeval": ["export", "--format", "vlmeval", "--modality", "ct"],
    "preview": ["preview", "--per-cell", "1", "--modality", "ct"],
}


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Error:")]


def one_error_line(output: str) -> str:
    no_traceback(output)
    errors = error_lines(output)
    assert len(errors) == 1, output
    return errors[0]


@pytest.mark.parametrize("name", [*WRITERS, "baseline"])
def test_a_read_only_output_folder_is_one_line_and_left_as_it_was(
    split_shards: Path, tmp_path: Path, name: str
) -> None:
    parent = tmp_path / "locked"
    parent.mkdir()
    out = parent / ("p.jsonl" if name == "baseline" else "out")
    if name == "baseline":
        args = ["baseline", "--name", "random", "--bench", str(split_shards), "--out", str(out)]
    else:
        args = [*WRITERS[name], "--shards", str(split_shards), "--out", str(out), "--quiet"]
    with read_only(parent) as prefix:
        result = cli(*args, prefix=prefix)
    assert result.returncode != 0
    line = one_error_line(result.stdout)
    assert "Read-only file system" in line or "Permission denied" in line, line
    assert str(parent) in line
    assert list(parent.iterdir()) == []


@pytest.mark.parametrize("name", [*WRITERS, "baseline"])
def test_a_full_disk_is_one_line(split_shards: Path, tmp_path: Path, name: str) -> None:
    mount = tmp_path / "small"
    out = mount / ("p.jsonl" if name == "baseline" else "out")
    if name == "baseline":
        args = ["baseline", "--name", "random", "--bench", str(split_shards), "--out", str(out)]
    else:
        args = [*WRITERS[name], "--shards", str(split_shards), "--out", str(out), "--quiet"]
    # fill the disk first, leaving a few pages (none for the small baseline file): the run fails
    # part-way, wherever that falls
    fill = 1_000_000 if name == "baseline" else 100_000
    script = (
        f"head -c {fill} /dev/zero > {shlex.quote(str(mount))}/filler || true\n"
        f"set +e\n$CLI {shlex.join(args)}\necho EXIT=$?\n"
        f"find {shlex.quote(str(mount))} -path '*/_medscout/*' -name '*.py' | wc -l | sed 's/^/VENDORED=/'\n"
        f"find {shlex.quote(str(mount))} -name '._medscout-*' | sed 's/^/STAGING /'\n"
    )
    result = on_small_disk(script, mount, size_kib=128)
    assert "EXIT=0" not in result.stdout, result.stdout
    line = one_error_line(result.stdout)
    assert "No space left on device" in line, line
    assert "STAGING" not in result.stdout  # no half-made scorer copy left beside it
    whole = len(vendor.closure([RUNTIMES[name]])) if name in RUNTIMES else 0
    assert re.search(r"VENDORED=(\d+)", result.stdout)[1] in ("0", str(whole)), result.stdout  # type: ignore[index]


def _vendored(out: Path, roots: list[str]) -> list[Path]:
    from medscout_data.owned import OwnedFolder

    with OwnedFolder(out, "export test", False) as folder:
        return vendor.write_vendored(folder, roots)


def test_the_scorer_copy_is_whole_or_absent_when_a_write_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "export"
    roots = ["medscout_data.integrations.swift"]
    complete = sorted(p.relative_to(out) for p in _vendored(out, roots))
    before = {p: (out / p).read_bytes() for p in complete}
    full = OSError(errno.ENOSPC, "No space left on device")
    real = vendor.write_bytes_atomic
    monkeypatch.setattr(vendor, "write_bytes_atomic", fail_on_call(real, 3, full))
    with pytest.raises(OSError, match="No space left"):
        _vendored(out, roots)
    assert {p: (out / p).read_bytes() for p in complete} == before  # the earlier copy, untouched
    shown = sorted(p.name for p in out.iterdir() if not p.name.startswith(".medscout-written"))
    assert shown == ["_medscout"]  # no staging folder left
    fresh = tmp_path / "fresh"
    monkeypatch.setattr(vendor, "write_bytes_atomic", fail_on_call(real, 3, full))
    with pytest.raises(OSError):
        _vendored(fresh, roots)
    assert not (fresh / "_medscout").exists()  # nothing half-written
    assert [p.name for p in fresh.iterdir() if p.name.startswith("._medscout")] == []


def test_evaluate_onto_a_full_disk_is_one_line(tmp_path: Path, split_shards: Path) -> None:
    rows = bench_rows(split_shards / "bench")
    key = "sk-full-disk-test"
    responder = BenchResponder(rows, "direct", "m", key)
    mount = tmp_path / "small"
    with ChatServer(responder) as server:
        args = ["evaluate", "--bench", str(split_shards), "--base-url", server.url, "--model", "m",
                "--out", str(mount / "run"), "--quiet", "--concurrency", "2"]  # fmt: skip
        script = (
            f"export OPENAI_API_KEY={key}\n"
            f"head -c 118000 /dev/zero > {shlex.quote(str(mount))}/filler || true\n"
            f"set +e\n$CLI {shlex.join(args)}\necho EXIT=$?\n"
            f"wc -c {shlex.quote(str(mount))}/run/predictions.jsonl || true\n"
        )
        result = on_small_disk(script, mount, size_kib=128)
    assert "EXIT=0" not in result.stdout, result.stdout
    line = one_error_line(result.stdout)
    assert "No space left on device" in line and key not in result.stdout, line


# ---------------------------------------------------------------- recipes


def bad_recipe(tmp_path: Path, edit: str) -> Path:
    from medscout_data.recipe import resolve_recipe_path

    text = resolve_recipe_path("sample").read_text()
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n" + edit if edit.startswith("[") else text.replace(*edit.split(" => ")))
    return path


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        ("width = 400.0 => width = 0.0", "ingest.ct_windows[0].width"),
        ("items_per_cell = 40 => items_per_cell = 5000000000000000000", "pool.items_per_cell"),
        ("bench_per_cell = 8 => bench_per_cell = 4000000000000000000", "pool.bench_per_cell"),
        ("width = 400.0 => width = nan", "ingest.ct_windows[0].width"),
    ],
)
def test_a_recipe_number_out_of_range_is_one_line_naming_the_key(tmp_path: Path, edit: str, key: str) -> None:
    recipe = bad_recipe(tmp_path, edit)
    for args in (
        ["build", "--modality", "ct", "--dry-run", "--recipe", str(recipe), "--out", str(tmp_path / "o")],
        ["ingest", "--modality", "ct", "--recipe", str(recipe), "--out", str(tmp_path / "o"), "--quiet"],
    ):
        result = cli(*args)
        assert result.returncode != 0
        line = one_error_line(result.stdout)
        assert f"{recipe}: {key} must be in [" in line, line
    assert not (tmp_path / "o").exists()


def test_build_dry_run_names_a_damaged_catalogue_and_a_missing_cache(tmp_path: Path) -> None:
    out = tmp_path / "shards"
    assert cli("ingest", "--modality", "ct", "--out", str(out), "--quiet").returncode == 0
    catalogue = out / "catalogue" / "ct" / "catalogue.parquet"
    whole = catalogue.read_bytes()
    for cache in sorted((out / "cache" / "ct").iterdir()):
        cache.rename(cache.with_suffix(".moved"))
    missing = cli("build", "--modality", "ct", "--dry-run", "--out", str(out), "--quiet")
    catalogue.write_bytes(whole[: len(whole) // 2])
    damaged = cli("build", "--modality", "ct", "--dry-run", "--out", str(out), "--quiet")
    for result, words in ((missing, "the image cache is incomplete"), (damaged, "the catalogue is damaged")):
        assert result.returncode != 0
        no_traceback(result.stdout)
        assert words in result.stdout and "rerun `medscout-data ingest" in result.stdout, result.stdout
    assert str(catalogue) in damaged.stdout  # the file is named
