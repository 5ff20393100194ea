"""Content measures behind the validity rules: is there structure to look at, and how noisy is it.

An item is only worth asking if its answer can be read off the pixels. These
pure functions measure what that needs, in grey levels of the 8-bit image:

- `structure`: how much a patch varies at the scale of its own blocks (the
  spread of its block means). Pixel noise averages out inside a block, so a
  flat grey square scores about 0 however noisy it is, and anatomy scores
  tens of grey levels.
- `look_alike`: how different two equally sized patches look, block by block.
- `noise_level`: a robust estimate of the pixel noise (Immerkaer's Laplacian
  difference mask over the flatter half of the unsaturated pixels), used to
  give every scale crop the same noise grain.

The `check_*` functions raise `TaskRejected` with a short reason naming what
failed and the recipe threshold, so build can record it and replace the item.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

MAX_BLOCKS = 8  # a patch is summarised by at most 8 x 8 block means
MIN_BLOCK_PX = 8  # ... each averaging at least 8 x 8 pixels where the patch allows
# Immerkaer (1996): this mask cancels linear structure and keeps pixel noise.
_NOISE_MASK = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)


class TaskRejected(ValueError):
    """This image cannot make this item (e.g. no crop is mostly anatomy, a tile is featureless)."""


def block_means(patch: np.ndarray) -> np.ndarray:
    """The patch's means over at most MAX_BLOCKS x MAX_BLOCKS equal blocks of at least MIN_BLOCK_PX
    pixels. The patch is trimmed at the bottom and right to a whole number of blocks (at most a
    block's width less one pixel), which keeps OpenCV on its fast integer-ratio area path."""
    height, width = patch.shape[:2]
    rows = min(max(height // MIN_BLOCK_PX, 1), MAX_BLOCKS)
    cols = min(max(width // MIN_BLOCK_PX, 1), MAX_BLOCKS)
    if min(height, width) >= 2:
        rows, cols = max(rows, 2), max(cols, 2)
    trimmed = patch[: rows * (height // rows), : cols * (width // cols)]
    return cv2.resize(trimmed, (cols, rows), interpolation=cv2.INTER_AREA).astype(np.float32)


def structure(patch: np.ndarray) -> float:
    """Spread (standard deviation, grey levels) of the patch's block means: 0 for a flat square."""
    if patch.size == 0:
        return 0.0
    return float(cv2.meanStdDev(block_means(patch))[1][0, 0])


def look_alike(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference (grey levels) of two same-shaped patches' block means."""
    return float(np.abs(block_means(a) - block_means(b)).mean())


def noise_level(image: np.ndarray) -> float:
    """Robust pixel-noise estimate in grey levels (0 when too few usable pixels).

    Immerkaer's mask responds to noise and hardly to smooth structure; edges
    are left out by keeping the half of the pixels with the weakest gradient,
    and saturated pixels (air clipped to 0, bone to 255) carry no noise and
    are left out too. The scale is set so white Gaussian noise of standard
    deviation s reads s.
    """
    return _raw_noise(image) * _white_noise_scale()


def _raw_noise(image: np.ndarray) -> float:
    values = image.astype(np.float32)
    response = np.abs(cv2.filter2D(values, -1, _NOISE_MASK))[1:-1, 1:-1]
    gradient = (np.abs(cv2.Sobel(values, cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(values, cv2.CV_32F, 0, 1)))[
        1:-1, 1:-1
    ]
    inner = values[1:-1, 1:-1]
    usable = (inner > 0.5) & (inner < 254.5)
    response, gradient = response[usable], gradient[usable]
    if response.size < 16:
        return 0.0
    half = response.size // 2
    cut = np.partition(gradient, half)[half]
    return float(response[gradient <= cut].mean())


@functools.lru_cache(maxsize=1)
def _white_noise_scale() -> float:
    """1 / the raw reading of unit white noise (fixed seed: the same on every machine)."""
    field = np.random.default_rng(0).normal(128.0, 10.0, (256, 256))
    return 10.0 / _raw_noise(field)


# ---------------------------------------------------------------- the rules


def check_structure(patch: np.ndarray, minimum: float, what: str, rule: str = "min_structure") -> None:
    """TaskRejected when `patch` is featureless (structure below `minimum`, the recipe's `rule`)."""
    check_structure_value(structure(patch), minimum, what, rule)


def check_structure_value(value: float, minimum: float, what: str, rule: str = "min_structure") -> None:
    if value < minimum:
        raise TaskRejected(f"{what} is featureless (structure {value:.1f} < {rule} {minimum:g})")


def check_tiles(pieces: list[np.ndarray], min_structure: float, min_difference: float) -> None:
    """Every tile carries structure and no two tiles look alike (else the answer is not unique)."""
    for index, tile in enumerate(pieces):
        check_structure(tile, min_structure, f"tile {index}", "jigsaw.min_structure")
    means = [block_means(tile) for tile in pieces]
    for i in range(len(pieces)):
        for j in range(i + 1, len(pieces)):
            difference = float(np.abs(means[i] - means[j]).mean())
            if difference < min_difference:
                raise TaskRejected(
                    f"tiles {i} and {j} look alike (difference {difference:.1f} < "
                    f"jigsaw.min_tile_difference {min_difference:g})"
                )


def check_cell(
    image: np.ndarray, boxes: list[tuple[int, int, int, int]], cell: int, grid: int, minimum: float
) -> None:
    """The anomaly cell carries structure, and so do at least half of the cells sharing a side
    with it: a paste is judged against its neighbours, and against flat ones nothing is seen.
    (Half, not all: a central cell next to the air above a patient is a fair item.)"""

    def value(k: int) -> float:
        x0, y0, x1, y1 = boxes[k]
        return structure(image[y0:y1, x0:x1])

    check_structure_value(value(cell), minimum, f"cell {cell}", "anomaly.min_structure")
    neighbours = edge_neighbours(cell, grid)
    flat = {k: v for k in neighbours if (v := value(k)) < minimum}
    if len(flat) > len(neighbours) // 2:
        values = ", ".join(f"{v:.1f}" for v in flat.values())
        raise TaskRejected(
            f"cell {cell}'s neighbourhood is featureless: neighbour cells "
            f"{', '.join(map(str, flat))} (structure {values} < anomaly.min_structure {minimum:g})"
        )


def edge_neighbours(cell: int, grid: int) -> list[int]:
    """The cells sharing a side with `cell` on a grid x grid board."""
    row, col = divmod(cell, grid)
    steps = ((-1, 0), (1, 0), (0, -1), (0, 1))
    return [(row + dr) * grid + col + dc for dr, dc in steps if 0 <= row + dr < grid and 0 <= col + dc < grid]
