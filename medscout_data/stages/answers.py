"""Each item's answer recomputed from its structured target, and the target checked for sense.

`validate --deep` (and push-bench through it) uses this to catch an answer or a
target edited after the split, even when the manifest was re-hashed to match:
the canonical answer text is rebuilt with the same functions that wrote it
(`tasks.prompts`), and the target must describe a possible item (tiers that
exist, boxes inside the 0-1000 grid whose areas match their tiers, a
non-identity permutation, a cell the recipe allows, row/col that agree with it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from medscout_data.recipe import AnomalyConfig, JigsawConfig, Recipe, ScaleConfig
from medscout_data.tasks import prompts

AREA_TOLERANCE = 0.35  # relative: pixel rounding of small crops; the two tiers differ 3.2x


@dataclass(frozen=True)
class AnswerRules:
    """The recipe's geometry that answers and targets must agree with."""

    n_crops: int
    level_areas: tuple[float, ...]
    jigsaw_grid: int
    anomaly_grid: int
    anomaly_cells: tuple[int, ...]

    @classmethod
    def of(cls, recipe: Recipe) -> AnswerRules:
        return cls(
            n_crops=recipe.scale.n_crops,
            level_areas=tuple(recipe.scale.level_areas),
            jigsaw_grid=recipe.jigsaw.grid,
            anomaly_grid=recipe.anomaly.grid,
            anomaly_cells=tuple(recipe.anomaly.cells),
        )

    @classmethod
    def defaults(cls) -> AnswerRules:
        """The paper's geometry (the recipe defaults), when no stored recipe can be read."""
        scale, anomaly = ScaleConfig(), AnomalyConfig()
        return cls(scale.n_crops, tuple(scale.level_areas), JigsawConfig().grid, anomaly.grid, anomaly.cells)

    def images(self, task: str) -> int:
        """How many images an item of `task` shows."""
        return 1 + self.n_crops if task == "scale" else 1


def answer_problems(task: str, variant: str, answer: str, target_text: str, rules: AnswerRules) -> list[str]:
    """Why this item's answer and target disagree or make no sense (empty: consistent)."""
    try:
        target = json.loads(target_text)
    except (TypeError, ValueError, RecursionError):
        return ["its target is not JSON"]
    if not isinstance(target, dict):
        return ["its target is not a JSON object"]
    try:
        if task == "scale":
            problems, expected = _scale(variant, target, rules)
        elif task == "jigsaw":
            problems, expected = _jigsaw(target, rules)
        elif task == "anomaly":
            problems, expected = _anomaly(target, rules)
        else:
            return [f"unknown task {task!r}"]
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        return [f"its target lacks or mistypes a field ({exc!r})"]
    if not problems and answer != expected:
        problems.append(f"answer {answer!r} does not follow from its target (expected {expected!r})")
    return problems


def _ints(values: Any) -> bool:
    return isinstance(values, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def _scale(variant: str, target: dict[str, Any], rules: AnswerRules) -> tuple[list[str], str]:
    levels, boxes, grid_boxes = target["levels"], target["boxes"], target["boxes_1000"]
    problems = []
    if variant not in ("tier", "box"):
        problems.append(f"variant {variant!r} is neither tier nor box")
    if not _ints(levels) or len(levels) != rules.n_crops:
        return [*problems, f"levels {levels!r}: need {rules.n_crops} integer tiers"], ""
    if any(not 1 <= level <= len(rules.level_areas) for level in levels):
        return [*problems, f"levels {levels}: tiers run from 1 to {len(rules.level_areas)}"], ""
    if not isinstance(boxes, list) or len(boxes) != len(levels) or len(grid_boxes) != len(levels):
        return [*problems, "needs one box (and one 0-1000 box) per crop"], ""
    for number, (unit, grid, level) in enumerate(zip(boxes, grid_boxes, levels, strict=True)):
        problems += [f"crop {number + 1}: {p}" for p in _box_problems(unit, grid, level, rules)]
    if problems:
        return problems, ""
    if variant == "tier":
        return [], prompts.tier_answer(levels)
    return [], prompts.box_answer(grid_boxes)


def _box_problems(unit: Any, grid: Any, level: int, rules: AnswerRules) -> list[str]:
    if not (isinstance(unit, list) and len(unit) == 4 and all(isinstance(v, int | float) for v in unit)):
        return [f"box {unit!r} is not 4 numbers"]
    if not _ints(grid) or len(grid) != 4:
        return [f"0-1000 box {grid!r} is not 4 integers"]
    x0, y0, x1, y1 = unit
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        return [f"box {unit} is not a box inside the image"]
    if any(abs(g - 1000 * u) > 1 for g, u in zip(grid, unit, strict=True)):
        return [f"0-1000 box {grid} is not box {unit} on the 0-1000 grid"]
    area = (x1 - x0) * (y1 - y0)
    expected = rules.level_areas[level - 1]
    if abs(area - expected) > AREA_TOLERANCE * expected:
        return [f"box covers {area:.1%} of the image, a Label {level} crop covers {expected:.2%}"]
    return []


def _jigsaw(target: dict[str, Any], rules: AnswerRules) -> tuple[list[str], str]:
    permutation = target["permutation"]
    n = rules.jigsaw_grid**2
    if target.get("grid", rules.jigsaw_grid) != rules.jigsaw_grid:
        return [f"grid {target['grid']} is not the recipe's {rules.jigsaw_grid}"], ""
    if not _ints(permutation) or sorted(permutation) != list(range(n)):
        return [f"permutation {permutation!r} is not a permutation of 0..{n - 1}"], ""
    if permutation == list(range(n)):
        return ["permutation is the identity (nothing to reconstruct)"], ""
    return [], prompts.jigsaw_answer(permutation)


def _anomaly(target: dict[str, Any], rules: AnswerRules) -> tuple[list[str], str]:
    cell, grid = target["cell"], target.get("grid", rules.anomaly_grid)
    if not _ints([cell]) or cell not in rules.anomaly_cells:
        return [f"cell {cell!r} is not one of the recipe's cells {list(rules.anomaly_cells)}"], ""
    if grid != rules.anomaly_grid:
        return [f"grid {grid!r} is not the recipe's {rules.anomaly_grid}"], ""
    if "row" in target and (target["row"], target["col"]) != divmod(cell, grid):
        return [f"row/col {target['row']}/{target['col']} do not locate cell {cell}"], ""
    return [], prompts.anomaly_answer(cell)
