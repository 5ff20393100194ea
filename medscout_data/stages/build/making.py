"""Making: planned items in workers, a few row groups at a time; shards written by the main process.

Each item's attempts are tried in order; the first that makes a valid item
wins. A worker makes a chunk (two row groups of one shard) and sends back
its rows as an Arrow table; the main process writes each shard's chunks in
order, to a temporary name, and renames it when the last one is in. A
shard records in its Parquet metadata the digest of its specs (a shard
with the right digest is done, so a killed build resumes) and each
item's outcome (the attempt used, or why none worked), from which the main
process plans the next round of replacements, on a rerun as well.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from medscout_data import __version__
from medscout_data.cache import ImageCache
from medscout_data.imaging import encoder_fingerprint
from medscout_data.recipe import Recipe
from medscout_data.schema import ITEM_SCHEMA
from medscout_data.seeding import rng_for
from medscout_data.shards import ShardWriter
from medscout_data.stages.build.catalog import ImageRef
from medscout_data.stages.build.planning import Attempt, ItemSpec, Outcome
from medscout_data.stages.pool import DIGEST_KEY
from medscout_data.tasks.geometry import TaskRejected
from medscout_data.tasks.items import (
    ItemContent,
    ItemKey,
    anomaly_difference,
    anomaly_item,
    jigsaw_item,
    scale_item,
    to_row,
)

OUTCOMES_KEY = "medscout_outcomes"
CHUNK_ROW_GROUPS = 2  # a worker's unit of work: this many row groups of one shard


@dataclass(frozen=True)
class ShardJob:
    """One shard to write: its specs and where."""

    path: Path
    digest: str
    specs: tuple[ItemSpec, ...]

    @property
    def task(self) -> str:
        return self.specs[0].task


@dataclass
class ShardResult:
    """What a worker made of one shard."""

    path: str
    items: int = 0
    outcomes: dict[str, Outcome] = field(default_factory=dict)


class PixelReader:
    """The cache, remembering the last few images (an item's attempts often share one)."""

    def __init__(self, cache: ImageCache) -> None:
        self.cache = cache
        self._memo: dict[tuple[str, str], np.ndarray] = {}

    def image(self, ref: ImageRef) -> np.ndarray:
        return self._get(ref, "image", ref.pixels)

    def mask(self, ref: ImageRef) -> np.ndarray:
        return self._get(ref, "mask", ref.body)

    def _get(self, ref: ImageRef, kind: str, read) -> np.ndarray:
        key = (ref.image_id, kind)
        if key not in self._memo:
            if len(self._memo) >= 8:
                self._memo.pop(next(iter(self._memo)))
            array = read(self.cache)
            array.flags.writeable = False  # shared by the items of a chunk: none may change it
            self._memo[key] = array
        return self._memo[key]


def make_item(
    spec: ItemSpec, pixels: PixelReader, recipe: Recipe
) -> tuple[dict[str, Any], int, dict[str, int]]:
    """The item's row from its first attempt that works, that attempt's index and why the attempts
    before it were rejected (reason -> count); `NoAttemptWorked` if none works."""
    reasons: Counter[str] = Counter()
    for index, attempt in enumerate(spec.attempts):
        try:
            content = _content(spec, attempt, pixels, recipe)
        except TaskRejected as exc:
            reasons[str(exc)] += 1
            continue
        key = ItemKey(
            id=spec.id,
            modality=spec.modality,
            task=spec.task,
            variant=spec.variant,
            subject_id=attempt.image.subject_id,
            source_id=attempt.image.source_id,
            reference_subject_id=attempt.reference.image.subject_id if attempt.reference else "",
            seed=spec.seed,
        )
        source = attempt.image.provenance() | {"attempt": index, "round": spec.round}
        if attempt.reference is not None:
            source["reference"] = _reference_provenance(attempt)
        return to_row(content, key, source, recipe.png), index, dict(reasons)
    raise NoAttemptWorked(
        reasons.most_common(1)[0][0] if reasons else NOTHING_LEFT, len(spec.attempts), dict(reasons)
    )


NOTHING_LEFT = "no image and choice of its side was left to try"


class NoAttemptWorked(TaskRejected):
    """Every attempt of an item failed; `reason` is the most common failure."""

    def __init__(self, reason: str, tried: int, rejected: dict[str, int] | None = None) -> None:
        super().__init__(reason)
        self.reason, self.tried, self.rejected = reason, tried, rejected or {}


def _content(spec: ItemSpec, attempt: Attempt, pixels: PixelReader, recipe: Recipe) -> ItemContent:
    image = pixels.image(attempt.image)
    if spec.task == "scale":
        rng = rng_for(spec.seed, "attempt", attempt.image.image_id, attempt.draw)
        return scale_item(image, pixels.mask(attempt.image), rng, recipe, spec.modality, spec.variant)
    if spec.task == "jigsaw":
        return jigsaw_item(image, attempt.choice, recipe, spec.modality)
    cell, grid = attempt.choice[0], recipe.anomaly.grid
    reference = pixels.image(attempt.reference.image)
    if anomaly_difference(image, reference, cell, grid) < recipe.anomaly.min_cell_difference:
        raise TaskRejected(
            f"the reference does not differ visibly in the cell (anomaly.min_cell_difference "
            f"{recipe.anomaly.min_cell_difference:g})"
        )
    return anomaly_item(image, reference, cell, recipe, spec.modality)


def _reference_provenance(attempt: Attempt) -> dict[str, Any]:
    reference, candidate = attempt.reference, attempt.image
    info = reference.image.provenance() | {"subject_id": reference.image.subject_id}
    if reference.image.is_slice:
        info["distance_mm"] = round(abs(reference.image.z_mm - candidate.z_mm), 3)
    if reference.rank:
        info.update(rank=reference.rank, score=round(reference.score, 6))
    return info


@dataclass
class Chunk:
    """What a worker made of a run of one shard's specs: their rows as a table, and each outcome."""

    table: pa.Table
    outcomes: dict[str, Outcome]


class _WithoutPandas:
    """An import finder that answers "not installed" for pandas (see `init_worker`)."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError("build workers run without pandas", name=name)
        return None


def init_worker() -> None:
    """Set a build worker up: one OpenCV thread (the pool is the parallelism, and OpenCV's thread
    pool costs more than it saves on the small resizes items need, a 8x8 area average of a cell),
    and no pandas: pyarrow imports it on the first table it builds (half a second of every
    worker's start) only to ask whether the values are pandas objects, and a worker's never are."""
    import sys

    import cv2

    cv2.setNumThreads(1)
    if "pandas" not in sys.modules:
        sys.meta_path.insert(0, _WithoutPandas())


def warm_up() -> None:
    """Nothing: submitting it makes the pool start its workers and import this module (only this
    one: a worker never loads the driver) while the main process plans."""


def make_chunk(specs: tuple[ItemSpec, ...], cache_dir: Path, recipe: Recipe) -> Chunk:
    """Make a run of specs (in a worker). Chunks smaller than shards keep every worker busy until the
    end; the main process writes them into their shard in order."""
    rows, outcomes = [], {}
    # A reader per chunk: what a chunk makes never depends on which chunks the same worker made
    # before it, nor on an earlier build in this process.
    with closing(ImageCache(cache_dir)) as cache:
        pixels = PixelReader(cache)
        for spec in specs:
            try:
                row, index, rejected = make_item(spec, pixels, recipe)
            except NoAttemptWorked as exc:
                outcomes[spec.id] = Outcome(-1, exc.reason, exc.tried, exc.rejected)
                continue
            outcomes[spec.id] = Outcome(index, rejected=rejected)
            rows.append(row)
    columns = {name: [row[name] for row in rows] for name in ITEM_SCHEMA.names}
    return Chunk(pa.Table.from_pydict(columns, schema=ITEM_SCHEMA), outcomes)


def chunk_specs(job: ShardJob, recipe: Recipe) -> list[tuple[ItemSpec, ...]]:
    """The shard's specs in runs of CHUNK_ROW_GROUPS row groups (the same for any worker count)."""
    size = CHUNK_ROW_GROUPS * recipe.pool.row_group_items
    return [job.specs[start : start + size] for start in range(0, len(job.specs), size)]


class ShardAssembly:
    """One shard being written by the main process from its chunks, strictly in order."""

    def __init__(self, job: ShardJob, recipe: Recipe, chunks: int) -> None:
        self.job, self.recipe, self.chunks = job, recipe, chunks
        self.waiting: dict[int, Chunk] = {}
        self.written = 0
        self.result = ShardResult(str(job.path))
        self.writer: ShardWriter | None = None

    def add(self, number: int, chunk: Chunk) -> bool:
        """Take chunk `number`; write what is now in order. True when the shard is complete on disk."""
        self.waiting[number] = chunk
        while self.written in self.waiting:
            chunk = self.waiting.pop(self.written)
            if self.writer is None:
                metadata = {
                    DIGEST_KEY: self.job.digest,
                    "medscout_recipe": self.recipe.name,
                    "medscout_version": __version__,
                }
                self.writer = ShardWriter(
                    self.job.path, ITEM_SCHEMA, self.recipe.pool.row_group_items, metadata
                )
            if chunk.table.num_rows:
                self.writer.write_table(chunk.table)
            self.result.items += chunk.table.num_rows
            self.result.outcomes.update(chunk.outcomes)
            self.written += 1
        if self.written < self.chunks:
            return False
        self.writer.add_metadata({OUTCOMES_KEY: encode_outcomes(self.result.outcomes)})
        self.writer.close()
        return True

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


def encode_outcomes(outcomes: dict[str, Outcome]) -> str:
    return json.dumps(
        {item: [o.index, o.reason, o.tried, o.rejected] for item, o in outcomes.items()}, sort_keys=True
    )


def read_outcomes(path: Path) -> dict[str, Outcome] | None:
    """The outcomes a finished shard recorded (None when it has none: not ours, or unreadable)."""
    import pyarrow.parquet as pq

    try:
        raw = (pq.read_metadata(path).metadata or {}).get(OUTCOMES_KEY.encode())
        if not raw:
            return None
        return {item: _outcome(value) for item, value in json.loads(raw).items()}
    except Exception:  # an unreadable or foreign file is simply not a finished shard
        return None


def _outcome(value: list) -> Outcome:
    """An outcome as `encode_outcomes` wrote it (shards of earlier versions have no rejections)."""
    rejected = value[3] if len(value) > 3 else {}
    return Outcome(int(value[0]), str(value[1]), int(value[2]), {str(k): int(n) for k, n in rejected.items()})


def shard_jobs(specs: list[ItemSpec], folder: Path, stem: str, recipe: Recipe) -> list[ShardJob]:
    """Cut specs into shards named `<stem>-NNNNN.parquet`, each with the digest of what it holds.

    The digest holds the PNG encoder's fingerprint: a shard written on a machine whose encoder
    writes other bytes for the same pixels is remade, not reused (nor merged as a rank's)."""
    size = recipe.pool.shard_max_items
    encoder = encoder_fingerprint(recipe.png)
    jobs = []
    for number, start in enumerate(range(0, len(specs), size)):
        chunk = tuple(specs[start : start + size])
        digest = hashlib.sha256()
        digest.update(f"{__version__}|{recipe.digest}|{encoder}".encode())
        for spec in chunk:
            digest.update(spec.digest_text().encode())
        jobs.append(ShardJob(folder / f"{stem}-{number:05d}.parquet", digest.hexdigest(), chunk))
    return jobs


def finished_outcomes(job: ShardJob) -> dict[str, Outcome] | None:
    """The outcomes of a shard already on disk with this job's digest, else None (to be made)."""
    from medscout_data.shards import read_file_metadata

    if not job.path.is_file():
        return None
    try:
        if read_file_metadata(job.path).get(DIGEST_KEY) != job.digest:
            return None
    except Exception:  # unreadable leftovers are remade
        return None
    outcomes = read_outcomes(job.path)
    if outcomes is None or set(outcomes) != {spec.id for spec in job.specs}:
        return None
    return outcomes
