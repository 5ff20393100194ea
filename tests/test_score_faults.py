"""`score` of hostile ms-swift result files, through the real CLI in a child process: a line whose
image path leaves the export or whose images name two items is skipped with its reason and
FILE:LINE, the rest scored; a million bad lines cost flat memory and a capped list of examples;
a file with no usable line exits non-zero with one line."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from benchfixture import make_shards
from chatserver import bench_rows
from faultkit import REPO, child_env, cli, no_traceback

from medscout_data.evaluation.predictions import MAX_EXAMPLES


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shards(tmp_path_factory.mktemp("shards"), modalities=("ct",), per_cell=2)


@pytest.fixture(scope="module")
def rows(shards: Path) -> list[dict]:
    return bench_rows(shards / "bench")


def swift_line(images: list[str], response: str) -> str:
    """A `swift infer` result line without an id column (ms-swift's default)."""
    messages = [{"role": "user", "content": "<image>q"}, {"role": "assistant", "content": response}]
    return json.dumps({"response": response, "messages": messages, "images": images})


def exported(row: dict, k: int) -> str:
    return f"images/{row['modality']}/{row['task']}/{row['id']}-{k}.png"


def swift_file(path: Path, rows: list[dict], extra: dict[int, str]) -> Path:
    """Every row's answer as a swift line, with `extra` lines inserted at the given line numbers."""
    lines = [swift_line([exported(r, k) for k in range(len(r["images"]))], r["answer"]) for r in rows]
    for number, line in sorted(extra.items()):
        lines.insert(number - 1, line)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_image_paths_that_leave_the_export_or_name_two_items_are_skipped_and_the_rest_scored(
    shards: Path, rows: list[dict], tmp_path: Path
) -> None:
    escape = "images/ct/scale/../../../../etc/passwd-0.png"
    two = [exported(rows[0], 0), exported(rows[1], 1)]
    path = swift_file(
        tmp_path / "result.jsonl",
        rows,
        {2: swift_line([escape], "1"), 4: swift_line([escape], "2"), 6: swift_line(two, "3")},
    )
    result = cli(
        "score", "--predictions", str(path), "--bench", str(shards), "--json", str(tmp_path / "s.json")
    )
    assert result.returncode == 0, result.stdout
    no_traceback(result.stdout)
    for line in (2, 4):
        assert re.search(rf"{re.escape(str(path))}:{line}: image 0 .*leaves the export", result.stdout)
    assert re.search(rf"{re.escape(str(path))}:6: its images name 2 items", result.stdout)
    scores = json.loads((tmp_path / "s.json").read_text())
    assert scores["overall"]["accuracy"] == 1.0 and scores["overall"]["missing"] == 0
    assert scores["skipped_by_reason"] == {"bad-image-path": 2, "images-disagree": 1}


def run_measured(*args: str) -> tuple[int, str, int]:
    """`medscout-data ARGS` in a child; (exit code, output, peak resident memory in KiB)."""
    import subprocess

    code = (
        "import resource, runpy, sys\n"
        f"sys.argv = ['medscout-data', *{list(args)!r}]\n"
        "try:\n    runpy.run_module('medscout_data.cli', run_name='__main__')\n"
        "finally:\n    print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=child_env(), cwd=REPO, capture_output=True, text=True, timeout=600
    )
    peak = int(re.search(r"MAXRSS (\d+)", done.stderr)[1])  # type: ignore[index]
    return done.returncode, done.stdout + done.stderr, peak


def test_a_million_bad_lines_cost_flat_memory_and_a_capped_list(
    shards: Path, rows: list[dict], tmp_path: Path
) -> None:
    runs = {}
    for n in (1_000, 1_000_000):
        path = tmp_path / f"bad-{n}.jsonl"
        good = swift_file(tmp_path / "good.jsonl", rows, {}).read_bytes()
        path.write_bytes(good + b'{"id": "x", "resp\n' * (n // 2) + b'{"response": "1"}\n' * (n // 2))
        json_out = tmp_path / f"s-{n}.json"
        runs[n] = (*run_measured("score", "--predictions", str(path), "--bench", str(shards), "--json",
                                 str(json_out)), json.loads(json_out.read_text()))  # fmt: skip
    small, large = runs[1_000], runs[1_000_000]
    assert large[0] == 0, large[1][-2000:]
    assert large[2] - small[2] < 40 * 1024, (small[2], large[2])  # KiB: flat, not hundreds of MiB
    assert len(large[1]) < 30_000 and large[1].count("\n") < 4 * MAX_EXAMPLES + 40  # a capped list
    assert f"skipped {1_000_000} more lines" not in large[1]  # the count is per file, by reason:
    assert (
        f"bad-json: {500_000 - MAX_EXAMPLES}" in large[1] and f"no-id: {500_000 - MAX_EXAMPLES}" in large[1]
    )
    document = large[3]
    assert document["skipped_by_reason"] == {"bad-json": 500_000, "no-id": 500_000}
    assert len(document["skipped"]) == 2 * MAX_EXAMPLES and document["overall"]["accuracy"] == 1.0


@pytest.mark.parametrize("content", [b"", b"\n\n", b"not json\n" * 3, b'{"response": "1"}\n'])
def test_a_file_with_no_usable_line_exits_non_zero_with_one_line(
    shards: Path, tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes(content)
    result = cli("score", "--predictions", str(path), "--bench", str(shards))
    assert result.returncode != 0
    no_traceback(result.stdout)
    errors = [line for line in result.stdout.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and f"{path}: no usable prediction line" in errors[0], result.stdout


def test_an_overlong_line_is_skipped_unread_and_the_rest_scored(
    shards: Path, rows: list[dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medscout_data.evaluation import predictions as module
    from medscout_data.report import RunReport

    monkeypatch.setattr(module, "MAX_LINE_BYTES", 4096)
    huge = json.dumps({"id": rows[0]["id"], "response": "9" * 100_000})
    path = swift_file(tmp_path / "p.jsonl", rows[1:], {2: huge})
    report = RunReport("score")
    read = module.read_predictions(path, report)
    assert set(read) == {r["id"] for r in rows[1:]}
    assert [(s.path, s.reason) for s in report.skips] == [(f"{path}:2", "line-too-long")]


def test_duplicate_ids_are_counted_and_a_few_named(shards: Path, rows: list[dict], tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    line = json.dumps({"id": rows[0]["id"], "response": "1"}) + "\n"
    path.write_text(line * 100_001)
    result = cli("score", "--predictions", str(path), "--bench", str(shards))
    assert result.returncode != 0
    line = one_line_error(result.stdout)
    assert "duplicate prediction ids (100000)" in line and "(99990 more)" in line and len(line) < 500


def one_line_error(output: str) -> str:
    no_traceback(output)
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    return errors[0]
