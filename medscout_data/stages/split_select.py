"""The split's planning: what split reads of a pool cell, and which rows go to the bench or to train.

Rows go to the side of their subject (and reference subject) in the seeded
subject plan; the bench side keeps a balanced choice per answer option
(water-filling, seeded), the train side keeps the rest. Nothing here writes.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medscout_data.errors import StageError
from medscout_data.layout import Layout
from medscout_data.recipe import Recipe
from medscout_data.stages.plan import SubjectPlan
from medscout_data.stages.pool import listed_shards

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
