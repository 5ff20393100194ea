"""Stage `index` (X-ray): image embeddings and subject-disjoint nearest neighbours with FAISS.

Every catalogued X-ray is embedded with the recipe's model (BiomedCLIP's image
tower for the paper, the weight-free `pixels` embedder for the sample; see
`medscout_data.stages.embedders`) and, for each image, its k most similar images by
cosine similarity are found. A neighbour is never the image itself, never an
image of the same subject, and never an image on the other side of the subject
plan: each side (bench, train) gets its own FAISS index. `build` takes the
top-1 neighbour as the anomaly reference.

Outputs, under `index/xray/<model-slug>/`:

    embeddings/model.json, embeddings/part-NNNNN.parquet   (image_id, row_key, vector)
    neighbours.parquet   image_id, subject_id, rank (1-based), neighbour_id, neighbour_subject_id, score
    index.json, errors.parquet, report.json

Embeddings are cached by image id (and a key of the catalogue row that made
the pixels), so a rerun, or a grown catalogue, embeds only what is new. The
neighbours table records the model, its weights, the embedding dim, the search
kind, k, the plan digest and the catalogue fingerprint in its Parquet metadata;
it is remade when any of them changes, and indices of two models never mix
(each model has its own folder, and `load_neighbours` checks the model).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import logging
import math
import shutil
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from medscout_data.cache import ImageCache
from medscout_data.errors import StageError
from medscout_data.layout import Layout
from medscout_data.recipe import Recipe
from medscout_data.report import RunReport
from medscout_data.shards import read_file_metadata, write_json_atomic, write_table_atomic
from medscout_data.stages.embedders import (
    Embedder,
    ModelUnavailable,
    ResolvedModel,
    load_embedder,
    parse_model_spec,
    resolve_model,
)
from medscout_data.stages.plan import BENCH, TRAIN, SubjectPlan, ensure_plan

log = logging.getLogger(__name__)

SEARCH_KINDS = ("exact", "ivf", "hnsw")
NEIGHBOURS = "neighbours.parquet"
NEIGHBOUR_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("subject_id", pa.string()),
        ("rank", pa.int32()),  # 1 = most similar
        ("neighbour_id", pa.string()),
        ("neighbour_subject_id", pa.string()),
        ("score", pa.float32()),  # cosine similarity
    ]
)
CATALOGUE_COLUMNS = [
    "image_id",
    "subject_id",
    "path",
    "view",
    "window",
    "height",
    "width",
    "body_fraction",
    "pixel_spacing_mm",
    "cache_file",
    "cache_index",
]
# Catalogue columns that change when an image's rendered pixels change: part of the embedding key.
ROW_KEY_COLUMNS = ("path", "view", "window", "height", "width", "body_fraction", "pixel_spacing_mm")
FLUSH_ROWS = 4096
FAISS_HINT = "index needs FAISS: pip install faiss-cpu (or faiss-gpu-cu12 on a CUDA 12 machine)"


class IndexStageError(StageError):
    """The index stage cannot run: no catalogue, bad options, no FAISS."""


class IndexMismatch(StageError):
    """Neighbours that were made for another model or run than the one asked for."""


@dataclass(frozen=True)
class IndexOptions:
    """How to embed and search: model spec, device, batch size, k and search kind."""

    model: str
    device: str = "auto"
    batch_size: int = 64
    k: int = 8
    search: str = "exact"
    workers: int = 1

    @classmethod
    def from_recipe(
        cls,
        recipe: Recipe,
        model: str | None = None,
        device: str = "auto",
        batch_size: int | None = None,
        k: int | None = None,
        search: str | None = None,
        workers: int = 1,
    ) -> IndexOptions:
        """The recipe's [index] settings, each overridden where an argument is given."""
        cfg = recipe.index
        options = cls(
            model=model or cfg.model,
            device=device,
            batch_size=batch_size or cfg.batch_size,
            k=k or cfg.k,
            search=search or cfg.search,
            workers=workers,
        )
        if options.search not in SEARCH_KINDS:
            raise IndexStageError(f"search must be one of {', '.join(SEARCH_KINDS)}, got {options.search!r}")
        if min(options.k, options.batch_size, options.workers) < 1:
            raise IndexStageError("k, batch size and workers must be at least 1")
        if options.device not in ("auto", "cpu", "cuda"):
            raise IndexStageError(f"device must be auto, cpu or cuda, got {options.device!r}")
        return options


# ----------------------------------------------------------------------------- catalogue


def read_catalogue_images(path: Path) -> list[dict[str, Any]]:
    """The catalogue's rows (the columns index needs), sorted by image id, each with its `row_key`."""
    table = pq.read_table(path, columns=CATALOGUE_COLUMNS)
    rows = sorted(table.to_pylist(), key=lambda row: row["image_id"])
    for before, after in itertools.pairwise(rows):
        if before["image_id"] == after["image_id"]:
            raise IndexStageError(f"{path}: image_id {after['image_id']!r} appears twice; re-run ingest")
    for row in rows:
        row["row_key"] = row_key(row)
    return rows


def row_key(row: dict[str, Any]) -> str:
    """A short hash of the catalogue columns that shape an image's pixels."""
    text = json.dumps([row[c] for c in ROW_KEY_COLUMNS], default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def catalogue_fingerprint(rows: list[dict[str, Any]]) -> str:
    """sha256 of (image id, subject, row key) of every row: what the neighbours depend on."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(f"{row['image_id']}\x1f{row['subject_id']}\x1f{row['row_key']}\n".encode())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- embeddings on disk


class EmbeddingStore:
    """Embeddings of one model, keyed by image id, in append-only Parquet parts.

    `model.json` holds the model identity (spec, weights digest, dim,
    preprocessing); a store made by another identity is removed, never mixed.
    A later part overrides an earlier one for the same image id.
    """

    def __init__(self, folder: Path, identity: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.identity = json.loads(json.dumps(identity))
        self.dim = int(identity["dim"])
        self.schema = pa.schema(
            [
                ("image_id", pa.string()),
                ("row_key", pa.string()),
                ("vector", pa.list_(pa.float32(), self.dim)),
            ]
        )
        self._where: dict[str, tuple[int, int, str]] = {}
        self._rows = 0
        self._open()

    def _open(self) -> None:
        marker = self.folder / "model.json"
        if marker.exists() and json.loads(marker.read_text(encoding="utf-8")) != self.identity:
            log.warning("%s holds embeddings of another model or weights; removing them", self.folder)
            shutil.rmtree(self.folder)
        if not marker.exists():
            write_json_atomic(self.identity, marker)
        for number in self._parts():
            table = pq.read_table(self._part(number), columns=["image_id", "row_key"])
            for index, (image_id, key) in enumerate(
                zip(table["image_id"].to_pylist(), table["row_key"].to_pylist(), strict=True)
            ):
                self._where[image_id] = (number, index, key)
            self._rows += table.num_rows

    def _parts(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.folder.glob("part-*.parquet"))

    def _part(self, number: int) -> Path:
        return self.folder / f"part-{number:05d}.parquet"

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
        number = max(self._parts(), default=-1) + 1
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel())
        table = pa.table(
            [pa.array(image_ids), pa.array(keys), pa.FixedSizeListArray.from_arrays(flat, self.dim)],
            schema=self.schema,
        )
        write_table_atomic(table, self._part(number))
        for index, (image_id, key) in enumerate(zip(image_ids, keys, strict=True)):
            self._where[image_id] = (number, index, key)
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
        old = self._parts()
        image_ids = sorted(self._where)
        keys = [self._where[i][2] for i in image_ids]
        for start in range(0, len(image_ids), FLUSH_ROWS):
            chunk = image_ids[start : start + FLUSH_ROWS]
            self.append(chunk, keys[start : start + FLUSH_ROWS], self.vectors(chunk))
        for number in old:
            self._part(number).unlink()
        self._rows = len(self._where)


# ----------------------------------------------------------------------------- embedding


def embed_missing(
    rows: list[dict[str, Any]],
    store: EmbeddingStore,
    embedder: Callable[[], Embedder],
    cache_dir: Path,
    options: IndexOptions,
    report: RunReport,
) -> None:
    """Embed the rows the store lacks (or holds under another row key); unreadable images are skipped."""
    todo = [row for row in rows if store.key(row["image_id"]) != row["row_key"]]
    report.count("embeddings_reused", len(rows) - len(todo))
    if not todo:
        return
    model = embedder()
    reader = _ThreadImages(cache_dir)
    pending = _PendingPart(store)
    with tqdm(total=len(todo), desc=f"embed {model.model.spec.text}", unit="image") as bar:
        for batch in _prepared_batches(todo, lambda r: model.prepare(reader.image(r)), options):
            for row, _, error in batch:
                if error is not None:
                    report.skip(row["path"], "unreadable_image", error)
            good = [(row, array) for row, array, _ in batch if array is not None]
            if good:
                pending.add([row for row, _ in good], model.embed(np.stack([a for _, a in good])))
                report.count("embedded", len(good))
            bar.update(len(batch))
    pending.flush()
    store.compact()


class _PendingPart:
    """Embeddings not yet on disk; written as a store part every FLUSH_ROWS rows."""

    def __init__(self, store: EmbeddingStore) -> None:
        self.store = store
        self.rows: list[dict[str, Any]] = []
        self.vectors: list[np.ndarray] = []

    def add(self, rows: list[dict[str, Any]], vectors: np.ndarray) -> None:
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

    def image(self, row: dict[str, Any]) -> np.ndarray:
        if not hasattr(self.local, "cache"):
            self.local.cache = ImageCache(self.folder)
        image = self.local.cache.image(row)
        if image.size == 0:
            raise ValueError(f"empty image ({image.shape})")
        return image


Prepared = tuple[dict[str, Any], np.ndarray | None, str | None]


def _prepared_batches(
    rows: list[dict[str, Any]], prepare: Callable[[dict[str, Any]], np.ndarray], options: IndexOptions
) -> Iterator[list[Prepared]]:
    """Batches of (row, input or None, error or None), read by a thread pool one batch ahead."""

    def one(row: dict[str, Any]) -> Prepared:
        try:
            return row, prepare(row), None
        except (OSError, ValueError, IndexError, KeyError, EOFError) as exc:
            where = f"cache {row['cache_file']}[{row['cache_index']}]"
            return row, None, f"{row['path']} ({where}): {type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(max_workers=options.workers) as pool:
        pending: list[Future[Prepared]] | None = None
        for start in range(0, len(rows), options.batch_size):
            futures = [pool.submit(one, row) for row in rows[start : start + options.batch_size]]
            if pending is not None:
                yield [f.result() for f in pending]
            pending = futures
        if pending is not None:
            yield [f.result() for f in pending]


# ----------------------------------------------------------------------------- search


@dataclass(frozen=True)
class SearchConfig:
    """FAISS search settings. Approximate kinds fall back to exact search for queries left short."""

    kind: str = "exact"
    use_gpu: bool = False
    query_batch: int = 8192
    max_depth: int = 1024  # of the configured index (FAISS GPU search takes k <= 2048)
    result_budget: int = 1 << 25  # queries x depth per FAISS call (~400 MB of results)
    hnsw_m: int = 32
    hnsw_ef_construction: int = 40
    ivf_train_points: int = 64  # k-means training points per IVF cell


def ivf_lists(n: int) -> int:
    """IVF cells: about sqrt(n) (614 at MIMIC-CXR's 377k), at least 39 training points each."""
    return max(1, min(round(math.sqrt(n)), n // 39))


def ivf_probes(nlist: int) -> int:
    """Cells visited per query: 1/8 of them (about 1/8 of exact search's work), at least 8."""
    return min(nlist, max(8, nlist // 8))


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise IndexStageError(FAISS_HINT) from exc
    return faiss


def faiss_gpus() -> int:
    """GPUs the installed FAISS can use (0 for faiss-cpu)."""
    faiss = _faiss()
    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


def build_faiss_index(vectors: np.ndarray, config: SearchConfig) -> tuple[Any, dict[str, Any]]:
    """An inner-product index over unit `vectors` of the configured kind, and its parameters."""
    faiss = _faiss()
    n, dim = vectors.shape
    params: dict[str, Any] = {"kind": config.kind, "n": n}
    if config.kind == "exact":
        index = faiss.IndexFlatIP(dim)
    elif config.kind == "ivf":
        nlist = ivf_lists(n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.max_points_per_centroid = config.ivf_train_points  # FAISS subsamples, seeded
        index.train(vectors)
        index.nprobe = ivf_probes(nlist)
        params.update(nlist=nlist, nprobe=index.nprobe)
    elif config.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.hnsw_ef_construction
        params.update(m=config.hnsw_m, ef_construction=config.hnsw_ef_construction)
    else:
        raise ValueError(f"search kind must be one of {', '.join(SEARCH_KINDS)}, got {config.kind!r}")
    index.add(vectors)
    if config.use_gpu and config.kind != "hnsw" and faiss_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
        params["gpus"] = faiss_gpus()
    return index, params


def _search(index: Any, queries: np.ndarray, depth: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    if kind == "hnsw":
        index.hnsw.efSearch = max(64, 2 * depth)
    if kind == "ivf" and isinstance(index, _faiss().IndexIVF):  # a CPU IVF index
        return _ivf_big_batch_search(index, queries, depth)
    return index.search(queries, depth)


def _ivf_big_batch_search(index: Any, queries: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """FAISS's big-batch IVF search: each inverted list is scanned once for all the queries that
    probe it, as one matrix product. Same results as `index.search`, 5-8x faster on a 2-core CPU
    (benchmarks/bench_index.py), where per-query list scans are memory-bound at 512 dims."""
    from faiss.contrib.big_batch_search import big_batch_search

    with contextlib.redirect_stdout(io.StringIO()):  # it prints progress lines even at verbose=0
        return big_batch_search(index, queries, depth, method="pairwise_distances", threaded=1)


def _first_valid(
    scores: np.ndarray, labels: np.ndarray, query_groups: np.ndarray, groups: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The first k results of each row that belong to another group (FAISS rows are best first)."""
    valid = (labels >= 0) & (groups[np.maximum(labels, 0)] != query_groups[:, None])
    order = np.argsort(~valid, axis=1, kind="stable")[:, :k]
    picked = np.take_along_axis(labels, order, 1)
    picked_scores = np.take_along_axis(scores, order, 1).astype(np.float32)
    keep = np.take_along_axis(valid, order, 1)
    picked[~keep] = -1
    picked_scores[~keep] = np.nan
    if picked.shape[1] < k:
        pad = k - picked.shape[1]
        picked = np.pad(picked, ((0, 0), (0, pad)), constant_values=-1)
        picked_scores = np.pad(picked_scores, ((0, 0), (0, pad)), constant_values=np.nan)
    return picked, picked_scores


def search_side(
    vectors: np.ndarray, groups: np.ndarray, k: int, config: SearchConfig
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """For each row of unit `vectors`, its k most similar rows of another group (subject).

    Returns (labels, scores), both (n, k), best first, -1 / NaN where fewer than
    k rows of other groups exist, and the index parameters. The first pass
    searches k + (95th percentile of group sizes) deep; queries left short
    (their own group crowds the top, or approximate search missed) are searched
    again deeper, then exactly on the CPU, so every query gets min(k, available).
    """
    n = len(vectors)
    labels = np.full((n, k), -1, np.int64)
    scores = np.full((n, k), np.nan, np.float32)
    if n == 0:
        return labels, scores, {"kind": config.kind, "n": 0}
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    sizes = np.bincount(groups)
    wanted = np.minimum(k, n - sizes[groups])
    started = time.perf_counter()
    index, params = build_faiss_index(vectors, config)
    built = time.perf_counter()
    depth = min(n, config.max_depth, k + int(np.quantile(sizes[groups], 0.95)))
    found = _Found(vectors, groups, k, labels, scores, wanted, config)
    short = found.deepen(
        lambda q, d: _search(index, q, d, config.kind), np.arange(n), depth, config.max_depth
    )
    params.update(first_depth=depth, exact_fallback_queries=int(short.size))
    if short.size:
        exact, _ = build_faiss_index(vectors, SearchConfig(kind="exact"))
        found.deepen(exact.search, short, min(n, 4 * config.max_depth), n)
    params["build_seconds"] = round(built - started, 3)
    params["search_seconds"] = round(time.perf_counter() - built, 3)
    return labels, scores, params


@dataclass
class _Found:
    """The search results being filled in, and what each query can get at most."""

    vectors: np.ndarray
    groups: np.ndarray
    k: int
    labels: np.ndarray
    scores: np.ndarray
    wanted: np.ndarray
    config: SearchConfig

    def deepen(
        self, search: Callable[[np.ndarray, int], Any], rows: np.ndarray, depth: int, limit: int
    ) -> np.ndarray:
        """Search `rows`, 4x deeper each round up to `limit`; the rows still short."""
        limit = min(len(self.vectors), limit)
        depth = min(depth, limit)
        while rows.size:
            step = max(1, min(self.config.query_batch, self.config.result_budget // depth))
            for start in range(0, rows.size, step):
                chunk = rows[start : start + step]
                result = search(self.vectors[chunk], depth)
                self.labels[chunk], self.scores[chunk] = _first_valid(
                    *result, self.groups[chunk], self.groups, self.k
                )
            rows = rows[(self.labels[rows] >= 0).sum(axis=1) < self.wanted[rows]]
            if depth >= limit:
                break
            depth = min(limit, 4 * depth)
        return rows


def neighbour_table(
    images: list[dict[str, Any]],
    vectors: np.ndarray,
    plan: SubjectPlan,
    k: int,
    config: SearchConfig,
) -> tuple[pa.Table, dict[str, Any]]:
    """Neighbours of every image within its side of the plan, as a NEIGHBOUR_SCHEMA table."""
    image_ids = np.array([row["image_id"] for row in images], dtype=object)
    subjects = np.array([row["subject_id"] for row in images], dtype=object)
    sides = np.array([plan.side(s) for s in subjects], dtype=object)
    parts, stats = [], {"short_queries": 0, "no_neighbour_queries": 0, "sides": {}}
    for side in (BENCH, TRAIN):
        members = np.flatnonzero(sides == side)
        _, groups = np.unique(subjects[members], return_inverse=True)
        labels, scores, params = search_side(vectors[members], groups, k, config)
        counts = (labels >= 0).sum(axis=1)
        stats["short_queries"] += int((counts < k).sum())
        stats["no_neighbour_queries"] += int((counts == 0).sum())
        stats["sides"][side] = {**params, "queries": int(members.size)}
        query, rank = np.nonzero(labels >= 0)
        neighbour = members[labels[query, rank]]
        parts.append(
            pa.table(
                {
                    "image_id": pa.array(image_ids[members[query]], pa.string()),
                    "subject_id": pa.array(subjects[members[query]], pa.string()),
                    "rank": pa.array(rank + 1, pa.int32()),
                    "neighbour_id": pa.array(image_ids[neighbour], pa.string()),
                    "neighbour_subject_id": pa.array(subjects[neighbour], pa.string()),
                    "score": pa.array(scores[query, rank], pa.float32()),
                },
                schema=NEIGHBOUR_SCHEMA,
            )
        )
    table = pa.concat_tables(parts).sort_by([("image_id", "ascending"), ("rank", "ascending")])
    return table, stats


# ----------------------------------------------------------------------------- the stage


def ensure_neighbours(
    layout: Layout,
    recipe: Recipe,
    modality: str = "xray",
    model: str | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    k: int | None = None,
    root: Path | None = None,
    workers: int = 1,
    search: str | None = None,
) -> Path:
    """The neighbours table for this model, catalogue and plan, made first if missing or stale.

    Runs ingest (which keeps an up-to-date catalogue), then `index_catalogue`.
    `model`, `batch_size`, `k` and `search` override the recipe's [index].
    """
    _check_modality(modality)
    options = IndexOptions.from_recipe(recipe, model, device, batch_size, k, search, workers)
    try:
        from medscout_data.sources import ensure_catalogue
    except ImportError as exc:
        raise IndexStageError(f"the ingest stage is not available ({exc}); index needs a catalogue") from exc
    ensure_catalogue(layout, recipe, modality, root=root, workers=workers)
    return index_catalogue(layout, recipe, modality, options)


def index_catalogue(layout: Layout, recipe: Recipe, modality: str, options: IndexOptions) -> Path:
    """Embed what is new in the catalogue and (re)write the neighbours table if stale; its path."""
    _check_modality(modality)
    images = _catalogue_images(layout, modality)
    plan = ensure_plan(layout.plan(modality), sorted({r["subject_id"] for r in images}), modality, recipe)
    spec = parse_model_spec(options.model).resolved()
    folder = layout.index_dir(modality, spec.text)
    path = folder / NEIGHBOURS
    wanted = {
        "modality": modality,
        "model": spec.text,
        "k": str(options.k),
        "search": options.search,
        "plan_sha256": plan.digest,
        "catalogue_sha256": catalogue_fingerprint(images),
    }
    try:
        resolved = resolve_model(spec)
    except ModelUnavailable:
        if _is_current(path, wanted):
            log.warning(
                "%s: model weights are not here, but its neighbours are current; using them", spec.text
            )
            return path
        raise
    wanted.update(weights=resolved.weights, embedding_dim=str(resolved.dim))
    if _is_current(path, wanted):
        log.info("%s is current for %s", path, spec.text)
        return path
    _make_neighbours(layout, modality, images, plan, resolved, options, wanted, path)
    return path


def _make_neighbours(
    layout: Layout,
    modality: str,
    images: list[dict[str, Any]],
    plan: SubjectPlan,
    model: ResolvedModel,
    options: IndexOptions,
    wanted: dict[str, str],
    path: Path,
) -> None:
    report = RunReport("index")
    report.count("images", len(images))
    store = EmbeddingStore(path.parent / "embeddings", model.identity())
    embed_missing(
        images,
        store,
        lambda: load_embedder(model, options.device),
        layout.cache_dir(modality),
        options,
        report,
    )
    embedded = [row for row in images if store.key(row["image_id"]) == row["row_key"]]
    vectors = store.vectors([row["image_id"] for row in embedded])
    config = SearchConfig(kind=options.search, use_gpu=options.device != "cpu")
    table, stats = neighbour_table(embedded, vectors, plan, options.k, config)
    report.count("neighbour_rows", table.num_rows)
    report.count("short_queries", stats["short_queries"])
    if stats["no_neighbour_queries"]:
        log.warning(
            "%d image(s) have no neighbour: their side of the plan has no other subject",
            stats["no_neighbour_queries"],
        )
    write_table_atomic(table, path, {f"medscout.{key}": value for key, value in wanted.items()})
    info = {**wanted, "recipe_seed": plan.seed, "faiss_gpus": faiss_gpus(), **stats, **report.as_dict()}
    # FAISS builds HNSW graphs with many threads: its neighbours may differ slightly between runs.
    info["deterministic"] = options.search != "hnsw"
    info["options"] = asdict(options)
    write_json_atomic(info, path.parent / "index.json")
    report.write(path.parent)
    log.info(report.summary())


def _catalogue_images(layout: Layout, modality: str) -> list[dict[str, Any]]:
    catalogue = layout.catalogue(modality)
    if not catalogue.is_file():
        raise IndexStageError(
            f"{catalogue}: no catalogue; run `medscout-data ingest --modality {modality}` first"
        )
    images = read_catalogue_images(catalogue)
    if not images:
        raise IndexStageError(f"{catalogue}: the catalogue has no images to index")
    return images


def _check_modality(modality: str) -> None:
    if modality != "xray":
        raise IndexStageError(
            f"index is for X-ray only, got {modality!r}: CT/MRI references are slices of the same volume"
        )


def _is_current(path: Path, wanted: dict[str, str]) -> bool:
    if not path.is_file():
        return False
    metadata = read_file_metadata(path)
    return all(metadata.get(f"medscout.{key}") == value for key, value in wanted.items())


def neighbours_metadata(path: Path) -> dict[str, str]:
    """What made a neighbours table: model, weights, embedding_dim, search, k, plan and catalogue digests."""
    prefix = "medscout."
    return {k[len(prefix) :]: v for k, v in read_file_metadata(path).items() if k.startswith(prefix)}


def load_neighbours(
    path: Path, model: str | None = None, max_rank: int | None = None
) -> dict[str, list[tuple[str, str, float]]]:
    """image_id -> [(neighbour_id, neighbour_subject_id, score), ...], best first.

    With `model`, a table made by another model is an `IndexMismatch`, never used.
    """
    if model is not None:
        made_by = neighbours_metadata(path).get("model")
        asked = parse_model_spec(model).resolved().text
        if made_by != asked:
            raise IndexMismatch(f"{path}: neighbours were made with model {made_by!r}, not {asked!r}")
    table = pq.read_table(path)
    if max_rank is not None:
        import pyarrow.compute as pc

        table = table.filter(pc.less_equal(table["rank"], max_rank))
    out: dict[str, list[tuple[str, str, float]]] = defaultdict(list)
    for image_id, neighbour, subject, score in zip(
        table["image_id"].to_pylist(),
        table["neighbour_id"].to_pylist(),
        table["neighbour_subject_id"].to_pylist(),
        table["score"].to_pylist(),
        strict=True,
    ):
        out[image_id].append((neighbour, subject, score))
    return dict(out)
