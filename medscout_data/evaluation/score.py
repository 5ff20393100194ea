"""Scoring a predictions file against a bench: mean Dense Geometric Rewards per cell, and their tables.

`read_predictions` reads JSONL predictions (plain `id`/`response` lines or
ms-swift `swift infer` results); `score_bench` gives the mean rewards per
modality x task (and scale variant) and overall; `format_table` prints them.
The reward of one response is `evaluation/reward.py`; finding and loading
the bench is `evaluation/bench.py`. Their public names are importable from
here too, as before the split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from medscout_data import MODALITIES, SCALE_VARIANTS, TASKS
from medscout_data.evaluation.bench import (  # noqa: F401  (public names, importable from here)
    HUB_PREFIX,
    SCORE_COLUMNS,
    BenchSource,
    bench_items,
    load_bench,
    load_hub_bench,
    read_metadata,
    resolve_bench,
)
from medscout_data.evaluation.errors import ScoreError
from medscout_data.evaluation.predictions import preview, read_predictions
from medscout_data.evaluation.reward import (  # noqa: F401  (public names, importable from here)
    BOX_IOU_FLOOR,
    COMPONENTS,
    COT_WEIGHT,
    FORMAT_WEIGHT,
    GRID_SIZE,
    LABELS,
    MODES,
    PROFILES,
    TAU,
    BenchItem,
    Box,
    DenseGeometricReward,
    Reward,
    Truth,
    _check,
    _reward,
    accuracy_reward,
    accuracy_rewards,
    anomaly_accuracy,
    answer_elements,
    box_accuracy,
    box_iou,
    completion_text,
    cot_reward,
    cot_rewards,
    element_matches,
    extract_answer,
    format_reward,
    format_rewards,
    jigsaw_accuracy,
    official_format,
    overlong_int,
    paper_format,
    parse_boxes,
    parse_ints,
    reward,
    split_top_level,
    tier_accuracy,
    total_rewards,
)
from medscout_data.report import RunReport


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
