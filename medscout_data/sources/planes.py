"""Volume orientation: one canonical order for every file, and slices in each plane's display convention.

A volume is viewed in canonical LPS order: array (z, y, x) with x toward the
patient's left, y toward posterior, z toward superior, whatever the file's
direction matrix. The view is a numpy *view* (axes transposed and flipped, as
`sitk.DICOMOrient(image, "LPS")` would do), so no second copy is made.

Slices of each plane come in that plane's standard radiological display,
again as views (the tests check all 48 stored orientations against
`sitk.DICOMOrient` with the codes below):

    plane     display code  rows (top -> bottom)    columns (left -> right)   slices step toward
    axial     LPS           anterior -> posterior   patient right -> left     superior
    coronal   LIP           superior -> inferior    patient right -> left     posterior
    sagittal  PIL           superior -> inferior    anterior -> posterior     patient left

A slice's position (`z_mm` in the catalogue) is its coordinate along the
slicing normal in mm, in LPS: superior for axial, posterior for coronal, the
patient's left for sagittal; it grows with the slice index.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from medscout_data.recipe import IngestConfig

DISPLAY_CODES = {"axial": "LPS", "coronal": "LIP", "sagittal": "PIL"}
NORMAL_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}  # LPS axis (x=0, y=1, z=2) along the normal


@dataclass(frozen=True)
class Canonical:
    """A volume in canonical LPS order: `array[z, y, x]`, a view of the file's voxels."""

    array: np.ndarray
    spacing: tuple[float, float, float]  # (x, y, z) mm
    start_mm: tuple[float, float, float]  # LPS coordinate of canonical index 0 along x, y, z

    def z_mm(self, index: int) -> float:
        """Superior coordinate of axial slice `index`."""
        return self.start_mm[2] + index * self.spacing[2]


def canonical_axes(direction: tuple[float, ...]) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """For each patient axis (L, P, S), the image index axis closest to it and whether it runs backwards.

    `direction` is SimpleITK's row-major 3x3 matrix whose columns are the index
    axes in LPS space. For an oblique volume the closest axes win (as
    `DICOMOrient` does); the residual tilt is not resampled.
    """
    d = np.asarray(direction, float).reshape(3, 3)
    axes = max(itertools.permutations(range(3)), key=lambda p: sum(abs(d[w, p[w]]) for w in range(3)))
    flips = tuple(bool(d[w, axes[w]] < 0) for w in range(3))
    return axes, flips  # type: ignore[return-value]


def to_canonical(
    array_zyx: np.ndarray,
    spacing: tuple[float, ...],
    origin: tuple[float, ...],
    direction: tuple[float, ...],
) -> Canonical:
    """View a SimpleITK-ordered array (k, j, i) as canonical LPS (z, y, x) without copying."""
    axes, flips = canonical_axes(direction)
    view = array_zyx.transpose(2 - axes[2], 2 - axes[1], 2 - axes[0])
    view = view[tuple(slice(None, None, -1) if f else slice(None) for f in (flips[2], flips[1], flips[0]))]
    d = np.asarray(direction, float).reshape(3, 3)
    starts = []
    for w in range(3):
        step = float(d[w, axes[w]] * spacing[axes[w]])  # mm along patient axis w per stored index
        count = array_zyx.shape[2 - axes[w]]
        starts.append(float(origin[w] + (count - 1) * step) if step < 0 else float(origin[w]))
    canon_spacing = (float(spacing[axes[0]]), float(spacing[axes[1]]), float(spacing[axes[2]]))
    return Canonical(view, canon_spacing, (starts[0], starts[1], starts[2]))


@dataclass(frozen=True)
class PlaneView:
    """A volume's slices in one plane: `array[k]` is slice k in display orientation (a view)."""

    plane: str
    array: np.ndarray  # (slices, rows, columns)
    row_mm: float
    column_mm: float
    normal_mm: float  # distance between consecutive slices
    start_mm: float  # position of slice 0 along the normal

    def position_mm(self, index: int) -> float:
        return self.start_mm + index * self.normal_mm


def plane_view(canon: Canonical, plane: str) -> PlaneView:
    """The canonical volume's slices in `plane`, in that plane's display convention (no copy)."""
    sx, sy, sz = canon.spacing
    a = canon.array
    if plane == "axial":
        return PlaneView(plane, a, sy, sx, sz, canon.start_mm[2])
    if plane == "coronal":
        return PlaneView(plane, a.transpose(1, 0, 2)[:, ::-1, :], sz, sx, sy, canon.start_mm[1])
    if plane == "sagittal":
        return PlaneView(plane, a.transpose(2, 0, 1)[:, ::-1, :], sz, sy, sx, canon.start_mm[0])
    raise ValueError(f"unknown plane {plane!r}; use one of {', '.join(DISPLAY_CODES)}")


def in_plane_spacing(spacing: tuple[float, float, float]) -> dict[str, float]:
    """Each plane's coarser in-plane spacing (mm): what its slices' sharpness is limited by."""
    sx, sy, sz = spacing
    return {"axial": max(sx, sy), "coronal": max(sx, sz), "sagittal": max(sy, sz)}


def choose_plane(spacing: tuple[float, float, float], config: IngestConfig) -> str:
    """The recipe's plane, or for "auto": axial unless its in-plane spacing is more than
    `plane_anisotropy` times the finest plane's (a sagittal or coronal acquisition, thick
    axial-plane slices), then the finest plane (the acquisition plane)."""
    if config.plane != "auto":
        return config.plane
    coarse = in_plane_spacing(spacing)
    finest = min(coarse, key=lambda p: (coarse[p], list(DISPLAY_CODES).index(p)))
    return "axial" if coarse["axial"] <= config.plane_anisotropy * coarse[finest] else finest
