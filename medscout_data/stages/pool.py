"""The pool record (`pool/<modality>/pool.json`): what build planned, so a partial pool is never whole.

`build` writes the record before it makes anything (`complete: false`, every
planned shard with its plan digest, and the command that completes the pool)
and again when it ends (`complete: true`, items made per cell and side, and
any shortfall). `split`, `validate` and `push-bench` call `pool_problems`: a
pool whose build has not finished, or whose shards are missing, changed, or
hold another plan's items, is refused with what is missing and the command to
run. Only the shards the record lists belong to the pool; any other file in
the folder is the user's and is neither read nor removed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medscout_data.layout import Layout
from medscout_data.shards import read_file_metadata, write_json_atomic

RECORD_FORMAT = 1
DIGEST_KEY = "medscout_build_digest"


def write_pool_record(layout: Layout, modality: str, record: dict[str, Any]) -> None:
    write_json_atomic({"format": RECORD_FORMAT, "modality": modality, **record}, layout.pool_record(modality))


def read_pool_record(layout: Layout, modality: str) -> dict[str, Any] | None:
    """The record, or None when there is none or it cannot be read as an object with shards."""
    try:
        record = json.loads(layout.pool_record(modality).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("shards"), dict):
        return None
    return record


def listed_shards(layout: Layout, modality: str, task: str | None = None) -> list[Path]:
    """The pool shards the record lists (of one task, or all), sorted by name; [] without a record."""
    record = read_pool_record(layout, modality) or {"shards": {}}
    folder = layout.pool_dir(modality)
    return [
        folder / name
        for name, info in sorted(record["shards"].items())
        if task is None or (isinstance(info, dict) and info.get("task") == task)
    ]


def pool_problems(layout: Layout, modality: str) -> list[str]:
    """Why the modality's pool is not complete (empty: every planned shard is there, whole)."""
    folder = layout.pool_dir(modality)
    record = read_pool_record(layout, modality)
    if record is None:
        return [
            f"{layout.pool_record(modality)}: no readable pool record, so {folder} cannot be told whole from "
            f"partial; rerun `medscout-data build --modality {modality}` with the same options (it resumes)"
        ]
    rerun = record.get("rerun") or f"medscout-data build --modality {modality}"
    problems = []
    if not record.get("complete"):
        problems.append(
            f"{folder}: the build has not finished (its record says so); run `{rerun}` to complete it"
        )
    for name, info in sorted(record["shards"].items()):
        path = folder / name
        problem = _shard_problem(path, info)
        if problem:
            problems.append(f"{path}: {problem}; run `{rerun}` to remake it")
    return problems


def _shard_problem(path: Path, info: Any) -> str | None:
    if not isinstance(info, dict):
        return "its entry in pool.json is not an object"
    if not path.is_file():
        return "planned but missing"
    try:
        metadata = read_file_metadata(path)
        rows = _rows(path)
    except Exception as exc:  # any failure to read the footer is the finding
        return f"unreadable ({type(exc).__name__}: {exc})"
    if metadata.get(DIGEST_KEY) != info.get("digest"):
        return "holds another plan's items (its digest differs from pool.json)"
    if "rows" in info and rows != info["rows"]:
        return f"{rows} rows, pool.json says {info['rows']}"
    return None


def _rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows
