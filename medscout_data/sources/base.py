"""Shared pieces of ingest: errors, units of work, and their catalogue parts.

Ingest works in *units*: one volume, or one chunk of X-ray images from the
sorted input list. A unit's outputs (cache stacks, then one catalogue part
under `catalogue/<modality>/parts/`) are written atomically, and the part
carries the unit's input hash and its skips in its Parquet metadata. A rerun
whose inputs are unchanged finds a part with the same hash and skips the unit;
its skips come back from the part, so the errors table stays complete.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medscout_data.errors import StageError
from medscout_data.recipe import IngestConfig
from medscout_data.report import Skip
from medscout_data.schema import CATALOGUE_SCHEMA
from medscout_data.shards import write_table_atomic

log = logging.getLogger(__name__)

# Bump when the rendering changes, so parts and catalogues of older code count as stale.
INGEST_VERSION = "3"  # 3: pixel_sha256 per image
SOURCE_KINDS = ("totalseg", "mimic-cxr-jpg", "mimic-cxr")
# Reasons that are a recipe's filter at work, not a problem with the file: logged at debug level only.
FILTER_REASONS = frozenset({"view-filtered"})


class IngestError(StageError):
    """Ingest cannot run at all (root missing, source kind unknown); the message says what to do."""


class InputError(Exception):
    """One input that cannot be used: a reason code and a message naming the file."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Unit:
    """One unit of work: a part name and its input records (JSON-able dicts with a `path`)."""

    key: str
    records: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Listing:
    """What a source holds: unit keys in order, a way to materialise each unit, listing-time skips."""

    keys: list[str]
    unit: Callable[[int], Unit]
    skips: list[Skip] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class Job:
    """Everything a worker needs to process one unit (small and picklable)."""

    kind: str
    modality: str
    root: Path
    cache_dir: Path
    part: Path
    unit_hash: str
    config: IngestConfig
    unit: Unit


@dataclass
class UnitResult:
    """A unit's catalogue rows, skips and counts, before they become a part."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    def skip(self, path: str, reason: str, message: str) -> None:
        """Record an input this unit does not use; problems are logged where they happen."""
        self.skips.append(Skip(path, reason, message))
        log.log(logging.DEBUG if reason in FILTER_REASONS else logging.WARNING, "skipped %s", message)


def pixel_digest(image: np.ndarray) -> str:
    """sha256 of a decoded image's shape and pixels: identical images, identical digests."""
    digest = hashlib.sha256(f"{image.dtype.str}{image.shape}".encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def link_problem(path: str | os.PathLike[str]) -> str | None:
    """Why an entry of a source tree cannot be followed (a symlink loop, a broken link), else None."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink-loop"
        if os.path.islink(path):
            return "broken-link"
    return None


def skip_link(name: str, problem: str, skips: list[Skip]) -> None:
    """Record a source entry left out for `link_problem`'s reason (a rerun skips it again, never stops)."""
    what = "a symlink loop" if problem == "symlink-loop" else "a symlink to nothing"
    skips.append(Skip(name, problem, f"{name}: {what}; skipped"))


def is_folder(entry: os.DirEntry[str], skips: list[Skip]) -> bool:
    """`entry.is_dir()`, with an entry that cannot be followed recorded in `skips` instead of raising."""
    try:
        return entry.is_dir()
    except OSError:
        skip_link(entry.name, link_problem(entry.path) or "symlink-loop", skips)
        return False


def config_digest(config: IngestConfig) -> str:
    """sha256 of `recipe.ingest` in canonical JSON: the settings a catalogue was rendered with."""
    from dataclasses import asdict

    blob = json.dumps(asdict(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def unit_hash(context: Mapping[str, str], root: Path, unit: Unit) -> str:
    """Hash of a unit's inputs: run context, records, and each file's size and mtime."""
    digest = hashlib.sha256(json.dumps(dict(context), sort_keys=True).encode())
    digest.update(unit.key.encode())
    for record in unit.records:
        try:
            stat = (root / record["path"]).stat()
            signature = [stat.st_size, stat.st_mtime_ns]
        except OSError:
            signature = [-1, -1]
        digest.update(json.dumps([record, signature], sort_keys=True, default=str).encode())
    return digest.hexdigest()


def write_part(path: Path, result: UnitResult, unit_hash_: str) -> None:
    """A unit's catalogue rows, atomically, with its hash, skips and counts in the metadata."""
    table = pa.Table.from_pylist(result.rows, schema=CATALOGUE_SCHEMA)
    skips = [[s.path, s.reason, s.message] for s in result.skips]
    metadata = {
        "unit_hash": unit_hash_,
        "skips": json.dumps(skips),
        "counts": json.dumps(dict(sorted(result.counts.items()))),
    }
    try:
        write_table_atomic(table, path, metadata=metadata)
    except OSError as exc:  # pyarrow's errors carry neither the file name nor always an errno
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc


def part_files(path: Path) -> set[str]:
    """Cache files the part's rows point at: what its unit wrote (empty for no or a foreign part)."""
    if read_part_info(path) is None:
        return set()
    try:
        table = pq.read_table(path, columns=["cache_file", "mask_file"])
    except (OSError, KeyError, pa.ArrowException):
        return set()
    names = {name for column in table.columns for name in column.to_pylist() if name}
    return {name for name in names if "/" not in name and "\\" not in name and name not in (".", "..")}


def write_unit_part(job: Job, result: UnitResult) -> None:
    """Write the unit's part, then delete the cache files its previous part listed and this one does not.

    Only files an earlier run of this same unit wrote (and recorded) are ever
    deleted; anything else in the cache folder is left alone.
    """
    before = part_files(job.part)
    write_part(job.part, result, job.unit_hash)
    now = {row[key] for row in result.rows for key in ("cache_file", "mask_file")}
    for name in sorted(before - now):
        (job.cache_dir / name).unlink(missing_ok=True)


@dataclass(frozen=True)
class PartInfo:
    """What a finished part says about its unit."""

    unit_hash: str
    skips: list[Skip]
    counts: Counter[str]


def read_part_info(path: Path) -> PartInfo | None:
    """The part's metadata, or None when it is missing or unreadable (the unit is then redone)."""
    try:
        raw = pq.read_schema(path).metadata or {}
        meta = {k.decode(): v.decode() for k, v in raw.items()}
        skips = [Skip(*item) for item in json.loads(meta["skips"])]
        return PartInfo(meta["unit_hash"], skips, Counter(json.loads(meta["counts"])))
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return None
