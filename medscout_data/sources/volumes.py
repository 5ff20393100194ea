"""CT and MRI volumes (TotalSegmentator layout) -> axial 8-bit slices in radiological convention.

Each volume is read once with SimpleITK and viewed in one canonical
orientation, LPS: array (z, y, x) with x toward the patient's left, y toward
posterior, z toward superior. An axial slice of that array is radiological
display as it stands: anterior at the top, the patient's right on the image's
left, whatever the file's direction matrix. The canonical array is a numpy
*view* (axes transposed and flipped, as `sitk.DICOMOrient(image, "LPS")` would
do, see the tests), so no second copy of the volume is made.

Slices are resampled to square pixels (the finer in-plane spacing, the longest
side capped at `max_size`), rendered to 8 bits (CT: one stack per recipe
window; MRI: robust percentiles inside the body) and kept when the body covers
at least `min_body_fraction` of the image. The body is the largest 3-D
connected component above a threshold (CT: HU from the recipe; MRI: Otsu),
found on a coarse grid so memory stays small, then refined per slice with
holes filled (lungs count as body) and the couch left out.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from medscout_data.cache import save_stack
from medscout_data.imaging import resize
from medscout_data.recipe import IngestConfig, Window
from medscout_data.report import Skip
from medscout_data.sources.base import InputError, Job, Listing, Unit, UnitResult, write_part
from medscout_data.sources.detect import TOTALSEG_META, VOLUME_NAMES, volume_file
from medscout_data.sources.masks import fill_holes

KIND = "totalseg"
COARSE_SIDE = 128  # in-plane size of the grid the 3-D body component is found on


# ----------------------------------------------------------------- listing


def read_meta_csv(path: Path) -> dict[str, dict[str, str]]:
    """TotalSegmentator's meta.csv (';'-separated, UTF-8 with BOM) as image_id -> row."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError("bad-meta", f"not UTF-8 text ({exc})") from exc
    for delimiter in (";", ","):
        reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
        if reader.fieldnames and "image_id" in [f.strip() for f in reader.fieldnames]:
            rows = ({(k or "").strip(): (v or "").strip() for k, v in row.items() if k} for row in reader)
            return {row["image_id"]: row for row in rows if row.get("image_id")}
    raise InputError("bad-meta", "no image_id column (expected a ';'-separated TotalSegmentator meta.csv)")


def list_volumes(root: Path, modality: str) -> Listing:
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
    with os.scandir(root) as entries:
        folders = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    units = []
    for name in folders:
        counts["found"] += 1
        path = volume_file(root / name, modality)
        if path is None:
            wanted = " or ".join(VOLUME_NAMES[modality])
            skips.append(Skip(name, "missing-volume", f"{name}: no {wanted} in this subject folder"))
            continue
        row = meta.get(name, {})
        counts["not_in_meta"] += bool(meta) and not row
        record = {
            "path": f"{name}/{path.name}",
            "volume_id": name,
            "subject_id": name,
            "official_split": row.get("split", ""),
            "meta": row,
        }
        units.append(Unit(name, (record,)))
    for image_id in sorted(set(meta) - set(folders)):
        message = f"{image_id}: listed in meta.csv but there is no folder {image_id}/ under the root"
        skips.append(Skip(image_id, "missing-volume", message))
    return Listing([u.key for u in units], units.__getitem__, skips, counts)


# ------------------------------------------------------- canonical orientation


@dataclass(frozen=True)
class Canonical:
    """A volume in canonical LPS order: `array[z, y, x]`, a view of the file's voxels."""

    array: np.ndarray
    spacing: tuple[float, float, float]  # (x, y, z) mm
    z0_mm: float  # superior coordinate of slice 0
    z_step_mm: float  # superior distance between consecutive slices

    def z_mm(self, index: int) -> float:
        return self.z0_mm + index * self.z_step_mm


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
    step = float(d[2, axes[2]] * spacing[axes[2]])  # superior mm per stored index along that axis
    z0 = origin[2] + (array_zyx.shape[2 - axes[2]] - 1) * step if step < 0 else origin[2]
    canon_spacing = (float(spacing[axes[0]]), float(spacing[axes[1]]), float(spacing[axes[2]]))
    return Canonical(view, canon_spacing, float(z0), abs(step))


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


def coarse_body(volume: np.ndarray, threshold: float, step: int) -> np.ndarray:
    """The body on a coarse in-plane grid: largest 3-D component above `threshold`, holes filled per slice.

    An opening first cuts thin bridges (a couch touching the back, tubes), so
    the couch and other objects stay separate components.
    """
    above = np.asarray(volume[:, ::step, ::step] > threshold)
    above = ndimage.binary_opening(above, structure=ndimage.generate_binary_structure(3, 1))
    labels, count = ndimage.label(above)
    if count == 0:
        return np.zeros(above.shape, bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == int(sizes.argmax())
    return np.stack([fill_holes(plane) for plane in body])


def slice_body_mask(values: np.ndarray, threshold: float, region: np.ndarray) -> np.ndarray:
    """One slice's body: above `threshold` inside the (dilated) coarse body, holes filled."""
    return fill_holes((values > threshold) & region)


@dataclass(frozen=True)
class Intensity:
    """How a volume's voxels become body masks and 8-bit images."""

    threshold: float
    channels: tuple[tuple[str, Callable[[np.ndarray], np.ndarray]], ...]  # (window name, renderer)


def intensity_for(volume: np.ndarray, modality: str, config: IngestConfig, step: int) -> Intensity:
    """CT: the recipe's body threshold and windows. MRI: Otsu threshold and percentiles inside the body."""
    if modality == "ct":
        channels = tuple((w.name, _windowed(w)) for w in config.ct_windows)
        return Intensity(config.ct_body_threshold_hu, channels)
    from skimage.filters import threshold_otsu

    sample = np.asarray(volume[:, ::step, ::step], np.float32)
    threshold = float(threshold_otsu(sample))
    body = coarse_body(volume, threshold, step)
    if not body.any():
        raise InputError("no-usable-slices", "no body found above the Otsu threshold")
    low, high = (float(v) for v in np.percentile(sample[body], config.mri_percentiles))
    if high <= low:
        raise InputError("constant-volume", f"no contrast inside the body ({low} .. {high})")
    return Intensity(threshold, (("", _scaled(low, high)),))


def _windowed(window: Window) -> Callable[[np.ndarray], np.ndarray]:
    return lambda values: window_to_uint8(values, window)


def _scaled(low: float, high: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda values: scale_to_uint8(values, low, high)


@dataclass
class Rendered:
    """A volume's kept slices: one (n, H, W) uint8 stack per channel, the masks, and per-slice facts."""

    grid: SliceGrid
    names: tuple[str, ...]
    stacks: list[np.ndarray]
    masks: np.ndarray
    slices: list[int]
    fractions: list[float]
    dropped: int


def render_volume(canon: Canonical, modality: str, config: IngestConfig) -> Rendered:
    """Every axial slice of a canonical volume, rendered; slices that are mostly background dropped."""
    nz, ny, nx = canon.array.shape
    sx, sy, _ = canon.spacing
    grid = slice_grid(ny, nx, sy, sx, config.max_size)
    step = coarse_step(ny, nx)
    intensity = intensity_for(canon.array, modality, config, step)
    coarse = ndimage.binary_dilation(coarse_body(canon.array, intensity.threshold, step), iterations=1)
    shape = (nz, grid.height, grid.width)
    stacks = [np.empty(shape, np.uint8) for _ in intensity.channels]  # pages touched only when written
    masks = np.empty(shape, bool)
    slices, fractions = [], []
    for k in range(nz):
        values = resize(np.asarray(canon.array[k], np.float32), grid.width, grid.height)
        region = cv2.resize(coarse[k].astype(np.uint8), (grid.width, grid.height), cv2.INTER_NEAREST)
        mask = slice_body_mask(values, intensity.threshold, region.astype(bool))
        fraction = float(mask.mean())
        if fraction < config.min_body_fraction:
            continue
        n = len(slices)
        for stack, (_, render) in zip(stacks, intensity.channels, strict=True):
            stack[n] = render(values)
        masks[n] = mask
        slices.append(k)
        fractions.append(fraction)
    n = len(slices)
    names = tuple(name for name, _ in intensity.channels)
    return Rendered(grid, names, [s[:n] for s in stacks], masks[:n], slices, fractions, nz - n)


# ------------------------------------------------------------------- reading


def read_canonical(path: Path) -> Canonical:
    """Read a NIfTI volume and view it canonically; an `InputError` says why a file cannot be used."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError("unreadable", f"not a readable NIfTI file ({_first_line(exc, path)})") from exc
    size = tuple(reader.GetSize())
    if len(size) == 4 and size[3] == 1:
        size = size[:3]
    if len(size) != 3:
        raise InputError("not-3d", f"{reader.GetDimension()}-D image of size {size}; a 3-D volume is needed")
    if reader.GetNumberOfComponents() != 1:
        raise InputError("not-scalar", f"{reader.GetNumberOfComponents()} components per voxel; need 1")
    _check_complete(path, reader)
    _check_finite(path, reader)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError("unreadable", f"cannot read the voxels ({_first_line(exc, path)})") from exc
    if image.GetDimension() == 4:
        image = image[:, :, :, 0]
    array = _owned_view(image)
    _check_values(array)
    return to_canonical(array, image.GetSpacing(), image.GetOrigin(), image.GetDirection())


class _Owner:
    """Exposes a SimpleITK image's voxel buffer to numpy while holding the image alive."""

    def __init__(self, image: Any) -> None:
        import SimpleITK as sitk

        self.image = image
        self.__array_interface__ = sitk.GetArrayViewFromImage(image).__array_interface__


def _owned_view(image: Any) -> np.ndarray:
    """The image's voxels as a numpy view (no copy) whose base keeps the image alive.

    `sitk.GetArrayViewFromImage` alone does not: once the image is collected,
    the view reads freed memory. A copy (`GetArrayFromImage`) would double the
    peak memory of every worker.
    """
    return np.asarray(_Owner(image))


def _check_complete(path: Path, reader: Any) -> None:
    """Refuse a truncated NIfTI: ITK reads one silently, padding the missing voxels with zeros.

    The NIfTI header gives the data's byte size; a gzip member stores the
    uncompressed size (mod 2**32) in its last 4 bytes.
    """
    keys = set(reader.GetMetaDataKeys())
    if not {"vox_offset", "bitpix", "dim[0]"} <= keys:
        return
    ndim = int(reader.GetMetaData("dim[0]"))
    voxels = math.prod(int(reader.GetMetaData(f"dim[{i}]")) for i in range(1, ndim + 1))
    expected = int(float(reader.GetMetaData("vox_offset"))) + voxels * int(reader.GetMetaData("bitpix")) // 8
    if path.name.endswith(".gz"):
        with open(path, "rb") as handle:
            handle.seek(-4, os.SEEK_END)
            complete = int.from_bytes(handle.read(4), "little") == expected % 2**32
    else:
        complete = path.stat().st_size >= expected
    if not complete:
        raise InputError(
            "truncated", f"the file ends before its {expected:,} bytes of NIfTI data (truncated?)"
        )


def _check_finite(path: Path, reader: Any) -> None:
    """Refuse float NIfTI data holding NaN or infinity.

    The NIfTI library under ITK silently replaces them with 0 (water, for CT),
    so they are looked for in the file itself: one extra streamed pass, only
    for float32/float64 volumes (CT is almost always int16).
    """
    keys = set(reader.GetMetaDataKeys())
    if not {"datatype", "bitpix", "vox_offset"} <= keys or reader.GetMetaData("datatype") not in ("16", "64"):
        return
    offset = int(float(reader.GetMetaData("vox_offset")))
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        header = handle.read(offset)
        order = "<" if int.from_bytes(header[:4], "little") in (348, 540) else ">"
        dtype = np.dtype(f"{order}f{int(reader.GetMetaData('bitpix')) // 8}")
        block = (1 << 24) // dtype.itemsize * dtype.itemsize
        while data := handle.read(block):
            values = np.frombuffer(data, dtype, count=len(data) // dtype.itemsize)
            if not np.isfinite(values).all():
                raise InputError("nan-voxels", "NaN or infinite voxel values; the volume is skipped whole")


def _check_values(array: np.ndarray) -> None:
    low, high = float(np.min(array)), float(np.max(array))
    if math.isnan(low) or math.isnan(high) or math.isinf(low) or math.isinf(high):
        raise InputError("nan-voxels", "NaN or infinite voxel values; the volume is skipped whole")
    if low == high:
        raise InputError("constant-volume", f"every voxel is {low:g}")


def _first_line(exc: Exception, path: Path) -> str:
    """ITK's own message, last line, without the absolute path (tables hold relative ones)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__).replace(str(path), path.name)


# -------------------------------------------------------------------- a unit


def process_volume(job: Job) -> None:
    """Render one volume, save its cache stacks, then its catalogue part (the completion marker)."""
    result = UnitResult()
    (record,) = job.unit.records
    name = record["path"]
    try:
        canon = read_canonical(job.root / name)
        rendered = render_volume(canon, job.modality, job.config)
    except InputError as exc:
        result.skip(name, exc.reason, f"{name}: {exc.message}")
    except Exception as exc:  # one odd file must not stop a long run; recorded with its cause
        result.skip(name, "decode-error", f"{name}: {type(exc).__name__}: {exc}")
    else:
        if rendered.slices:
            _store(job, record, canon, rendered, result)
        else:
            message = f"{name}: no slice has a body fraction >= {job.config.min_body_fraction}"
            result.skip(name, "no-usable-slices", message)
        result.counts["slices_dropped_low_body"] += rendered.dropped
    write_part(job.part, result, job.unit_hash)


def _store(
    job: Job, record: dict[str, Any], canon: Canonical, rendered: Rendered, result: UnitResult
) -> None:
    volume_id = record["volume_id"]
    files = [f"{volume_id}.{_slug(name)}.npy" if name else f"{volume_id}.npy" for name in rendered.names]
    mask_file = f"{volume_id}.mask.npy"
    for file, stack in zip(files, rendered.stacks, strict=True):
        save_stack(job.cache_dir / file, stack)
    save_stack(job.cache_dir / mask_file, rendered.masks)
    meta = json.dumps(record["meta"], sort_keys=True, ensure_ascii=False)
    grid = rendered.grid
    for index, (k, fraction) in enumerate(zip(rendered.slices, rendered.fractions, strict=True)):
        for name, file in zip(rendered.names, files, strict=True):
            result.rows.append(
                {
                    "image_id": f"{volume_id}:{name}:{k:04d}" if name else f"{volume_id}:{k:04d}",
                    "modality": job.modality,
                    "source_kind": KIND,
                    "subject_id": record["subject_id"],
                    "source_id": volume_id,
                    "study_id": "",
                    "path": record["path"],
                    "plane": "axial",
                    "slice_index": k,
                    "z_mm": canon.z_mm(k),
                    "pixel_spacing_mm": grid.pixel_mm,
                    "slice_spacing_mm": canon.spacing[2],
                    "window": name,
                    "view": "",
                    "official_split": record["official_split"],
                    "body_fraction": fraction,
                    "height": grid.height,
                    "width": grid.width,
                    "cache_file": file,
                    "mask_file": mask_file,
                    "cache_index": index,
                    "meta": meta,
                }
            )
    result.counts.update(used=1, images=len(result.rows), slices_kept=len(rendered.slices))


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "window"
