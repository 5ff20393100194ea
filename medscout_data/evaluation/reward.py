"""Dense Geometric Reward: one model response against one item's truth, pure and standard-library only.

`accuracy_reward`, `format_reward` and `cot_reward` score one response
against one item, under the `official` or `paper` profile; `reward` bundles
them. `accuracy_rewards` / `format_rewards` / `cot_rewards` /
`total_rewards` take `(completions, items) -> list[float]` for training
loops, and `DenseGeometricReward` plugs into GRPO trainers (TRL, ms-swift)
that pass dataset columns as keyword lists.

This module imports nothing outside the standard library, so `export` copies
it alone (with the package `__init__` files) into `_medscout/` beside the
ms-swift plugin and the lmms-eval task: the reward a trainer computes is this
exact code, on a machine where medscout-data is not installed.

The answer text of a response is the content of its first
`<answer>...</answer>`, else the whole response, stripped.

Profile `official` keeps the semantics of the authors' released reward code
(Med-Scout `examples/train/grpo/plugin/plugin.py`, `MedScoutAccuracyORM` and
`MedScoutFormatORM`). Profile `paper` follows the paper's formulas: no 0.2
floor on the box IoU, and a format reward proportional to the fraction of
well-formed answer elements. The task-by-task definitions are in the
docstrings of the functions below. Rewards per item: accuracy in [0, 1],
format in [0, 0.5], CoT in {0, 0.5} (CoT mode only); a perfect Direct answer
totals 1.5, a perfect CoT answer 2.0.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PROFILES = ("official", "paper")
MODES = ("direct", "cot")
COMPONENTS = ("accuracy", "format", "cot", "total")
FORMAT_WEIGHT = 0.5
COT_WEIGHT = 0.5
BOX_IOU_FLOOR = 0.2  # official profile: a mean IoU below this scores 0
TAU = 1.0  # anomaly: exp(-distance / TAU)
GRID_SIZE = 1000  # boxes in answers are integers on a 0..1000 grid
LABELS = ("Label 1", "Label 2")

Box = tuple[int, int, int, int]

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_INT = re.compile(r"\d+")
_BOX = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\)")
_LABEL = re.compile(r"Label [12]")
_DIGITS = re.compile(r"\d+")
# No <think>/<answer> tag of either kind inside a block.
_BLOCK = r"(?:(?!</?(?:think|answer)>).)*"
_COT = re.compile(rf"\s*<think>{_BLOCK}</think>\s*<answer>{_BLOCK}</answer>\s*", re.DOTALL)


# ---------------------------------------------------------------- truth


@dataclass(frozen=True)
class Truth:
    """The structured truth of one item, in the form the rewards compare against.

    `kind` is the scale variant (`tier`, `box`) or the task (`jigsaw`,
    `anomaly`); only the fields of that kind are filled.
    """

    kind: str
    labels: tuple[str, ...] = ()
    boxes: tuple[Box, ...] = ()
    permutation: tuple[int, ...] = ()
    cell: int = -1
    grid: int = 0

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> Truth:
        """From an item row (or dict) with `task`, `variant` and `target` (JSON text or a dict)."""
        task, variant = item["task"], item.get("variant") or ""
        target = item["target"]
        target = json.loads(target) if isinstance(target, (str, bytes)) else target
        if task == "scale" and variant == "tier":
            return cls("tier", labels=tuple(f"Label {level}" for level in target["levels"]))
        if task == "scale" and variant == "box":
            boxes = tuple(tuple(int(v) for v in box) for box in target["boxes_1000"])
            if any(len(box) != 4 for box in boxes):
                raise ValueError(f"boxes_1000 must hold (x1, y1, x2, y2) boxes, got {boxes}")
            return cls("box", boxes=boxes)
        if task == "jigsaw":
            permutation = tuple(int(k) for k in target["permutation"])
            return cls("jigsaw", permutation=permutation, grid=int(target["grid"]))
        if task == "anomaly":
            return cls("anomaly", cell=int(target["cell"]), grid=int(target["grid"]))
        raise ValueError(f"unknown task/variant {task!r}/{variant!r}")

    @property
    def size(self) -> int:
        """How many elements the answer has: crops, tiles, or 1 cell."""
        if self.kind == "anomaly":
            return 1
        return len(self.labels) + len(self.boxes) + len(self.permutation)  # only one is filled

    def answer_text(self) -> str:
        """The canonical answer text (what goes inside `<answer>`)."""
        if self.kind == "tier":
            return ", ".join(self.labels)
        if self.kind == "box":
            return ", ".join("({}, {}, {}, {})".format(*box) for box in self.boxes)
        if self.kind == "jigsaw":
            return " ".join(map(str, self.permutation))
        return str(self.cell)


def _truth(item: Mapping[str, Any] | Truth) -> Truth:
    return item if isinstance(item, Truth) else Truth.from_item(item)


# ---------------------------------------------------------------- parsing


def extract_answer(response: str) -> str:
    """The content of the first `<answer>...</answer>`, else the whole response; stripped."""
    match = _ANSWER.search(response)
    return (match.group(1) if match else response).strip()


def parse_boxes(text: str) -> list[Box]:
    """Every `(int, int, int, int)` in the text, in order (official parsing)."""
    return [tuple(int(v) for v in match) for match in _BOX.findall(text)]


def parse_ints(text: str) -> list[int]:
    """Every run of digits in the text, in order (signs and decimals are not read)."""
    return [int(v) for v in _INT.findall(text)]


def box_iou(a: Sequence[int], b: Sequence[int]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes.

    Zero when the intersection is empty or degenerate: an inverted box
    (x1 > x2 or y1 > y2) never overlaps anything (the authors' code).
    """
    ix1, iy1 = max(a[0], b[0]), max(a[1], b[1])
    ix2, iy2 = min(a[2], b[2]), min(a[3], b[3])
    if ix1 >= ix2 or iy1 >= iy2:
        return 0.0
    inter = (ix2 - ix1) * (iy2 - iy1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# ---------------------------------------------------------------- accuracy


def anomaly_accuracy(answer: str, truth: Truth) -> float:
    """exp(-d / TAU) for the first integer k of the answer, d the Euclidean distance of
    (k // grid, k % grid) to the truth's (row, col); 0 when there is no integer or
    k is outside 0..grid*grid - 1 (0..15 on the 4x4 grid)."""
    match = _INT.search(answer)
    if match is None:
        return 0.0
    k, cells = int(match.group()), truth.grid * truth.grid
    if not (0 <= k < cells and 0 <= truth.cell < cells):
        return 0.0
    (row, col), (true_row, true_col) = divmod(k, truth.grid), divmod(truth.cell, truth.grid)
    return math.exp(-math.hypot(row - true_row, col - true_col) / TAU)


def box_accuracy(answer: str, truth: Truth, floor: float = BOX_IOU_FLOOR) -> float:
    """Mean IoU over positions of every parsed `(int, int, int, int)` when their count equals
    the truth's, else 0. A mean below `floor` scores 0 (official 0.2; the paper profile uses 0)."""
    boxes = parse_boxes(answer)
    if not boxes or len(boxes) != len(truth.boxes):
        return 0.0
    mean = sum(box_iou(p, t) for p, t in zip(boxes, truth.boxes, strict=True)) / len(boxes)
    return mean if mean >= floor else 0.0


def tier_accuracy(answer: str, truth: Truth) -> float:
    """Fraction of positions whose `Label 1|2` equals the truth's, when the answer holds as
    many labels as the truth (every `Label 1` / `Label 2` in the text, in order), else 0."""
    labels = _LABEL.findall(answer)
    if not labels or len(labels) != len(truth.labels):
        return 0.0
    return sum(p == t for p, t in zip(labels, truth.labels, strict=True)) / len(truth.labels)


def jigsaw_accuracy(answer: str, truth: Truth) -> float:
    """Fraction of positions whose integer equals the truth's, when the answer holds as many
    integers as the truth and none twice; else 0.

    "Exact match only when 2 or fewer" (the authors' code): with 2 or fewer
    tiles, the reward is all-or-nothing (1 only for the exact permutation);
    with more (the 2x2 grid's 4), the positional fraction.
    """
    values = parse_ints(answer)
    if len(values) != len(truth.permutation) or len(set(values)) != len(values):
        return 0.0
    if len(values) <= 2:
        return float(tuple(values) == truth.permutation)
    return sum(p == t for p, t in zip(values, truth.permutation, strict=True)) / len(values)


def overlong_int(text: str) -> bool:
    """Whether the text holds a run of digits longer than Python's int-conversion limit
    (`sys.get_int_max_str_digits()`, 4300 by default), which `int()` refuses to read."""
    limit = sys.get_int_max_str_digits()
    return bool(limit) and len(text) > limit and re.search(rf"\d{{{limit + 1}}}", text) is not None


def _accuracy(answer: str, truth: Truth, profile: str) -> float:
    """Accuracy of an answer text; a training step never raises.

    An integer that a task's rule reads but `int()` refuses (longer than
    Python's int-conversion limit, see `overlong_int`) scores 0, as in the
    authors' code (a `try` around the whole rule): the anomaly's first
    integer, any integer of a parsed box, any integer of a jigsaw answer.
    Digits a rule never converts (a tier answer's, text outside a box) change
    nothing.
    """
    try:
        if truth.kind == "box":
            return box_accuracy(answer, truth, BOX_IOU_FLOOR if profile == "official" else 0.0)
        return {"tier": tier_accuracy, "jigsaw": jigsaw_accuracy, "anomaly": anomaly_accuracy}[truth.kind](
            answer, truth
        )
    except ValueError:  # int() of a run of digits beyond sys.get_int_max_str_digits()
        return 0.0


# ---------------------------------------------------------------- format


def official_format(answer: str, truth: Truth) -> float:
    """Format score in [0, 1] (before the 0.5 weight), as the authors' code computes it.

    - anomaly: 1 if the answer is only digits.
    - box: 0 with no parsed box; else 1/3, +1/3 if the count equals the
      truth's, +1/3 if the count matches and every box has x1 <= x2 and
      y1 <= y2 (the order check only counts once the count is right).
    - tier: 0 with no `Label 1|2`; else 0.5, +0.5 if the count matches.
    - jigsaw: 0 if the count of integers differs from the truth's; else 0.5,
      +0.5 if no integer repeats.
    """
    if truth.kind == "anomaly":
        return float(_DIGITS.fullmatch(answer) is not None)
    if truth.kind == "box":
        boxes = parse_boxes(answer)
        if not boxes:
            return 0.0
        count_ok = len(boxes) == len(truth.boxes)
        ordered = count_ok and all(x1 <= x2 and y1 <= y2 for x1, y1, x2, y2 in boxes)
        return (1 + count_ok + ordered) / 3
    if truth.kind == "tier":
        labels = _LABEL.findall(answer)
        return 0.0 if not labels else 0.5 + 0.5 * (len(labels) == len(truth.labels))
    values = parse_ints(answer)
    if len(values) != len(truth.permutation):
        return 0.0
    return 0.5 + 0.5 * (len(set(values)) == len(values))


def split_top_level(text: str, separator: str = ",") -> list[str]:
    """`text` split at `separator`s outside parentheses; pieces stripped, empty pieces dropped."""
    pieces, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth = max(depth - 1, 0)
        elif char == separator and depth == 0:
            pieces.append(text[start:index])
            start = index + 1
    pieces.append(text[start:])
    return [p.strip() for p in pieces if p.strip()]


def answer_elements(answer: str, truth: Truth) -> list[str]:
    """The answer's elements under the paper profile.

    - tier: comma-separated pieces; box: comma-separated pieces outside
      parentheses (one per box); jigsaw and anomaly: whitespace-separated
      tokens. Pieces are stripped; empty pieces (a trailing comma) are dropped.
    """
    if truth.kind in ("tier", "box"):
        return split_top_level(answer)
    return answer.split()


def element_matches(elements: Sequence[str], truth: Truth) -> list[bool]:
    """Whether each element matches the task's schema (paper profile).

    - tier: exactly `Label 1` or `Label 2`.
    - box: exactly `(x1, y1, x2, y2)` (spaces optional) with integers in
      0..1000, x1 <= x2 and y1 <= y2.
    - jigsaw: a non-negative integer in 0..n-1 (n tiles) not already given by
      an earlier element (a permutation uses each index once).
    - anomaly: a non-negative integer in 0..grid*grid-1, a cell of the grid.
    """
    if truth.kind == "tier":
        return [e in LABELS for e in elements]
    if truth.kind == "box":
        return [_well_formed_box(e) for e in elements]
    if truth.kind == "anomaly":
        return [e.isdecimal() and not overlong_int(e) and int(e) < truth.grid * truth.grid for e in elements]
    seen: set[int] = set()
    flags = []
    for element in elements:
        ok = (
            element.isdecimal()
            and not overlong_int(element)
            and int(element) < len(truth.permutation)
            and int(element) not in seen
        )
        if ok:
            seen.add(int(element))
        flags.append(ok)
    return flags


def _well_formed_box(element: str) -> bool:
    match = _BOX.fullmatch(element)
    if match is None or overlong_int(element):
        return False
    x1, y1, x2, y2 = (int(v) for v in match.groups())
    return x1 <= x2 <= GRID_SIZE and y1 <= y2 <= GRID_SIZE


def paper_format(answer: str, truth: Truth) -> float:
    """Format score in [0, 1] (before the 0.5 weight) under the paper profile:

        min(matching elements, expected) / max(elements given, expected)

    where `expected` is the truth's element count (crops, tiles, 1 cell).
    Exactly the expected number of elements, all well formed, gives 1;
    malformed elements, missing ones and extra ones (even well-formed) lower it.
    """
    elements = answer_elements(answer, truth)
    matching = min(sum(element_matches(elements, truth)), truth.size)
    denominator = max(len(elements), truth.size)
    return matching / denominator if denominator else 0.0


# ---------------------------------------------------------------- rewards


@dataclass(frozen=True)
class Reward:
    """One response's reward components; `total` is their sum."""

    accuracy: float
    format: float
    cot: float

    @property
    def total(self) -> float:
        return self.accuracy + self.format + self.cot


def _check(profile: str, mode: str = "direct") -> None:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; use one of {', '.join(PROFILES)}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")


def accuracy_reward(response: str, item: Mapping[str, Any] | Truth, profile: str = "official") -> float:
    """Accuracy reward in [0, 1] of a raw response for one item."""
    _check(profile)
    return _accuracy(extract_answer(response), _truth(item), profile)


def format_reward(response: str, item: Mapping[str, Any] | Truth, profile: str = "official") -> float:
    """Format reward in [0, 0.5] of a raw response for one item."""
    _check(profile)
    return _format(extract_answer(response), _truth(item), profile)


def _format(answer: str, truth: Truth, profile: str) -> float:
    """Weighted format reward of an answer text.

    Overlong integers as in the authors' code: 0 where the rule converts them
    (a parsed box, a jigsaw answer), no effect where it only matches text (an
    anomaly answer of digits only scores its 0.5, whatever its length). Under
    the paper profile an overlong element is one malformed element.
    """
    scorer = official_format if profile == "official" else paper_format
    try:
        return FORMAT_WEIGHT * scorer(answer, truth)
    except ValueError:  # int() of a run of digits beyond sys.get_int_max_str_digits()
        return 0.0


def cot_reward(response: str) -> float:
    """0.5 when the response is exactly one `<think>...</think>` then one `<answer>...</answer>`.

    Whitespace is allowed before, between and after the two blocks; nothing
    else is. Tags are lower case; neither block may contain another
    `<think>`, `</think>`, `<answer>` or `</answer>` tag; blocks may be empty
    (as ms-swift's `format` reward allows).
    """
    return COT_WEIGHT if _COT.fullmatch(response) else 0.0


def reward(
    response: str, item: Mapping[str, Any] | Truth, profile: str = "official", mode: str = "direct"
) -> Reward:
    """All components for one response; the CoT reward counts only in `cot` mode."""
    _check(profile, mode)
    return _reward(response, _truth(item), profile, mode)


def _reward(response: str, truth: Truth, profile: str, mode: str, extracted: str | None = None) -> Reward:
    """Rewards of one response. `extracted` (from `--extract lenient|judge`) replaces the answer
    text for accuracy only: format and CoT judge what the model itself wrote."""
    answer = extract_answer(response)
    return Reward(
        accuracy=_accuracy(answer if extracted is None else extracted, truth, profile),
        format=_format(answer, truth, profile),
        cot=cot_reward(response) if mode == "cot" else 0.0,
    )


def accuracy_rewards(
    completions: Sequence[str], items: Sequence[Mapping[str, Any]], profile: str = "official"
) -> list[float]:
    """Accuracy reward per completion; `items` are rows/dicts with task, variant and target."""
    return [accuracy_reward(c, i, profile) for c, i in zip(completions, items, strict=True)]


def format_rewards(
    completions: Sequence[str], items: Sequence[Mapping[str, Any]], profile: str = "official"
) -> list[float]:
    """Format reward per completion."""
    return [format_reward(c, i, profile) for c, i in zip(completions, items, strict=True)]


def cot_rewards(completions: Sequence[str], items: Sequence[Mapping[str, Any]] | None = None) -> list[float]:
    """CoT template reward per completion (items are not needed; accepted for symmetry)."""
    return [cot_reward(c) for c in completions]


def total_rewards(
    completions: Sequence[str],
    items: Sequence[Mapping[str, Any]],
    profile: str = "official",
    mode: str = "direct",
) -> list[float]:
    """Accuracy + format (+ CoT in `cot` mode) per completion."""
    return [reward(c, i, profile, mode).total for c, i in zip(completions, items, strict=True)]


def message_text(content: Any) -> str:
    """A chat message's content as text: a string, or the text parts of a list of parts.

    Lenient on purpose (reward functions call it inside training steps): parts
    that are not text, or whose text is not a string, are left out.
    """
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(
            p["text"] for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str)
        )
    return ""


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, a message dict, or a list of messages (the last one's)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        return message_text(completion.get("content"))
    if isinstance(completion, Sequence) and completion:
        return completion_text(completion[-1])
    return ""


@dataclass(frozen=True)
class DenseGeometricReward:
    """A reward function object for GRPO trainers.

    Call it as `reward(completions, items)` or the way TRL and ms-swift call
    reward functions: `reward(completions=..., task=[...], variant=[...],
    target=[...], **other_columns)`, the dataset's columns as lists.
    Completions may be strings or chat messages.
    """

    component: str = "total"
    profile: str = "official"
    mode: str = "direct"

    def __post_init__(self) -> None:
        _check(self.profile, self.mode)
        if self.component not in COMPONENTS:
            raise ValueError(f"unknown component {self.component!r}; use one of {', '.join(COMPONENTS)}")

    @property
    def __name__(self) -> str:  # TRL logs rewards by function name
        return f"medscout_{self.component}"

    def __call__(
        self,
        completions: Sequence[Any],
        items: Sequence[Mapping[str, Any]] | None = None,
        prompts: Any = None,
        **columns: Any,
    ) -> list[float]:
        texts = [completion_text(c) for c in completions]
        if items is None:
            items = _items_from_columns(columns, len(texts))
        rewards = [reward(t, i, self.profile, self.mode) for t, i in zip(texts, items, strict=True)]
        if self.component == "total":
            return [r.total for r in rewards]
        return [getattr(r, self.component) for r in rewards]


def _items_from_columns(columns: Mapping[str, Any], n: int) -> list[dict[str, Any]]:
    missing = [name for name in ("task", "target") if name not in columns]
    if missing:
        raise ValueError(f"reward needs the dataset column(s) {', '.join(missing)} (or items=...)")
    variants = columns.get("variant") or [""] * n
    return [
        {"task": t, "variant": v, "target": g}
        for t, v, g in zip(columns["task"], variants, columns["target"], strict=True)
    ]


@dataclass(frozen=True)
class BenchItem:
    """One bench item's identity and truth."""

    id: str
    modality: str
    task: str
    variant: str
    truth: Truth
