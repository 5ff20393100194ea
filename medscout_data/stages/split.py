"""Split: the pool -> subject-disjoint `train` and strictly balanced `bench` shards.

The subject partition was fixed before building (plan.py); split honours it.
For each modality x task cell it keeps exactly `bench_per_cell` bench-side
items, balanced inside the cell (scale tier/box, anomaly cells, jigsaw
permutations: counts differ by at most one where the pool allows), and every
train-side item. Bench-side items beyond the quota are dropped and counted.

Only metadata columns are read to decide; rows are then copied batch by batch
without decoding images, so memory stays flat. Outputs are written into a
temporary folder and swapped in, then `manifest.json` records the seed,
recipe, counts per cell, the subject lists' hashes and every shard's sha256.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from medscout_data import MODALITIES, TASKS, __version__
from medscout_data.errors import StageError
from medscout_data.layout import Layout
from medscout_data.recipe import Recipe, load_recipe
from medscout_data.schema import ITEM_SCHEMA
from medscout_data.seeding import rng_for
from medscout_data.shards import ShardWriter, sha256_file, write_json_atomic
from medscout_data.stages.plan import BENCH, TRAIN, SubjectPlan, load_plan

log = logging.getLogger(__name__)

SPLIT_FILE_PREFIX = {BENCH: "test", TRAIN: "train"}
MAX_DROPPED_FRACTION = 0.01
DECIDE_COLUMNS = ["id", "variant", "target", "subject_id", "reference_subject_id"]


class SplitError(StageError):
    """The pool cannot be split as asked; the message says why and what to do."""


@dataclass(frozen=True)
class PoolRows:
    """The metadata of one cell's pool rows, in pool order, with where each row lives."""

    files: list[Path]
    file_index: np.ndarray  # per row: index into `files`
    row_index: np.ndarray  # per row: row number inside its file
    ids: list[str]
    subjects: list[str]
    reference_subjects: list[str]
    balance_keys: list[str]


@dataclass
class CellCounts:
    """What happened to one modality x task cell."""

    pool: int = 0
    train: int = 0
    bench: int = 0
    dropped: int = 0
    bench_balance: dict[str, int] = field(default_factory=dict)


def pool_files(layout: Layout, modality: str, task: str) -> list[Path]:
    return sorted(layout.pool_dir(modality).glob(f"{task}-*.parquet"))


def balance_key(task: str, variant: str, target: str) -> str:
    """What a bench cell is balanced over: scale variant, jigsaw permutation, anomaly cell."""
    if task == "scale":
        return variant
    truth = json.loads(target)
    if task == "jigsaw":
        return " ".join(str(k) for k in truth["permutation"])
    return str(truth["cell"])


def balance_options(task: str, recipe: Recipe) -> list[str]:
    """Every value a cell's balance key can take."""
    from medscout_data.tasks.geometry import non_identity_permutations

    if task == "scale":
        return ["tier", "box"]
    if task == "jigsaw":
        return [" ".join(map(str, p)) for p in non_identity_permutations(recipe.jigsaw.grid**2)]
    return [str(c) for c in recipe.anomaly.cells]


def read_cell(files: list[Path], task: str) -> PoolRows:
    """Metadata columns of a cell's pool shards (images are never read)."""
    file_index, row_index, ids, subjects, refs, keys = [], [], [], [], [], []
    for number, path in enumerate(files):
        table = pq.read_table(path, columns=DECIDE_COLUMNS)
        columns = {name: table.column(name).to_pylist() for name in DECIDE_COLUMNS}
        file_index.extend([number] * table.num_rows)
        row_index.extend(range(table.num_rows))
        ids.extend(columns["id"])
        subjects.extend(columns["subject_id"])
        refs.extend(columns["reference_subject_id"])
        keys.extend(
            balance_key(task, v, t) for v, t in zip(columns["variant"], columns["target"], strict=True)
        )
    return PoolRows(
        files, np.array(file_index, np.int64), np.array(row_index, np.int64), ids, subjects, refs, keys
    )


def sides_of(rows: PoolRows, plan: SubjectPlan, where: str) -> np.ndarray:
    """Side of every row; refuses rows whose anomaly reference crosses the partition."""
    sides = np.array([plan.side(s) for s in rows.subjects])
    for number, reference in enumerate(rows.reference_subjects):
        if reference and plan.side(reference) != sides[number]:
            raise SplitError(
                f"{where}: item {rows.ids[number]} has a reference from subject {reference} on the other "
                "side of the subject partition; rebuild the pool"
            )
    return sides


def choose_balanced(
    keys: list[str], candidates: np.ndarray, count: int, options: list[str], rng
) -> np.ndarray:
    """`count` of the `candidates` (row numbers), as even as possible over `options`.

    Each option gets an equal share; options short of rows give their
    remainder to the others (water-filling). Within an option, rows are
    drawn by a seeded shuffle. Returned sorted.
    """
    groups: dict[str, list[int]] = {option: [] for option in options}
    for row in candidates.tolist():
        groups.setdefault(keys[row], []).append(row)
    quota = _water_fill({k: len(v) for k, v in groups.items()}, count, rng)
    chosen: list[int] = []
    for option, rows in groups.items():
        order = rng.permutation(len(rows))[: quota[option]]
        chosen.extend(rows[i] for i in order)
    return np.array(sorted(chosen), np.int64)


def _water_fill(available: dict[str, int], count: int, rng) -> dict[str, int]:
    """Per-option counts summing to `count`, none above its availability, as even as possible."""
    quota = {option: 0 for option in available}
    open_options = [o for o in available if available[o] > 0]
    remaining = count
    while remaining > 0 and open_options:
        share, extra = divmod(remaining, len(open_options))
        lucky = {open_options[i] for i in rng.permutation(len(open_options))[:extra]}
        for option in list(open_options):
            give = min(share + (option in lucky), available[option] - quota[option])
            quota[option] += give
            remaining -= give
        open_options = [o for o in open_options if quota[o] < available[o]]
    return quota


@dataclass(frozen=True)
class SplitOptions:
    """How to split."""

    seed: int | None = None
    bench_per_cell: int | None = None
    recipe: str | None = None
    progress: bool = True


def split_pool(layout: Layout, options: SplitOptions) -> dict[str, Any]:
    """Split every built modality; returns the manifest (also written to `manifest.json`)."""
    modalities = [m for m in MODALITIES if any(pool_files(layout, m, t) for t in TASKS)]
    if not modalities:
        raise SplitError(f"{layout.root}/pool: no pool shards; run `medscout-data build` first")
    plans = {m: _plan_for(layout, m, options) for m in modalities}
    recipe = _recipe_for(plans, options)
    bench_per_cell = options.bench_per_cell or recipe.pool.bench_per_cell
    staging = layout.root / ".split-tmp"
    shutil.rmtree(staging, ignore_errors=True)
    cells: dict[str, CellCounts] = {}
    for modality in modalities:
        for task in TASKS:
            files = pool_files(layout, modality, task)
            if files:
                cells[f"{modality}/{task}"] = _split_cell(
                    files, modality, task, plans[modality], recipe, bench_per_cell, staging, options
                )
    _check_dropped(cells)
    for side in (BENCH, TRAIN):
        target = layout.split_dir(side)
        shutil.rmtree(target, ignore_errors=True)
        if (staging / side).exists():
            (staging / side).rename(target)
    shutil.rmtree(staging, ignore_errors=True)
    manifest = _manifest(layout, recipe, plans, cells, bench_per_cell)
    write_json_atomic(manifest, layout.manifest())
    return manifest


def _plan_for(layout: Layout, modality: str, options: SplitOptions) -> SubjectPlan:
    path = layout.plan(modality)
    if not path.exists():
        raise SplitError(
            f"{path}: no subject plan for the {modality} pool; rebuild it with `medscout-data build`"
        )
    plan = load_plan(path)
    if options.seed is not None and options.seed != plan.seed:
        raise SplitError(
            f"--seed {options.seed} contradicts the {modality} pool, built under the subject plan of seed "
            f"{plan.seed} ({path}); split with --seed {plan.seed}, or rebuild the pool with "
            f"`medscout-data build --seed {options.seed}` after removing {path} "
            f"and {layout.pool_dir(modality)}"
        )
    return plan


def _recipe_for(plans: dict[str, SubjectPlan], options: SplitOptions) -> Recipe:
    """The recipe the pools were built with (stored in their plans), or --recipe."""
    seeds = {plan.seed for plan in plans.values()}
    if len(seeds) > 1:
        raise SplitError(
            f"the modalities' pools were built with different seeds {sorted(seeds)}; rebuild one"
        )
    if options.recipe is not None:
        return load_recipe(options.recipe).with_seed(seeds.pop())
    recipes = {json.dumps(plan.settings, sort_keys=True) for plan in plans.values()}
    if len(recipes) > 1:
        names = sorted({plan.recipe for plan in plans.values()})
        raise SplitError(f"the pools were built with different recipes ({', '.join(names)}); pass --recipe")
    return next(iter(plans.values())).recipe_settings()


def _split_cell(
    files: list[Path],
    modality: str,
    task: str,
    plan: SubjectPlan,
    recipe: Recipe,
    bench_per_cell: int,
    staging: Path,
    options: SplitOptions,
) -> CellCounts:
    where = f"{modality}/{task}"
    rows = read_cell(files, task)
    sides = sides_of(rows, plan, where)
    bench_rows = np.flatnonzero(sides == BENCH)
    if len(bench_rows) < bench_per_cell:
        raise SplitError(
            f"{where}: the bench needs {bench_per_cell} items but the pool has {len(bench_rows)} from "
            f"bench-side subjects; build more items (drop --limit) or pass a smaller --bench-per-cell"
        )
    rng = rng_for(plan.seed, "split", modality, task)
    chosen = choose_balanced(
        rows.balance_keys, bench_rows, bench_per_cell, balance_options(task, recipe), rng
    )
    train_rows = np.flatnonzero(sides == TRAIN)
    for side, selected in ((BENCH, chosen), (TRAIN, train_rows)):
        folder = staging / side / modality / task
        _copy_rows(rows, selected, folder, SPLIT_FILE_PREFIX[side], recipe, options, f"{side} {where}")
    return CellCounts(
        pool=len(rows.ids),
        train=len(train_rows),
        bench=len(chosen),
        dropped=len(bench_rows) - len(chosen),
        bench_balance=dict(sorted(Counter(rows.balance_keys[i] for i in chosen.tolist()).items())),
    )


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
        source = pq.ParquetFile(path)
        offset = 0
        for group in range(source.num_row_groups):
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


def _manifest(
    layout: Layout,
    recipe: Recipe,
    plans: dict[str, SubjectPlan],
    cells: dict[str, CellCounts],
    bench_per_cell: int,
) -> dict[str, Any]:
    shards = {}
    for side in (BENCH, TRAIN):
        for path in sorted(layout.split_dir(side).rglob("*.parquet")):
            shards[path.relative_to(layout.root).as_posix()] = {
                "sha256": sha256_file(path),
                "rows": pq.ParquetFile(path).metadata.num_rows,
                "bytes": path.stat().st_size,
            }
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
                "bench_sha256": _list_hash(plan.subjects(BENCH)),
                "train_sha256": _list_hash(plan.subjects(TRAIN)),
                "plan_sha256": plan.digest,
            }
            for modality, plan in plans.items()
        },
        "shards": shards,
    }


def _list_hash(values: list[str]) -> str:
    return hashlib.sha256("\n".join(values).encode()).hexdigest()
