"""The neighbours table of the index stage: its schema, its rows from search results, and reading it back.

`neighbours.parquet` records what made it (model, weights, embedding dim,
search, k, plan and catalogue digests) in its Parquet metadata;
`load_neighbours` refuses a table made by another model.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medscout_data.shards import read_file_metadata
from medscout_data.stages.embedders import parse_model_spec
from medscout_data.stages.index_inputs import IndexMismatch
from medscout_data.stages.plan import BENCH, TRAIN, SubjectPlan
from medscout_data.stages.search import SearchConfig, search_side

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
