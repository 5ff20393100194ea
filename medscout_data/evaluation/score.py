"""Dense Geometric Reward: scoring model answers against Med-Scout-Bench.

Three parts, pure functions first and I/O at the edges:

- Rewards. `accuracy_reward`, `format_reward` and `cot_reward` of one response
  against one item, under the `official` or `paper` profile; `reward` bundles
  them. `accuracy_rewards` / `format_rewards` / `cot_rewards` /
  `total_rewards` take `(completions, items) -> list[float]` for training
  loops, and `DenseGeometricReward` plugs into GRPO trainers (TRL, ms-swift)
  that pass dataset columns as keyword lists.
- Bench loading. `resolve_bench` finds the bench shards of a shards root, of a
  staged Hub repo folder, or names a Hub repo id; `load_bench` reads only the
  metadata columns it needs (Parquet column projection: images are never read).
- Scoring. `read_predictions` reads JSONL predictions (plain `id`/`response`
  lines or ms-swift `swift infer` results); `score_bench` gives the mean
  rewards per modality x task (and scale variant) and overall.

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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from medscout_data import MODALITIES, SCALE_VARIANTS, TASKS
from medscout_data.evaluation.errors import ScoreError
from medscout_data.evaluation.predictions import message_text, preview, read_predictions
from medscout_data.report import RunReport

PROFILES = ("official", "paper")
MODES = ("direct", "cot")
COMPONENTS = ("accuracy", "format", "cot", "total")
FORMAT_WEIGHT = 0.5
COT_WEIGHT = 0.5
BOX_IOU_FLOOR = 0.2  # official profile: a mean IoU below this scores 0
TAU = 1.0  # anomaly: exp(-distance / TAU)
GRID_SIZE = 1000  # boxes in answers are integers on a 0..1000 grid
LABELS = ("Label 1", "Label 2")
SCORE_COLUMNS = ["id", "modality", "task", "variant", "target"]

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
    """Accuracy of an answer text; 0 for an answer holding an integer too long to read (the
    authors' reward code scores what it cannot parse 0), so a training step never raises."""
    if overlong_int(answer):
        return 0.0
    if truth.kind == "box":
        return box_accuracy(answer, truth, BOX_IOU_FLOOR if profile == "official" else 0.0)
    return {"tier": tier_accuracy, "jigsaw": jigsaw_accuracy, "anomaly": anomaly_accuracy}[truth.kind](
        answer, truth
    )


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
        return [e.isdecimal() and int(e) < truth.grid * truth.grid for e in elements]
    seen: set[int] = set()
    flags = []
    for element in elements:
        ok = element.isdecimal() and int(element) < len(truth.permutation) and int(element) not in seen
        if ok:
            seen.add(int(element))
        flags.append(ok)
    return flags


def _well_formed_box(element: str) -> bool:
    match = _BOX.fullmatch(element)
    if match is None:
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
    """Weighted format reward of an answer text; 0 for an unreadably long integer (as accuracy)."""
    if overlong_int(answer):
        return 0.0
    scorer = official_format if profile == "official" else paper_format
    return FORMAT_WEIGHT * scorer(answer, truth)


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


# ---------------------------------------------------------------- bench


@dataclass(frozen=True)
class BenchSource:
    """Where a bench lives: local Parquet shards (and the train side, if any), or a Hub repo id.

    `integrity` says how the local shards were checked before use.
    """

    location: str
    files: tuple[Path, ...] = ()
    train_files: tuple[Path, ...] = ()
    repo_id: str = ""
    integrity: str = ""

    @property
    def is_hub(self) -> bool:
        return bool(self.repo_id)


_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
HUB_PREFIX = "hf://datasets/"


def resolve_bench(location: str | Path, verify: bool = True) -> BenchSource:
    """A bench from a shards root (`<root>/bench/<modality>/<task>/test-*.parquet`, train side
    from `<root>/train/`), a staged repo folder (`<dir>/data/<modality>/<task>/test-*.parquet`),
    a bench folder itself, one Parquet file, or a Hub dataset repo id (`owner/name`, or
    `hf://datasets/owner/name` to say so explicitly).

    A name that exists nowhere but looks like a local path is an error, never sent to the Hub.
    With `verify`, local shards are checked before use (`integrity`: the manifest's sha256, the
    staged record's sha256, or a decode check) and damage is refused.
    """
    # Imported here, not at module level: exported ms-swift / lmms-eval / VLMEvalKit files carry a
    # copy of this module and its module-level imports only, and the checks need stages/ and hub/.
    from medscout_data.evaluation.integrity import (
        looks_like_a_path,
        manifest_verified,
        stage_record_files,
        stage_verified,
    )

    text = str(location)
    if text.startswith(HUB_PREFIX):
        return _hub_source(text, text[len(HUB_PREFIX) :])
    path = Path(text).expanduser()
    if not path.exists():
        why = looks_like_a_path(text)
        if why:
            raise ScoreError(
                f"{text}: no such bench folder ({why}, so it is taken for a mistyped local path, not "
                f"a Hub repo id); check the path, or write {HUB_PREFIX}{text.lstrip('./~')} for the Hub"
            )
        return _hub_source(text, text)
    if path.is_file():
        return _checked(text, (path,), (), "decode check" if verify else "")
    if path.name == "bench" and (path.parent / "manifest.json").is_file():
        path = path.parent  # the bench side of a shards root: check it against its manifest
    if (path / "bench").is_dir():
        train = tuple(sorted((path / "train").glob("*/*/train-*.parquet")))
        if verify:
            return BenchSource(text, manifest_verified(path), train, integrity="sha256 (manifest.json)")
        return _listed(text, path / "bench", train)
    if (path / "data").is_dir():
        record = stage_record_files(path) if verify else None
        if record is not None:
            return BenchSource(text, stage_verified(path, record), integrity="sha256 (staged record)")
        path = path / "data"
    source = _listed(text, path, ())
    return _checked(text, source.files, (), "decode check" if verify else "")


def _hub_source(text: str, repo_id: str) -> BenchSource:
    if not _REPO_ID.fullmatch(repo_id):
        raise ScoreError(f"{text}: no such bench folder (nor an owner/name Hub repo id)")
    return BenchSource(text, repo_id=repo_id, integrity="downloaded by datasets")


def _listed(text: str, folder: Path, train: tuple[Path, ...]) -> BenchSource:
    files = tuple(sorted(folder.glob("*/*/test-*.parquet")))
    if not files:
        raise ScoreError(f"{text}: no bench shards ({folder}/<modality>/<task>/test-*.parquet)")
    return BenchSource(text, files=files, train_files=train)


def _checked(text: str, files: tuple[Path, ...], train: tuple[Path, ...], integrity: str) -> BenchSource:
    from medscout_data.evaluation.integrity import decode_checked  # see resolve_bench

    for path in files if integrity else ():
        decode_checked(path)
    return BenchSource(text, files=files, train_files=train, integrity=integrity)


def read_metadata(files: Iterable[Path], columns: Sequence[str]) -> pa.Table:
    """The given columns of Parquet shards, concatenated (column projection: nothing else is read)."""
    tables = []
    for path in files:
        try:
            names = pq.read_schema(path).names
            missing = [c for c in columns if c not in names]
            if missing:
                raise ScoreError(f"{path}: not a bench shard, missing column(s) {', '.join(missing)}")
            tables.append(pq.read_table(path, columns=list(columns)))
        except (pa.ArrowException, OSError) as exc:
            raise ScoreError(f"{path}: not a readable Parquet shard ({exc})") from exc
    if not tables:
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    return pa.concat_tables(tables)


def load_hub_bench(repo_id: str, columns: Sequence[str], cache_dir: str | None = None) -> pa.Table:
    """The test split of a Hub dataset repo (or a local repo folder), only `columns`,
    through `datasets.load_dataset`."""
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ScoreError("loading a bench from the Hub needs `datasets`: pip install datasets") from exc
    try:
        dataset = datasets.load_dataset(repo_id, split="test", columns=list(columns), cache_dir=cache_dir)
    except Exception as exc:
        raise ScoreError(
            f"{repo_id}: cannot load the dataset's test split ({type(exc).__name__}: {exc})"
        ) from exc
    return dataset.with_format("arrow")[0 : len(dataset)]


def load_bench(source: BenchSource, columns: Sequence[str] = SCORE_COLUMNS) -> pa.Table:
    """The bench's metadata columns; ids must be unique."""
    table = load_hub_bench(source.repo_id, columns) if source.is_hub else read_metadata(source.files, columns)
    ids = table.column("id").to_pylist()
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dupes = sorted({i for i in ids if i in seen or seen.add(i)})
        raise ScoreError(f"{source.location}: duplicate item ids in the bench: {preview(dupes)}")
    return table


@dataclass(frozen=True)
class BenchItem:
    """One bench item's identity and truth."""

    id: str
    modality: str
    task: str
    variant: str
    truth: Truth


def bench_items(table: pa.Table, location: str = "bench") -> list[BenchItem]:
    """Truths of every bench row; a row with an unusable target is an error naming it."""
    columns = {name: table.column(name).to_pylist() for name in SCORE_COLUMNS}
    targets = _parse_targets(columns["target"], columns["id"], location)
    items = []
    for item_id, modality, task, variant, target in zip(
        columns["id"], columns["modality"], columns["task"], columns["variant"], targets, strict=True
    ):
        try:
            truth = Truth.from_item({"task": task, "variant": variant, "target": target})
        except (ValueError, KeyError, TypeError) as exc:
            raise ScoreError(f"{location}: item {item_id}: unusable target ({exc!r})") from exc
        items.append(BenchItem(item_id, modality, task, variant or "", truth))
    return items


def _parse_targets(texts: list[Any], ids: list[str], location: str) -> list[Any]:
    """Every target's JSON, parsed in one call (far faster than one call per row); on any
    problem, row by row to name the bad one."""
    try:
        parsed = json.loads("[" + ",".join(texts) + "]")
        if len(parsed) == len(texts):
            return parsed
    except (TypeError, json.JSONDecodeError):
        pass
    out = []
    for item_id, text in zip(ids, texts, strict=True):
        try:
            out.append(json.loads(text))
        except (TypeError, json.JSONDecodeError) as exc:
            raise ScoreError(f"{location}: item {item_id}: target is not JSON ({exc})") from exc
    return out


# ---------------------------------------------------------------- scoring


@dataclass
class CellScore:
    """Sums of the reward components over a cell's items, and their count."""

    accuracy: float = 0.0
    format: float = 0.0
    cot: float = 0.0
    count: int = 0
    missing: int = 0

    def add(self, value: Reward | None) -> None:
        self.count += 1
        if value is None:
            self.missing += 1
            return
        self.accuracy += value.accuracy
        self.format += value.format
        self.cot += value.cot

    def merge(self, other: CellScore) -> None:
        self.accuracy += other.accuracy
        self.format += other.format
        self.cot += other.cot
        self.count += other.count
        self.missing += other.missing

    def means(self) -> dict[str, float | int]:
        """Mean components as fractions (accuracy in [0, 1], total up to 2), count and missing."""
        n = max(self.count, 1)
        accuracy, fmt, cot = self.accuracy / n, self.format / n, self.cot / n
        return {
            "accuracy": accuracy,
            "format": fmt,
            "cot": cot,
            "total": accuracy + fmt + cot,
            "count": self.count,
            "missing": self.missing,
        }


@dataclass
class ScoreResult:
    """Per-cell and overall scores of one predictions file against one bench."""

    profile: str
    mode: str
    cells: dict[str, CellScore]
    overall: CellScore
    missing_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON form: figures as fractions (not x100)."""
        cells = {}
        for key, cell in self.cells.items():
            modality, task, *variant = key.split("/")
            cells[key] = {"modality": modality, "task": task, "variant": "".join(variant), **cell.means()}
        return {
            "profile": self.profile,
            "mode": self.mode,
            "overall": self.overall.means(),
            "cells": cells,
            "missing_ids": self.missing_ids,
        }


def cell_keys(modality: str, task: str, variant: str) -> list[str]:
    """The table rows an item counts in: its modality x task, and for scale also its variant."""
    keys = [f"{modality}/{task}"]
    if task == "scale" and variant:
        keys.append(f"{modality}/{task}/{variant}")
    return keys


def _order(key: str) -> tuple[int, int, int, str]:
    modality, task, *variant = key.split("/")
    rank = {name: i for i, name in enumerate((*MODALITIES, *TASKS, "", *SCALE_VARIANTS))}
    v = variant[0] if variant else ""
    return rank.get(modality, 99), rank.get(task, 99), rank.get(v, 99), key


def score_bench(
    items: Sequence[BenchItem],
    predictions: Mapping[str, str],
    profile: str = "official",
    mode: str = "direct",
    answers: Mapping[str, str] | None = None,
) -> ScoreResult:
    """Mean rewards per cell and overall. Items without a prediction score 0 and are listed;
    predictions for ids not in the bench are an error naming them. `answers` (id -> answer
    text, from an `Extractor`) replace the strict answer text for accuracy."""
    _check(profile, mode)
    known = {item.id for item in items}
    unknown = sorted(set(predictions) - known)
    if unknown:
        raise ScoreError(f"{len(unknown)} prediction id(s) not in the bench: {preview(unknown)}")
    leaves: dict[tuple[str, str, str], CellScore] = {}
    missing = []
    for item in items:
        response = predictions.get(item.id)
        if response is None:
            missing.append(item.id)
        extracted = answers.get(item.id) if answers is not None else None
        value = None if response is None else _reward(response, item.truth, profile, mode, extracted)
        leaves.setdefault((item.modality, item.task, item.variant), CellScore()).add(value)
    sums: dict[str, CellScore] = {}
    overall = CellScore()
    for (modality, task, variant), leaf in leaves.items():
        overall.merge(leaf)
        for key in cell_keys(modality, task, variant):
            sums.setdefault(key, CellScore()).merge(leaf)
    cells = {key: sums[key] for key in sorted(sums, key=_order)}
    return ScoreResult(profile, mode, cells, overall, missing)


def format_table(result: ScoreResult) -> str:
    """A plain-text table (figures x 100) per modality x task and scale variant, and the overall line."""
    names = f"{'accuracy':>9}{'format':>8}{'cot':>7}{'total':>8}{'count':>7}"
    header = f"{'modality':<9}{'task':<9}{'variant':<9}{names}"
    lines = [f"Dense Geometric Reward, profile {result.profile}, mode {result.mode} (x100)", header]
    for key, cell in result.cells.items():
        modality, task, *variant = key.split("/")
        lines.append(_row(modality, task, "".join(variant), cell))
    lines.append(_row("all", "", "", result.overall))
    lines.append(f"Med-Scout-Bench Avg: {100 * result.overall.means()['accuracy']:.1f}")
    if result.missing_ids:
        lines.append(
            f"missing predictions: {len(result.missing_ids)} of {result.overall.count} items scored 0 "
            f"({preview(result.missing_ids)})"
        )
    return "\n".join(lines)


def _row(modality: str, task: str, variant: str, cell: CellScore) -> str:
    m = cell.means()
    figures = (
        f"{100 * m['accuracy']:>9.1f}{100 * m['format']:>8.1f}{100 * m['cot']:>7.1f}{100 * m['total']:>8.1f}"
    )
    return f"{modality:<9}{task:<9}{variant:<9}{figures}{m['count']:>7}"


class Extractor(Protocol):
    """Turns free-form responses into the answer texts that accuracy scores (`--extract`)."""

    name: str

    def answers(self, items: Sequence[BenchItem], predictions: Mapping[str, str]) -> dict[str, str]:
        """Item id -> answer text, for the items that have a prediction."""
        ...

    def describe(self) -> dict[str, Any]:
        """What `scores.json` records about the extraction."""
        ...


def score_file(
    predictions: str | Path,
    bench: str | Path | BenchSource = "shards",
    profile: str = "official",
    mode: str = "direct",
    report: RunReport | None = None,
    extractor: Extractor | None = None,
) -> ScoreResult:
    """Score a predictions file against a bench (shards root, staged folder or Hub repo id, or a
    resolved `BenchSource`); `extractor` None is the strict extraction."""
    report = report or RunReport("score")
    source = bench if isinstance(bench, BenchSource) else resolve_bench(bench)
    items = bench_items(load_bench(source), source.location)
    responses = read_predictions(predictions, report)
    answers = extractor.answers(items, responses) if extractor is not None else None
    result = score_bench(items, responses, profile, mode, answers)
    report.count("items", len(items))
    report.count("missing", len(result.missing_ids))
    return result


def scores_document(
    result: ScoreResult,
    report: RunReport,
    source: BenchSource,
    predictions: str | Path,
    extraction: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What `score --json` and evaluate's `scores.json` hold: the figures as fractions, the bench
    and how it was checked, the predictions file, the extraction used, and every skipped line."""
    figures = result.as_dict()
    figures.update(
        bench=source.location,
        bench_integrity=source.integrity,
        predictions=str(predictions),
        extraction=dict(extraction or {"method": "strict"}),
        skipped=[{"where": s.path, "reason": s.reason, "message": s.message} for s in report.skips],
        skipped_by_reason=report.skipped_by_reason(),  # every skip; `skipped` lists the first of each
    )
    return figures
