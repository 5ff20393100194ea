"""Shortcut audit: what non-learning probes score on a bench, cell by cell, next to chance.

An item measures geometric perception only if its answer cannot be read off
a cue that has nothing to do with the anatomy's geometry. For every
modality x task cell of a bench, the audit scores (Dense Geometric Reward,
official accuracy) the answers of:

- `chance`: the expected accuracy of a uniformly drawn well-formed answer
  (exact for labels, permutations and cells; 64 draws for boxes);
- `prior`: the text-only prior, the best constant answer per cell (x variant);
- scale: `sharpness` (share of high-frequency power of each crop) and
  `noise` (its pixel-noise level), each turned into a tier label by a
  threshold; tier items only, with the crops' AUC (0.5: no information);
  and two learned probes (`evaluation/artefacts.py`, scikit-learn): a
  gradient-boosting classifier on a crop's `artefacts` (noise level and
  spectrum, Laplacian statistics, PNG size) and on its `content` (what the
  crop shows), trained on the crops of half of the source images and tested
  on the other half;
- jigsaw: `seams` (seam continuity with the background-frame prior, the
  classical solver) and `centroid` (the body's bright mass nearest the
  centre, no seams at all);
- anomaly: `seams` (the most seam-like candidate cell, the classical
  solver) and `intensity` (the candidate whose border shows the most
  consistent brightness step: a pure intensity-jump cue);
- `classical`: the `classical` baseline's own answers: per cell the solver
  above that scored best on the train side (evaluation/classical.py), the
  no-learning ceiling beside the shortcuts.

Learnt parts (the prior's constant, the probes' thresholds and direction)
are cross-fitted: learnt on one half of the cell's items (alternate items in
id order), scored on the other, and the other way round, so no probe has
seen the answers it is scored on.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from medscout_data import MODALITIES, TASKS
from medscout_data.errors import StageError
from medscout_data.evaluation.artefacts import (
    ProbeUnavailable,
    artefact_features,
    content_features,
    learned_probe,
)
from medscout_data.evaluation.baselines import (
    META_COLUMNS,
    AnswerShape,
    UnsupportedItem,
    answer_shape,
    classical_answer,
    constant_answer,
    decode_images,
    iter_rows,
    random_answer,
    solve_anomaly,
    solve_jigsaw,
    solve_jigsaw_centroid,
    tier_text,
)
from medscout_data.evaluation.score import BenchSource, ScoreError, Truth, accuracy_reward, resolve_bench
from medscout_data.imaging import ImageDecodeError
from medscout_data.layout import Layout
from medscout_data.report import RunReport
from medscout_data.seeding import rng_for
from medscout_data.tasks.content import noise_level
from medscout_data.tasks.geometry import non_identity_permutations

log = logging.getLogger(__name__)

HIGH_FREQUENCY = 0.25  # cycles per pixel: the upper half of the band counts as high frequency
BOX_CHANCE_DRAWS = 64
INTENSITY_BAND = 2  # pixels on each side of a cell border whose mean brightness is compared
PROBES = {
    "scale": ("prior", "sharpness", "noise", "artefacts", "content", "classical"),
    "jigsaw": ("prior", "seams", "centroid", "classical"),
    "anomaly": ("prior", "seams", "intensity", "classical"),
}
PROBE_TITLES = {
    "prior": "text-only prior (best constant answer)",
    "sharpness": "tier from crop sharpness (high-frequency power)",
    "noise": "tier from crop noise level",
    "artefacts": "tier from a classifier on crop artefact features (learned, held-out images)",
    "content": "tier from a classifier on crop content features (learned, held-out images)",
    "seams": "seam continuity / seam strength",
    "centroid": "body centroid",
    "intensity": "intensity step at the cell border",
    "classical": "classical baseline",
}


class AuditError(StageError):
    """The audit cannot run; the message says why."""


# ---------------------------------------------------------------- features and solvers


def high_frequency_share(image: np.ndarray, cutoff: float = HIGH_FREQUENCY) -> float:
    """Share of the (Hann-windowed, mean-free) power above `cutoff` cycles per pixel: the
    sharpness probe. Blurrier crops have less of it."""
    values = image.astype(np.float64)
    values -= values.mean()
    height, width = values.shape
    windowed = values * np.outer(np.hanning(height), np.hanning(width))
    power = np.abs(np.fft.rfft2(windowed)) ** 2
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    radius = np.hypot(fy, fx)
    total = float(power[radius > 0].sum())
    return float(power[radius > cutoff].sum()) / total if total > 0 else 0.0


def border_step(image: np.ndarray, box: tuple[int, int, int, int], band: int = INTENSITY_BAND) -> float:
    """|mean over the cell's sides of (brightness just inside - just outside)|: a pasted cell
    brighter or darker than its surroundings steps the same way on every side; a natural
    cell's steps cancel."""
    x0, y0, x1, y1 = box
    height, width = image.shape
    steps = []
    if x0 >= band:
        steps.append(image[y0:y1, x0 : x0 + band].mean() - image[y0:y1, x0 - band : x0].mean())
    if x1 + band <= width:
        steps.append(image[y0:y1, x1 - band : x1].mean() - image[y0:y1, x1 : x1 + band].mean())
    if y0 >= band:
        steps.append(image[y0 : y0 + band, x0:x1].mean() - image[y0 - band : y0, x0:x1].mean())
    if y1 + band <= height:
        steps.append(image[y1 - band : y1, x0:x1].mean() - image[y1 : y1 + band, x0:x1].mean())
    return abs(float(np.mean(steps))) if steps else 0.0


def solve_anomaly_intensity(tampered: np.ndarray, grid: int, cells: Sequence[int]) -> int:
    """The candidate cell with the strongest consistent brightness step at its border."""
    return solve_anomaly(tampered, grid, cells, score=border_step)


def crop_features(images: Sequence[np.ndarray]) -> list[tuple[float, float]]:
    """(sharpness, noise level) of each crop of a scale item (images after the full image)."""
    return [(high_frequency_share(crop), noise_level(crop)) for crop in images[1:]]


def probe_answers(shape: AnswerShape, images: Sequence[np.ndarray]) -> dict[str, str]:
    """The answers of the image probes that need no training (jigsaw, anomaly) and of the
    classical baseline."""
    answers = {"classical": classical_answer(shape, images)}
    if shape.kind == "jigsaw":
        answers["seams"] = " ".join(map(str, solve_jigsaw(images[0], shape.grid)))
        answers["centroid"] = " ".join(map(str, solve_jigsaw_centroid(images[0], shape.grid)))
    elif shape.kind == "anomaly":
        answers["seams"] = str(solve_anomaly(images[0], shape.grid, shape.cells))
        answers["intensity"] = str(solve_anomaly_intensity(images[0], shape.grid, shape.cells))
    return answers


# ---------------------------------------------------------------- chance


def chance_accuracy(shape: AnswerShape, truth: Truth, item_id: str) -> float:
    """Expected official accuracy of a uniformly drawn well-formed answer (as `random` draws)."""
    if shape.kind == "tier":
        levels = range(1, len(shape.level_areas) + 1)
        answers = [tier_text(seq) for seq in itertools.product(levels, repeat=shape.size)]
    elif shape.kind == "jigsaw":
        answers = [" ".join(map(str, p)) for p in non_identity_permutations(shape.size)]
    elif shape.kind == "anomaly":
        answers = [str(c) for c in shape.cells]
    else:
        rng = rng_for(0, "audit-chance", item_id)
        answers = [random_answer(shape, rng) for _ in range(BOX_CHANCE_DRAWS)]
    return float(np.mean([accuracy_reward(a, truth) for a in answers]))


# ---------------------------------------------------------------- per item, then per cell


@dataclass
class ItemRecord:
    """What the audit keeps of one item (no pixels)."""

    id: str
    cell: str  # modality/task
    variant: str
    truth: Truth
    chance: float
    answers: dict[str, str] = field(default_factory=dict)
    levels: list[int] = field(default_factory=list)  # scale: the crops' true levels
    features: list[tuple[float, float]] = field(default_factory=list)  # scale: (sharpness, noise)
    group: str = ""  # scale: the source image (the learned probes' split unit)
    learned: dict[str, list[np.ndarray]] = field(default_factory=dict)  # scale: artefacts / content


def record_item(row: dict[str, Any], classical: Any = None) -> ItemRecord:
    """Decode one bench row and run every probe on it; `UnsupportedItem` / `ImageDecodeError`
    when it cannot be audited. `classical` (evaluation/classical.py) answers the `classical`
    row with the solver it learnt for the cell on the train side."""
    try:
        truth = Truth.from_item(row)
    except (KeyError, TypeError, ValueError) as exc:
        raise UnsupportedItem(f"unusable target ({exc!r})") from exc
    variant = row.get("variant") or ""
    shape = answer_shape(row["task"], variant, row.get("question") or "", truth)
    images = decode_images(row)
    record = ItemRecord(
        id=row["id"],
        cell=f"{row['modality']}/{row['task']}",
        variant=variant,
        truth=truth,
        chance=chance_accuracy(shape, truth, row["id"]),
        answers=probe_answers(shape, images),
    )
    if classical is not None:
        record.answers["classical"] = classical.answer(row, shape, images)
    if row["task"] == "scale":
        record.levels = [int(v) for v in json.loads(row["target"])["levels"]]
        record.features = crop_features(images)
        record.group = str(row.get("source_id") or row["id"])
        record.learned = {
            "artefacts": [artefact_features(crop) for crop in images[1:]],
            "content": [content_features(crop) for crop in images[1:]],
        }
        if len(record.features) != len(record.levels):
            raise UnsupportedItem(f"{len(record.features)} crops but {len(record.levels)} levels")
    return record


def folds(records: Sequence[ItemRecord]) -> list[int]:
    """0 / 1 for alternate items in id order: the halves the learnt probes are cross-fitted on."""
    order = sorted(range(len(records)), key=lambda i: records[i].id)
    fold = [0] * len(records)
    for rank, index in enumerate(order):
        fold[index] = rank % 2
    return fold


@dataclass(frozen=True)
class Threshold:
    """A level rule: level 2 when the feature is above `value` (or below, `above=False`)."""

    value: float
    above: bool

    def level(self, feature: float) -> int:
        return 2 if (feature > self.value) == self.above else 1


def fit_threshold(values: Sequence[float], levels: Sequence[int]) -> Threshold:
    """The threshold and direction that label the most crops right (midpoints between values)."""
    x = np.asarray(values, np.float64)
    y = np.asarray(levels) == 2
    cuts = np.unique(x)
    candidates = (cuts[:-1] + cuts[1:]) / 2 if len(cuts) > 1 else cuts
    best = Threshold(float(candidates[0]) if len(candidates) else 0.0, True)
    best_hits = -1
    for cut in candidates:
        above = x > cut
        for direction in (True, False):
            hits = int(np.sum(above == y) if direction else np.sum(above != y))
            if hits > best_hits:
                best, best_hits = Threshold(float(cut), direction), hits
    return best


def separability(values: Sequence[float], levels: Sequence[int]) -> float | None:
    """max(AUC, 1 - AUC) of the feature for telling Level-2 from Level-1 crops (ties count half);
    0.5: the feature carries no information. None without both levels."""
    x = np.asarray(values, np.float64)
    y = np.asarray(levels) == 2
    n2, n1 = int(y.sum()), int((~y).sum())
    if not n1 or not n2:
        return None
    from scipy.stats import rankdata

    ranks = rankdata(x)
    auc = (ranks[y].sum() - n2 * (n2 + 1) / 2) / (n1 * n2)
    return float(max(auc, 1 - auc))


@dataclass
class ProbeScore:
    """One probe's mean accuracy on the items it answers, and for tier probes the crops' AUC."""

    accuracy: float
    chance: float  # over the same items
    items: int
    auc: float | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "accuracy": round(self.accuracy, 6),
            "chance": round(self.chance, 6),
            "items": self.items,
        }
        if self.auc is not None:
            out["auc"] = round(self.auc, 6)
        return out


@dataclass
class CellAudit:
    """A modality x task cell: its size and every probe's score."""

    cell: str
    items: int
    probes: dict[str, ProbeScore]

    def as_dict(self) -> dict[str, Any]:
        return {"items": self.items, "probes": {name: p.as_dict() for name, p in self.probes.items()}}


def audit_cell(cell: str, records: Sequence[ItemRecord]) -> CellAudit:
    """Score every probe of one cell (cross-fitting the learnt ones)."""
    task = cell.split("/")[1]
    fold = folds(records)
    probes: dict[str, ProbeScore] = {"prior": _prior_score(records, fold)}
    if task == "scale":
        for index, name in enumerate(("sharpness", "noise")):
            probes[name] = tier_probe(records, fold, index)
        for name in ("artefacts", "content"):
            if not all(name in r.learned for r in records):
                continue
            try:
                probes[name] = learned_tier_probe(records, name)
            except ProbeUnavailable as exc:
                log.warning("%s: probe %s left out: %s", cell, name, exc)
    for name in PROBES[task]:
        if name in probes or name == "prior":
            continue
        answered = [r for r in records if name in r.answers]
        if answered:
            scores = [accuracy_reward(r.answers[name], r.truth) for r in answered]
            probes[name] = ProbeScore(_mean(scores), _mean([r.chance for r in answered]), len(answered))
    return CellAudit(cell, len(records), {n: probes[n] for n in PROBES[task] if n in probes})


def _prior_score(records: Sequence[ItemRecord], fold: Sequence[int]) -> ProbeScore:
    """The best constant answer per variant, learnt on the other half of the cell."""
    scores, chances = [], []
    for half in (0, 1):
        learn = [r for r, f in zip(records, fold, strict=True) if f != half]
        for record in (r for r, f in zip(records, fold, strict=True) if f == half):
            same = [
                r.truth for r in learn if r.variant == record.variant and r.truth.size == record.truth.size
            ]
            if same:
                scores.append(accuracy_reward(constant_answer(same), record.truth))
                chances.append(record.chance)
    return ProbeScore(_mean(scores), _mean(chances), len(scores))


def tier_probe(records: Sequence[ItemRecord], fold: Sequence[int], feature: int) -> ProbeScore:
    """Tier items labelled crop by crop with a threshold on one feature learnt on the other half
    (crops of both variants); the AUC is over every crop of the cell."""
    values = [f[feature] for r in records for f in r.features]
    levels = [level for r in records for level in r.levels]
    scores, chances = [], []
    for half in (0, 1):
        learn = [r for r, f in zip(records, fold, strict=True) if f != half]
        learn_values = [f[feature] for r in learn for f in r.features]
        learn_levels = [level for r in learn for level in r.levels]
        if len(set(learn_levels)) < 2:
            continue
        rule = fit_threshold(learn_values, learn_levels)
        for record in (r for r, f in zip(records, fold, strict=True) if f == half):
            if record.truth.kind == "tier":
                answer = tier_text([rule.level(f[feature]) for f in record.features])
                scores.append(accuracy_reward(answer, record.truth))
                chances.append(record.chance)
    return ProbeScore(_mean(scores), _mean(chances), len(scores), separability(values, levels))


def learned_tier_probe(records: Sequence[ItemRecord], name: str) -> ProbeScore:
    """Tier items labelled by a classifier on the crops' `name` features, trained on the crops
    of the other half of the source images; the AUC is over held-out crops (None when a half
    lacks a level: the cell is too small to learn from)."""
    features = np.array([f for r in records for f in r.learned[name]])
    levels = [level for r in records for level in r.levels]
    groups = [r.group for r in records for _ in r.levels]
    auc, probability = learned_probe(features, levels, groups)
    scores, chances, start = [], [], 0
    for record in records:
        held = probability[start : start + len(record.levels)]
        start += len(record.levels)
        if record.truth.kind == "tier" and auc is not None:
            scores.append(accuracy_reward(tier_text([2 if p > 0.5 else 1 for p in held]), record.truth))
            chances.append(record.chance)
    return ProbeScore(_mean(scores), _mean(chances), len(scores), auc)


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


# ---------------------------------------------------------------- the whole bench


@dataclass
class AuditResult:
    """Every cell's audit, in modality and task order."""

    bench: str
    cells: dict[str, CellAudit]

    def as_dict(self) -> dict[str, Any]:
        return {
            "bench": self.bench,
            "metric": "Dense Geometric Reward accuracy, official profile (fraction)",
            "cells": {key: cell.as_dict() for key, cell in self.cells.items()},
        }

    def rows(self) -> list[tuple[str, str, str, float, float, float | None, int]]:
        """(modality, task, probe, accuracy, chance, auc, items) in table order."""
        out = []
        for key, cell in self.cells.items():
            modality, task = key.split("/")
            for name, probe in cell.probes.items():
                out.append((modality, task, name, probe.accuracy, probe.chance, probe.auc, probe.items))
        return out


def format_audit(result: AuditResult) -> str:
    """A plain-text table, accuracies x 100."""
    lines = [f"{'cell':<16}{'probe':<11}{'accuracy':>9}{'chance':>8}{'AUC':>6}{'items':>7}"]
    for modality, task, name, accuracy, chance, auc, items in result.rows():
        auc_text = f"{auc:.2f}" if auc is not None else "-"
        lines.append(
            f"{modality + '/' + task:<16}{name:<11}{100 * accuracy:>9.1f}{100 * chance:>8.1f}"
            f"{auc_text:>6}{items:>7}"
        )
    return "\n".join(lines)


def audit_source(location: str | Path) -> BenchSource:
    """The bench to audit: a shards root's bench side checked against its manifest (sizes and
    sha256), or anything `resolve_bench` accepts."""
    from medscout_data.stages.manifest import verified_shards

    path = Path(location)
    if (path / "manifest.json").is_file() and (path / "bench").is_dir():
        files = tuple(verified_shards(Layout.at(path), "bench"))
        train = tuple(sorted((path / "train").glob("*/*/train-*.parquet")))  # `classical` learns there
        return BenchSource(str(location), files=files, train_files=train)
    try:
        return resolve_bench(location)
    except ScoreError as exc:
        raise AuditError(str(exc)) from exc


def audit_bench(
    location: str | Path | BenchSource,
    progress: bool = True,
    report: RunReport | None = None,
    classical: Any = None,
) -> AuditResult:
    """Run every probe on every item of a bench; items that cannot be decoded are recorded in
    `report` and left out. `classical` (evaluation/classical.py: `audit` passes the solver choice
    it learnt on the train side) answers the `classical` row; without it, the fixed solvers do."""
    source = location if isinstance(location, BenchSource) else audit_source(location)
    report = report if report is not None else RunReport("audit")
    report.info["classical_from"] = getattr(classical, "origin", "fixed")
    by_cell: dict[str, list[ItemRecord]] = defaultdict(list)
    rows = iter_rows(source, [*META_COLUMNS, "images"])
    for where, row in tqdm(rows, desc="audit", unit="item", disable=not progress):
        report.count("items")
        try:
            record = record_item(row, classical)
        except (ImageDecodeError, UnsupportedItem, cv2.error) as exc:
            report.skip(f"{where}#{row['id']}", type(exc).__name__, f"{where}: item {row['id']}: {exc}")
            continue
        by_cell[record.cell].append(record)
        report.count("audited")
    if not by_cell:
        raise AuditError(f"{source.location}: no bench item could be audited")
    return AuditResult(source.location, {key: audit_cell(key, by_cell[key]) for key in _cell_order(by_cell)})


def audit_files(files: Iterable[Path], location: str, progress: bool = True) -> AuditResult:
    """The audit of the given bench shards (e.g. the ones push-bench stages)."""
    return audit_bench(BenchSource(location, files=tuple(files)), progress=progress)


def _cell_order(cells: Iterable[str]) -> list[str]:
    rank = {f"{m}/{t}": i for i, (m, t) in enumerate(itertools.product(MODALITIES, TASKS))}
    return sorted(cells, key=lambda key: (rank.get(key, len(rank)), key))
