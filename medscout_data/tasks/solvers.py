"""The classical solvers' scores, shared by build (one best answer per item) and the baselines.

Pure numpy / OpenCV, no I/O. Build asks the same questions the `classical`
baseline asks, on the very pixels it writes, so an item whose truth is not
the solver's clear best answer is rejected when it is made:

- jigsaw: `arrangement_costs` scores every arrangement of the tiles by the
  discontinuity of the seams it creates plus the prior that the image's
  outer frame is background (`pair_costs`, `frame_costs`);
  `solution_margin` is how much worse the best other arrangement is than
  the truth.
- scale: `best_match` finds where a crop, resized back to its box's size,
  correlates best in the full image (normalised cross-correlation, at a
  reduced working scale for speed); the box should be that place.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import cv2
import numpy as np

from medscout_data.imaging import resize

FRAME_WEIGHT = 0.5  # jigsaw: weight of the "border is background" prior against the seams
FRAME_BAND = 3  # jigsaw: pixels along a tile side whose brightness counts
MATCH_WORK_SIZE = 128  # scale: the full image's longest side while a crop's best match is searched

Box = tuple[int, int, int, int]


# ---------------------------------------------------------------- jigsaw


def pair_costs(pieces: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(left-right, top-bottom) seam costs: [a, b] for tile b right of / below tile a.

    The mean absolute difference of the two touching pixel lines, on the raw
    pixels: across a true seam neighbouring pixels are correlated (anatomy,
    and the scanner's and the resampling's blur), across a false one they are
    not. Smoothing first would throw that evidence away.
    """
    right = np.stack([p[:, -1] for p in pieces]).astype(np.float64)  # (tiles, height)
    left = np.stack([p[:, 0] for p in pieces]).astype(np.float64)
    bottom = np.stack([p[-1] for p in pieces]).astype(np.float64)  # (tiles, width)
    top = np.stack([p[0] for p in pieces]).astype(np.float64)
    lr = np.abs(right[:, None, :] - left[None, :, :]).mean(axis=2)
    tb = np.abs(bottom[:, None, :] - top[None, :, :]).mean(axis=2)
    return lr, tb


def frame_costs(pieces: Sequence[np.ndarray], grid: int, band: int = FRAME_BAND) -> np.ndarray:
    """(tiles, positions) cost of the bright pixels a tile would put on the reassembly's outer frame.

    A medical image's border is mostly background (air, collimation), its
    middle anatomy: the mean grey level in a band along each tile side that
    would lie on the frame, relative to the image's mean, summed per position.
    This breaks the ties a seam search leaves when background borders match
    each other as well as anatomy does (air against air).
    """
    mean = float(np.mean([p.mean() for p in pieces])) + 1.0
    sides = np.array(
        [[p[:band].mean(), p[-band:].mean(), p[:, :band].mean(), p[:, -band:].mean()] for p in pieces]
    )
    place = np.zeros((len(pieces), grid * grid))
    for k in range(grid * grid):
        row, col = divmod(k, grid)
        on_frame = [row == 0, row == grid - 1, col == 0, col == grid - 1]
        place[:, k] = sides[:, on_frame].sum(axis=1) / mean
    return place


def permutation_costs(
    grid: int,
    candidates: np.ndarray,
    place: np.ndarray,
    seams: tuple[np.ndarray, np.ndarray] | None = None,
    seam_weight: float = 1.0,
) -> np.ndarray:
    """Cost of each candidate permutation (rows of `candidates`): `place[t, k]` for shuffled tile t
    at original position k, plus `seam_weight` x the mean seam cost (pair costs relative to their
    own mean).

    A permutation p says the tile at shuffled position s is original tile
    p[s]; the reassembly's original position k then holds shuffled tile
    inverse(p)[k].
    """
    n = grid * grid
    at = np.argsort(candidates, axis=1)  # at[:, k] = shuffled tile placed at original position k
    cost = place[at, np.arange(n)].sum(axis=1)
    if seams is not None:
        lr, tb = seams
        scale = (lr.mean() + tb.mean()) / 2 + 1e-6
        total = np.zeros(len(candidates))
        for k in range(n):
            row, col = divmod(k, grid)
            if col < grid - 1:
                total += lr[at[:, k], at[:, k + 1]]
            if row < grid - 1:
                total += tb[at[:, k], at[:, k + grid]]
        cost = cost + seam_weight * total / (scale * 2 * grid * (grid - 1))
    return cost


def arrangement_costs(pieces: Sequence[np.ndarray], grid: int, candidates: np.ndarray) -> np.ndarray:
    """The classical jigsaw solver's cost of each candidate: seams plus FRAME_WEIGHT x the frame."""
    place = FRAME_WEIGHT * frame_costs(pieces, grid) / (4 * grid)
    return permutation_costs(grid, candidates, place, pair_costs(pieces))


def solution_margin(tiles_in_order: Sequence[np.ndarray], grid: int) -> float:
    """How much more the solver's best wrong arrangement of an image's tiles costs than the truth
    (tiles in reading order, as cut from the unshuffled image); <= 0: the solver prefers a wrong one."""
    pieces = list(tiles_in_order)
    candidates = np.array(list(itertools.permutations(range(grid * grid))), np.int64)  # identity first
    costs = arrangement_costs(pieces, grid, candidates)
    return float(costs[1:].min() - costs[0])


# ---------------------------------------------------------------- scale


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two pixel boxes (x0, y0, x1, y1)."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def best_match(image: np.ndarray, crop: np.ndarray, box: Box, work_size: int = MATCH_WORK_SIZE) -> Box:
    """Where `crop`, resized to the size of `box`, correlates best in `image` (normalised
    cross-correlation, OpenCV `TM_CCOEFF_NORMED`), as a pixel box of `image`.

    The search runs with the image's longest side at most `work_size` (the
    crop resized by the same factor), then maps back to full pixels.
    """
    height, width = image.shape
    factor = min(1.0, work_size / max(height, width))
    x0, y0, x1, y1 = box
    if factor < 1.0:
        work = resize(image, max(1, round(width * factor)), max(1, round(height * factor)))
    else:
        work = image
    w = min(work.shape[1], max(2, round((x1 - x0) * factor)))
    h = min(work.shape[0], max(2, round((y1 - y0) * factor)))
    scores = cv2.matchTemplate(work, resize(crop, w, h), cv2.TM_CCOEFF_NORMED)
    _, _, _, (x, y) = cv2.minMaxLoc(scores)
    bx, by = round(x / factor), round(y / factor)
    return bx, by, bx + (x1 - x0), by + (y1 - y0)
