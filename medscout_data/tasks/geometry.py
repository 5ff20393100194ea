"""The three proxy tasks as pure functions over numpy arrays.

No I/O and no hidden state: every function takes 8-bit grayscale arrays, an
explicit `numpy.random.Generator` where it draws, and recipe settings, and
returns arrays plus the truth. Pixel boxes are (x0, y0, x1, y1) with x1, y1
exclusive; x runs right and y down; indices are 0-based everywhere.

- scale:   N crops of Level-1 / Level-2 area with the image's aspect ratio,
           each carrying structure, brought to one size through a chain of
           one effective resolution (`resampling`).
- jigsaw:  a grid x grid tiling shuffled by a non-identity permutation.
- anomaly: one grid cell replaced by the same cell of a reference image,
           pasted as it is (`hard`) or with its intensity statistics matched
           to the cell it replaces (`matched`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import cv2
import numpy as np

from medscout_data.imaging import fit_longest_side
from medscout_data.recipe import ScaleConfig
from medscout_data.tasks.content import TaskRejected, structure
from medscout_data.tasks.resampling import Resampling, matched_chain, resample_crop

__all__ = ["TaskRejected"]  # re-exported: build and the tests import it from here

Box = tuple[int, int, int, int]


# ---------------------------------------------------------------- scale


def crop_shape(height: int, width: int, area: float) -> tuple[int, int]:
    """(h, w) of a crop covering `area` of the image, with the image's aspect ratio."""
    side = math.sqrt(area)
    return max(1, round(height * side)), max(1, round(width * side))


def sample_crop_box(
    height: int,
    width: int,
    area: float,
    centre_range: tuple[float, float],
    rng: np.random.Generator,
) -> Box:
    """A crop box whose centre is drawn in `centre_range` (fractions of each axis),
    then shifted just enough to lie fully inside the image."""
    h, w = crop_shape(height, width, area)
    cx = rng.uniform(*centre_range) * width
    cy = rng.uniform(*centre_range) * height
    x0 = min(max(round(cx - w / 2), 0), width - w)
    y0 = min(max(round(cy - h / 2), 0), height - h)
    return x0, y0, x0 + w, y0 + h


def box_fraction(mask: np.ndarray, box: Box) -> float:
    """Fraction of the box's pixels that are set in `mask`."""
    x0, y0, x1, y1 = box
    return float(mask[y0:y1, x0:x1].mean())


@dataclass(frozen=True)
class ScaleResult:
    """Crops (all one size), their levels (1 or 2), pixel boxes in the full image, the chain
    they went through and the grain each received (grey levels)."""

    crops: list[np.ndarray]
    levels: list[int]
    boxes: list[Box]
    chain: Resampling
    grain: list[float]


def make_scale(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, config: ScaleConfig
) -> ScaleResult:
    """Draw `config.n_crops` crops of random level, each mostly anatomy and carrying structure,
    brought to one size.

    The common size has the image's aspect ratio and longest side
    `config.crop_size`, so a crop's level cannot be read off its pixel size;
    the `matched` chain also keeps it from being read off its blur or grain.
    """
    chain = scale_chain(image, config)
    crops, levels, boxes, grain = [], [], [], []
    for _ in range(config.n_crops):
        level = int(rng.integers(1, len(config.level_areas) + 1))
        box = _anatomical_box(image, mask, config.level_areas[level - 1], rng, config)
        x0, y0, x1, y1 = box
        crop, added = resample_crop(image[y0:y1, x0:x1], chain, rng)
        crops.append(crop)
        levels.append(level)
        boxes.append(box)
        grain.append(added)
    return ScaleResult(crops, levels, boxes, chain, grain)


def scale_chain(image: np.ndarray, config: ScaleConfig) -> Resampling:
    """The item's resampling chain; `TaskRejected` when the smallest level's crop would be
    enlarged more than `config.max_enlargement` to reach the common size."""
    height, width = image.shape
    out = fit_longest_side(height, width, config.crop_size)
    effective = crop_shape(height, width, min(config.level_areas))
    enlargement = max(out) / max(effective)
    if enlargement > config.max_enlargement:
        raise TaskRejected(
            f"image {width}x{height} too small: its {min(config.level_areas):.2%} crops "
            f"({effective[1]}x{effective[0]} px) would be enlarged {enlargement:.2f}x to "
            f"{config.crop_size} px (scale.max_enlargement {config.max_enlargement:g})"
        )
    if config.resampling != "matched":
        return Resampling(config.resampling, effective, out, config.resample_blur)
    shapes = [crop_shape(height, width, area) for area in config.level_areas]
    return matched_chain(image, effective, out, config.resample_blur, shapes, config.match_noise)


def _anatomical_box(
    image: np.ndarray, mask: np.ndarray, area: float, rng: np.random.Generator, config: ScaleConfig
) -> Box:
    """A box mostly on anatomy whose pixels carry structure (not a flat grey square)."""
    height, width = mask.shape
    featureless = 0
    for _ in range(config.max_tries):
        box = sample_crop_box(height, width, area, config.centre_range, rng)
        if box_fraction(mask, box) < config.min_anatomy_fraction:
            continue
        x0, y0, x1, y1 = box
        if config.min_structure <= 0 or structure(image[y0:y1, x0:x1]) >= config.min_structure:
            return box
        featureless += 1
    if featureless:
        raise TaskRejected(
            f"no crop of area {area:g} with >= {config.min_anatomy_fraction:.0%} anatomy carries "
            f"structure >= scale.min_structure {config.min_structure:g} in {config.max_tries} draws "
            f"({featureless} were featureless)"
        )
    raise TaskRejected(
        f"no crop of area {area:g} with >= {config.min_anatomy_fraction:.0%} anatomy "
        f"(scale.min_anatomy_fraction {config.min_anatomy_fraction:g}) in {config.max_tries} draws"
    )


def box_to_grid(box: Box, height: int, width: int, grid: int = 1000) -> Box:
    """A pixel box as integers on a 0..grid scale (the answer's convention)."""
    x0, y0, x1, y1 = box
    return (
        round(grid * x0 / width),
        round(grid * y0 / height),
        round(grid * x1 / width),
        round(grid * y1 / height),
    )


def box_to_unit(box: Box, height: int, width: int) -> list[float]:
    """A pixel box as floats in [0, 1] (the structured target's convention)."""
    x0, y0, x1, y1 = box
    return [x0 / width, y0 / height, x1 / width, y1 / height]


# ---------------------------------------------------------------- grids


def fit_to_grid(image: np.ndarray, grid: int) -> np.ndarray:
    """The image trimmed at the bottom and right to a multiple of `grid` on both axes,
    so every tile or cell has the same size."""
    height, width = image.shape[:2]
    return image[: height - height % grid, : width - width % grid]


def cell_box(height: int, width: int, cell: int, grid: int) -> Box:
    """Pixel box of cell `cell` (row = cell // grid, col = cell % grid)."""
    th, tw = height // grid, width // grid
    row, col = divmod(cell, grid)
    return col * tw, row * th, (col + 1) * tw, (row + 1) * th


def tiles(image: np.ndarray, grid: int) -> list[np.ndarray]:
    """The grid's tiles in reading order (image must already fit the grid)."""
    height, width = image.shape[:2]
    return [_view(image, cell_box(height, width, k, grid)) for k in range(grid * grid)]


def _view(image: np.ndarray, box: Box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return image[y0:y1, x0:x1]


# ---------------------------------------------------------------- jigsaw


def non_identity_permutations(n: int) -> list[tuple[int, ...]]:
    """All permutations of range(n) but the identity, in lexicographic order (23 for n = 4)."""
    return [p for p in itertools.permutations(range(n)) if p != tuple(range(n))]


def shuffle_tiles(image: np.ndarray, permutation: tuple[int, ...], grid: int) -> np.ndarray:
    """Shuffled image whose tile at position p is the original tile `permutation[p]`.

    The answer is `permutation` itself: for each shuffled position, read left
    to right and top to bottom, the original index of the tile there.
    """
    fitted = fit_to_grid(image, grid)
    if sorted(permutation) != list(range(grid * grid)):
        raise ValueError(f"not a permutation of {grid * grid} tiles: {permutation}")
    source = tiles(fitted, grid)
    out = np.empty_like(fitted)
    for target, tile in zip(tiles(out, grid), (source[k] for k in permutation), strict=True):
        target[...] = tile
    return out


def reassemble(shuffled: np.ndarray, permutation: tuple[int, ...], grid: int) -> np.ndarray:
    """Undo `shuffle_tiles`: put each shuffled tile back at its original index."""
    out = np.empty_like(shuffled)
    original = tiles(out, grid)
    for position, tile in enumerate(tiles(shuffled, grid)):
        original[permutation[position]][...] = tile
    return out


# ---------------------------------------------------------------- anomaly


PASTES = ("hard", "matched")


def paste_cell(
    image: np.ndarray, reference: np.ndarray, cell: int, grid: int, paste: str = "hard"
) -> np.ndarray:
    """`image` (fitted to the grid) with cell `cell` replaced by the same cell of `reference`.

    `reference` must already have the fitted image's shape. `paste="matched"`
    first gives the pasted block the mean and spread of the block it replaces
    (`match_statistics`), so an intensity jump alone does not give it away.
    """
    fitted = fit_to_grid(image, grid)
    if reference.shape != fitted.shape:
        raise ValueError(f"reference shape {reference.shape} != image shape {fitted.shape}")
    if paste not in PASTES:
        raise ValueError(f"paste must be one of {', '.join(PASTES)}, not {paste!r}")
    out = fitted.copy()
    x0, y0, x1, y1 = cell_box(*fitted.shape, cell, grid)
    block = reference[y0:y1, x0:x1]
    out[y0:y1, x0:x1] = match_statistics(block, fitted[y0:y1, x0:x1]) if paste == "matched" else block
    return out


def match_statistics(block: np.ndarray, like: np.ndarray) -> np.ndarray:
    """`block` shifted and scaled (one linear map of its grey levels) to the mean and standard
    deviation of `like`; a flat block is only shifted."""
    values = block.astype(np.float32)
    spread = float(values.std())
    gain = float(like.std()) / spread if spread > 1e-3 else 1.0
    matched = (values - float(values.mean())) * gain + float(like.mean())
    return np.clip(np.rint(matched), 0, 255).astype(np.uint8)


def cell_difference(a: np.ndarray, b: np.ndarray, box: Box, blocks: int = 8) -> float:
    """How visibly two images differ inside `box`, in grey levels.

    The mean absolute difference of the two cells after area-averaging each to
    blocks x blocks: structure counts, pixel noise (which alone would differ
    between any two scans) mostly averages out.
    """
    x0, y0, x1, y1 = box
    size = (min(blocks, x1 - x0), min(blocks, y1 - y0))
    small_a = cv2.resize(a[y0:y1, x0:x1].astype(np.float32), size, interpolation=cv2.INTER_AREA)
    small_b = cv2.resize(b[y0:y1, x0:x1].astype(np.float32), size, interpolation=cv2.INTER_AREA)
    return float(np.abs(small_a - small_b).mean())
