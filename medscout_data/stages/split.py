"""Split: the pool -> subject-disjoint `train` and strictly balanced `bench` shards.

The subject partition was fixed before building (plan.py); split honours it.
It splits only whole pools: every modality's pool record (pool.json) must say
the build finished and every shard it lists must be there with its plan
digest; only those shards are read (other files in pool/ are the user's).
For each modality x task cell it keeps exactly `bench_per_cell` bench-side
items, balanced inside the cell (scale tier/box, anomaly cells, jigsaw
permutations: counts differ by at most one where the pool allows), and every
train-side item. Bench-side items beyond the quota are dropped and counted; a
short bench side is refused with the cause the build recorded.

Only metadata columns are read to decide; rows are then copied batch by batch
without decoding images, so memory stays flat. Everything is written into a
fresh work folder under a lock (`.lock-split`), then swapped in: the old
manifest goes first and the new one comes last, so a failure (a full disk)
leaves the previous split as it was, and a kill leaves no manifest rather than
a mixed split. `manifest.json` records the seed, recipe, counts per cell, the
subject lists' hashes, the pools it came from and every shard's sha256; each
side folder's `.medscout-split.json` lists the files split wrote, and any
other file there is refused unless `--force`.

Which rows go where is `split_select.py`; writing the shards and the
manifest and swapping them in is `split_write.py`; this module runs a split.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medscout_data import MODALITIES, TASKS
from medscout_data.layout import SIDE_RECORD, Layout
from medscout_data.locking import stage_lock
from medscout_data.recipe import Recipe, load_recipe
from medscout_data.seeding import rng_for
from medscout_data.shards import write_json_atomic
from medscout_data.stages.outputs import (
    clean_leftovers,
    describe_files,
    foreign_files,
    make_work_dir,
    remove_work_dir,
)
from medscout_data.stages.plan import BENCH, TRAIN, SubjectPlan, load_plan
from medscout_data.stages.pool import pool_problems, read_pool_record
from medscout_data.stages.split_select import (  # noqa: F401  (public names, importable from here)
    DECIDE_COLUMNS,
    CellCounts,
    PoolRows,
    SplitError,
    SplitOptions,
    balance_key,
    balance_options,
    choose_balanced,
    pool_files,
    read_cell,
    sides_of,
)
from medscout_data.stages.split_write import (  # noqa: F401  (public names, importable from here)
    MAX_DROPPED_FRACTION,
    _check_dropped,
    _copy_rows,
    _describe_shards,
    _io_failure,
    _manifest,
    _previous_outputs,
    _swap_in,
    pool_fingerprint,
    subject_list_hash,
)

log = logging.getLogger(__name__)

SPLIT_FILE_PREFIX = {BENCH: "test", TRAIN: "train"}
WORK_PREFIX = ".split-work-"


@dataclass(frozen=True)
class SplitOutcome:
    """The manifest written, and what the new split replaced."""

    manifest: dict[str, Any]
    replaced: int = 0  # files of the previous split
    removed_foreign: tuple[str, ...] = ()  # files split did not write, removed under --force


def split_pool(layout: Layout, options: SplitOptions) -> dict[str, Any]:
    """Split every built modality; returns the manifest (also written to `manifest.json`)."""
    return run_split(layout, options).manifest


def run_split(layout: Layout, options: SplitOptions) -> SplitOutcome:
    """Check the pools are whole, split them into a fresh folder and swap it in under a lock."""
    modalities = pool_modalities(layout)
    if not modalities:
        raise SplitError(f"{layout.root / 'pool'}: no pool shards; run `medscout-data build` first")
    with stage_lock(layout.root, "split", options.command):
        records = _complete_pools(layout, modalities)
        plans = {m: _plan_for(layout, m, options) for m in modalities}
        recipe = _recipe_for(plans, options)
        ours, foreign = _previous_outputs(layout, options)
        had_split = layout.manifest().exists()
        work: Path | None = None
        try:
            clean_leftovers(layout.root, WORK_PREFIX)
            work = make_work_dir(layout.root, WORK_PREFIX)
            manifest = _write_split(layout, work, modalities, records, plans, recipe, options)
            _swap_in(layout, work)
        except OSError as exc:
            raise SplitError(_io_failure(layout, exc, modalities, had_split)) from None
        finally:
            if work is not None:
                remove_work_dir(work)
    if foreign:
        log.warning("--force: removed %s that split had not written", describe_files(foreign, layout.root))
    removed = tuple(p.relative_to(layout.root).as_posix() for p in foreign)
    return SplitOutcome(manifest, replaced=len(ours), removed_foreign=removed)


def pool_modalities(layout: Layout) -> list[str]:
    """Modalities with a pool: a pool record, or at least shards a record should list."""
    return [
        m for m in MODALITIES if layout.pool_record(m).exists() or any(layout.pool_dir(m).glob("*.parquet"))
    ]


def _complete_pools(layout: Layout, modalities: list[str]) -> dict[str, dict[str, Any]]:
    """Every modality's pool record; `SplitError` naming what is missing when any pool is not whole."""
    problems = [problem for m in modalities for problem in pool_problems(layout, m)]
    if problems:
        raise SplitError(
            "the pool is not complete, so nothing was split (the previous split, if any, is unchanged):\n  "
            + _first(problems)
        )
    records = {}
    for modality in modalities:
        record = read_pool_record(layout, modality)
        assert record is not None  # pool_problems found one
        records[modality] = record
    return records


def _unlisted_notes(layout: Layout, records: dict[str, dict[str, Any]]) -> list[str]:
    """A note per pool folder holding files its record does not list."""
    notes = []
    for modality, record in records.items():
        folder = layout.pool_dir(modality)
        unlisted = _unlisted_pool_files(layout, modality, record)
        if unlisted:
            notes.append(
                f"{folder}: {describe_files(unlisted, folder)} not in pool.json: not part of the pool, "
                "neither read nor touched"
            )
    return notes


def _unlisted_pool_files(layout: Layout, modality: str, record: dict[str, Any]) -> list[Path]:
    """Files in the pool folder the record does not list (the user's), minus build's own bookkeeping."""
    folder = layout.pool_dir(modality)
    ours = [folder / name for name in record["shards"]] + [layout.pool_record(modality)]
    return [
        p
        for p in foreign_files(folder, ours)
        if p.parent == folder and not p.name.startswith(".lock-") and not p.name.endswith(".tmp")
    ]


def _first(problems: list[str], shown: int = 8) -> str:
    more = f"\n  ... and {len(problems) - shown} more" if len(problems) > shown else ""
    return "\n  ".join(problems[:shown]) + more


def _write_split(
    layout: Layout,
    work: Path,
    modalities: list[str],
    records: dict[str, dict[str, Any]],
    plans: dict[str, SubjectPlan],
    recipe: Recipe,
    options: SplitOptions,
) -> dict[str, Any]:
    """Every cell's bench and train shards, side records and the manifest, all under `work`."""
    bench_per_cell = options.bench_per_cell or recipe.pool.bench_per_cell
    cells: dict[str, CellCounts] = {}
    for modality in modalities:
        for task in TASKS:
            files = pool_files(layout, modality, task)
            if files:
                cell = CellInput(modality, task, files, plans[modality], records[modality])
                cells[f"{modality}/{task}"] = _split_cell(cell, recipe, bench_per_cell, work, options)
    _check_dropped(cells)
    shards = _describe_shards(work)
    for side in (BENCH, TRAIN):
        names = sorted(n for n in shards if n.split("/")[0] == side)
        if names:
            record = {"written_by": "medscout-data split", "files": names}
            write_json_atomic(record, work / side / SIDE_RECORD)
    manifest = _manifest(recipe, plans, records, cells, bench_per_cell, shards)
    manifest["warnings"] = _unlisted_notes(layout, records) + _shortfall_notes(records, cells)
    for note in manifest["warnings"]:
        log.warning("%s", note)
    write_json_atomic(manifest, work / "manifest.json")
    return manifest


def _plan_for(layout: Layout, modality: str, options: SplitOptions) -> SubjectPlan:
    path = layout.plan(modality)
    if not path.exists():
        raise SplitError(
            f"{path}: no subject plan for the {modality} pool; rebuild it with `medscout-data build`"
        )
    try:
        plan = load_plan(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SplitError(
            f"{path}: the {modality} subject plan cannot be read ({exc!r}); it was written by build "
            f"with the pool: restore it, or remove it and {layout.pool_dir(modality)} and rebuild"
        ) from None
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


@dataclass(frozen=True)
class CellInput:
    """One modality x task cell of the pool, with the plan and build record it was made under."""

    modality: str
    task: str
    files: list[Path]
    plan: SubjectPlan
    record: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.modality}/{self.task}"


def _split_cell(
    cell: CellInput, recipe: Recipe, bench_per_cell: int, staging: Path, options: SplitOptions
) -> CellCounts:
    rows = read_cell(cell.files, cell.task)
    sides = sides_of(rows, cell.plan, cell.where)
    bench_rows = np.flatnonzero(sides == BENCH)
    if len(bench_rows) < bench_per_cell:
        raise SplitError(short_bench_message(cell, bench_per_cell, len(bench_rows), recipe, options))
    rng = rng_for(cell.plan.seed, "split", cell.modality, cell.task)
    chosen = choose_balanced(
        rows.balance_keys, bench_rows, bench_per_cell, balance_options(cell.task, recipe), rng
    )
    train_rows = np.flatnonzero(sides == TRAIN)
    for side, selected in ((BENCH, chosen), (TRAIN, train_rows)):
        folder = staging / side / cell.modality / cell.task
        try:
            label = f"{side} {cell.where}"
            _copy_rows(rows, selected, folder, SPLIT_FILE_PREFIX[side], recipe, options, label)
        except OSError as exc:  # name the folder as the user knows it, not the work folder
            target = staging.parent / side / cell.modality / cell.task
            raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from exc
    return CellCounts(
        pool=len(rows.ids),
        train=len(train_rows),
        bench=len(chosen),
        dropped=len(bench_rows) - len(chosen),
        bench_balance=dict(sorted(Counter(rows.balance_keys[i] for i in chosen.tolist()).items())),
    )


def short_bench_message(cell: CellInput, need: int, have: int, recipe: Recipe, options: SplitOptions) -> str:
    """Why a cell's bench side is short, from the build record, and what would fill it."""
    head = f"{cell.where}: the bench needs {need} items but the pool has {have} from bench-side subjects"
    record = cell.record
    rerun = record.get("rerun") or f"medscout-data build --modality {cell.modality}"
    shortfall = _shortfall(record, cell.task, BENCH)
    if shortfall is not None:
        return (
            f"{head}: the build made {shortfall['made']} of the {shortfall['planned']} bench-side items it "
            f"planned ({_reasons_text(shortfall)}); {shortfall.get('advice') or 'see the build report'}"
        )
    planned = (record.get("planned") or {}).get(cell.task)
    full = recipe.pool.items_per_cell
    if isinstance(planned, int) and planned < full:
        how = "with --limit" if "--limit" in rerun else "smaller"
        return (
            f"{head}: the pool was built {how}: {planned} of the recipe's {full} items in this cell "
            f"(`{rerun}`); rebuild the cell in full (without --limit) or, for a quick run, split with "
            f"--bench-per-cell {have}"
        )
    if options.bench_per_cell and options.bench_per_cell > recipe.pool.bench_per_cell:
        return (
            f"{head}: build sized the bench side for the recipe's bench_per_cell "
            f"{recipe.pool.bench_per_cell}, and --bench-per-cell asks for {need}; split without "
            f"--bench-per-cell, or rebuild with a recipe whose bench_per_cell is {need}"
        )
    return (
        f"{head}, and the build record names no cause; see the rejected items in "
        f"reports/build/{cell.modality}/errors.parquet and rerun `{rerun}`"
    )


def _shortfall(record: dict[str, Any], task: str, side: str) -> dict[str, Any] | None:
    """The build's shortfall entry of one task and side, when it is well formed."""
    entry = ((record.get("shortfall") or {}).get(task) or {}).get(side)
    if not isinstance(entry, dict):
        return None
    return entry if all(isinstance(entry.get(k), int) for k in ("made", "planned")) else None


def _reasons_text(shortfall: dict[str, Any]) -> str:
    reasons = shortfall.get("reasons") or {}
    if not isinstance(reasons, dict) or not reasons:
        return "no reason recorded"
    ranked = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]) if isinstance(kv[1], int) else (0, kv[0]))
    return ", ".join(f"{reason}: {count}" for reason, count in ranked)


def _shortfall_notes(records: dict[str, dict[str, Any]], cells: dict[str, CellCounts]) -> list[str]:
    """Cells the build could not fill on a side that still split (the train side, mostly)."""
    notes = []
    for modality, record in records.items():
        for task in TASKS:
            for side in (BENCH, TRAIN):
                entry = _shortfall(record, task, side)
                if entry is not None and f"{modality}/{task}" in cells:
                    notes.append(
                        f"{modality}/{task} {side} side: the build made {entry['made']} of the "
                        f"{entry['planned']} items it planned ({_reasons_text(entry)})"
                    )
                for short in _balance_short(record, task, side):
                    if f"{modality}/{task}" in cells:
                        notes.append(
                            f"{modality}/{task} {side} side cannot be balanced: the build made "
                            f"{short.get('choice')} {short.get('made')} times, an even share is "
                            f"{short.get('needed')} ({_reasons_text(short)}); {short.get('advice')}"
                        )
    return notes


def _balance_short(record: dict[str, Any], task: str, side: str) -> list[dict[str, Any]]:
    """The build's balance shortfalls of one task and side (build/shortfall.py), when well formed."""
    entries = ((record.get("balance_short") or {}).get(task) or {}).get(side)
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []
