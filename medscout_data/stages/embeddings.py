"""Image embeddings on disk, and the loop that makes the missing ones in fixed catalogue blocks.

A store is one folder of append-only Parquet parts (image_id, row_key, vector)
for one model identity (`model.json`: spec, weights digest, dim, preprocessing).
Every part it writes carries the identity's digest in its Parquet metadata, so
the store reads, and ever deletes, only parts it wrote: other files in the
folder are the user's and are left alone.

Batches are fixed blocks of the catalogue (sorted by image id, `batch_size`
rows each), and a block's missing rows are embedded together. A model's output
for one image depends in its last bits on the batch around it (measured: 2e-7
on a CPU ViT), so fixed blocks are what makes ranks of a job array, a resumed
run and a single process give the same vectors bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from medscout_data.cache import ImageCache
from medscout_data.report import RunReport
from medscout_data.shards import read_file_metadata, write_json_atomic, write_table_atomic
from medscout_data.stages.embedders import Embedder

log = logging.getLogger(__name__)

FLUSH_ROWS = 4096
MODEL_FILE = "model.json"
PART_KEY = "medscout.embeddings"  # Parquet metadata of every part we write: the identity's digest
PREPARE_THREADS = "index-prepare"
_PART_NAME = re.compile(r"part-(\d+)\.parquet")

Row = dict[str, Any]


def identity_digest(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


class EmbeddingStore:
    """Embeddings of one model identity, keyed by image id; a later part overrides an earlier one.

    A store found holding another identity is emptied of the parts it wrote
    (`create=False` opens it read-only instead: nothing is reused, nothing written).
    """

    def __init__(self, folder: Path, identity: dict[str, Any], create: bool = True) -> None:
        self.folder = Path(folder)
        self.identity = json.loads(json.dumps(identity))
        self.digest = identity_digest(self.identity)
        self.dim = int(identity["dim"])
        self.schema = pa.schema(
            [
                ("image_id", pa.string()),
                ("row_key", pa.string()),
                ("vector", pa.list_(pa.float32(), self.dim)),
            ]
        )
        self._where: dict[str, tuple[int, int, str]] = {}
        self._parts: list[int] = []
        self._rows = 0
        self._open(create)

    def _open(self, create: bool) -> None:
        found = _read_json(self.folder / MODEL_FILE)
        if found is not None and found != self.identity:
            if not create:
                return
            log.warning("%s holds embeddings of another model or weights; removing them", self.folder)
            self._reset()
            found = None
        if create and found is None:
            write_json_atomic(self.identity, self.folder / MODEL_FILE)
        foreign = []
        for number, path in self._listed():
            if _part_digest(path) != self.digest:
                foreign.append(path.name)
                continue
            table = pq.read_table(path, columns=["image_id", "row_key"])
            for index, (image_id, key) in enumerate(
                zip(table["image_id"].to_pylist(), table["row_key"].to_pylist(), strict=True)
            ):
                self._where[image_id] = (number, index, key)
            self._parts.append(number)
            self._rows += table.num_rows
        if foreign:
            log.warning(
                "%s: ignoring %d file(s) not written by this store (%s); they are left in place",
                self.folder,
                len(foreign),
                ", ".join(foreign[:3]),
            )

    def _listed(self) -> list[tuple[int, Path]]:
        """Every file named like a part, ours or not, by number."""
        if not self.folder.is_dir():
            return []
        found = [(_PART_NAME.fullmatch(p.name), p) for p in self.folder.iterdir()]
        return sorted((int(m.group(1)), p) for m, p in found if m)

    def _part(self, number: int) -> Path:
        return self.folder / f"part-{number:05d}.parquet"

    def _next_number(self) -> int:
        """After every file named like a part, so a user's file is never overwritten."""
        return max((number for number, _ in self._listed()), default=-1) + 1

    def _reset(self) -> None:
        """Remove the parts this package wrote (any identity) and model.json; nothing else."""
        removed = [path for _, path in self._listed() if _part_digest(path) is not None]
        for path in removed:
            path.unlink()
        (self.folder / MODEL_FILE).unlink(missing_ok=True)
        log.info("%s: removed %d embedding part(s) and %s", self.folder, len(removed), MODEL_FILE)
        self._where, self._parts, self._rows = {}, [], 0

    def key(self, image_id: str) -> str | None:
        """The row key the image was embedded under, or None."""
        where = self._where.get(image_id)
        return where[2] if where else None

    def __len__(self) -> int:
        return len(self._where)

    def append(self, image_ids: list[str], keys: list[str], vectors: np.ndarray) -> None:
        """Write one more part atomically."""
        if not image_ids:
            return
        number = self._next_number()
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel())
        table = pa.table(
            [pa.array(image_ids), pa.array(keys), pa.FixedSizeListArray.from_arrays(flat, self.dim)],
            schema=self.schema,
        )
        write_table_atomic(table, self._part(number), {PART_KEY: self.digest})
        for index, (image_id, key) in enumerate(zip(image_ids, keys, strict=True)):
            self._where[image_id] = (number, index, key)
        self._parts.append(number)
        self._rows += len(image_ids)

    def vectors(self, image_ids: list[str]) -> np.ndarray:
        """An (n, dim) float32 array, rows in the order of `image_ids`."""
        out = np.empty((len(image_ids), self.dim), np.float32)
        by_part: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for index, image_id in enumerate(image_ids):
            number, row, _ = self._where[image_id]
            by_part[number].append((index, row))
        for number, pairs in by_part.items():
            column = pq.read_table(self._part(number), columns=["vector"])["vector"].combine_chunks()
            matrix = column.flatten().to_numpy().reshape(-1, self.dim)
            target, source = np.array(pairs).T
            out[target] = matrix[source]
        return out

    def compact(self) -> None:
        """Rewrite the live rows when superseded ones outnumber them (after catalogue changes)."""
        if self._rows <= 2 * len(self._where):
            return
        old = list(self._parts)
        image_ids = sorted(self._where)
        keys = [self._where[i][2] for i in image_ids]
        for start in range(0, len(image_ids), FLUSH_ROWS):
            chunk = image_ids[start : start + FLUSH_ROWS]
            self.append(chunk, keys[start : start + FLUSH_ROWS], self.vectors(chunk))
        for number in old:
            self._part(number).unlink()
        self._parts = [n for n in self._parts if n not in set(old)]
        self._rows = len(self._where)

    def absorb(self, other: EmbeddingStore) -> int:
        """Move `other`'s parts into this store (renamed, not copied; they override older rows)."""
        if other.digest != self.digest:
            raise ValueError(f"{other.folder} holds another model's embeddings than {self.folder}")
        rows = defaultdict(list)
        for image_id, (number, index, key) in other._where.items():
            rows[number].append((image_id, index, key))
        moved = 0
        for number in other._parts:
            target = self._next_number()
            os.replace(other._part(number), self._part(target))
            for image_id, index, key in rows[number]:
                self._where[image_id] = (target, index, key)
            self._parts.append(target)
            self._rows += len(rows[number])
            moved += len(rows[number])
        other._where, other._parts, other._rows = {}, [], 0
        return moved

    def remove(self) -> None:
        """Delete the parts this store wrote and its model.json; the folder too once empty."""
        for number in self._parts:
            self._part(number).unlink(missing_ok=True)
        (self.folder / MODEL_FILE).unlink(missing_ok=True)
        self._where, self._parts, self._rows = {}, [], 0
        left = sorted(p.name for p in self.folder.iterdir()) if self.folder.is_dir() else []
        if left:
            log.warning("%s: left in place, not written by index: %s", self.folder, ", ".join(left[:5]))
        elif self.folder.is_dir():
            self.folder.rmdir()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _part_digest(path: Path) -> str | None:
    """The identity digest a part of ours carries; None for any other file."""
    try:
        return read_file_metadata(path).get(PART_KEY)
    except (OSError, pa.ArrowException):
        return None


# ----------------------------------------------------------------------------- embedding


def catalogue_blocks(rows: Sequence[Row], size: int) -> list[list[Row]]:
    """The catalogue (sorted by image id) in blocks of `size` rows: the unit of batching and of ranks."""
    return [list(rows[start : start + size]) for start in range(0, len(rows), size)]


def embed_missing(
    blocks: Sequence[Sequence[Row]],
    store: EmbeddingStore,
    embedder: Callable[[], Embedder],
    cache_dir: Path,
    workers: int,
    report: RunReport,
    reuse: Sequence[EmbeddingStore] = (),
) -> list[str]:
    """Embed each block's rows that neither `store` nor `reuse` holds under their row key, one batch a
    block, into `store`; unreadable images are recorded in `report`. Their image ids are returned."""
    stores = (store, *reuse)
    batches = [
        [row for row in block if all(s.key(row["image_id"]) != row["row_key"] for s in stores)]
        for block in blocks
    ]
    batches = [batch for batch in batches if batch]
    todo = sum(len(batch) for batch in batches)
    report.count("embeddings_reused", sum(len(block) for block in blocks) - todo)
    if not todo:
        return []
    model = embedder()
    reader = _ThreadImages(cache_dir)
    pending = _PendingPart(store)
    unreadable: list[str] = []
    with tqdm(total=todo, desc=f"embed {model.model.spec.text}", unit="image") as bar:
        for batch in _prepared_batches(batches, lambda r: model.prepare(reader.image(r)), workers):
            for row, _, error in batch:
                if error is not None:
                    report.skip(row["path"], "unreadable_image", error)
                    unreadable.append(row["image_id"])
            good = [(row, array) for row, array, _ in batch if array is not None]
            if good:
                pending.add([row for row, _ in good], model.embed(np.stack([a for _, a in good])))
                report.count("embedded", len(good))
            bar.update(len(batch))
    pending.flush()
    store.compact()
    return unreadable


class _PendingPart:
    """Embeddings not yet on disk; written as a store part once FLUSH_ROWS rows are in.

    Whole batches go into one part, so a killed run leaves each block either
    embedded or not: a rerun embeds it again as the same batch.
    """

    def __init__(self, store: EmbeddingStore) -> None:
        self.store = store
        self.rows: list[Row] = []
        self.vectors: list[np.ndarray] = []

    def add(self, rows: list[Row], vectors: np.ndarray) -> None:
        self.rows += rows
        self.vectors.append(vectors)
        if len(self.rows) >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            ids = [row["image_id"] for row in self.rows]
            self.store.append(ids, [row["row_key"] for row in self.rows], np.concatenate(self.vectors))
        self.rows, self.vectors = [], []


class _ThreadImages:
    """One ImageCache per thread (its open-file table is not thread-safe)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.local = threading.local()

    def image(self, row: Row) -> np.ndarray:
        if not hasattr(self.local, "cache"):
            self.local.cache = ImageCache(self.folder)
        image = self.local.cache.image(row)
        if image.size == 0:
            raise ValueError(f"empty image ({image.shape})")
        return image


Prepared = tuple[Row, np.ndarray | None, str | None]


def _prepared_batches(
    batches: Sequence[Sequence[Row]], prepare: Callable[[Row], np.ndarray], workers: int
) -> Iterator[list[Prepared]]:
    """Batches of (row, input or None, error or None), prepared by threads one batch ahead.

    When the consumer stops (an error, a closed generator), queued work is
    cancelled and the threads end before this returns.
    """

    def one(row: Row) -> Prepared:
        try:
            return row, prepare(row), None
        except (OSError, ValueError, IndexError, KeyError, EOFError) as exc:
            where = f"cache {row['cache_file']}[{row['cache_index']}]"
            return row, None, f"{row['path']} ({where}): {type(exc).__name__}: {exc}"

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=PREPARE_THREADS)
    try:
        pending: list[Future[Prepared]] | None = None
        for batch in batches:
            futures = [pool.submit(one, row) for row in batch]
            if pending is not None:
                yield [f.result() for f in pending]
            pending = futures
        if pending is not None:
            yield [f.result() for f in pending]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
