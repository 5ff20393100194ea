"""The rendered-image cache that ingest writes and build and index read.

A cache file is a *stack*: entries 0..n-1, each an image (uint8, H x W) or a
body mask (bool, H x W). A catalogue row points at its image by (`cache_file`,
`cache_index`) and at its mask by (`mask_file`, `cache_index`); `height` x
`width` is the image's own size.

Ingest writes `.stack` files: every entry compressed on its own with zstd
(images as raw rows, masks bit-packed first), then a JSON footer listing each
entry's offset, length, shape and CRC-32 (checked on every read). Reading one entry is one `pread` and one
decompression (0.2-0.5 ms for a 512 px slice), so build can read one slice at a
time from many volumes; the file holds ~0.3 (CT) to ~0.8 (X-ray) bytes per
pixel instead of the 2 of raw images plus byte masks (benchmarks/bench_cache.py
measures it). Plain `.npy` stacks (n, H, W), padded, are still read, memory-mapped.

    +---------+---------+-----+-----------+----------------------+---------+
    | MAGIC 8 | entry 0 | ... | entry n-1 | footer JSON (utf-8)  | len u64 | MAGIC 8
    +---------+---------+-----+-----------+----------------------+---------+
"""

from __future__ import annotations

import json
import os
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa

from medscout_data.shards import tmp_path

MAGIC = b"MSSTACK1"
STACK_SUFFIX = ".stack"
ZSTD_LEVEL = 1  # level 3 is 1% smaller and 3x slower to write; decoding costs the same
KINDS = ("image", "mask")


class CacheError(ValueError):
    """A cache file or entry that cannot be read; the message names the file and entry."""


def _codec() -> pa.Codec:
    return pa.Codec("zstd", compression_level=ZSTD_LEVEL)


def save_stack(path: Path, stack: np.ndarray) -> None:
    """Write an (n, H, W) array as a plain `.npy` stack, atomically (tests and small tools)."""
    if stack.ndim != 3:
        raise ValueError(f"cache stacks are (n, H, W), got shape {stack.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    with open(tmp, "wb") as handle:
        np.save(handle, np.ascontiguousarray(stack), allow_pickle=False)
    os.replace(tmp, path)


class StackWriter:
    """A `.stack` file written entry by entry under a temporary name, renamed on `close()`.

    Memory holds one entry at a time. `kind` is "image" (uint8) or "mask" (bool).
    """

    def __init__(self, path: Path, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.path = Path(path)
        self.kind = kind
        self.entries: list[list[int]] = []
        self._codec = _codec()
        self._tmp = tmp_path(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle: IO[bytes] | None = open(self._tmp, "wb")  # noqa: SIM115 (closed in close/abort)
        self._handle.write(MAGIC)
        self._offset = len(MAGIC)

    def add(self, array: np.ndarray) -> int:
        """Append one entry; returns its index."""
        if array.ndim != 2:
            raise ValueError(f"a cache entry is (H, W), got shape {array.shape}")
        if self.kind == "image" and array.dtype != np.uint8:
            raise ValueError(f"image entries are uint8, got {array.dtype}")
        raw = np.packbits(array.astype(bool, copy=False)) if self.kind == "mask" else array
        data = self._codec.compress(np.ascontiguousarray(raw).tobytes(), asbytes=True)
        assert self._handle is not None
        with _named(self.path):
            self._handle.write(data)
        shape = [int(array.shape[0]), int(array.shape[1])]
        self.entries.append([self._offset, len(data), *shape, zlib.crc32(data)])
        self._offset += len(data)
        return len(self.entries) - 1

    def close(self) -> None:
        """Write the footer, flush, and move the file to its final name."""
        assert self._handle is not None
        footer = json.dumps({"kind": self.kind, "codec": "zstd", "entries": self.entries}).encode()
        with _named(self.path):
            self._handle.write(footer + len(footer).to_bytes(8, "little") + MAGIC)
            self._handle.close()
            self._handle = None
            os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Drop the partial file (also when the disk that failed will not even take the last flush)."""
        if self._handle is not None:
            with suppress(OSError):
                self._handle.close()
            self._handle = None
        with suppress(OSError):
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> StackWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


@contextmanager
def _named(path: Path) -> Iterator[None]:
    """An OSError without a file name (a write to a full disk) gets `path` as its file name."""
    try:
        yield
    except OSError as exc:
        if exc.filename:
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc


def write_stack(path: Path, arrays: list[np.ndarray], kind: str) -> None:
    """Write `arrays` as one `.stack` file, atomically."""
    with StackWriter(path, kind) as writer:
        for array in arrays:
            writer.add(array)


@dataclass
class _Stack:
    """An open `.stack` file: its handle and the footer's entries."""

    handle: IO[bytes]
    kind: str
    entries: list[list[int]]


def _open_stack(path: Path) -> _Stack:
    handle = open(path, "rb")  # noqa: SIM115 (kept open in the cache's table)
    try:
        size = os.fstat(handle.fileno()).st_size
        tail = os.pread(handle.fileno(), 16, size - 16) if size >= 32 else b""
        if os.pread(handle.fileno(), 8, 0) != MAGIC or tail[8:] != MAGIC:
            raise CacheError(f"{path}: not a complete cache stack (truncated or not written by ingest)")
        length = int.from_bytes(tail[:8], "little")
        footer = json.loads(os.pread(handle.fileno(), length, size - 16 - length))
        kind, entries = footer["kind"], footer["entries"]
        if kind not in KINDS or footer.get("codec") != "zstd" or not isinstance(entries, list):
            raise CacheError(f"{path}: unknown cache stack footer")
    except CacheError:
        handle.close()
        raise
    except (ValueError, KeyError, TypeError) as exc:
        handle.close()
        raise CacheError(f"{path}: damaged cache stack footer ({exc}); run ingest again") from exc
    except BaseException:
        handle.close()
        raise
    return _Stack(handle, kind, entries)


class ImageCache:
    """Reads images and masks of catalogue rows, keeping a few files open."""

    def __init__(self, folder: Path, max_open: int = 32) -> None:
        self.folder = Path(folder)
        self.max_open = max_open
        self._open: OrderedDict[str, np.ndarray | _Stack] = OrderedDict()
        self._codec = _codec()

    def _file(self, name: str) -> np.ndarray | _Stack:
        if name in self._open:
            self._open.move_to_end(name)
            return self._open[name]
        path = self.folder / name
        opened: np.ndarray | _Stack
        if name.endswith(STACK_SUFFIX):
            opened = _open_stack(path)
        else:
            opened = np.load(path, mmap_mode="r", allow_pickle=False)
        self._open[name] = opened
        if len(self._open) > self.max_open:
            _, evicted = self._open.popitem(last=False)
            if isinstance(evicted, _Stack):
                evicted.handle.close()
        return opened

    def read(self, name: str, index: int, height: int, width: int) -> np.ndarray:
        """Entry `index` of cache file `name`, cropped to its own size, as a fresh array.

        Images come back uint8, masks of a `.stack` file bool. A missing file is
        an `OSError`, an index out of range an `IndexError`, damage a `CacheError`.
        """
        opened = self._file(name)
        if isinstance(opened, np.ndarray):
            return np.array(opened[index, :height, :width])
        if not 0 <= index < len(opened.entries):
            raise IndexError(f"{name}: entry {index} out of range (the stack holds {len(opened.entries)})")
        return self._decode(name, opened, index)[:height, :width].copy()

    def _decode(self, name: str, stack: _Stack, index: int) -> np.ndarray:
        offset, length, height, width, crc = stack.entries[index]
        data = os.pread(stack.handle.fileno(), length, offset)
        if zlib.crc32(data) != crc:
            raise CacheError(f"{self.folder / name}: entry {index} is damaged (checksum); run ingest again")
        size = height * width if stack.kind == "image" else (height * width + 7) // 8
        try:
            raw = np.frombuffer(self._codec.decompress(data, decompressed_size=size, asbytes=True), np.uint8)
        except (OSError, pa.ArrowException) as exc:
            raise CacheError(
                f"{self.folder / name}: entry {index} is damaged ({exc}); run ingest again"
            ) from exc
        if raw.size != size:
            raise CacheError(f"{self.folder / name}: entry {index} holds {raw.size} bytes, not {size}")
        if stack.kind == "mask":
            return np.unpackbits(raw, count=height * width).reshape(height, width).view(bool)
        return raw.reshape(height, width)

    def image(self, row: Mapping[str, Any]) -> np.ndarray:
        """The row's 8-bit image as a fresh (H, W) array."""
        return self.read(row["cache_file"], row["cache_index"], row["height"], row["width"])

    def mask(self, row: Mapping[str, Any]) -> np.ndarray:
        """The row's body mask as a fresh (H, W) bool array."""
        return self.read(row["mask_file"], row["cache_index"], row["height"], row["width"]).astype(bool)

    def close(self) -> None:
        """Close every open file (also done when entries are evicted)."""
        for opened in self._open.values():
            if isinstance(opened, _Stack):
                opened.handle.close()
        self._open.clear()


def stack_entries(path: Path) -> int:
    """How many entries a `.stack` or `.npy` cache file holds (a `CacheError` if it is damaged)."""
    path = Path(path)
    if path.name.endswith(STACK_SUFFIX):
        stack = _open_stack(path)
        stack.handle.close()
        return len(stack.entries)
    return int(np.load(path, mmap_mode="r", allow_pickle=False).shape[0])
