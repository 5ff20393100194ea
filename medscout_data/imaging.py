"""Image helpers shared by every stage: the PNG encoder (ISA-L deflate) and anti-aliased resizing (OpenCV)."""

from __future__ import annotations

import hashlib
import struct
from functools import cache

import cv2
import numpy as np

from medscout_data.recipe import PngConfig

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_FILTERS = {"none": 0, "sub": 1, "up": 2}  # PNG filter type bytes


class ImageDecodeError(ValueError):
    """Bytes that are not a decodable image."""


def encode_png(image: np.ndarray, config: PngConfig | None = None) -> bytes:
    """8-bit grayscale PNG bytes: the standard container around one ISA-L deflate stream.

    PNG encoding dominates build; a whole-image filter in numpy plus ISA-L's
    deflate at level 1 is 3-5x faster than OpenCV's encoder (zlib) for files
    of the same size (benchmarks/bench_build.py measures both). Every decoder
    reads it: it is a plain IHDR / IDAT / IEND file, checked against Pillow,
    OpenCV and `datasets` in the tests.
    """
    from isal import isal_zlib

    if image.dtype != np.uint8 or image.ndim != 2 or 0 in image.shape:
        raise ValueError(f"expected a non-empty 2-D uint8 image, got {image.dtype} {image.shape}")
    config = config or PngConfig()
    height, width = image.shape
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey, deflate, no interlace
    data = isal_zlib.compress(filtered_scanlines(image, config.filter), config.compression)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


@cache
def encoder_fingerprint(config: PngConfig) -> str:
    """What this machine's encoder writes for fixed probe images under `config`: 16 hex digits.

    ISA-L picks its deflate code at run time from the CPU (base C, SSE4, AVX2, AVX-512) and the
    paths do not all write the same stream for the same pixels: level 3 differs between AVX2 and
    AVX-512, every level differs on a CPU without SSE4 (docs/notes/png.md). A shard's digest holds
    this fingerprint, so shards written by an encoder that writes other bytes are never reused,
    nor merged with a rank's, as if they were the same. The probes straddle the compressor's
    output-buffer steps (16 and 32 KiB) and hold flat, noisy and slice-like rows.
    """
    digest = hashlib.sha256()
    for image in _probe_images():
        digest.update(encode_png(image, config))
    return digest.hexdigest()[:16]


def _probe_images() -> list[np.ndarray]:
    """Fixed images (arithmetic patterns and PCG64 noise, the same on every numpy)."""
    rng = np.random.Generator(np.random.PCG64(20240611))
    y, x = np.mgrid[0:256, 0:256]
    body = ((y - 128) ** 2 / 100**2 + (x - 128) ** 2 / 110**2 < 1) * (120 + (x * 7 + y * 3) % 60)
    slice_like = np.clip(body + rng.integers(0, 12, (256, 256)), 0, 255).astype(np.uint8)
    return [
        slice_like,
        rng.integers(0, 256, (128, 130), dtype=np.uint8),  # ~16.6 KB of noise: crosses the first step
        rng.integers(0, 256, (181, 181), dtype=np.uint8),  # ~32.8 KB: crosses the second
        (((x[:96, :200] // 5 + y[:96, :200] // 3) % 4) * 60).astype(np.uint8),
        np.full((3, 700), 17, np.uint8),
    ]


def filtered_scanlines(image: np.ndarray, kind: str = "sub") -> bytes:
    """The PNG scanlines of `image`, each led by its filter type byte (arithmetic modulo 256)."""
    height, width = image.shape
    out = np.empty((height, width + 1), np.uint8)
    out[:, 0] = PNG_FILTERS[kind]
    if kind == "sub":
        out[:, 1] = image[:, 0]
        np.subtract(image[:, 1:], image[:, :-1], out=out[:, 2:])
    elif kind == "up":
        out[0, 1:] = image[0]
        np.subtract(image[1:], image[:-1], out=out[1:, 1:])
    else:
        out[:, 1:] = image
    return out.tobytes()


def _chunk(kind: bytes, data: bytes) -> bytes:
    from isal import isal_zlib

    crc = isal_zlib.crc32(data, isal_zlib.crc32(kind))
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc & 0xFFFFFFFF)


def decode_gray(data: bytes) -> np.ndarray:
    """Decode PNG/JPEG bytes to a 2-D uint8 array."""
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if array is None:
        raise ImageDecodeError("not a decodable image")
    return array


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize with anti-aliasing: area averaging to shrink, bicubic to enlarge."""
    if image.shape[1] == width and image.shape[0] == height:
        return image
    shrinking = width * height < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    return cv2.resize(image, (width, height), interpolation=interpolation)


def fit_longest_side(height: int, width: int, longest: int) -> tuple[int, int]:
    """(height, width) scaled so the longest side is `longest`, aspect kept."""
    scale = longest / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))
