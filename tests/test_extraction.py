"""Lenient extraction: a table of real-looking phrasings with the canonical answer each must give
(including conventions that must stay wrong), and the property that the truth never scores lower
than under strict."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medscout_data.evaluation.extraction import AnswerShape, is_canonical, lenient_answer
from medscout_data.evaluation.score import Truth, accuracy_reward, extract_answer

ANOMALY = AnswerShape("anomaly", 1, 4)
JIGSAW = AnswerShape("jigsaw", 4, 2)
TIER = AnswerShape("tier", 3, 0)
BOX = AnswerShape("box", 3, 0)
BOXES = "(100, 100, 300, 300), (0, 0, 500, 500), (500, 500, 1000, 1000)"

PHRASINGS = [
    # anomaly: the 4x4 grid, cells 0..15, row = k // 4, col = k % 4
    (ANOMALY, "9", "9"),
    (ANOMALY, "The replaced cell is cell 9.", "9"),
    (ANOMALY, "Cell 9", "9"),
    (ANOMALY, "cell #9", "9"),
    (ANOMALY, "Index: 9", "9"),
    (ANOMALY, "**9**", "9"),
    (ANOMALY, "[9]", "9"),
    (ANOMALY, "nine", "9"),
    (ANOMALY, "The anomalous block is number ten.", "10"),
    (ANOMALY, "Row 2, column 1", "9"),
    (ANOMALY, "It's in row 2 and column 2.", "10"),
    (ANOMALY, "column 1, row 2", "9"),
    (ANOMALY, "R2C1", "9"),
    (ANOMALY, "Cell 9 (row 2, column 1) looks pasted.", "9"),
    (ANOMALY, "\\boxed{6}", "6"),
    (ANOMALY, "Looking at the seams around the centre... Final answer: 5", "5"),
    (ANOMALY, "<think>row 1 col 1 is smooth</think><answer>cell 10</answer>", "10"),
    (ANOMALY, "row 3, column 2", "14"),  # 1-based "row 3, column 2" (= cell 9) stays wrong
    (ANOMALY, "row 4, column 2", "row 4, column 2"),  # off the 0-based grid: the strict reading stands
    (ANOMALY, "cell 5 or cell 9", "cell 5 or cell 9"),  # two answers: no rule picks one
    # jigsaw: 4 tiles, for each shuffled position its original index
    (JIGSAW, "2 0 3 1", "2 0 3 1"),
    (JIGSAW, "[2, 0, 3, 1]", "2 0 3 1"),
    (JIGSAW, "2-0-3-1", "2 0 3 1"),
    (JIGSAW, "2, 0, 3, 1.", "2 0 3 1"),
    (JIGSAW, "(2, 0, 3, 1)", "2 0 3 1"),
    (JIGSAW, "[[2, 0], [3, 1]]", "2 0 3 1"),
    (JIGSAW, "2031", "2 0 3 1"),
    (JIGSAW, "In the 2x2 grid the order is 2 -> 0 -> 3 -> 1.", "2 0 3 1"),
    (JIGSAW, "position 0: 2, position 1: 0, position 2: 3, position 3: 1", "2 0 3 1"),
    (JIGSAW, "Top-left: 2, top-right: 0, bottom-left: 3, bottom-right: 1", "2 0 3 1"),
    (JIGSAW, "two zero three one", "2 0 3 1"),
    (JIGSAW, "```\n2 0 3 1\n```", "2 0 3 1"),
    (JIGSAW, "The answer is: 1 3 0 2", "1 3 0 2"),
    (JIGSAW, "<answer>[3, 2, 1, 0]</answer>", "3 2 1 0"),
    (JIGSAW, "3 1 4 2", "3 1 4 2"),  # 1-based tile indices stay wrong (already canonical)
    (JIGSAW, "position 1: 3, position 2: 1, position 3: 4, position 4: 2",
     "position 1: 3, position 2: 1, position 3: 4, position 4: 2"),  # 1-based positions: not remapped
    # scale tiers: Label 1 (20% of the area) or Label 2 (6.25%), one per crop
    (TIER, "Label 1, Label 2, Label 1", "Label 1, Label 2, Label 1"),
    (TIER, "L1, L2, L1", "Label 1, Label 2, Label 1"),
    (TIER, "level 1, level 2, level 1", "Label 1, Label 2, Label 1"),
    (TIER, "Level-2, Level-2, Level-1", "Label 2, Label 2, Label 1"),
    (TIER, "label1 label2 label1", "Label 1, Label 2, Label 1"),
    (TIER, "[1, 2, 1]", "Label 1, Label 2, Label 1"),
    (TIER, "1, 2, 2", "Label 1, Label 2, Label 2"),
    (TIER, "Crop 1: Label 2, Crop 2: Label 1, Crop 3: Label 1", "Label 2, Label 1, Label 1"),
    (TIER, "Image 2: 1, Image 3: 2, Image 4: 2", "Label 1, Label 2, Label 2"),
    (TIER, "Tier 2, Tier 1, Tier 2", "Label 2, Label 1, Label 2"),
    (TIER, "Label one, Label two, Label one", "Label 1, Label 2, Label 1"),
    (TIER, "**Label 1**, **Label 1**, **Label 2**", "Label 1, Label 1, Label 2"),
    (TIER, "Level 3, Level 1, Level 2", "Label 3, Label 1, Label 2"),  # an invalid label stays invalid
    (TIER, "Label 1, Label 2", "Label 1, Label 2"),  # two for three crops: no rule invents one
    # scale boxes: (x1, y1, x2, y2) integers on the 0-1000 grid
    (BOX, BOXES, BOXES),
    (BOX, "[100, 100, 300, 300], [0, 0, 500, 500], [500, 500, 1000, 1000]", BOXES),
    (BOX, "{100, 100, 300, 300} {0, 0, 500, 500} {500, 500, 1000, 1000}", BOXES),
    (BOX, "[100 100 300 300] [0 0 500 500] [500 500 1000 1000]", BOXES),
    (BOX, "(0.1, 0.1, 0.3, 0.3), (0, 0, 0.5, 0.5), (0.5, 0.5, 1.0, 1.0)", BOXES),
    (BOX, "(0.19, 0.07, 0.64, 0.51), (0.1, 0.1, 0.2, 0.2), (0, 0, 0.5, 0.5)",
     "(190, 70, 640, 510), (100, 100, 200, 200), (0, 0, 500, 500)"),
    (BOX, "(100,100),(300,300); (0,0),(500,500); (500,500),(1000,1000)", BOXES),
    (BOX, "Crop 1: x1=100, y1=100, x2=300, y2=300. Crop 2: x1=0, y1=0, x2=500, y2=500. "
          "Crop 3: x1=500, y1=500, x2=1000, y2=1000", BOXES),
    (BOX, "100 100 300 300, 0 0 500 500, 500 500 1000 1000", BOXES),
    (BOX, "(100.4, 99.6, 300, 300), (0, 0, 500, 500), (500, 500, 1000, 1000)", BOXES),
    (BOX, "(-5, 0, 300, 300), (0, 0, 500, 500), (500, 500, 1200, 1000)",
     "(0, 0, 300, 300), (0, 0, 500, 500), (500, 500, 1000, 1000)"),  # clamped to the grid
    (BOX, '```json\n[{"bbox_2d": [45, 60, 120, 200]}, {"bbox_2d": [1, 2, 3, 4]}, '
          '{"bbox_2d": [5, 6, 7, 8]}]\n```',
     "(45, 60, 120, 200), (1, 2, 3, 4), (5, 6, 7, 8)"),  # pixel-like values are taken as given, not rescaled
    (BOX, "(100, 100, 300, 300), (0, 0, 500, 500)", "(100, 100, 300, 300), (0, 0, 500, 500)"),  # two of three
]  # fmt: skip


def test_the_table_is_large_enough() -> None:
    assert len(PHRASINGS) >= 40
    assert {shape.kind for shape, _, _ in PHRASINGS} == {"anomaly", "jigsaw", "tier", "box"}


@pytest.mark.parametrize(("shape", "response", "expected"), PHRASINGS)
def test_lenient_phrasings(shape: AnswerShape, response: str, expected: str) -> None:
    assert lenient_answer(response, shape) == expected


TRUTHS = [
    Truth("anomaly", cell=9, grid=4),
    Truth("anomaly", cell=5, grid=4),
    Truth("jigsaw", permutation=(2, 0, 3, 1), grid=2),
    Truth("tier", labels=("Label 1", "Label 2", "Label 1")),
    Truth("box", boxes=((100, 100, 300, 300), (0, 0, 500, 500), (500, 500, 1000, 1000))),
]
WRAPPERS = ["{}", "<answer>{}</answer>", "<think>...</think>\n<answer>{}</answer>", "  {}\n"]


@pytest.mark.parametrize("truth", TRUTHS)
@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_the_truth_is_kept_as_it_is(truth: Truth, wrapper: str) -> None:
    response = wrapper.format(truth.answer_text())
    shape = AnswerShape.of(truth)
    assert is_canonical(truth.answer_text(), shape)
    assert lenient_answer(response, shape) == extract_answer(response) == truth.answer_text()


@st.composite
def truths(draw: st.DrawFn) -> Truth:
    kind = draw(st.sampled_from(["anomaly", "jigsaw", "tier", "box"]))
    if kind == "anomaly":
        return Truth("anomaly", cell=draw(st.sampled_from([5, 6, 9, 10])), grid=4)
    if kind == "jigsaw":
        return Truth("jigsaw", permutation=tuple(draw(st.permutations([0, 1, 2, 3]))), grid=2)
    if kind == "tier":
        return Truth(
            "tier",
            labels=tuple(draw(st.lists(st.sampled_from(["Label 1", "Label 2"]), min_size=3, max_size=3))),
        )
    corners = st.tuples(st.integers(0, 500), st.integers(0, 500), st.integers(1, 500), st.integers(1, 500))
    boxes = draw(st.lists(corners, min_size=3, max_size=3))
    return Truth("box", boxes=tuple((x, y, x + w, y + h) for x, y, w, h in boxes))


@settings(max_examples=300, deadline=None)
@given(truths(), st.sampled_from(WRAPPERS), st.sampled_from(["official", "paper"]))
def test_the_truth_never_scores_lower_than_under_strict(truth: Truth, wrapper: str, profile: str) -> None:
    response = wrapper.format(truth.answer_text())
    lenient = lenient_answer(response, AnswerShape.of(truth))
    assert accuracy_reward(lenient, truth, profile) >= accuracy_reward(response, truth, profile)
    assert accuracy_reward(lenient, truth, profile) == 1.0
