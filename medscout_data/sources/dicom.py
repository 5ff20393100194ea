"""MIMIC-CXR DICOM -> an 8-bit display image, as a DICOM viewer would show it.

The grayscale pipeline of the standard (PS3.3 C.11): stored values (only the
`BitsStored` low bits), the modality LUT (rescale slope/intercept or LUT), the
VOI LUT or the first window centre/width (LINEAR, LINEAR_EXACT or SIGMOID),
then MONOCHROME1 inverted so that bone is bright. Compressed transfer
syntaxes need a decoder plugin; without one the error names the package.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from medscout_data.sources.base import InputError

CODECS_HINT = (
    "install the DICOM decoders: pip install 'medscout-data[dicom-codecs]' "
    "(pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg, pylibjpeg-rle)"
)


def open_dicom(path: Path) -> Any:
    """Read a DICOM file's dataset (pixels decoded later); `InputError` when it cannot be used."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, defer_size="256 KB")  # pixel bytes read only if the view is kept
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError) as exc:
        raise InputError("unreadable", f"not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    if "PixelData" not in ds:
        raise InputError("no-pixel-data", "the DICOM file has no PixelData element")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise InputError("multi-frame", f"{ds.NumberOfFrames} frames; a single radiograph is expected")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise InputError("not-grayscale", f"{ds.SamplesPerPixel} samples per pixel; grayscale is expected")
    return ds


def view_position(ds: Any) -> str:
    """The ViewPosition tag (PA, AP, LATERAL, ...), empty when absent."""
    return str(ds.get("ViewPosition", "") or "").strip().upper()


def pixel_spacing_mm(ds: Any) -> float:
    """Mean of PixelSpacing (or ImagerPixelSpacing) in mm; NaN when neither is present."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value:
            try:
                return float(np.mean([float(v) for v in value]))
            except (TypeError, ValueError):
                continue
    return math.nan


def render_dicom(ds: Any) -> np.ndarray:
    """The display image (uint8, full resolution) of a single-frame grayscale dataset."""
    from pydicom.pixels import apply_modality_lut

    values = np.asarray(apply_modality_lut(stored_values(ds), ds), np.float32)
    shown = _voi(values, ds)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        shown = 1.0 - shown
    return np.clip(np.rint(shown * 255.0), 0, 255).astype(np.uint8)


def stored_values(ds: Any) -> np.ndarray:
    """The decoded pixel values with only `BitsStored` bits kept (overlay bits dropped, sign extended)."""
    _check_decoder(ds)
    try:
        array = ds.pixel_array
    except Exception as exc:  # every decoder raises its own types
        raise InputError("corrupt-pixel-data", f"the pixel data cannot be decoded ({exc})") from exc
    if array.ndim != 2:
        raise InputError("not-grayscale", f"pixel array of shape {array.shape}; a 2-D image is expected")
    bits = int(ds.get("BitsStored", array.dtype.itemsize * 8))
    if array.dtype.kind not in "ui" or bits >= array.dtype.itemsize * 8:
        return array
    values = array.astype(np.int32) & ((1 << bits) - 1)
    if int(ds.get("PixelRepresentation", 0)) == 1:
        values = np.where(values >= 1 << (bits - 1), values - (1 << bits), values)
    return values


def _check_decoder(ds: Any) -> None:
    from pydicom.pixels import get_decoder

    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None or not syntax.is_compressed:
        return
    label = f"transfer syntax {syntax.name} ({syntax})"
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise InputError("unsupported-transfer-syntax", f"{label}: pydicom has no decoder for it") from exc
    if not decoder.is_available:
        raise InputError("unsupported-transfer-syntax", f"{label} cannot be decoded here: {CODECS_HINT}")


def _voi(values: np.ndarray, ds: Any) -> np.ndarray:
    """VOI LUT, else the first window, else the image's own range; result in [0, 1]."""
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        from pydicom.pixels import apply_voi

        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        indices = np.rint(values).astype(np.int32)  # a LUT is indexed by integer values
        return np.asarray(apply_voi(indices, ds, index=0), np.float32) / np.float32(2**bits - 1)
    centre, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centre is not None and width is not None and _first(width) > 0:
        return apply_window(values, _first(centre), _first(width), str(ds.get("VOILUTFunction", "LINEAR")))
    low, high = float(values.min()), float(values.max())
    if high <= low:
        raise InputError("constant-image", f"every pixel is {low:g}")
    return (values - np.float32(low)) / np.float32(high - low)


def apply_window(values: np.ndarray, centre: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """A DICOM window (PS3.3 C.11.2.1.2) onto [0, 1]."""
    function = function.strip().upper()
    if function == "SIGMOID":
        return (1.0 / (1.0 + np.exp(-4.0 * (values - centre) / width))).astype(np.float32)
    if function == "LINEAR_EXACT":
        return np.clip((values - centre) / width + 0.5, 0.0, 1.0).astype(np.float32)
    return np.clip((values - (centre - 0.5)) / max(width - 1.0, 1e-6) + 0.5, 0.0, 1.0).astype(np.float32)


def _first(value: Any) -> float:
    """The first value of a possibly multi-valued DS element."""
    if not isinstance(value, str | bytes) and hasattr(value, "__len__"):
        value = value[0]
    return float(value)
