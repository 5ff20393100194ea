"""Prediction files as they come from the wild: ms-swift results without ids, BOMs, odd JSON,
non-string fields, overlong integers, failed requests. Each bad line is named (FILE:LINE and
the reason) and the run goes on; nothing raises from the scorer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchfixture import make_shards
from chatserver import bench_rows
from click.testing import CliRunner

from medscout_data.cli import cli
from medscout_data.evaluation.predictions import id_from_images, read_predictions
from medscout_data.evaluation.score import (
    DenseGeometricReward,
    Truth,
    accuracy_reward,
    format_reward,
    reward,
    score_file,
)
from medscout_data.report import RunReport

LONG = "9" * 5000  # beyond Python's default int-conversion limit of 4300 digits


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shards(tmp_path_factory.mktemp("shards"), modalities=("ct",), per_cell=2)


@pytest.fixture(scope="module")
def rows(shards: Path) -> list[dict]:
    return bench_rows(shards / "bench")


def write_lines(path: Path, lines: list[str | dict], bom: bool = False) -> Path:
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def read(path: Path) -> tuple[dict[str, str], RunReport]:
    report = RunReport("score")
    return read_predictions(path, report), report


def test_a_leading_bom_does_not_cost_the_first_line(rows: list[dict], tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "p.jsonl", [{"id": r["id"], "response": r["answer"]} for r in rows], bom=True
    )
    predictions, report = read(path)
    assert len(predictions) == len(rows) and not report.skips


@pytest.mark.parametrize(
    ("line", "reason", "words"),
    [
        ("[" * 100_000 + "]" * 100_000, "bad-json", "nested too deeply"),
        ('{"id": "x", "response": "9", "n": ' + LONG + "}", "bad-json", "limit"),
        ('{"id": "x", "resp', "bad-json", "not a JSON line"),
        ('["id", "x"]', "not-an-object", "a JSON list"),
        ('{"id": {"k": 1}, "response": "9"}', "bad-id", "`id` must be a string, got dict"),
        ('{"id": "x", "response": 9}', "bad-response", "`response` must be a string, got int"),
        ('{"id": "x", "messages": 5}', "bad-messages", "`messages` must be a list"),
        (
            '{"id": "x", "messages": [{"role": "assistant", "content": [{"type": "text", "text": 7}]}]}',
            "bad-content",
            "`text` must be a string, got int",
        ),
        ('{"id": "x", "messages": [{"role": "assistant", "content": [5]}]}', "bad-content", "part"),
        ('{"id": "x", "messages": [{"role": "assistant", "content": 3.5}]}', "bad-content", "float"),
        ('{"id": "x", "messages": [{"role": "user", "content": "q"}]}', "no-response", "no assistant"),
        ('{"id": "x"}', "no-response", "no `response`"),
        ('{"response": "9", "images": ["elsewhere/photo.jpg"]}', "bad-image-path", "not an exported image"),
        ('{"response": "9", "images": []}', "no-id", "recover"),
        (
            '{"response": "9", "images": ["images/ct/scale/../../../../etc/passwd-0.png"]}',
            "bad-image-path",
            "leaves the export",
        ),
        ('{"response": "9", "images": ["/srv/ct/scale/ct-scale-0001-0.png"]}', "bad-image-path", "not under"),
        (
            '{"response": "9", "images": ["images/ct/scale/ct-scale-0000-0.png", "images/ct/scale/x-1.png"]}',
            "images-disagree",
            "name 2 items",
        ),
    ],
)
def test_each_bad_line_is_named_and_the_rest_is_read(
    rows: list[dict], tmp_path: Path, line: str, reason: str, words: str
) -> None:
    good = [{"id": r["id"], "response": r["answer"]} for r in rows]
    path = write_lines(tmp_path / "p.jsonl", [good[0], line, *good[1:]])
    predictions, report = read(path)
    assert len(predictions) == len(rows)
    assert [s.reason for s in report.skips] == [reason]
    assert report.skips[0].message.startswith(f"{path}:2: ") and words in report.skips[0].message
    assert "\n" not in report.skips[0].message


def test_a_line_that_is_not_utf8_is_named(rows: list[dict], tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes(
        b'{"id": "a", "response": "\xff\xfe"}\n' + json.dumps({"id": rows[0]["id"], "response": "1"}).encode()
    )
    predictions, report = read(path)
    assert list(predictions) == [rows[0]["id"]]
    assert report.skips[0].reason == "not-utf8" and f"{path}:1" in report.skips[0].message


def test_overlong_integers_score_zero_accuracy_and_never_raise() -> None:
    """Accuracy 0; the format as the authors' code gives it (tests/test_reward_parity.py)."""
    anomaly = Truth("anomaly", cell=9, grid=4)
    jigsaw = Truth("jigsaw", permutation=(2, 0, 3, 1), grid=2)
    boxes = Truth("box", boxes=((0, 0, 500, 500),))
    for profile, fmt in (("official", 0.5), ("paper", 0.0)):
        assert accuracy_reward(LONG, anomaly, profile) == 0.0
        assert format_reward(LONG, anomaly, profile) == fmt
        assert accuracy_reward(f"2 0 3 {LONG}", jigsaw, profile) == 0.0
        assert accuracy_reward(f"(0, 0, 500, {LONG})", boxes, profile) == 0.0
        assert reward(f"<think>x</think><answer>{LONG}</answer>", anomaly, profile, "cot").total == 0.5 + fmt
    rewards = DenseGeometricReward()([LONG, "9"], task=["anomaly"] * 2, target=['{"cell": 9, "grid": 4}'] * 2)
    assert rewards == [0.5, 1.5]


def test_overlong_integer_response_in_a_file_scores_zero(
    shards: Path, rows: list[dict], tmp_path: Path
) -> None:
    records = [{"id": r["id"], "response": LONG if r["task"] == "anomaly" else r["answer"]} for r in rows]
    result = score_file(write_lines(tmp_path / "p.jsonl", records), shards)
    assert result.cells["ct/anomaly"].means()["accuracy"] == 0.0
    assert result.cells["ct/jigsaw"].means()["accuracy"] == 1.0


# ---------------------------------------------------------------- ms-swift results without ids


def swift_line(row: dict, images: object, response: str | None = None) -> dict:
    """A `swift infer` result line as ms-swift writes it when it dropped every column but
    `messages` and `images` (its default)."""
    reply = row["answer"] if response is None else response
    return {
        "response": reply,
        "labels": None,
        "logprobs": None,
        "messages": [
            {"role": "user", "content": "<image>" * len(row["images"]) + "question"},
            {"role": "assistant", "content": reply},
        ],
        "images": images,
    }


def exported(row: dict, k: int, root: str = "") -> str:
    return f"{root}images/{row['modality']}/{row['task']}/{row['id']}-{k}.png"


def test_swift_infer_results_without_ids_score_as_with_them(
    shards: Path, rows: list[dict], tmp_path: Path
) -> None:
    lines = []
    for n, row in enumerate(rows):
        paths = [exported(row, k, "/data/export/" if n % 2 else "") for k in range(len(row["images"]))]
        form = n % 3
        images = (
            paths if form == 0 else [{"bytes": None, "path": p} for p in paths] if form == 1 else paths[0]
        )
        if form == 2 and len(paths) > 1:
            images = [{"path": p} for p in paths]
        lines.append(swift_line(row, images))
    predictions, report = read(write_lines(tmp_path / "swift.jsonl", lines))
    assert not report.skips
    assert predictions == {r["id"]: r["answer"] for r in rows}
    assert score_file(tmp_path / "swift.jsonl", shards).overall.means()["accuracy"] == 1.0


def test_ids_from_image_parts_of_the_messages(rows: list[dict], tmp_path: Path) -> None:
    row = rows[0]
    parts = [{"type": "image", "image": exported(row, k)} for k in range(len(row["images"]))]
    line = {
        "messages": [
            {"role": "user", "content": [*parts, {"type": "text", "text": "q"}]},
            {"role": "assistant", "content": row["answer"]},
        ]
    }
    predictions, report = read(write_lines(tmp_path / "p.jsonl", [line]))
    assert predictions == {row["id"]: row["answer"]} and not report.skips


def test_unrecoverable_ids_are_reported_not_skipped_silently(rows: list[dict], tmp_path: Path) -> None:
    row = rows[0]
    lines = [
        swift_line(row, [{"bytes": "<<<bytes>>>", "path": None}]),  # images carried as bytes
        swift_line(row, ["images/ct/scale/a-0.png", "images/ct/scale/b-1.png"]),  # two ids
        swift_line(row, ["images/ct/scale/a-1.png"]),  # not the first image
        {"response": "9", "messages": [{"role": "assistant", "content": "9"}]},  # no images at all
        {"id": rows[1]["id"], "response": "9"},  # a usable line: the rest is scored
    ]
    path = write_lines(tmp_path / "p.jsonl", lines)
    predictions, report = read(path)
    assert predictions == {rows[1]["id"]: "9"}
    assert [s.reason for s in report.skips] == ["no-id", "images-disagree", "bad-image-path", "no-id"]
    assert [s.path for s in report.skips] == [f"{path}:{n}" for n in range(1, 5)]


def test_id_from_images_rules() -> None:
    assert id_from_images(["images/ct/jigsaw/ct-jigsaw-0001-0.png"]) == "ct-jigsaw-0001"
    assert (
        id_from_images(["C:\\export\\images\\ct\\scale\\x-7-0.png", "/e/images/ct/scale/x-7-1.png"]) == "x-7"
    )
    assert id_from_images([]) is None
    assert id_from_images(["x-0.jpg"]) is None


# ---------------------------------------------------------------- evaluate's failed requests


def test_failed_requests_count_as_missing_unless_answered_later(
    shards: Path, rows: list[dict], tmp_path: Path
) -> None:
    first, second = rows[0]["id"], rows[1]["id"]
    lines = [
        {"id": first, "response": None, "error": "RateLimitError: 429", "model": "m"},
        {"id": second, "response": None, "error": "InternalServerError: 500", "model": "m"},
        {"id": first, "response": rows[0]["answer"], "error": None, "model": "m"},
    ]
    path = write_lines(tmp_path / "p.jsonl", lines)
    predictions, report = read(path)
    assert predictions == {first: rows[0]["answer"]}
    assert [(s.path, s.reason) for s in report.skips] == [(f"{path}:2", "request-failed")]
    assert "500" in report.skips[0].message and report.info["models"] == ["m"]


def test_cli_score_reports_bad_lines_without_a_traceback(
    shards: Path, rows: list[dict], tmp_path: Path
) -> None:
    good = [{"id": r["id"], "response": r["answer"]} for r in rows]
    path = write_lines(
        tmp_path / "p.jsonl", ['{"id": "x", "messages": 5}', *good, '{"id": 1, "response": 9}'], bom=True
    )
    result = CliRunner().invoke(cli, ["score", "--predictions", str(path), "--bench", str(shards)])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert f"{path}:1: `messages` must be a list" in result.output
    assert f"{path}:{len(good) + 2}: `response` must be a string, got int" in result.output
    assert "Med-Scout-Bench Avg: 100.0" in result.output
