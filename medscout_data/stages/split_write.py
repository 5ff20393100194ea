"""The split's writing: copying the chosen rows into shards, the manifest, and swapping the new split in.

A split is written whole into a work folder beside the output and swapped in
with renames (the previous split moved aside first, put back on any
failure), so readers see the old split or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from medscout_data import TASKS, __version__
from medscout_data.layout import SIDE_RECORD, Layout
from medscout_data.recipe import Recipe
from medscout_data.schema import ITEM_SCHEMA
from medscout_data.shards import ShardWriter, sha256_file
from medscout_data.stages.manifest import ManifestError, read_manifest
from medscout_data.stages.outputs import (
    describe_files,
    foreign_files,
    human_size,
    os_error_path,
    os_error_reason,
)
from medscout_data.stages.plan import BENCH, TRAIN, SubjectPlan
from medscout_data.stages.pool import listed_shards
from medscout_data.stages.split_select import (
    CellCounts,
    PoolRows,
    SplitError,
    SplitOptions,
    _reading,
    balance_options,
)

MAX_DROPPED_FRACTION = 0.01


def pool_fingerprint(record: dict[str, Any]) -> str:
    """Hash of the shards a pool record lists (name, task, plan digest, rows): equal pools, equal hashes.

    Unlike the file's own hash it ignores how the build was invoked (`rerun`), so
    a resumed or repeated build of the same pool keeps its fingerprint.
    """
    shards = {
        name: [info.get("task"), info.get("digest"), info.get("rows")]
        for name, info in sorted(record["shards"].items())
        if isinstance(info, dict)
    }
    return hashlib.sha256(json.dumps(shards, sort_keys=True).encode()).hexdigest()


def _previous_outputs(layout: Layout, options: SplitOptions) -> tuple[list[Path], list[Path]]:
    """(files of the previous split, other files) under bench/ and train/; refuses the latter
    unless --force."""
    ours = _written_by_split(layout)
    present = [p for side in (BENCH, TRAIN) for p in foreign_files(layout.split_dir(side), [])]
    mine = [p for p in present if p in ours]
    foreign = [p for p in present if p not in ours]
    if foreign and not options.force:
        raise SplitError(
            f"{layout.root}: bench/ and train/ hold {describe_files(foreign, layout.root)} that split did "
            "not write; move them elsewhere (split replaces both folders), or rerun with --force to "
            "delete them"
        )
    return mine, foreign


def _written_by_split(layout: Layout) -> set[Path]:
    """What earlier splits wrote: each side's record, and the shards the manifest lists."""
    ours: set[Path] = set()
    for side in (BENCH, TRAIN):
        record = layout.split_dir(side) / SIDE_RECORD
        try:
            files = json.loads(record.read_text(encoding="utf-8"))["files"]
            ours |= {layout.root / name for name in files if isinstance(name, str)}
            ours.add(record)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    with contextlib.suppress(ManifestError):  # unreadable: its shards count as the user's
        ours |= {layout.root / name for name in read_manifest(layout)["shards"]}
    return ours


def _swap_in(layout: Layout, work: Path) -> None:
    """Move the old split into `work/old` and the new one into place; on failure put the old one back.

    The manifest goes first and comes back last, so a run killed half-way leaves
    no manifest, which every reader of the split refuses, never a mixed split.
    """
    trash = work / "old"
    trash.mkdir()
    moves = [(layout.manifest(), trash / "manifest.json")]
    moves += [(layout.split_dir(side), trash / side) for side in (BENCH, TRAIN)]
    moves += [(work / side, layout.split_dir(side)) for side in (BENCH, TRAIN)]
    done: list[tuple[Path, Path]] = []
    try:
        for source, target in moves:
            if source.exists():
                os.rename(source, target)
                done.append((source, target))
        os.replace(work / "manifest.json", layout.manifest())
    except OSError:
        for source, target in reversed(done):
            with contextlib.suppress(OSError):
                os.rename(target, source)
        raise


def _io_failure(layout: Layout, exc: OSError, modalities: list[str], had_split: bool) -> str:
    """One line: what could not be written, why, the state left behind and the fix."""
    if not had_split:
        state = "no split was written"
    elif layout.manifest().exists():
        state = "the previous split is left as it was"
    else:
        state = (
            f"the previous split could not be put back and {layout.manifest().name} is gone, so no stage "
            "will read a partial split"
        )
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        size = sum(p.stat().st_size for m in modalities for p in listed_shards(layout, m) if p.exists())
        fix = (
            f"free space on the device of {layout.root} (a split takes about the pool's size, "
            f"{human_size(size)}) and rerun `medscout-data split`"
        )
    else:
        fix = f"make {layout.root} writable and rerun `medscout-data split`"
    where = os_error_path(exc, layout.root)
    return f"{where}: cannot write the split ({os_error_reason(exc)}); {state}; {fix}"


def _copy_rows(
    rows: PoolRows,
    selected: np.ndarray,
    folder: Path,
    prefix: str,
    recipe: Recipe,
    options: SplitOptions,
    label: str,
) -> None:
    """Copy the selected pool rows, in pool order, into `prefix-NNNNN-of-MMMMM.parquet` shards."""
    if len(selected) == 0:
        return
    per_shard = recipe.pool.shard_max_items
    n_shards = max(1, math.ceil(len(selected) / per_shard))
    names = iter(folder / f"{prefix}-{i:05d}-of-{n_shards:05d}.parquet" for i in range(n_shards))
    writer = ShardWriter(next(names), ITEM_SCHEMA, recipe.pool.row_group_items)
    bar = tqdm(
        total=len(selected), desc=f"split {label}", unit="item", disable=not options.progress, leave=False
    )
    for table in _selected_batches(rows, selected):
        start = 0
        while start < table.num_rows:
            room = per_shard - writer.rows
            if room == 0:
                writer.close()
                writer = ShardWriter(next(names), ITEM_SCHEMA, recipe.pool.row_group_items)
                continue
            piece = table.slice(start, room)
            writer.write_table(piece)
            start += piece.num_rows
            bar.update(piece.num_rows)
    writer.close()
    bar.close()


def _selected_batches(rows: PoolRows, selected: np.ndarray) -> Iterator[pa.Table]:
    """The selected rows, one pool row group at a time, in pool order."""
    wanted: dict[int, set[int]] = defaultdict(set)
    for row in selected.tolist():
        wanted[int(rows.file_index[row])].add(int(rows.row_index[row]))
    for number, path in enumerate(rows.files):
        if number not in wanted:
            continue
        keep = wanted[number]
        with _reading(path):
            source = pq.ParquetFile(path)
        offset = 0
        for group in range(source.num_row_groups):
            with _reading(path):
                table = source.read_row_group(group)
            local = [i - offset for i in range(offset, offset + table.num_rows) if i in keep]
            offset += table.num_rows
            if local:
                yield table.take(pa.array(local, pa.int64())).select(ITEM_SCHEMA.names)


def _check_dropped(cells: dict[str, CellCounts]) -> None:
    pool = sum(c.pool for c in cells.values())
    dropped = sum(c.dropped for c in cells.values())
    if pool and dropped / pool >= MAX_DROPPED_FRACTION:
        raise SplitError(
            f"{dropped} bench-side items beyond the bench quota would be dropped "
            f"({dropped / pool:.1%} of the pool, limit {MAX_DROPPED_FRACTION:.0%}); build the pool with "
            "the recipe's bench_per_cell (it sizes the bench side exactly) or split with a larger "
            "--bench-per-cell"
        )


def _describe_shards(work: Path) -> dict[str, dict[str, Any]]:
    """sha256, rows and bytes of every shard written under `work`, by its name in the split."""
    shards = {}
    for side in (BENCH, TRAIN):
        for path in sorted((work / side).rglob("*.parquet")):
            shards[path.relative_to(work).as_posix()] = {
                "sha256": sha256_file(path),
                "rows": pq.ParquetFile(path).metadata.num_rows,
                "bytes": path.stat().st_size,
            }
    return shards


def _manifest(
    recipe: Recipe,
    plans: dict[str, SubjectPlan],
    records: dict[str, dict[str, Any]],
    cells: dict[str, CellCounts],
    bench_per_cell: int,
    shards: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    totals = Counter()
    for counts in cells.values():
        totals.update(
            {"pool": counts.pool, "train": counts.train, "bench": counts.bench, "dropped": counts.dropped}
        )
    return {
        "created_by": f"medscout-data {__version__}",
        "recipe": {"name": recipe.name, "digest": recipe.digest},
        "seed": recipe.seed,
        "bench_per_cell": bench_per_cell,
        "balance_options": {task: balance_options(task, recipe) for task in TASKS},
        "cells": {name: asdict(counts) for name, counts in cells.items()},
        "totals": dict(totals),
        "subjects": {
            modality: {
                "bench": len(plan.bench),
                "train": len(plan.train),
                "bench_sha256": subject_list_hash(plan.subjects(BENCH)),
                "train_sha256": subject_list_hash(plan.subjects(TRAIN)),
                "plan_sha256": plan.digest,
            }
            for modality, plan in plans.items()
        },
        "pools": {
            modality: {
                "complete": True,
                "shards": len(record["shards"]),
                "fingerprint": pool_fingerprint(record),
            }
            for modality, record in records.items()
        },
        "shards": shards,
    }


def subject_list_hash(values: list[str]) -> str:
    """The manifest's hash of one side's sorted subject list."""
    return hashlib.sha256("\n".join(values).encode()).hexdigest()
