"""The reward apart: `evaluation/reward.py` is standard-library only and is all the ms-swift and
lmms-eval exports copy; and under the `official` profile it equals the authors' released reward code
on responses holding integers too long for `int()` (issue 21, deliverable 5).

`authors_*` below restate the semantics of Med-Scout's `MedScoutAccuracyORM` / `MedScoutFormatORM`
(examples/train/grpo/plugin/plugin.py): the task is told from the solution text, integers are read
with `int()` inside one `try` per rule, and whatever raises scores 0.
"""

from __future__ import annotations

import ast
import math
import re
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medscout_data.evaluation import reward as reward_module
from medscout_data.evaluation.reward import (
    DenseGeometricReward,
    Truth,
    accuracy_reward,
    extract_answer,
    format_reward,
    reward,
)
from medscout_data.integrations.vendor import closure

LIMIT = sys.get_int_max_str_digits()
LONG = "9" * (LIMIT + 1)  # one digit beyond what int() reads
ANOMALY = Truth("anomaly", cell=9, grid=4)
JIGSAW = Truth("jigsaw", permutation=(2, 0, 3, 1), grid=2)
BOXES = Truth("box", boxes=((0, 0, 500, 500), (100, 100, 300, 300)))
TIERS = Truth("tier", labels=("Label 1", "Label 2"))
BOX = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\)")


# ---------------------------------------------------------------- the authors' semantics


def authors_boxes(text: str) -> list[tuple[int, ...]]:
    return [tuple(int(v) for v in m) for m in BOX.findall(text)]


def authors_iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    ix1, iy1, ix2, iy2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    if ix1 >= ix2 or iy1 >= iy2:
        return 0.0
    inter = (ix2 - ix1) * (iy2 - iy1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def authors_accuracy(pred: str, truth: Truth) -> float:
    sol = truth.answer_text()
    try:
        if truth.kind == "anomaly":
            first = re.search(r"\d+", pred)
            k = int(first.group()) if first else -1
            if not (0 <= k <= 15):
                return 0.0
            return math.exp(-math.hypot(k // 4 - truth.cell // 4, k % 4 - truth.cell % 4))
        if truth.kind == "box":
            got, want = authors_boxes(pred), authors_boxes(sol)
            if not got or len(got) != len(want):
                return 0.0
            mean = sum(authors_iou(g, w) for g, w in zip(got, want, strict=True)) / len(got)
            return mean if mean >= 0.2 else 0.0
        if truth.kind == "tier":
            got, want = re.findall(r"Label [12]", pred), re.findall(r"Label [12]", sol)
            if not got or len(got) != len(want):
                return 0.0
            return sum(g == w for g, w in zip(got, want, strict=True)) / len(want)
        got = [int(x) for x in re.findall(r"\d+", pred)]
        want = [int(x) for x in re.findall(r"\d+", sol)]
        if len(got) != len(want) or len(set(got)) != len(got):
            return 0.0
        return sum(g == w for g, w in zip(got, want, strict=True)) / len(want)
    except ValueError:
        return 0.0


def authors_format(pred: str, truth: Truth) -> float:
    sol = truth.answer_text()
    try:
        if truth.kind == "anomaly":
            score = 1.0 if re.match(r"^\d+$", pred) else 0.0
        elif truth.kind == "box":
            got = authors_boxes(pred)
            count = len(got) == len(authors_boxes(sol))
            ordered = count and all(x1 <= x2 and y1 <= y2 for x1, y1, x2, y2 in got)
            score = (1 + count + ordered) / 3 if got else 0.0
        elif truth.kind == "tier":
            got = re.findall(r"Label [12]", pred)
            score = 0.0 if not got else 0.5 + 0.5 * (len(got) == len(truth.labels))
        else:
            got = [int(x) for x in re.findall(r"\d+", pred)]
            score = 0.0 if len(got) != len(truth.permutation) else 0.5 + 0.5 * (len(set(got)) == len(got))
    except ValueError:
        score = 0.0
    return 0.5 * score


# ---------------------------------------------------------------- overlong integers


def test_an_all_digit_anomaly_answer_beyond_the_int_limit_keeps_its_format_score() -> None:
    assert accuracy_reward(LONG, ANOMALY) == 0.0
    assert format_reward(LONG, ANOMALY) == 0.5 == authors_format(LONG, ANOMALY)
    assert reward(f"<think>x</think><answer>{LONG}</answer>", ANOMALY, "official", "cot").total == 1.0
    rewards = DenseGeometricReward()([LONG, "9"], task=["anomaly"] * 2, target=['{"cell": 9, "grid": 4}'] * 2)
    assert rewards == [0.5, 1.5]
    # the paper profile's element rule: an overlong number is not a cell of the grid
    assert format_reward(LONG, ANOMALY, "paper") == 0.0


@pytest.mark.parametrize(
    ("truth", "answer", "accuracy", "fmt"),
    [
        (ANOMALY, f"9 {LONG}", 1.0, 0.0),  # the first integer is read; the answer is not digits only
        (ANOMALY, f"{LONG} 9", 0.0, 0.0),  # the first integer cannot be read
        (TIERS, f"Label 1, Label 2 {LONG}", 1.0, 0.5),  # a tier rule never converts digits
        (BOXES, f"(0, 0, 500, 500), (100, 100, 300, 300) {LONG}", 1.0, 0.5),  # digits outside a box
        (BOXES, f"(0, 0, 500, 500), (100, 100, 300, {LONG})", 0.0, 0.0),  # inside a box
        (JIGSAW, f"2 0 3 {LONG}", 0.0, 0.0),  # every jigsaw integer is converted
    ],
)
def test_overlong_integers_score_what_the_authors_code_scores(
    truth: Truth, answer: str, accuracy: float, fmt: float
) -> None:
    assert (accuracy_reward(answer, truth), format_reward(answer, truth)) == (accuracy, fmt)
    assert (authors_accuracy(answer, truth), authors_format(answer, truth)) == (accuracy, fmt)


def test_paper_profile_counts_an_overlong_element_as_one_malformed_element() -> None:
    assert format_reward(f"2 0 3 {LONG}", JIGSAW, "paper") == 0.5 * 3 / 4
    assert format_reward(f"(0, 0, 500, 500), (1, 1, {LONG}, 3)", BOXES, "paper") == 0.5 * 1 / 2


PIECES = st.sampled_from(
    [
        LONG,
        "0" * (LIMIT + 3),
        f"(0, 0, {LONG}, 500)",
        "(0, 0, 500, 500)",
        "(100,100,300,300)",
        "(9, 9, 1, 1)",
        "Label 1",
        "Label 2",
        "2",
        "0",
        "3",
        "1",
        "9",
        "15",
        "40",
        " ",
        ", ",
        "x",
    ]
)


@settings(max_examples=400, deadline=None)
@given(
    pieces=st.lists(PIECES, min_size=1, max_size=6),
    truth=st.sampled_from([ANOMALY, JIGSAW, BOXES, TIERS, Truth("anomaly", cell=0, grid=4)]),
)
def test_official_profile_equals_the_authors_code_on_fuzzed_answers(pieces: list[str], truth: Truth) -> None:
    response = "".join(pieces)
    answer = extract_answer(response)
    assert math.isclose(accuracy_reward(response, truth), authors_accuracy(answer, truth), abs_tol=1e-12)
    assert math.isclose(format_reward(response, truth), authors_format(answer, truth), abs_tol=1e-12)


# ---------------------------------------------------------------- the reward apart


def test_reward_module_imports_only_the_standard_library() -> None:
    tree = ast.parse(Path(reward_module.__file__).read_text("utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert imported and imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


PURE = ["medscout_data", "medscout_data.evaluation", "medscout_data.evaluation.reward"]
PURE += ["medscout_data.integrations"]
MESSAGES = ["medscout_data.tasks", "medscout_data.tasks.messages", "medscout_data.tasks.prompts"]


@pytest.mark.parametrize(
    ("root", "extra"),
    [
        ("medscout_data.integrations.swift", []),
        ("medscout_data.integrations.lmms_eval", MESSAGES),  # the task builds the one prompt itself
        ("medscout_data.integrations.trainer_rewards", []),
    ],
)
def test_exports_copy_only_the_reward_and_the_prompt(root: str, extra: list[str]) -> None:
    assert closure([root]) == sorted([*PURE, *extra, root])


def test_public_names_stay_importable_from_score() -> None:
    from medscout_data.evaluation import score

    for name in ("DenseGeometricReward", "Truth", "reward", "resolve_bench", "load_bench", "BenchSource"):
        assert hasattr(score, name), name
    assert score.DenseGeometricReward is DenseGeometricReward
