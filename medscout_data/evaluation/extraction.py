"""Answer extraction: how a free-form response becomes the answer text that accuracy scores.

Three methods (`--extract`), recorded in every `scores.json`:

- `strict` (default): the content of the first `<answer>...</answer>`, else the
  whole response, read by the scorer's own parser: the authors' reward code.
- `lenient`: the rule-based normaliser below (`LENIENT_VERSION`), for the forms
  real models write. It never reinterprets a convention the question fixed:
  indices stay 0-based (a 1-based "row 3, column 2" stays wrong), boxes stay
  (x1, y1, x2, y2) on the 0-1000 grid (pixel coordinates are not rescaled), and
  an answer already in canonical form is kept as it is, so the truth never
  scores lower than under `strict`. When no rule gives a well-formed answer, the
  strict reading stands.
- `judge`: an LLM rewrites the response into the canonical format (judge.py).

Format and CoT rewards always judge the raw response: extraction repairs how an
answer is read, never whether the model followed the format.

Lenient rules, applied to the strict answer text (after the `<answer>` tags):

0. Focus: the content of the last `\\boxed{...}`; Markdown emphasis and code
   fences removed; the text after the last "answer:" / "answer is"; number
   words (zero..sixteen) read as digits when the text holds no digit.
1. anomaly: `cell 9` / `index 9` / `block #9` (one value); else `row R, column
   C` (either order, or `R2C1`) -> R x grid + C when both are on the grid;
   else the one integer the text holds (`**9**`, `[9]`).
2. jigsaw: `position 0: 2, position 1: 0, ...` with positions 0..n-1; else
   `top-left: 2, top-right: 0, bottom-left: 3, bottom-right: 1` (2x2); else
   the last run of exactly n integers separated only by spaces, commas,
   dashes, arrows or brackets (`[2, 0, 3, 1]`, `2-0-3-1`, `[[2, 0], [3, 1]]`);
   else n digits written together (`2031`).
3. scale tier: every `Label|Level|Tier|L` + number (`L1`, `level-2`, `label1`);
   else `crop|image K: V` pairs ordered by K; else exactly n bare numbers
   (`1, 2, 1`, `[1, 2, 1]`). Values are kept: `Level 3` stays an invalid label.
4. scale box: n groups of four numbers in (), [] or {} (commas or spaces
   between); else n `(x1, y1), (x2, y2)` point pairs (Qwen-VL style); else
   `x1=.., y1=.., x2=.., y2=..` groups; else exactly 4n bare numbers. If
   every number is in [0, 1] and one has a decimal point, they are fractions
   of the image and are multiplied by 1000; then rounded and clamped to 0..1000.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from medscout_data.evaluation.score import BenchItem, Truth, extract_answer

LENIENT_VERSION = "lenient-1"
METHODS = ("strict", "lenient", "judge")

_NUM = r"-?\d+(?:\.\d+)?"
_BOX = r"\(\s*\d+\s*,\s*\d+\s*,\s*\d+\s*,\s*\d+\s*\)"
_CANONICAL = {
    "anomaly": re.compile(r"\d+"),
    "tier": re.compile(r"Label [12](?:\s*,\s*Label [12])*"),
    "box": re.compile(rf"{_BOX}(?:\s*,\s*{_BOX})*"),
    "jigsaw": re.compile(r"\d+(?:[\s,]+\d+)*"),
}
_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
]
_WORD = re.compile(rf"\b({'|'.join(_WORDS)})\b", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_MARKER = re.compile(r"(?:final answer|answer)\s*(?:is|:|=)\s*", re.IGNORECASE)
_INT = re.compile(r"\d+")
_SEPARATORS = r"(?:\s*(?:[,;|/\[\]()\-–>→]|\s)\s*)+"
_RUN = re.compile(rf"\d+(?:{_SEPARATORS}\d+)*")

_CELL = re.compile(
    r"\b(?:cell|index|block|square|patch|region)\s*(?:#|no\.?|number|k\s*=)?\s*[:=]?\s*(\d+)", re.IGNORECASE
)
_ROW_COL = re.compile(r"\brow\s*[:#=]?\s*(\d+)[^\d]{0,15}?\bcol(?:umn)?\s*[:#=]?\s*(\d+)", re.IGNORECASE)
_COL_ROW = re.compile(r"\bcol(?:umn)?\s*[:#=]?\s*(\d+)[^\d]{0,15}?\brow\s*[:#=]?\s*(\d+)", re.IGNORECASE)
_RC = re.compile(r"\bR(\d+)\s*C(\d+)\b", re.IGNORECASE)

_POSITION = re.compile(
    r"\b(?:position|pos|slot)\s*#?\s*(\d+)\s*(?::|=|->|→|is|has|holds)\s*(?:tile\s*)?#?\s*(\d+)",
    re.IGNORECASE,
)
_CORNERS = ("top[- ]?left", "top[- ]?right", "bottom[- ]?left", "bottom[- ]?right")

_LABEL = re.compile(r"\b(?:label|level|tier|lvl)\s*[-_:#]?\s*(\d+)|\bL(\d+)\b", re.IGNORECASE)
_KEYED = re.compile(r"\b(?:crop|image|view)\s*#?\s*(\d+)\s*(?::|=|-|–|is)\s*(\d+)\b", re.IGNORECASE)

_QUAD = re.compile(rf"[(\[{{]\s*({_NUM})[\s,]+({_NUM})[\s,]+({_NUM})[\s,]+({_NUM})\s*[)\]}}]")
_PAIRS = re.compile(
    rf"\(\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*(?:,|to|-|–|and)?\s*\(\s*({_NUM})\s*,\s*({_NUM})\s*\)",
    re.IGNORECASE,
)
_KEY_VALUES = re.compile(
    rf"x1\s*[:=]\s*({_NUM})\W+y1\s*[:=]\s*({_NUM})\W+x2\s*[:=]\s*({_NUM})\W+y2\s*[:=]\s*({_NUM})",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class AnswerShape:
    """What an answer must look like, and nothing of its values: the rules never see the truth."""

    kind: str  # tier, box, jigsaw, anomaly
    size: int  # crops, tiles, or 1 cell
    grid: int  # grid side (anomaly, jigsaw)

    @classmethod
    def of(cls, truth: Truth) -> AnswerShape:
        return cls(truth.kind, truth.size, truth.grid)


def is_canonical(answer: str, shape: AnswerShape) -> bool:
    """Whether the answer text is already exactly in the canonical format, with the right count."""
    if _CANONICAL[shape.kind].fullmatch(answer) is None:
        return False
    count = {"tier": answer.count("Label"), "box": answer.count("(")}.get(shape.kind)
    if shape.kind == "jigsaw":
        count = len(_INT.findall(answer))
    return shape.kind == "anomaly" or count == shape.size


def lenient_answer(response: str, shape: AnswerShape) -> str:
    """The canonical answer text the lenient rules read from a response (see the module docstring)."""
    answer = extract_answer(response)
    if is_canonical(answer, shape):
        return answer
    value = _NORMALISERS[shape.kind](focus(answer), shape)
    return answer if value is None else value


def focus(text: str) -> str:
    """Rule 0: the part of the text that holds the answer, with number words as digits."""
    boxed = _BOXED.findall(text)
    if boxed:
        text = boxed[-1]
    text = re.sub(r"```\w*|\*\*|__|`", " ", text)
    markers = list(_MARKER.finditer(text))
    if markers and text[markers[-1].end() :].strip():
        text = text[markers[-1].end() :]
    if not re.search(r"\d", text):
        text = _WORD.sub(lambda m: str(_WORDS.index(m.group(1).lower())), text)
    return text.strip().rstrip(".").strip()


def _anomaly(text: str, shape: AnswerShape) -> str | None:
    cells = set(_CELL.findall(text))
    if len(cells) == 1:
        return str(int(cells.pop()))
    for pattern, order in ((_ROW_COL, 1), (_COL_ROW, -1), (_RC, 1)):
        match = pattern.search(text)
        if match:
            row, col = (int(v) for v in match.groups()[::order])
            return str(row * shape.grid + col) if row < shape.grid and col < shape.grid else None
    values = set(_INT.findall(text))
    return str(int(values.pop())) if len(values) == 1 else None


def _jigsaw(text: str, shape: AnswerShape) -> str | None:
    n = shape.size
    positions = {int(k): int(v) for k, v in _POSITION.findall(text)}
    if sorted(positions) == list(range(n)):
        return " ".join(str(positions[k]) for k in range(n))
    if shape.grid == 2:
        corners = [re.search(rf"\b{c}\b[^\d]{{0,20}}?(\d+)", text, re.IGNORECASE) for c in _CORNERS]
        if all(corners):
            return " ".join(str(int(m.group(1))) for m in corners if m)
    runs = [_INT.findall(run.group()) for run in _RUN.finditer(text)]
    fitting = [run for run in runs if len(run) == n]
    if fitting:
        return " ".join(str(int(v)) for v in fitting[-1])
    packed = re.sub(r"[\s\[\]()\"']", "", text)
    if n <= 10 and re.fullmatch(rf"\d{{{n}}}", packed):
        return " ".join(packed)
    return None


def _tier(text: str, shape: AnswerShape) -> str | None:
    labels = [a or b for a, b in _LABEL.findall(text)]
    if len(labels) != shape.size:
        keyed = {int(k): v for k, v in _KEYED.findall(text)}
        labels = [keyed[k] for k in sorted(keyed)] if len(keyed) == shape.size else []
    if not labels:
        bare = re.sub(r"[\[\]()]", " ", text).strip()
        if re.fullmatch(r"\d+(?:[\s,;]+\d+)*", bare) and len(_INT.findall(bare)) == shape.size:
            labels = _INT.findall(bare)
    return ", ".join(f"Label {int(v)}" for v in labels) if labels else None


def _box(text: str, shape: AnswerShape) -> str | None:
    for pattern in (_QUAD, _PAIRS, _KEY_VALUES):
        boxes = [list(group) for group in pattern.findall(text)]
        if len(boxes) == shape.size:
            return _grid_boxes(boxes)
    bare = re.sub(r"[\[\]()]", " ", text).strip()
    if re.fullmatch(rf"{_NUM}(?:[\s,;]+{_NUM})*", bare):
        numbers = re.findall(_NUM, bare)
        if len(numbers) == 4 * shape.size:
            return _grid_boxes([numbers[i : i + 4] for i in range(0, len(numbers), 4)])
    return None


def _grid_boxes(boxes: Sequence[Sequence[str]]) -> str:
    """Boxes of number strings as canonical text: fractions x 1000 (rule 4), rounded, clamped."""
    values = [float(v) for box in boxes for v in box]
    scale = 1000 if all(0 <= v <= 1 for v in values) and any("." in v for box in boxes for v in box) else 1
    grid = [min(max(math.floor(v * scale + 0.5), 0), 1000) for v in values]
    return ", ".join("({}, {}, {}, {})".format(*grid[i : i + 4]) for i in range(0, len(grid), 4))


_NORMALISERS = {"anomaly": _anomaly, "jigsaw": _jigsaw, "tier": _tier, "box": _box}


@dataclass(frozen=True)
class LenientExtractor:
    """`--extract lenient` for `score_file` / `score_bench`."""

    name: str = "lenient"

    def answers(self, items: Sequence[BenchItem], predictions: Mapping[str, str]) -> dict[str, str]:
        return {
            item.id: lenient_answer(predictions[item.id], AnswerShape.of(item.truth))
            for item in items
            if item.id in predictions
        }

    def describe(self) -> dict[str, Any]:
        return {"method": "lenient", "rules": LENIENT_VERSION}


STRICT = {"method": "strict"}
