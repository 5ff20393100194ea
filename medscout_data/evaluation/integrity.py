"""Checking a bench before anything is computed from it, and telling a mistyped path from a Hub id.

Three kinds of local bench, three checks, cheapest first:

- a shards root (`bench/` + `manifest.json`): every bench shard the manifest
  lists, by size and sha256 (`stages.manifest.verified_shards`); files the
  manifest does not list are never read;
- a staged repo folder (`data/` + push-bench's `.medscout-stage.json` record):
  every `data/*/*/test-*.parquet` the record lists, by its sha256;
- anything else (a staged folder without our record, e.g. downloaded with
  `hf download`, a bench folder, one Parquet file): a decode check, every
  row group read and every PNG's chunk CRCs verified (no decompression).

Damage is a `ScoreError` (or the manifest's `ManifestError`) naming the file
and what to do, never a score computed from damaged input.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from medscout_data.evaluation.errors import ScoreError
from medscout_data.layout import STAGE_RECORD, Layout
from medscout_data.shards import sha256_file
from medscout_data.stages.manifest import verified_shards

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BATCH_ROWS = 64


def looks_like_a_path(text: str) -> str:
    """Why `text`, which names nothing on disk, must be a mistyped local path rather than a Hub
    repo id (empty when it may be a repo id): it starts with `.`, `/` or `~`, holds a
    backslash or more than one `/`, or its first part is an existing local folder."""
    if text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1:
        return "it is written as a local path"
    head = text.split("/", 1)[0]
    if "/" in text and Path(head).is_dir():
        return f"the folder {head}/ exists here"
    return ""


def manifest_verified(root: Path) -> tuple[Path, ...]:
    """The bench shards of a shards root, each checked against manifest.json (size, sha256);
    `ManifestError` naming the damaged shard."""
    files = verified_shards(Layout.at(root), "bench")
    if not files:
        raise ScoreError(f"{Layout.at(root).manifest()}: lists no bench shards; rerun `medscout-data split`")
    return tuple(files)


def stage_record_files(folder: Path) -> dict[str, str] | None:
    """path-in-repo -> sha256 from a staged folder's record; None when there is no usable record."""
    try:
        record = json.loads((folder / STAGE_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        return None
    return files


def stage_verified(folder: Path, files: dict[str, str]) -> tuple[Path, ...]:
    """The test shards a staged folder's record lists, each checked by its sha256."""
    names = sorted(name for name in files if name.startswith("data/") and Path(name).name.startswith("test-"))
    if not names:
        raise ScoreError(f"{folder / STAGE_RECORD}: lists no data/*/*/test-*.parquet shards; stage it again")
    for name in names:
        path = folder / name
        if not path.is_file():
            raise ScoreError(f"{path}: listed in {folder / STAGE_RECORD} but missing; stage it again")
        if sha256_file(path) != files[name]:
            raise ScoreError(
                f"{path}: sha256 differs from {folder / STAGE_RECORD} (damaged or changed); stage it again"
            )
    return tuple(folder / name for name in names)


def png_problem(data: bytes) -> str:
    """What is wrong with PNG bytes (empty when every chunk's CRC holds and IEND is reached).

    Walks the chunks without decompressing: one CRC-32 per chunk.
    """
    if not data.startswith(PNG_SIGNATURE):
        return "not PNG data"
    view, offset = memoryview(data), len(PNG_SIGNATURE)
    while offset + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        end = offset + 12 + length
        if end > len(data):
            return f"chunk at byte {offset} runs past the end (truncated)"
        (crc,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(view[offset + 4 : end - 4]) != crc:
            return f"CRC mismatch in the {bytes(view[offset + 4 : offset + 8])!r} chunk at byte {offset}"
        if view[offset + 4 : offset + 8] == b"IEND":
            return ""
        offset = end
    return "no IEND chunk (truncated)"


def row_groups(path: Path, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """The shard's row groups, one in memory at a time (`iter_batches` reads ahead and holds
    several times as much, growing with the file)."""
    source = pq.ParquetFile(path)
    for group in range(source.num_row_groups):
        yield source.read_row_group(group, columns=columns)


def decode_checked(path: Path) -> None:
    """Read every row group of a bench shard and check each image's PNG chunks; `ScoreError` on damage."""
    try:
        for table in row_groups(path):
            if "images" in table.column_names:
                _check_images(path, table)
    except (pa.ArrowException, OSError) as exc:
        raise ScoreError(f"{path}: not a readable Parquet shard ({exc}); the bench is damaged") from exc
    finally:
        pa.default_memory_pool().release_unused()


def _check_images(path: Path, batch: pa.Table) -> None:
    ids = batch.column("id").to_pylist() if "id" in batch.schema.names else [""] * batch.num_rows
    for item_id, images in zip(ids, batch.column("images").to_pylist(), strict=True):
        for k, image in enumerate(images or []):
            problem = png_problem((image or {}).get("bytes") or b"")
            if problem:
                raise ScoreError(f"{path}: item {item_id}, image {k}: {problem}; the bench is damaged")
