"""Reading a NIfTI volume safely: the header checked by hand before SimpleITK reads the voxels.

SimpleITK (ITK's NIfTI library) is lenient where a benchmark must not be: it
pads a truncated file with zeros, turns NaN into 0, and takes `pixdim` = 0 as
1 mm. So the header is parsed here first (NIfTI-1 and -2, either byte order,
gzip or not, whatever the file is named) and every problem becomes an
`InputError` with its own reason:

    zero-dimension   a size of 0 along an axis
    not-3d           not a volume (2-D, or 4-D with several time points)
    truncated        the file holds fewer bytes than the header declares (full size compared,
                     multi-member gzip and uncompressed files named .nii.gz counted exactly)
    nan-voxels       NaN or infinite float voxels
    bad-spacing      pixdim <= 0 with no sform to take the spacing from
    unreadable       not a NIfTI file, or a gzip stream that is damaged
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from medscout_data.sources.base import InputError
from medscout_data.sources.planes import Canonical, to_canonical

GZIP_MAGIC = b"\x1f\x8b"
FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float32 / float64
BLOCK = 1 << 24


@dataclass(frozen=True)
class Header:
    """The NIfTI header fields ingest checks."""

    dims: tuple[int, ...]  # dim[1..dim[0]]
    pixdim: tuple[float, float, float]
    vox_offset: int
    bitpix: int
    datatype: int
    sform_code: int
    srow: np.ndarray  # 3 x 4, RAS
    byte_order: str

    @property
    def data_bytes(self) -> int:
        return math.prod(self.dims) * self.bitpix // 8


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == GZIP_MAGIC


def _open(path: Path) -> BinaryIO:
    """The file's bytes, decompressed when it is gzip (by content, not by name)."""
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")  # type: ignore[return-value]


def read_header(path: Path) -> Header:
    """Parse a NIfTI-1 or NIfTI-2 header; `InputError("unreadable")` when it is neither."""
    try:
        with _open(path) as handle:
            raw = handle.read(540)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError("unreadable", f"not a readable NIfTI file ({exc})") from exc
    for order in "<>":
        if len(raw) >= 348 and struct.unpack(order + "i", raw[:4])[0] == 348:
            return _nifti1(raw, order)
        if len(raw) >= 540 and struct.unpack(order + "i", raw[:4])[0] == 540:
            return _nifti2(raw, order)
    raise InputError("unreadable", "not a NIfTI file (no NIfTI-1 or NIfTI-2 header)")


def _nifti1(raw: bytes, o: str) -> Header:
    dim = struct.unpack(o + "8h", raw[40:56])
    return Header(
        dims=tuple(dim[1 : 1 + max(0, min(dim[0], 7))]),
        pixdim=struct.unpack(o + "3f", raw[80:92]),
        vox_offset=int(struct.unpack(o + "f", raw[108:112])[0]),
        bitpix=struct.unpack(o + "h", raw[72:74])[0],
        datatype=struct.unpack(o + "h", raw[70:72])[0],
        sform_code=struct.unpack(o + "h", raw[254:256])[0],
        srow=np.array(struct.unpack(o + "12f", raw[280:328]), float).reshape(3, 4),
        byte_order=o,
    )


def _nifti2(raw: bytes, o: str) -> Header:
    dim = struct.unpack(o + "8q", raw[16:80])
    return Header(
        dims=tuple(dim[1 : 1 + max(0, min(dim[0], 7))]),
        pixdim=struct.unpack(o + "3d", raw[112:136]),
        vox_offset=struct.unpack(o + "q", raw[168:176])[0],
        bitpix=struct.unpack(o + "h", raw[14:16])[0],
        datatype=struct.unpack(o + "h", raw[12:14])[0],
        sform_code=struct.unpack(o + "i", raw[348:352])[0],
        srow=np.array(struct.unpack(o + "12d", raw[400:496]), float).reshape(3, 4),
        byte_order=o,
    )


def check_shape(header: Header) -> tuple[int, int, int]:
    """The volume's (i, j, k) size; a 4-D file with one time point counts as 3-D."""
    dims = header.dims
    if any(d <= 0 for d in dims) or not dims:
        axis = next((i + 1 for i, d in enumerate(dims) if d <= 0), 0)
        raise InputError("zero-dimension", f"the header gives size 0 along axis {axis} (dims {dims})")
    while len(dims) > 3 and dims[-1] == 1:
        dims = dims[:-1]
    if len(dims) != 3:
        raise InputError("not-3d", f"{len(dims)}-D image of size {dims}; a 3-D volume is needed")
    return dims[0], dims[1], dims[2]


def check_data(path: Path, header: Header) -> None:
    """Refuse a file holding fewer bytes than its header declares, or float data with NaN/infinity.

    A single-member gzip of the exact size is recognised from its trailer (the
    size mod 2**32) without reading it; otherwise, and always for float data
    (which ITK would silently turn into 0 where it is NaN), the data are
    streamed once and counted in full.
    """
    expected = header.vox_offset + header.data_bytes
    dtype = FLOAT_TYPES.get(header.datatype)
    if not is_gzip(path):
        if path.stat().st_size < expected:
            raise _truncated(expected, path.stat().st_size)
        if dtype is None:
            return
    elif dtype is None and expected < 2**32 and _gzip_trailer_size(path) == expected:
        return
    total = _stream(path, header, np.dtype(header.byte_order + dtype) if dtype else None)
    if total < expected:
        raise _truncated(expected, total)


def _truncated(expected: int, found: int) -> InputError:
    return InputError(
        "truncated", f"the header declares {expected:,} bytes of NIfTI data but the file holds {found:,}"
    )


def _gzip_trailer_size(path: Path) -> int:
    """ISIZE of the last gzip member (the uncompressed size mod 2**32 for a one-member file)."""
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        if handle.tell() < 18:
            return -1
        handle.seek(-4, 2)
        return int.from_bytes(handle.read(4), "little")


def _stream(path: Path, header: Header, dtype: np.dtype | None) -> int:
    """Bytes of (decompressed) data, counted in full; finite values checked when `dtype` is given."""
    total = 0
    try:
        with _open(path) as handle:
            handle.read(header.vox_offset)
            total = header.vox_offset
            while data := handle.read(BLOCK):
                total += len(data)
                if dtype is not None:
                    values = np.frombuffer(data, dtype, count=len(data) // dtype.itemsize)
                    if not np.isfinite(values).all():
                        raise InputError(
                            "nan-voxels", "NaN or infinite voxel values; the volume is skipped whole"
                        )
    except EOFError:  # a gzip stream cut short: what was read so far is all there is
        return total
    except (OSError, zlib.error) as exc:
        raise InputError("unreadable", f"the gzip data are damaged ({exc})") from exc
    return total


def sform_geometry(header: Header) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]] | None:
    """(spacing, origin, direction) in ITK's LPS terms from the sform, or None when it gives none."""
    if header.sform_code <= 0:
        return None
    ras = header.srow[:, :3]
    lps = ras * np.array([[-1.0], [-1.0], [1.0]])  # NIfTI is RAS, ITK LPS
    spacing = np.linalg.norm(lps, axis=0)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        return None
    origin = header.srow[:, 3] * np.array([-1.0, -1.0, 1.0])
    direction = lps / spacing
    return tuple(spacing.tolist()), tuple(origin.tolist()), tuple(direction.ravel().tolist())


def read_canonical(path: Path) -> Canonical:
    """Read a NIfTI volume and view it canonically; an `InputError` says why a file cannot be used."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # every problem is recorded with its own reason
    header = read_header(path)
    check_shape(header)
    check_data(path, header)
    geometry = None
    if not all(math.isfinite(p) and p > 0 for p in header.pixdim):
        geometry = sform_geometry(header)
        if geometry is None:
            raise InputError(
                "bad-spacing", f"pixdim {tuple(header.pixdim)} is not a voxel size and no sform gives one"
            )
    image = _read_image(path)
    if geometry is not None:  # ITK would take pixdim 0 as 1 mm
        image.SetSpacing(geometry[0])
        image.SetOrigin(geometry[1])
        image.SetDirection(geometry[2])
    array = _owned_view(image)
    _check_values(array)
    return to_canonical(array, image.GetSpacing(), image.GetOrigin(), image.GetDirection())


def _read_image(path: Path) -> Any:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO("NiftiImageIO")
    try:
        reader.ReadImageInformation()
        if reader.GetNumberOfComponents() != 1:
            raise InputError("not-scalar", f"{reader.GetNumberOfComponents()} components per voxel; need 1")
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError("unreadable", f"cannot read the voxels ({_first_line(exc, path)})") from exc
    if image.GetDimension() == 4:
        image = image[:, :, :, 0]
    return image


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
