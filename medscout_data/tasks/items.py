"""Item contents from images: task geometry + questions + answers + structured truth.

`scale_item`, `jigsaw_item` and `anomaly_item` are pure: arrays and an explicit
generator in, an `ItemContent` out. `to_row` encodes the images as PNG and
lays the content out as one row of `schema.ITEM_SCHEMA`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medscout_data.imaging import encode_png, resize
from medscout_data.recipe import PngConfig, Recipe
from medscout_data.tasks import prompts
from medscout_data.tasks.content import TaskRejected, check_cell, check_tiles
from medscout_data.tasks.geometry import (
    ScaleResult,
    box_to_grid,
    box_to_unit,
    cell_box,
    cell_difference,
    fit_to_grid,
    make_scale,
    paste_cell,
    shuffle_tiles,
    tiles,
)
from medscout_data.tasks.solvers import best_match, box_iou, solution_margin


@dataclass(frozen=True)
class ItemContent:
    """What a model sees and the truth, before encoding."""

    images: list[np.ndarray]
    question: str
    answer: str
    target: dict[str, Any]
    provenance: dict[str, Any] = field(default_factory=dict)


def scale_item(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, recipe: Recipe, modality: str, variant: str
) -> ItemContent:
    """Full image + N crops; the answer lists tiers or 0-1000 boxes in crop order."""
    config = recipe.scale
    result = make_scale(image, mask, rng, config)
    check_best_match(image, result.crops, result.boxes, config.min_match_iou)
    height, width = image.shape
    grid_boxes = [box_to_grid(b, height, width) for b in result.boxes]
    answer = prompts.tier_answer(result.levels) if variant == "tier" else prompts.box_answer(grid_boxes)
    return ItemContent(
        images=[image, *result.crops],
        question=prompts.scale_question(modality, variant, config.n_crops, config.level_areas),
        answer=answer,
        target={
            "levels": result.levels,
            "boxes": [box_to_unit(b, height, width) for b in result.boxes],
            "boxes_1000": [list(b) for b in grid_boxes],
        },
        provenance={
            "crops_px": [list(b) for b in result.boxes],
            "crop_size": list(result.crops[0].shape),
            "resampling": _chain_provenance(result),
        },
    )


def check_best_match(
    image: np.ndarray, crops: list[np.ndarray], boxes: list[tuple[int, int, int, int]], min_iou: float
) -> None:
    """`TaskRejected` when a crop's best match in the full image is not its own box (IoU below
    `min_iou`): the truth would not be the best answer (0 turns the check off)."""
    if min_iou <= 0:
        return
    for number, (crop, box) in enumerate(zip(crops, boxes, strict=True)):
        found = best_match(image, crop, box)
        overlap = box_iou(found, box)
        if overlap < min_iou:
            raise TaskRejected(
                f"crop {number + 1} matches another place of the image better than its box "
                f"(IoU {overlap:.2f} < scale.min_match_iou {min_iou:g})"
            )


def _chain_provenance(result: ScaleResult) -> dict[str, Any]:
    """How the crops were resampled: the mode, and for `matched` the effective grid, blur and grain."""
    chain = result.chain
    if chain.mode == "direct":
        return {"mode": "direct"}
    return {
        "mode": chain.mode,
        "effective_px": list(chain.effective),
        "blur_px": chain.blur,
        "noise": round(chain.noise, 3),
        "grain": [round(g, 3) for g in result.grain],
    }


def jigsaw_item(
    image: np.ndarray, permutation: tuple[int, ...], recipe: Recipe, modality: str
) -> ItemContent:
    """The image shuffled by `permutation`; the answer is the permutation.

    `TaskRejected` when a tile is featureless, two tiles look alike or another
    arrangement fits as well: the answer would not be unique.
    """
    config = recipe.jigsaw
    grid = config.grid
    pieces = tiles(fit_to_grid(image, grid), grid)
    check_tiles(pieces, config.min_structure, config.min_tile_difference)
    check_one_arrangement(pieces, grid, config.min_solution_margin)
    shuffled = shuffle_tiles(image, permutation, grid)
    return ItemContent(
        images=[shuffled],
        question=prompts.jigsaw_question(modality, grid),
        answer=prompts.jigsaw_answer(permutation),
        target={"grid": grid, "permutation": list(permutation)},
        provenance={"fitted_shape": list(shuffled.shape)},
    )


def check_one_arrangement(pieces: list[np.ndarray], grid: int, min_margin: float) -> None:
    """`TaskRejected` when another arrangement of the tiles fits (classical seam score) within
    `min_margin` of the truth: e.g. the 180-degree turn of a symmetric head (negative: off)."""
    if min_margin < 0:
        return
    margin = solution_margin(pieces, grid)
    if margin < min_margin:
        raise TaskRejected(
            f"another arrangement of the tiles fits as well as the truth (seam-score margin "
            f"{margin:.3f} < jigsaw.min_solution_margin {min_margin:g})"
        )


def fit_reference(image: np.ndarray, reference: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """(image, reference) fitted to the grid, the reference resized to the image's shape.

    A reference of the image's own shape (a neighbouring slice of the same volume) is trimmed
    the same way instead of resized, so its pixels stay the slice's own."""
    fitted = fit_to_grid(image, grid)
    if reference.shape == image.shape:
        return fitted, fit_to_grid(reference, grid)
    height, width = fitted.shape
    return fitted, resize(reference, width, height)


def anomaly_difference(
    image: np.ndarray, reference: np.ndarray, cell: int, grid: int, paste: str = "hard"
) -> float:
    """Visible difference (grey levels) the paste of `cell` would make (after matching, for
    `paste="matched"`)."""
    fitted, ref = fit_reference(image, reference, grid)
    box = cell_box(*fitted.shape, cell, grid)
    if paste == "hard":
        return cell_difference(fitted, ref, box)
    return cell_difference(fitted, paste_cell(fitted, ref, cell, grid, paste), box)


def anomaly_item(
    image: np.ndarray, reference: np.ndarray, cell: int, recipe: Recipe, modality: str
) -> ItemContent:
    """The image with `cell` replaced by the same cell of `reference`; the answer is the cell.

    `TaskRejected` when the cell, or more than half of its edge neighbours, is featureless,
    or when the paste (after matching, with `anomaly.paste = "matched"`)
    differs from the original by less than `anomaly.min_cell_difference`.
    """
    config = recipe.anomaly
    grid = config.grid
    fitted, ref = fit_reference(image, reference, grid)
    boxes = [cell_box(*fitted.shape, k, grid) for k in range(grid * grid)]
    check_cell(fitted, boxes, cell, grid, config.min_structure)
    tampered = paste_cell(fitted, ref, cell, grid, config.paste)
    difference = cell_difference(fitted, tampered, boxes[cell])
    if difference < config.min_cell_difference:
        raise TaskRejected(
            f"the {config.paste} paste of cell {cell} is not visible "
            f"(difference {difference:.1f} < anomaly.min_cell_difference {config.min_cell_difference:g})"
        )
    row, col = divmod(cell, grid)
    return ItemContent(
        images=[tampered],
        question=prompts.anomaly_question(modality, grid, config.cells),
        answer=prompts.anomaly_answer(cell),
        target={"grid": grid, "cell": cell, "row": row, "col": col},
        provenance={
            "fitted_shape": list(fitted.shape),
            "cell_difference": round(difference, 3),
            "paste": config.paste,
        },
    )


@dataclass(frozen=True)
class ItemKey:
    """Identity and provenance columns of one item."""

    id: str
    modality: str
    task: str
    variant: str
    subject_id: str
    source_id: str
    reference_subject_id: str
    seed: int


def to_row(content: ItemContent, key: ItemKey, source: dict[str, Any], png: PngConfig) -> dict[str, Any]:
    """One `ITEM_SCHEMA` row: PNG-encoded images, both prompts, JSON target and provenance."""
    question = content.question
    return {
        "id": key.id,
        "modality": key.modality,
        "task": key.task,
        "variant": key.variant,
        "images": [{"bytes": encode_png(image, png), "path": None} for image in content.images],
        "question": prompts.with_mode(question, "direct"),
        "question_cot": prompts.with_mode(question, "cot"),
        "answer": content.answer,
        "target": json.dumps(content.target, sort_keys=True),
        "subject_id": key.subject_id,
        "source_id": key.source_id,
        "source": json.dumps({**source, **content.provenance}, sort_keys=True),
        "reference_subject_id": key.reference_subject_id,
        "seed": key.seed,
    }
