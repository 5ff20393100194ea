"""Exact and approximate FAISS search for the index: each row's k most similar rows of other groups.

Pure functions over numpy arrays of unit vectors (inner product = cosine).
`search_side` is what the index stage runs for each side of the subject plan,
with a subject as the group: a neighbour is never of the query's own subject.
FAISS is imported when first used, with an install hint when missing.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from medscout_data.errors import StageError

SEARCH_KINDS = ("exact", "ivf", "hnsw")
FAISS_HINT = "index needs FAISS: pip install faiss-cpu (or faiss-gpu-cu12 on a CUDA 12 machine)"


class FaissMissing(StageError):
    """FAISS is not installed."""


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
        raise FaissMissing(FAISS_HINT) from exc
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
