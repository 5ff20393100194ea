"""The `classical` baseline as the ceiling it claims to be: per cell, the strongest of the audit's solvers.

The audit (evaluation/audit.py) scores several non-learning solvers per
modality x task cell: template matching, crop sharpness and noise
thresholds and the text-only prior for scale; seam continuity, the body
centroid and the prior for jigsaw; seam strength, the border intensity step
and the prior for anomaly. Which is strongest depends on the data (on a
symmetric head the seams assemble the 180-degree turn while the centroid is
right), so `classical` learns, per modality x task x variant, which solver
scores best, with its thresholds and constants, on the TRAIN side of the
split (at most LEARN_ITEMS items per cell, in file order), and answers the
bench with it. It never looks at the bench's answers. Without a train side
it falls back on template matching / seams, and says so.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from medscout_data.evaluation.audit import (
    AuditResult,
    audit_bench,
    audit_source,
    crop_features,
    fit_threshold,
    probe_answers,
)
from medscout_data.evaluation.baselines import (
    META_COLUMNS,
    AnswerShape,
    BaselineOptions,
    UnsupportedItem,
    answer_shape,
    classical_answer,
    constant_answer,
    decode_images,
    iter_rows,
    run_baseline,
    tier_text,
)
from medscout_data.evaluation.score import BenchSource, Truth, accuracy_reward, resolve_bench
from medscout_data.imaging import ImageDecodeError
from medscout_data.report import RunReport

log = logging.getLogger(__name__)

LEARN_ITEMS = 128  # train items per modality x task x variant the choice is learnt on
FALLBACK = {"tier": "template", "box": "template", "jigsaw": "seams", "anomaly": "seams"}
FEATURES = {"sharpness": 0, "noise": 1}  # scale: index into `audit.crop_features`

CellKey = tuple[str, str, str]  # modality, task, variant


@dataclass
class Learnt:
    """One cell's choice: the solver, what it learnt (threshold or constant) and every candidate's
    train accuracy."""

    solver: str
    threshold: Any = None
    constant: str = ""
    train_accuracy: dict[str, float] = field(default_factory=dict)
    train_items: int = 0


@dataclass
class _Sample:
    shape: AnswerShape
    truth: Truth
    answers: dict[str, str]
    features: list[tuple[float, float]]
    levels: list[int]


def solver_answers(shape: AnswerShape, images: Sequence[np.ndarray]) -> dict[str, str]:
    """Every image solver's answer that needs nothing learnt (template matching is `template`)."""
    answers = probe_answers(shape, images)
    template = answers.pop("classical")  # for jigsaw and anomaly the same as `seams`
    if shape.kind in ("tier", "box"):
        answers["template"] = template
    return answers


def learn(rows: Iterable[tuple[str, dict[str, Any]]], limit: int = LEARN_ITEMS) -> dict[CellKey, Learnt]:
    """The strongest solver per modality x task x variant over (at most `limit` per cell of) `rows`."""
    samples: dict[CellKey, list[_Sample]] = defaultdict(list)
    for _, row in rows:
        key = (row["modality"], row["task"], row.get("variant") or "")
        if len(samples[key]) >= limit:
            continue
        try:
            samples[key].append(_sample(row))
        except (ImageDecodeError, UnsupportedItem, cv2.error, KeyError, TypeError, ValueError) as exc:
            log.debug("classical: train item %s left out of learning: %s", row.get("id"), exc)
    return {key: _choose(items) for key, items in samples.items() if items}


def _sample(row: dict[str, Any]) -> _Sample:
    truth = Truth.from_item(row)
    shape = answer_shape(row["task"], row.get("variant") or "", row.get("question") or "", truth)
    images = decode_images(row)
    scale = row["task"] == "scale"
    features = crop_features(images) if scale and shape.kind == "tier" else []
    levels = [int(label.split()[-1]) for label in truth.labels] if shape.kind == "tier" else []
    return _Sample(shape, truth, solver_answers(shape, images), features, levels)


def _choose(items: list[_Sample]) -> Learnt:
    """Score every candidate on the train items; the best wins (ties: the fixed solver, then by name)."""
    kind = items[0].shape.kind
    size = max({i.truth.size for i in items}, key=lambda s: sum(i.truth.size == s for i in items))
    constant = constant_answer([i.truth for i in items if i.truth.size == size])
    scores: dict[str, float] = {"prior": _mean(accuracy_reward(constant, i.truth) for i in items)}
    thresholds = {}
    for name in sorted({n for i in items for n in i.answers}):
        scores[name] = _mean(accuracy_reward(i.answers.get(name, ""), i.truth) for i in items)
    if kind == "tier":
        for name, index in FEATURES.items():
            values = [f[index] for i in items for f in i.features]
            levels = [level for i in items for level in i.levels]
            if len(set(levels)) < 2:
                continue
            rule = fit_threshold(values, levels)
            thresholds[name] = rule
            scores[name] = _mean(
                accuracy_reward(tier_text([rule.level(f[index]) for f in i.features]), i.truth) for i in items
            )
    best = max(scores, key=lambda n: (round(scores[n], 9), n == FALLBACK[kind], n))
    return Learnt(best, thresholds.get(best), constant, dict(sorted(scores.items())), len(items))


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return float(np.mean(values)) if values else 0.0


class ClassicalBaseline:
    """Answers bench items with the solver learnt for their cell on the train side."""

    def __init__(self, learnt: dict[CellKey, Learnt], origin: str) -> None:
        self.learnt, self.origin = learnt, origin

    @classmethod
    def from_source(cls, source: BenchSource, limit: int = LEARN_ITEMS) -> ClassicalBaseline:
        """Learnt on `source`'s train side; the fixed solvers when it has none (a Hub repo, a bare bench)."""
        if not source.train_files:
            log.warning(
                "no train side next to %s: `classical` uses template matching and seams, not the "
                "strongest solver per cell",
                source.location,
            )
            return cls({}, "fixed")
        train = BenchSource(source.location, files=tuple(source.train_files))
        return cls(learn(iter_rows(train, [*META_COLUMNS, "images"]), limit), "train")

    def answer(self, row: dict[str, Any], shape: AnswerShape, images: Sequence[np.ndarray]) -> str:
        learnt = self.learnt.get((row["modality"], row["task"], row.get("variant") or ""))
        if learnt is None:
            return classical_answer(shape, images)
        if learnt.solver == "prior":
            return learnt.constant
        if learnt.solver in FEATURES:
            index = FEATURES[learnt.solver]
            return tier_text([learnt.threshold.level(f[index]) for f in crop_features(images)])
        if learnt.solver == "template":
            return classical_answer(shape, images)
        return solver_answers(shape, images)[learnt.solver]

    def summary(self) -> dict[str, Any]:
        """Per cell: the solver chosen and every candidate's train accuracy (for the report)."""
        return {
            "/".join(k for k in key if k): {
                "solver": learnt.solver,
                "train_items": learnt.train_items,
                "train_accuracy": {n: round(v, 6) for n, v in learnt.train_accuracy.items()},
            }
            for key, learnt in sorted(self.learnt.items())
        }


def run_classical(
    bench: str | Path | BenchSource,
    out: str | Path,
    options: BaselineOptions,
    report: RunReport | None = None,
) -> RunReport:
    """`run_baseline` for any baseline, with `classical` learnt on the bench's train side first."""
    source = bench if isinstance(bench, BenchSource) else resolve_bench(bench)
    chooser = ClassicalBaseline.from_source(source) if options.name == "classical" else None
    return run_baseline(source, out, options, report, classical=chooser)


def audit(
    location: str | Path | BenchSource, progress: bool = True, report: RunReport | None = None
) -> AuditResult:
    """The shortcut audit whose `classical` row is the solver learnt per cell on the train side."""
    source = location if isinstance(location, BenchSource) else audit_source(location)
    return audit_bench(source, progress, report, ClassicalBaseline.from_source(source))
