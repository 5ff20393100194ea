"""MIMIC-CXR DICOM -> an 8-bit display image, as a DICOM viewer would show it.

The grayscale pipeline of the standard (PS3.3 C.11): stored values (only the
`BitsStored` low bits), the modality LUT (rescale slope/intercept or LUT), the
VOI LUT or the first window centre/width (LINEAR, LINEAR_EXACT or SIGMOID),
then MONOCHROME1 inverted so that bone is bright. Compressed transfer
syntaxes need a decoder plugin; without one the error names the package.

pydicom reports a failing decoder plugin by logging the exception with its
traceback and warns about odd values through `warnings`; both are captured
here while a file is read, so the run's output holds one line per bad file
(its reason, with the plugin's own message) instead of tracebacks.
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from medscout_data.sources.base import InputError

CUT_SHORT = frozenset({"error", "EOFError", "BytesLengthException"})  # struct.error is named "error"
CODECS_HINT = (
    "install the DICOM decoders: pip install 'medscout-data[dicom-codecs]' "
    "(pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg, pylibjpeg-rle)"
)


class _Collect(logging.Handler):
    """Keeps the messages of the records it is given."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def quiet_pydicom() -> Iterator[_Collect]:
    """pydicom's log records (tracebacks included) and warnings captured instead of printed."""
    logger = logging.getLogger("pydicom")
    collect = _Collect()
    saved = logger.handlers[:], logger.propagate
    logger.handlers, logger.propagate = [collect], False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield collect
    finally:
        logger.handlers, logger.propagate = saved


def one_line(text: str) -> str:
    """A message on one line, without object addresses (they differ from run to run)."""
    return " ".join(re.sub(r" at 0x[0-9a-fA-F]+", "", text).split())


def open_dicom(path: Path) -> Any:
    """Read a DICOM file's dataset (pixels decoded later); `InputError` when it cannot be used."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with quiet_pydicom():
            ds = pydicom.dcmread(path, defer_size="256 KB")  # pixel bytes read only if the view is kept
    except InvalidDicomError as exc:
        raise InputError("unreadable", f"not a readable DICOM file ({one_line(str(exc))})") from exc
    except OSError as exc:
        raise InputError("unreadable", f"cannot be read ({exc.strerror or exc})") from exc
    except (
        Exception
    ) as exc:  # pydicom raises many types; struct.error, EOFError, BytesLengthException on cut files
        reason = "truncated" if type(exc).__name__ in CUT_SHORT else "unreadable"
        raise InputError(
            reason, f"cannot parse the DICOM data ({type(exc).__name__}: {one_line(str(exc))})"
        ) from exc
    if "PixelData" not in ds:
        end, size = parsed_end(ds), os.path.getsize(path)
        if end is not None and size > end:
            raise InputError(
                "truncated",
                f"the file ends inside a data element at byte {size:,} (cut short?); no PixelData",
            )
        raise InputError("no-pixel-data", "the DICOM file has no PixelData element")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise InputError("multi-frame", f"{ds.NumberOfFrames} frames; a single radiograph is expected")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise InputError("not-grayscale", f"{ds.SamplesPerPixel} samples per pixel; grayscale is expected")
    return ds


def parsed_end(ds: Any) -> int | None:
    """The byte offset where the last element pydicom could parse ends (None if unknown).

    pydicom stops quietly at a data element it cannot read whole, so a file cut
    inside its header looks like one without pixel data; bytes beyond this end
    give the cut away.
    """
    ends = []
    group_length = ds.file_meta.get("FileMetaInformationGroupLength") if hasattr(ds, "file_meta") else None
    if group_length is not None:
        ends.append(128 + 4 + 12 + int(group_length))  # preamble, "DICM", the group length element
    for element in ds.elements():
        tell, length = getattr(element, "value_tell", None), getattr(element, "length", None)
        if tell is not None and length is not None and length != 0xFFFFFFFF:
            ends.append(int(tell) + int(length))
    return max(ends) if ends else None


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
        with quiet_pydicom():
            array = ds.pixel_array
    except Exception as exc:  # every decoder raises its own types
        raise InputError(
            "corrupt-pixel-data", f"the pixel data cannot be decoded ({one_line(str(exc))})"
        ) from exc
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
