"""Dense Geometric Reward: hand-computed cases for every branch of both profiles, properties,
and scoring predictions files against real bench trees."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from benchfixture import make_shards, make_staged_repo
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from medscout_data.cli import cli
from medscout_data.errors import StageError
from medscout_data.evaluation.score import (
    SCORE_COLUMNS,
    DenseGeometricReward,
    ScoreError,
    Truth,
    accuracy_reward,
    accuracy_rewards,
    bench_items,
    cot_reward,
    extract_answer,
    format_reward,
    load_bench,
    load_hub_bench,
    read_predictions,
    resolve_bench,
    reward,
    score_bench,
    score_file,
    total_rewards,
)
from medscout_data.report import RunReport

ANOMALY = Truth("anomaly", cell=9, grid=4)  # row 2, col 1
BOXES = Truth("box", boxes=((100, 100, 300, 300), (0, 0, 500, 500), (500, 500, 1000, 1000)))
ONE_BOX = Truth("box", boxes=((0, 0, 100, 100),))
TIERS = Truth("tier", labels=("Label 1", "Label 2", "Label 1"))
JIGSAW = Truth("jigsaw", permutation=(2, 0, 3, 1), grid=2)
PAIR = Truth("jigsaw", permutation=(1, 0), grid=1)


def both(response: str, truth: Truth) -> tuple[float, float, float, float]:
    """(official accuracy, official format, paper accuracy, paper format)."""
    return (
        accuracy_reward(response, truth, "official"),
        format_reward(response, truth, "official"),
        accuracy_reward(response, truth, "paper"),
        format_reward(response, truth, "paper"),
    )


def close(actual: tuple[float, ...], expected: tuple[float, ...]) -> bool:
    return all(math.isclose(a, e, abs_tol=1e-12) for a, e in zip(actual, expected, strict=True))


# ---------------------------------------------------------------- answer extraction


@pytest.mark.parametrize(
    ("response", "answer"),
    [
        ("<think>x</think><answer> 9 </answer>", "9"),
        ("<answer>10</answer> then <answer>9</answer>", "10"),
        ("<answer>\n(1, 2,\n 3, 4)\n</answer>", "(1, 2,\n 3, 4)"),
        ("  9 \n", "9"),
        ("<answer>9", "<answer>9"),  # no closing tag: the whole response
    ],
)
def test_extract_answer(response: str, answer: str) -> None:
    assert extract_answer(response) == answer


# ---------------------------------------------------------------- anomaly


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("9", (1.0, 0.5, 1.0, 0.5)),
        ("10", (math.exp(-1), 0.5, math.exp(-1), 0.5)),  # (2, 2): one column off
        ("4", (math.exp(-math.sqrt(2)), 0.5, math.exp(-math.sqrt(2)), 0.5)),  # (1, 0)
        ("15", (math.exp(-math.sqrt(5)), 0.5, math.exp(-math.sqrt(5)), 0.5)),  # (3, 3)
        ("16", (0.0, 0.5, 0.0, 0.0)),  # out of the grid: digits only, but not a cell
        ("cell 9", (1.0, 0.0, 1.0, 0.25)),  # first integer; paper: 1 of 2 elements
        ("9 10", (1.0, 0.0, 1.0, 0.25)),  # paper: 2 cells given, 1 expected -> 1/2
        ("-3", (math.exp(-math.sqrt(8)), 0.0, math.exp(-math.sqrt(8)), 0.0)),  # the sign is not read
        ("no idea", (0.0, 0.0, 0.0, 0.0)),
        ("", (0.0, 0.0, 0.0, 0.0)),
        ("<answer>10</answer>9", (math.exp(-1), 0.5, math.exp(-1), 0.5)),
        ("<answer>9", (1.0, 0.0, 1.0, 0.0)),  # missing </answer>: whole text, not only digits
    ],
)
def test_anomaly_rewards(response: str, expected: tuple[float, ...]) -> None:
    assert close(both(response, ANOMALY), expected)


def test_anomaly_truth_outside_grid_scores_zero() -> None:
    assert accuracy_reward("16", Truth("anomaly", cell=16, grid=4)) == 0.0


# ---------------------------------------------------------------- scale box


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("(100, 100, 300, 300), (0, 0, 500, 500), (500, 500, 1000, 1000)", (1.0, 0.5, 1.0, 0.5)),
        ("(100,100,300,300),( 0 , 0 , 500 , 500 ),(500, 500, 1000, 1000)", (1.0, 0.5, 1.0, 0.5)),
        # wrong count: no accuracy; official 1/3 format; paper 2 of 3 elements
        ("(100, 100, 300, 300), (0, 0, 500, 500)", (0.0, 0.5 / 3, 0.0, 0.5 * 2 / 3)),
        # one inverted box: its IoU is 0, order check fails
        (
            "(300, 100, 100, 300), (0, 0, 500, 500), (500, 500, 1000, 1000)",
            (2 / 3, 0.5 * 2 / 3, 2 / 3, 0.5 * 2 / 3),
        ),
        # beyond the 0-1000 grid: parsed by the official code, malformed for the paper
        (
            "(100, 100, 300, 300), (0, 0, 500, 500), (500, 500, 1200, 1200)",
            (2 / 3 + 250000 / 490000 / 3, 0.5, 2 / 3 + 250000 / 490000 / 3, 0.5 * 2 / 3),
        ),
        ("top left, middle, bottom right", (0.0, 0.0, 0.0, 0.0)),
        ("(1.5, 2, 3, 4), (0, 0, 500, 500), (500, 500, 1000, 1000)", (0.0, 0.5 / 3, 0.0, 0.5 * 2 / 3)),
    ],
)
def test_box_rewards(response: str, expected: tuple[float, ...]) -> None:
    assert close(both(response, BOXES), expected)


@pytest.mark.parametrize(
    ("response", "official", "paper"),
    [
        ("(0, 0, 100, 21)", 0.21, 0.21),  # just above the 0.2 floor
        ("(0, 0, 100, 20)", 0.2, 0.2),  # exactly 0.2 is kept
        ("(0, 0, 100, 19)", 0.0, 0.19),  # just below: the official floor zeroes it, the paper keeps it
        ("(200, 200, 300, 300)", 0.0, 0.0),  # no overlap
        ("(0, 0, 0, 0)", 0.0, 0.0),  # degenerate
    ],
)
def test_box_iou_floor(response: str, official: float, paper: float) -> None:
    assert math.isclose(accuracy_reward(response, ONE_BOX, "official"), official)
    assert math.isclose(accuracy_reward(response, ONE_BOX, "paper"), paper)


# ---------------------------------------------------------------- scale tier


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("Label 1, Label 2, Label 1", (1.0, 0.5, 1.0, 0.5)),
        ("Label 1, Label 1, Label 1", (2 / 3, 0.5, 2 / 3, 0.5)),
        ("Label 2, Label 1, Label 2", (0.0, 0.5, 0.0, 0.5)),
        ("Label 1, Label 2", (0.0, 0.25, 0.0, 0.5 * 2 / 3)),  # wrong count
        ("Label 1, Label 2, Label 1, Label 2", (0.0, 0.25, 0.0, 0.5 * 3 / 4)),  # one too many
        ("Label 1, Level 2, Label 1", (0.0, 0.25, 0.0, 0.5 * 2 / 3)),  # a malformed label
        ("label 1, label 2, label 1", (0.0, 0.0, 0.0, 0.0)),  # case matters
        ("Label 1; Label 2; Label 1", (1.0, 0.5, 1.0, 0.0)),  # official finds 3 labels; paper: 1 bad element
        ("Label 3, Label 2, Label 1", (0.0, 0.25, 0.0, 0.5 * 2 / 3)),
    ],
)
def test_tier_rewards(response: str, expected: tuple[float, ...]) -> None:
    assert close(both(response, TIERS), expected)


# ---------------------------------------------------------------- jigsaw


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("2 0 3 1", (1.0, 0.5, 1.0, 0.5)),
        ("2 0 1 3", (0.5, 0.5, 0.5, 0.5)),
        ("0 1 2 3", (0.0, 0.5, 0.0, 0.5)),
        ("2 2 3 1", (0.0, 0.25, 0.0, 0.5 * 3 / 4)),  # a repeat
        ("2 0 3", (0.0, 0.0, 0.0, 0.5 * 3 / 4)),  # wrong count
        ("2 0 3 1 4", (0.0, 0.0, 0.0, 0.5 * 4 / 5)),
        ("2, 0, 3, 1", (1.0, 0.5, 1.0, 0.5 * 1 / 4)),  # official reads the integers; paper wants spaces
        ("7 0 3 1", (0.75, 0.5, 0.75, 0.5 * 3 / 4)),  # out-of-range index
        ("2 0 9 8", (0.5, 0.5, 0.5, 0.5 * 2 / 4)),
        ("shuffled", (0.0, 0.0, 0.0, 0.0)),
    ],
)
def test_jigsaw_rewards(response: str, expected: tuple[float, ...]) -> None:
    assert close(both(response, JIGSAW), expected)


@pytest.mark.parametrize(
    ("response", "accuracy"),
    [("1 0", 1.0), ("0 1", 0.0), ("1 5", 0.0), ("1 1", 0.0)],  # "1 5": half right, but all-or-nothing
)
def test_jigsaw_two_tiles_is_exact_match(response: str, accuracy: float) -> None:
    assert accuracy_reward(response, PAIR, "official") == accuracy
    assert accuracy_reward(response, PAIR, "paper") == accuracy


# ---------------------------------------------------------------- CoT


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("<think>look</think><answer>9</answer>", 0.5),
        ("  <think>\nlook\n</think>\n\n<answer>9</answer>\n", 0.5),
        ("<think></think><answer>9</answer>", 0.5),
        ("<answer>9</answer>", 0.0),
        ("9", 0.0),
        ("<think>look</think>9", 0.0),
        ("<think>look</think><answer>9</answer> done", 0.0),
        ("Sure! <think>look</think><answer>9</answer>", 0.0),
        ("<think>look</think><answer>9</answer><answer>10</answer>", 0.0),
        ("<think><think>look</think><answer>9</answer>", 0.0),
        ("<answer>9</answer><think>look</think>", 0.0),
        ("<THINK>look</THINK><ANSWER>9</ANSWER>", 0.0),
        ("<think>look<answer>9</answer>", 0.0),
    ],
)
def test_cot_template(response: str, expected: float) -> None:
    assert cot_reward(response) == expected


def test_cot_counts_only_in_cot_mode() -> None:
    response = "<think>row 2, column 1</think><answer>9</answer>"
    assert reward(response, ANOMALY, mode="cot").total == 2.0
    direct = reward(response, ANOMALY, mode="direct")
    assert (direct.accuracy, direct.format, direct.cot, direct.total) == (1.0, 0.5, 0.0, 1.5)


def test_unknown_profile_or_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="profile"):
        accuracy_reward("9", ANOMALY, "strict")
    with pytest.raises(ValueError, match="mode"):
        reward("9", ANOMALY, mode="chain")


# ---------------------------------------------------------------- properties

LEVELS = st.lists(st.sampled_from([1, 2]), min_size=1, max_size=5)


@st.composite
def boxes(draw: st.DrawFn) -> tuple[int, int, int, int]:
    x1 = draw(st.integers(0, 999))
    y1 = draw(st.integers(0, 999))
    return x1, y1, draw(st.integers(x1 + 1, 1000)), draw(st.integers(y1 + 1, 1000))


@st.composite
def truths(draw: st.DrawFn) -> Truth:
    kind = draw(st.sampled_from(["tier", "box", "jigsaw", "anomaly"]))
    if kind == "tier":
        return Truth("tier", labels=tuple(f"Label {v}" for v in draw(LEVELS)))
    if kind == "box":
        return Truth("box", boxes=tuple(draw(st.lists(boxes(), min_size=1, max_size=5))))
    if kind == "jigsaw":
        grid = draw(st.integers(1, 3))
        return Truth("jigsaw", permutation=tuple(draw(st.permutations(range(grid * grid)))), grid=grid)
    grid = draw(st.integers(2, 6))
    return Truth("anomaly", cell=draw(st.integers(0, grid * grid - 1)), grid=grid)


@given(
    truth=truths(), profile=st.sampled_from(["official", "paper"]), mode=st.sampled_from(["direct", "cot"])
)
def test_truth_scores_the_maximum(truth: Truth, profile: str, mode: str) -> None:
    answer = truth.answer_text()
    response = f"<think>Compare the views.</think>\n<answer>{answer}</answer>" if mode == "cot" else answer
    value = reward(response, truth, profile, mode)
    assert (value.accuracy, value.format, value.cot) == (1.0, 0.5, 0.5 if mode == "cot" else 0.0)
    assert value.total == (2.0 if mode == "cot" else 1.5)


NOISE = st.lists(
    st.one_of(
        st.sampled_from(
            ["<answer>", "</answer>", "<think>", "</think>", "Label 1", "Label 2", "(", ")", ",", " ", "\n"]
        ),
        st.integers(-5, 2000).map(str),
        st.text(max_size=4),
    ),
    max_size=30,
).map("".join)


@settings(max_examples=300)
@given(response=st.one_of(NOISE, st.text()), truth=truths(), profile=st.sampled_from(["official", "paper"]))
def test_reward_stays_in_range(response: str, truth: Truth, profile: str) -> None:
    for mode, top in (("direct", 1.5), ("cot", 2.0)):
        value = reward(response, truth, profile, mode)
        assert 0.0 <= value.accuracy <= 1.0
        assert 0.0 <= value.format <= 0.5
        assert value.cot in (0.0, 0.5) and (mode == "cot" or value.cot == 0.0)
        assert 0.0 <= value.total <= top


# ---------------------------------------------------------------- GRPO-style functions


def test_batch_functions_take_rows_with_json_targets() -> None:
    items = [
        {
            "task": "anomaly",
            "variant": "",
            "answer": "9",
            "target": json.dumps({"grid": 4, "cell": 9, "row": 2, "col": 1}),
        },
        {
            "task": "jigsaw",
            "variant": "",
            "answer": "2 0 3 1",
            "target": {"grid": 2, "permutation": [2, 0, 3, 1]},
        },
    ]
    completions = ["<think>a</think><answer>10</answer>", "2 0 1 3"]
    assert accuracy_rewards(completions, items) == [math.exp(-1), 0.5]
    assert total_rewards(completions, items, mode="cot") == [math.exp(-1) + 0.5 + 0.5, 0.5 + 0.5]


def test_trainer_style_call_with_columns_and_chat_completions() -> None:
    fn = DenseGeometricReward("accuracy")
    completions = [[{"role": "assistant", "content": "Label 1, Label 2"}], "Label 2, Label 2"]
    target = json.dumps({"levels": [1, 2], "boxes": [], "boxes_1000": []})
    scores = fn(
        prompts=["q", "q"],
        completions=completions,
        task=["scale"] * 2,
        variant=["tier"] * 2,
        target=[target] * 2,
    )
    assert scores == [1.0, 0.5]
    assert fn.__name__ == "medscout_accuracy"
    with pytest.raises(ValueError, match="target"):
        fn(["9"], task=["anomaly"])


# ---------------------------------------------------------------- bench trees


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shards(tmp_path_factory.mktemp("shards"), modalities=("ct", "xray"), per_cell=4)


def _rows(root: Path) -> list[dict]:
    return [
        row
        for p in sorted((root / "bench").glob("*/*/test-*.parquet"))
        for row in pq.read_table(p).to_pylist()
    ]


def _write_predictions(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_truth_of_real_items_matches_their_answer_text(shards: Path) -> None:
    rows = _rows(shards)
    assert {(r["task"], r["variant"]) for r in rows} == {
        ("scale", "tier"),
        ("scale", "box"),
        ("jigsaw", ""),
        ("anomaly", ""),
    }
    for row in rows:
        assert Truth.from_item(row).answer_text() == row["answer"]


def test_load_bench_reads_only_metadata_columns(shards: Path) -> None:
    table = load_bench(resolve_bench(shards))
    assert table.column_names == SCORE_COLUMNS
    assert table.num_rows == 2 * 3 * 4


def test_perfect_answers_score_full_marks(shards: Path, tmp_path: Path) -> None:
    rows = _rows(shards)
    direct = _write_predictions(
        tmp_path / "d.jsonl", [{"id": r["id"], "response": r["answer"]} for r in rows]
    )
    result = score_file(direct, shards)
    assert result.overall.means()["accuracy"] == 1.0 and result.overall.means()["total"] == 1.5
    assert set(result.cells) == {
        f"{m}/{k}" for m in ("ct", "xray") for k in ("scale", "scale/tier", "scale/box", "jigsaw", "anomaly")
    }
    assert result.cells["ct/scale"].count == 4 and result.cells["ct/scale/box"].count == 2
    cot = [{"id": r["id"], "response": f"<think>t</think><answer>{r['answer']}</answer>"} for r in rows]
    result = score_file(_write_predictions(tmp_path / "c.jsonl", cot), shards, "paper", "cot")
    assert result.overall.means()["total"] == 2.0


def test_missing_items_score_zero_and_are_listed(shards: Path, tmp_path: Path) -> None:
    rows = _rows(shards)
    kept = [{"id": r["id"], "response": r["answer"]} for r in rows[3:]]
    result = score_file(_write_predictions(tmp_path / "p.jsonl", kept), shards)
    assert sorted(result.missing_ids) == sorted(r["id"] for r in rows[:3])
    assert math.isclose(result.overall.means()["accuracy"], (len(rows) - 3) / len(rows))
    assert result.overall.missing == 3


def test_unknown_and_duplicate_ids_are_errors(shards: Path, tmp_path: Path) -> None:
    rows = _rows(shards)
    unknown = [{"id": "ct-scale-9999", "response": "Label 1"}, {"id": rows[0]["id"], "response": "1"}]
    with pytest.raises(ScoreError, match="ct-scale-9999"):
        score_file(_write_predictions(tmp_path / "u.jsonl", unknown), shards)
    duplicated = [{"id": rows[0]["id"], "response": "1"}] * 2
    with pytest.raises(ScoreError, match="duplicate"):
        score_file(_write_predictions(tmp_path / "d.jsonl", duplicated), shards)


def test_bad_lines_are_recorded_and_their_items_count_as_missing(shards: Path, tmp_path: Path) -> None:
    rows = _rows(shards)
    path = tmp_path / "p.jsonl"
    lines = [json.dumps({"id": r["id"], "response": r["answer"]}) for r in rows[2:]]
    path.write_text(
        "\n".join(['{"id": "trunc', json.dumps({"response": "9"}), "", *lines]) + "\n", encoding="utf-8"
    )
    report = RunReport("score")
    predictions = read_predictions(path, report)
    assert [s.reason for s in report.skips] == ["bad-json", "no-id"]
    assert f"{path}:1" in report.skips[0].message
    result = score_bench(bench_items(load_bench(resolve_bench(shards))), predictions)
    assert len(result.missing_ids) == 2


def test_ms_swift_infer_results_are_read(shards: Path, tmp_path: Path) -> None:
    rows = _rows(shards)[:2]
    records = [
        {
            "response": rows[0]["answer"],
            "labels": rows[0]["answer"],
            "logprobs": None,
            "messages": [
                {"role": "user", "content": "<image>q"},
                {"role": "assistant", "content": rows[0]["answer"]},
            ],
            "images": [{"path": "a.png"}],
            "id": rows[0]["id"],
        },
        {  # no `response`: the appended assistant message, with content parts
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": [{"type": "text", "text": rows[1]["answer"]}]},
            ],
            "id": rows[1]["id"],
        },
    ]
    predictions = read_predictions(_write_predictions(tmp_path / "swift.jsonl", records), RunReport("score"))
    assert predictions == {rows[0]["id"]: rows[0]["answer"], rows[1]["id"]: rows[1]["answer"]}


def test_staged_repo_folder_and_datasets_loader_agree(tmp_path: Path) -> None:
    staged = make_staged_repo(tmp_path / "repo", modalities=("ct",), per_cell=2)
    source = resolve_bench(staged)
    assert len(source.files) == 3 and not source.is_hub and not source.train_files
    local = load_bench(source)
    # the Hub path runs through datasets.load_dataset; a local repo folder exercises it offline
    hub = load_hub_bench(str(staged), SCORE_COLUMNS, cache_dir=str(tmp_path / "hf-cache"))
    assert hub.column_names == SCORE_COLUMNS
    assert sorted(hub.to_pylist(), key=lambda r: r["id"]) == sorted(local.to_pylist(), key=lambda r: r["id"])


def test_bench_resolution_errors_name_the_place(tmp_path: Path) -> None:
    assert resolve_bench("someone/med-scout-bench").repo_id == "someone/med-scout-bench"
    with pytest.raises(ScoreError, match="no such bench"):
        resolve_bench(str(tmp_path / "nowhere" / "deeper" / "still"))
    with pytest.raises(ScoreError, match="no bench shards"):
        resolve_bench(tmp_path)
    broken = tmp_path / "bench" / "ct" / "scale" / "test-00000-of-00001.parquet"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(StageError, match=r"manifest\.json: no manifest"):
        resolve_bench(tmp_path)  # a shards root without its manifest cannot be trusted
    with pytest.raises(ScoreError, match=r"test-00000-of-00001\.parquet: not a readable Parquet"):
        resolve_bench(tmp_path / "bench")  # a bare bench folder: decode-checked


# ---------------------------------------------------------------- CLI


def test_cli_score_prints_table_and_writes_fractions(shards: Path, tmp_path: Path) -> None:
    rows = _rows(shards)
    records = [{"id": r["id"], "response": r["answer"]} for r in rows if r["task"] != "jigsaw"]
    preds = _write_predictions(tmp_path / "p.jsonl", records)
    out = tmp_path / "scores.json"
    result = CliRunner().invoke(
        cli, ["score", "--predictions", str(preds), "--bench", str(shards), "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "Med-Scout-Bench Avg: 66.7" in result.output
    assert "missing predictions: 8 of 24" in result.output
    figures = json.loads(out.read_text())
    assert math.isclose(figures["overall"]["accuracy"], 2 / 3)
    assert figures["cells"]["xray/jigsaw"] == {
        "modality": "xray",
        "task": "jigsaw",
        "variant": "",
        "accuracy": 0.0,
        "format": 0.0,
        "cot": 0.0,
        "total": 0.0,
        "count": 4,
        "missing": 4,
    }
    assert figures["cells"]["ct/scale/tier"]["accuracy"] == 1.0


def test_cli_score_unknown_ids_exit_nonzero_naming_them(shards: Path, tmp_path: Path) -> None:
    preds = _write_predictions(tmp_path / "p.jsonl", [{"id": "not-an-item", "response": "9"}])
    result = CliRunner().invoke(cli, ["score", "--predictions", str(preds), "--bench", str(shards)])
    assert result.exit_code != 0
    assert "not-an-item" in result.output
