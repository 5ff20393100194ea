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
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
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
from medscout_data.locking import stage_lock
from medscout_data.recipe import Recipe, load_recipe
from medscout_data.schema import ITEM_SCHEMA
from medscout_data.seeding import rng_for
from medscout_data.shards import ShardWriter, sha256_file, write_json_atomic
from medscout_data.stages.manifest import ManifestError, read_manifest
from medscout_data.stages.outputs import (
    clean_leftovers,
    describe_files,
    foreign_files,
    human_size,
    make_work_dir,
    os_error_path,
    os_error_reason,
    remove_work_dir,
)
from medscout_data.stages.plan import BENCH, TRAIN, SubjectPlan, load_plan
from medscout_data.stages.pool import listed_shards, pool_problems, read_pool_record

log = logging.getLogger(__name__)

SPLIT_FILE_PREFIX = {BENCH: "test", TRAIN: "train"}
MAX_DROPPED_FRACTION = 0.01
DECIDE_COLUMNS = ["id", "variant", "target", "subject_id", "reference_subject_id"]
SIDE_RECORD = ".medscout-split.json"  # in bench/ and train/: the files split wrote there
WORK_PREFIX = ".split-work-"


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
    """The cell's pool shards: exactly those the pool record lists, never a glob of the folder."""
    return listed_shards(layout, modality, task)


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
        with _reading(path):
            table = pq.read_table(path, columns=DECIDE_COLUMNS)
        columns = {name: table.column(name).to_pylist() for name in DECIDE_COLUMNS}
        file_index.extend([number] * table.num_rows)
        row_index.extend(range(table.num_rows))
        ids.extend(columns["id"])
        subjects.extend(columns["subject_id"])
        refs.extend(columns["reference_subject_id"])
        for item, variant, target in zip(columns["id"], columns["variant"], columns["target"], strict=True):
            try:
                keys.append(balance_key(task, variant, target))
            except (ValueError, KeyError, TypeError) as exc:
                raise SplitError(
                    f"{path}: item {item} has a target that is not what build writes ({exc!r}); "
                    "delete the shard and rerun the build that made it"
                ) from None
    return PoolRows(
        files, np.array(file_index, np.int64), np.array(row_index, np.int64), ids, subjects, refs, keys
    )


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Reading a pool shard: a damaged one is a `SplitError` naming it and the fix."""
    try:
        yield
    except (pa.ArrowException, OSError) as exc:
        raise SplitError(
            f"{path}: this pool shard cannot be read ({' '.join(str(exc).split())}); delete it and rerun "
            "the build that made it (it remakes missing shards)"
        ) from None


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
    force: bool = False  # delete files under bench/ and train/ that split did not write
    command: str = "medscout-data split"  # what a concurrent run is told holds the lock


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
