"""CT and MRI volumes (TotalSegmentator layout) -> 8-bit slices in radiological display.

Each volume is read once (nifti.py: the header checked by hand first) and
viewed canonically (planes.py). It is sliced axially, or in its acquisition
plane when axial slices would be stretched (`ingest.plane`), each slice in
that plane's display convention and resampled to square pixels (the finer
in-plane spacing, the longest side capped at `max_size`).

The body is the largest 3-D connected component above a threshold (CT: HU
from the recipe; MRI: Otsu on robust percentiles, so one extreme voxel cannot
move it), found on a coarse grid, then refined per slice with holes filled
(lungs count as body); the couch and other objects are other components. A
background stored as a constant above the threshold (a skull-stripped CT with
0 HU outside the head) is recognised on the volume's border and left out, and
a slice whose "body" is its whole frame is dropped: it has no background.

Slices are cropped to the body's bounding box over the whole volume plus a
margin (`ingest.crop_to_body`): one box per volume keeps its slices
pixel-aligned, so an anomaly reference a few mm away pastes without shift or
scale. The body fraction is measured inside that box; slices below
`min_body_fraction` are dropped. With `ingest.max_images`, each volume keeps
an equal share of its usable slices, in slabs of three slices `slab_step_mm`
apart spread along the normal. Kept slices are rendered (CT: one stack per
recipe window; MRI: robust percentiles inside the body) into `.stack` files.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from medscout_data.cache import STACK_SUFFIX, StackWriter
from medscout_data.imaging import resize
from medscout_data.recipe import IngestConfig, Window
from medscout_data.report import Skip
from medscout_data.sources.base import (
    InputError,
    Job,
    Listing,
    Unit,
    UnitResult,
    is_folder,
    link_problem,
    pixel_digest,
    skip_link,
    write_unit_part,
)
from medscout_data.sources.detect import TOTALSEG_META, VOLUME_NAMES, volume_file
from medscout_data.sources.masks import fill_holes
from medscout_data.sources.nifti import read_canonical
from medscout_data.sources.planes import Canonical, PlaneView, choose_plane, plane_view, to_canonical

KIND = "totalseg"
COARSE_SIDE = 128  # in-plane size of the grid the 3-D body component is found on
SLAB = 3  # slices per slab when a volume's slices are budgeted
BACKGROUND_SHARE = 0.5  # a border value this common is a stored background
WHOLE_FRAME = 0.98  # a slice "body" covering this much of the frame has no background to tell it by

__all__ = ["Canonical", "list_volumes", "process_volume", "read_canonical", "slice_grid", "to_canonical"]


# ----------------------------------------------------------------- listing


def read_meta_csv(path: Path) -> dict[str, dict[str, str]]:
    """TotalSegmentator's meta.csv (';'-separated, UTF-8 with BOM) as image_id -> row."""
    if path.exists() and not path.is_file():
        raise InputError("bad-meta", "is a directory, not a file; subject ids come from folder names")
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError("bad-meta", f"not UTF-8 text ({exc})") from exc
    except PermissionError as exc:
        raise InputError("bad-meta", f"cannot be read ({exc.strerror})") from exc
    for delimiter in (";", ","):
        reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
        if reader.fieldnames and "image_id" in [f.strip() for f in reader.fieldnames]:
            rows = ({(k or "").strip(): (v or "").strip() for k, v in row.items() if k} for row in reader)
            return {row["image_id"]: row for row in rows if row.get("image_id")}
    raise InputError("bad-meta", "no image_id column (expected a ';'-separated TotalSegmentator meta.csv)")


def list_volumes(root: Path, modality: str, config: IngestConfig) -> Listing:
    """One unit per subject folder holding a volume, sorted by folder name."""
    skips: list[Skip] = []
    counts: Counter[str] = Counter()
    meta: dict[str, dict[str, str]] = {}
    try:
        meta = read_meta_csv(root / TOTALSEG_META)
    except FileNotFoundError:
        message = "not found; subject ids come from folder names, official_split stays empty"
        skips.append(Skip(TOTALSEG_META, "missing-meta", f"{TOTALSEG_META}: {message}"))
    except InputError as exc:
        skips.append(Skip(TOTALSEG_META, exc.reason, f"{TOTALSEG_META}: {exc.message}"))
    with os.scandir(root) as listing:
        entries = sorted(listing, key=lambda e: e.name)  # skips in a stable order
    names = (e.name for e in entries if not e.name.startswith(".") and is_folder(e, skips))
    folders = sorted(name for name in names if name != TOTALSEG_META)  # a meta.csv folder is no subject
    records = []
    for name in folders:
        counts["found"] += 1
        path = volume_file(root / name, modality)
        if path is None:
            links = [
                (f"{name}/{v}", why) for v in VOLUME_NAMES[modality] if (why := link_problem(root / name / v))
            ]
            if links:
                skip_link(*links[0], skips)
                continue
            wanted = " or ".join(VOLUME_NAMES[modality])
            skips.append(Skip(name, "missing-volume", f"{name}: no {wanted} in this subject folder"))
            continue
        row = meta.get(name, {})
        counts["not_in_meta"] += bool(meta) and not row
        records.append(
            {
                "path": f"{name}/{path.name}",
                "volume_id": name,
                "subject_id": name,
                "official_split": row.get("split", ""),
                "meta": row,
            }
        )
    for image_id in sorted(set(meta) - set(folders)):
        message = f"{image_id}: listed in meta.csv but there is no folder {image_id}/ under the root"
        skips.append(Skip(image_id, "missing-volume", message))
    budget = max(1, config.max_images // len(records)) if config.max_images and records else 0
    units = [Unit(r["volume_id"], ({**r, "max_slices": budget},)) for r in records]
    return Listing([u.key for u in units], units.__getitem__, skips, counts)


# ------------------------------------------------------------- rendering


@dataclass(frozen=True)
class SliceGrid:
    """Output size of every slice of a volume: square pixels of `pixel_mm`."""

    height: int
    width: int
    pixel_mm: float


def slice_grid(ny: int, nx: int, sy: float, sx: float, max_size: int) -> SliceGrid:
    """Square pixels at the finer in-plane spacing, the longest side at most `max_size`."""
    pixel = min(sx, sy)
    height, width = ny * sy / pixel, nx * sx / pixel
    scale = min(1.0, max_size / max(height, width))
    out_h, out_w = max(1, round(height * scale)), max(1, round(width * scale))
    return SliceGrid(out_h, out_w, (ny * sy / out_h + nx * sx / out_w) / 2)


def scale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Linear map of [low, high] onto 0..255, clipped."""
    scaled = (values - np.float32(low)) * np.float32(255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def window_to_uint8(values: np.ndarray, window: Window) -> np.ndarray:
    """A CT display window: level - width/2 -> 0, level + width/2 -> 255."""
    return scale_to_uint8(values, window.level - window.width / 2, window.level + window.width / 2)


def coarse_step(ny: int, nx: int, side: int = COARSE_SIDE) -> int:
    return max(1, math.ceil(max(ny, nx) / side))


@dataclass(frozen=True)
class Intensity:
    """How a volume's voxels become body masks and 8-bit images."""

    threshold: float
    background: float | None  # a constant stored outside the body, when it is above the threshold
    channels: tuple[tuple[str, Callable[[np.ndarray], np.ndarray]], ...]  # (window name, renderer)

    def body(self, values: np.ndarray) -> np.ndarray:
        """Voxels that may be body: above the threshold and not the stored background."""
        above = values > self.threshold
        if self.background is not None:
            above &= np.abs(values - np.float32(self.background)) > 0.5
        return above


def stored_background(volume: np.ndarray, threshold: float, step: int) -> float | None:
    """A constant value filling most of the slices' borders that the threshold would count as body.

    A skull-stripped CT stores 0 HU outside the head: above -500 HU, so without
    this the whole frame would be "body".
    """
    border = np.concatenate(
        [
            np.asarray(volume[:, 0, ::step]).ravel(),
            np.asarray(volume[:, -1, ::step]).ravel(),
            np.asarray(volume[:, ::step, 0]).ravel(),
            np.asarray(volume[:, ::step, -1]).ravel(),
        ]
    )
    values, counts = np.unique(border, return_counts=True)
    common = float(values[counts.argmax()])
    return common if counts.max() >= BACKGROUND_SHARE * border.size and common > threshold else None


def coarse_body(volume: np.ndarray, intensity: Intensity, step: int) -> np.ndarray:
    """The body on a coarse in-plane grid: largest 3-D component, holes filled per slice.

    An opening first cuts thin bridges (a couch touching the back, tubes), so
    the couch and other objects stay separate components.
    """
    above = intensity.body(np.asarray(volume[:, ::step, ::step], np.float32))
    above = ndimage.binary_opening(above, structure=ndimage.generate_binary_structure(3, 1))
    labels, count = ndimage.label(above)
    if count == 0:
        return np.zeros(above.shape, bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == int(sizes.argmax())
    return np.stack([fill_holes(plane) for plane in body])


def intensity_for(volume: np.ndarray, modality: str, config: IngestConfig, step: int) -> Intensity:
    """CT: the recipe's body threshold and windows. MRI: robust Otsu threshold, body percentiles."""
    if modality == "ct":
        channels = tuple((w.name, _windowed(w)) for w in config.ct_windows)
        threshold = config.ct_body_threshold_hu
        return Intensity(threshold, stored_background(volume, threshold, step), channels)
    from skimage.filters import threshold_otsu

    sample = np.asarray(volume[:, ::step, ::step], np.float32)
    low, high = np.percentile(sample, (0.5, 99.5))
    threshold = float(threshold_otsu(np.clip(sample, low, high))) if high > low else float(low)
    probe = Intensity(threshold, stored_background(volume, threshold, step), ())
    body = coarse_body(volume, probe, step)
    if not body.any():
        raise InputError("no-usable-slices", "no body found above the Otsu threshold")
    low, high = (float(v) for v in np.percentile(sample[body], config.mri_percentiles))
    if high <= low:
        raise InputError("constant-volume", f"no contrast inside the body ({low} .. {high})")
    return Intensity(threshold, probe.background, (("", _scaled(low, high)),))


def _windowed(window: Window) -> Callable[[np.ndarray], np.ndarray]:
    return lambda values: window_to_uint8(values, window)


def _scaled(low: float, high: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda values: scale_to_uint8(values, low, high)


Box = tuple[int, int, int, int]  # y0, y1, x0, x1 (exclusive ends) in the slice grid


@dataclass
class Slices:
    """A volume's slicing: plane, grid, crop box, intensity, per-slice masks, and which slices are kept."""

    view: PlaneView
    grid: SliceGrid
    intensity: Intensity
    coarse: np.ndarray
    masks: list[np.ndarray | None]  # packed bits per slice (None: no body)
    box: Box
    kept: list[int]
    fractions: dict[int, float]
    counts: Counter[str]

    def values(self, k: int) -> np.ndarray:
        """Slice k resampled to the grid, float32."""
        return resize(np.asarray(self.view.array[k], np.float32), self.grid.width, self.grid.height)

    def mask(self, k: int) -> np.ndarray:
        packed = self.masks[k]
        assert packed is not None
        size = self.grid.height * self.grid.width
        return np.unpackbits(packed, count=size).reshape(self.grid.height, self.grid.width).view(bool)


def slice_volume(canon: Canonical, modality: str, config: IngestConfig, max_slices: int = 0) -> Slices:
    """Decide a volume's slicing: plane, body masks, crop box, kept slices (nothing rendered yet)."""
    view = plane_view(canon, choose_plane(canon.spacing, config))
    n, rows, columns = view.array.shape
    grid = slice_grid(rows, columns, view.row_mm, view.column_mm, config.max_size)
    if min(grid.height, grid.width) < config.min_image_size:
        raise InputError(
            "too-small",
            f"{view.plane} slices of {grid.height}x{grid.width} px are below "
            f"ingest.min_image_size {config.min_image_size}",
        )
    step = coarse_step(rows, columns)
    intensity = intensity_for(view.array, modality, config, step)
    coarse = ndimage.binary_dilation(coarse_body(view.array, intensity, step), iterations=1)
    slices = Slices(view, grid, intensity, coarse, [], (0, grid.height, 0, grid.width), [], {}, Counter())
    boxes = [_slice_mask(slices, k) for k in range(n)]
    body = [b for b in boxes if b is not None]
    if config.crop_to_body and body:
        slices.box = crop_box(body, grid, config)
    usable = _usable(slices, config)
    chosen = select_slabs([view.position_mm(k) for k in usable], max_slices, config.slab_step_mm)
    slices.kept = [usable[i] for i in chosen]
    slices.counts.update(slices_usable=len(usable), slices_left_out_by_budget=len(usable) - len(chosen))
    return slices


def _slice_mask(slices: Slices, k: int) -> Box | None:
    """Compute slice k's body mask (stored packed); returns its bounding box, None when it has no body."""
    grid = slices.grid
    region = cv2.resize(slices.coarse[k].astype(np.uint8), (grid.width, grid.height), cv2.INTER_NEAREST)
    mask = fill_holes(slices.intensity.body(slices.values(k)) & region.astype(bool))
    share = float(mask.mean())
    if share == 0 or share >= WHOLE_FRAME:  # no body, or no background to tell it from
        slices.counts["slices_dropped_no_background" if share else "slices_dropped_low_body"] += 1
        slices.masks.append(None)
        return None
    slices.masks.append(np.packbits(mask))
    ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1


def crop_box(boxes: list[Box], grid: SliceGrid, config: IngestConfig) -> Box:
    """The union of the slices' body boxes, plus the margin, at least `min_image_size`, inside the frame."""
    y0, y1 = min(b[0] for b in boxes), max(b[1] for b in boxes)
    x0, x1 = min(b[2] for b in boxes), max(b[3] for b in boxes)
    margin = round(config.body_crop_margin * max(y1 - y0, x1 - x0))
    y0, y1 = _span(y0 - margin, y1 + margin, grid.height, config.min_image_size)
    x0, x1 = _span(x0 - margin, x1 + margin, grid.width, config.min_image_size)
    return y0, y1, x0, x1


def _span(low: int, high: int, size: int, minimum: int) -> tuple[int, int]:
    """[low, high) widened to `minimum` around its centre if needed, then clamped into [0, size)."""
    if high - low < minimum:
        centre = (low + high) // 2
        low, high = centre - minimum // 2, centre - minimum // 2 + minimum
    if low < 0:
        low, high = 0, high - low
    if high > size:
        low, high = max(0, low - (high - size)), size
    return low, high


def _usable(slices: Slices, config: IngestConfig) -> list[int]:
    """Slices whose body covers at least `min_body_fraction` of the crop box."""
    y0, y1, x0, x1 = slices.box
    usable = []
    for k, packed in enumerate(slices.masks):
        if packed is None:
            continue
        fraction = float(slices.mask(k)[y0:y1, x0:x1].mean())
        if fraction >= config.min_body_fraction:
            usable.append(k)
            slices.fractions[k] = fraction
        else:
            slices.counts["slices_dropped_low_body"] += 1
    return usable


def select_slabs(positions: list[float], budget: int, step_mm: float) -> list[int]:
    """Indices into `positions` (sorted, mm): all of them, or at most `budget` in slabs spread along them.

    Each slab is a centre slice and the slices nearest to `step_mm` before and
    after it, so every kept slice has another kept slice about `step_mm` (or
    twice that) away: the anomaly task's reference distance.
    """
    n = len(positions)
    if budget <= 0 or n <= budget:
        return list(range(n))
    chosen: list[int] = []
    n_slabs = math.ceil(budget / SLAB)
    for slab in range(n_slabs):
        centre = min(n - 1, int((slab + 0.5) * n / n_slabs))
        members = [centre] + [_nearest(positions, positions[centre] + d) for d in (-step_mm, step_mm)]
        for index in members:
            if index not in chosen and len(chosen) < budget:
                chosen.append(index)
    return sorted(chosen)


def _nearest(positions: list[float], target: float) -> int:
    i = bisect_left(positions, target)
    near = [j for j in (i - 1, i) if 0 <= j < len(positions)]
    return min(near, key=lambda j: (abs(positions[j] - target), j))


# -------------------------------------------------------------------- a unit


def process_volume(job: Job) -> None:
    """Slice and render one volume, save its cache stacks, then its catalogue part (the completion marker).

    A problem with the input is recorded as a skip; a problem writing the
    outputs (a full disk) propagates, and the runner stops the run naming it.
    """
    result = UnitResult()
    (record,) = job.unit.records
    name = record["path"]
    try:
        canon = read_canonical(job.root / name)
        slices = slice_volume(canon, job.modality, job.config, record.get("max_slices", 0))
    except InputError as exc:
        result.skip(name, exc.reason, f"{name}: {exc.message}")
    except Exception as exc:  # one odd file must not stop a long run; recorded with its cause
        result.skip(name, "decode-error", f"{name}: {type(exc).__name__}: {exc}")
    else:
        result.counts.update(slices.counts)
        if slices.kept:
            _store(job, record, slices, result)
        else:
            message = f"{name}: no slice has a body fraction >= {job.config.min_body_fraction}"
            if slices.counts["slices_dropped_no_background"]:
                message += " (the body covers the whole frame: is the background stored as tissue?)"
            result.skip(name, "no-usable-slices", message)
    write_unit_part(job, result)


def _store(job: Job, record: dict[str, Any], slices: Slices, result: UnitResult) -> None:
    volume_id, plane = record["volume_id"], slices.view.plane
    names = [name for name, _ in slices.intensity.channels]
    files = [f"{volume_id}.{_slug(n)}{STACK_SUFFIX}" if n else f"{volume_id}{STACK_SUFFIX}" for n in names]
    mask_file = f"{volume_id}.mask{STACK_SUFFIX}"
    y0, y1, x0, x1 = slices.box
    writers = [StackWriter(job.cache_dir / file, "image") for file in files]
    masks = StackWriter(job.cache_dir / mask_file, "mask")
    digests: dict[tuple[int, str], str] = {}
    try:
        for k in slices.kept:
            values = slices.values(k)[y0:y1, x0:x1]
            for writer, (name, render) in zip(writers, slices.intensity.channels, strict=True):
                image = render(values)
                digests[k, name] = pixel_digest(image)
                writer.add(image)
            masks.add(slices.mask(k)[y0:y1, x0:x1])
        for writer in [*writers, masks]:
            writer.close()
    except BaseException:
        for writer in [*writers, masks]:
            writer.abort()
        raise
    meta = json.dumps(record["meta"], sort_keys=True, ensure_ascii=False)
    prefix = f"{volume_id}:" if plane == "axial" else f"{volume_id}:{plane}:"
    for index, k in enumerate(slices.kept):
        for name, file in zip(names, files, strict=True):
            result.rows.append(
                {
                    "image_id": f"{prefix}{name}:{k:04d}" if name else f"{prefix}{k:04d}",
                    "modality": job.modality,
                    "source_kind": KIND,
                    "subject_id": record["subject_id"],
                    "source_id": volume_id,
                    "study_id": "",
                    "path": record["path"],
                    "plane": plane,
                    "slice_index": k,
                    "z_mm": slices.view.position_mm(k),
                    "pixel_spacing_mm": slices.grid.pixel_mm,
                    "slice_spacing_mm": slices.view.normal_mm,
                    "window": name,
                    "view": "",
                    "official_split": record["official_split"],
                    "body_fraction": slices.fractions[k],
                    "height": y1 - y0,
                    "width": x1 - x0,
                    "cache_file": file,
                    "mask_file": mask_file,
                    "cache_index": index,
                    "crop_x": x0,
                    "crop_y": y0,
                    "meta": meta,
                    "pixel_sha256": digests[k, name],
                }
            )
    result.counts.update(used=1, images=len(result.rows), slices_kept=len(slices.kept))


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "window"
