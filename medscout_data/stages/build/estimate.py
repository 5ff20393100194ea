"""`build --dry-run`: know before you run what the recipe asks, what the sources can give, disk and time.

Reads the catalogue (and the X-ray reference index when it exists), plans
round 0 of every cell exactly as a build would, counts how many distinct
items each side of the subject partition can hold, and makes a small seeded
sample of items in this process (nothing is written) to measure, on this
machine, the time and bytes per item and how often a planned attempt fails.
The projection for the whole pool follows from those rates; a cell whose side
cannot be filled is warned about before hours are spent.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medscout_data.cache import ImageCache
from medscout_data.layout import Layout
from medscout_data.recipe import Recipe
from medscout_data.seeding import rng_for
from medscout_data.stages.build.catalog import CellContext, read_catalogue
from medscout_data.stages.build.making import NoAttemptWorked, PixelReader, make_item
from medscout_data.stages.build.planning import BuildError, ItemSpec, Planner, image_capacity, plan_cell
from medscout_data.stages.build.run import BuildOptions, _index_folder, _neighbour_lookup
from medscout_data.stages.build.shortfall import rule_of, shown_value
from medscout_data.stages.plan import BENCH, TRAIN, load_plan, make_plan
from medscout_data.tasks.geometry import TaskRejected

SAMPLE_PER_SIDE = 12


@dataclass
class CellEstimate:
    """One modality x task cell: asked, available, and the measured sample."""

    task: str
    planned: dict[str, int]
    capacity: dict[str, int | None]  # distinct items a side can hold (None: no limit)
    sampled: int = 0
    made: int = 0
    first_attempt_ok: int = 0
    seconds: float = 0.0
    bytes: int = 0
    rejected: Counter = field(default_factory=Counter)  # rejected attempts of the sample, by rule

    @property
    def success_rate(self) -> float:
        return self.made / self.sampled if self.sampled else 0.0

    @property
    def seconds_per_item(self) -> float:
        return self.seconds / self.sampled if self.sampled else 0.0

    @property
    def bytes_per_item(self) -> float:
        return self.bytes / self.made if self.made else 0.0


@dataclass
class Estimate:
    """The forecast of one modality's build."""

    modality: str
    workers: int
    cells: list[CellEstimate] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def total_items(self) -> int:
        return sum(sum(c.planned.values()) for c in self.cells)

    @property
    def disk_bytes(self) -> float:
        return sum(sum(c.planned.values()) * c.bytes_per_item for c in self.cells)

    @property
    def seconds(self) -> float:
        parallel = max(1, min(self.workers, os.cpu_count() or 1))
        return sum(sum(c.planned.values()) * c.seconds_per_item for c in self.cells) / parallel


def estimate_modality(layout: Layout, recipe: Recipe, options: BuildOptions) -> Estimate:
    """Plan every cell and measure a sample, writing nothing."""
    context = _dry_context(layout, recipe, options)
    estimate = Estimate(options.modality, options.workers)
    cache = PixelReader(ImageCache(layout.cache_dir(options.modality)))
    for task in options.tasks:
        planned = min(options.limit or recipe.pool.items_per_cell, recipe.pool.items_per_cell)
        planner = Planner(context, task)
        specs = plan_cell(planner, planned)
        cell = CellEstimate(
            task=task,
            planned={side: sum(s.side == side for s in specs) for side in (BENCH, TRAIN)},
            capacity={side: _capacity(planner, side) for side in (BENCH, TRAIN)},
        )
        try:
            _measure(cell, specs, cache, recipe)
        except OSError as exc:
            raise BuildError(
                f"{exc.filename or layout.cache_dir(options.modality)}: {exc.strerror or exc}: the image "
                f"cache is incomplete; rerun `medscout-data ingest --modality {options.modality}`"
            ) from None
        estimate.cells.append(cell)
        estimate.warnings.extend(_warnings(options.modality, cell, recipe))
    return estimate


def _dry_context(layout: Layout, recipe: Recipe, options: BuildOptions) -> CellContext:
    """The context a build would plan from, read only: no ingest, no index, no plan file written."""
    path = layout.catalogue(options.modality)
    if not path.is_file():
        raise BuildError(
            f"{path}: no catalogue; the dry run reads it: run `medscout-data ingest --modality "
            f"{options.modality}` first"
        )
    images = read_catalogue(path)
    if not images:
        raise BuildError(f"{path}: the catalogue has no usable images; see its errors.parquet")
    subjects = sorted({image.subject_id for image in images})
    plan_path = layout.plan(options.modality)
    if plan_path.is_file():
        plan = load_plan(plan_path)
    else:
        pool = recipe.pool
        plan = make_plan(subjects, options.modality, recipe.seed, pool.bench_fraction, recipe.name)
    neighbours = None
    if options.modality == "xray" and "anomaly" in options.tasks:
        index = _index_folder(layout, recipe, options) / "neighbours.parquet"
        if not index.is_file():
            raise BuildError(
                f"{index}: no reference index; X-ray anomaly items need it: run `medscout-data index "
                "--modality xray` first, or dry-run the other tasks with --task"
            )
        neighbours = _neighbour_lookup(index)
    return CellContext.of(options.modality, recipe, plan, images, neighbours)


def _capacity(planner: Planner, side: str) -> int | None:
    """Distinct items the side's images can hold for this task."""
    context = planner.context
    images = [image for s in context.subjects(side) for image in context.images_by_subject[s]]
    if planner.task == "scale":
        return None
    if planner.task == "jigsaw":
        return len(images) * (image_capacity("jigsaw", context) or 0)
    planner.references(images)
    cells = len(context.recipe.anomaly.cells)
    return sum(cells * len(planner.references_of(image)) for image in images)


def _measure(cell: CellEstimate, specs: list[ItemSpec], cache: PixelReader, recipe: Recipe) -> None:
    """Make a seeded sample of each side's items here and time them."""
    rng = rng_for(recipe.seed, "dry-run", cell.task)
    for side in (BENCH, TRAIN):
        pool = [s for s in specs if s.side == side]
        for index in np.sort(rng.permutation(len(pool))[:SAMPLE_PER_SIDE]).tolist():
            started = time.perf_counter()
            try:
                row, attempt, rejected = make_item(pool[index], cache, recipe)
            except NoAttemptWorked as exc:
                row, attempt, rejected = None, -1, exc.rejected
            except TaskRejected:
                row, attempt, rejected = None, -1, {}
            for reason, count in rejected.items():
                cell.rejected[rule_of(reason)] += count
            cell.seconds += time.perf_counter() - started
            cell.sampled += 1
            if row is not None:
                cell.made += 1
                cell.first_attempt_ok += attempt == 0
                cell.bytes += _row_bytes(row)


def _row_bytes(row: dict[str, Any]) -> int:
    images = sum(len(image["bytes"]) for image in row["images"])
    text = sum(len(str(value).encode()) for key, value in row.items() if key != "images")
    return images + text // 3  # text columns are zstd-compressed in the shards (about 3x)


def _warnings(modality: str, cell: CellEstimate, recipe: Recipe) -> list[str]:
    out = []
    for side in (BENCH, TRAIN):
        asked, room = cell.planned[side], cell.capacity[side]
        if room is not None and room < asked:
            out.append(
                f"{modality}/{cell.task} {side} side: {asked} items asked but its images can hold only "
                f"{room} distinct ones; add subjects or lower pool.items_per_cell"
            )
        elif room is not None and cell.sampled and room * cell.success_rate < asked:
            out.append(
                f"{modality}/{cell.task} {side} side: at the sampled success rate ({cell.success_rate:.0%}) "
                f"about {int(room * cell.success_rate)} of {asked} items can be made; expect a short cell"
            )
    if cell.sampled and cell.made == 0:
        rules = sorted(cell.rejected, key=lambda r: (-cell.rejected[r], r))
        named = ", ".join(f"{rule} (now {shown_value(rule, recipe)})" for rule in rules) or "no rule"
        out.append(
            f"{modality}/{cell.task}: none of {cell.sampled} sampled items could be made; what rejected "
            f"their attempts: {named}; see the recipe before building"
        )
    return out


def format_estimate(estimate: Estimate) -> str:
    """The forecast as a table, then the totals and warnings."""
    lines = [
        f"build {estimate.modality} --dry-run: {estimate.workers} worker(s), {os.cpu_count()} core(s)",
        f"  {'task':<8} {'bench':>7} {'train':>7} {'can hold (bench/train)':>24} "
        f"{'sample ok':>10} {'1st try':>8} {'ms/item':>8} {'KB/item':>8}",
    ]
    for cell in estimate.cells:
        room = "/".join("any" if c is None else f"{c:,}" for c in cell.capacity.values())
        lines.append(
            f"  {cell.task:<8} {cell.planned[BENCH]:>7,} {cell.planned[TRAIN]:>7,} {room:>24} "
            f"{cell.made:>4}/{cell.sampled:<5} {cell.first_attempt_ok:>8} "
            f"{1000 * cell.seconds_per_item:>8.1f} {cell.bytes_per_item / 1024:>8.1f}"
        )
    lines.append(
        f"  total {estimate.total_items:,} items, about {estimate.disk_bytes / 1e9:.2f} GB of pool, about "
        f"{estimate.seconds / 60:.1f} min of making at this machine's measured rate"
    )
    lines.extend(f"  WARNING {warning}" for warning in estimate.warnings)
    if not estimate.warnings:
        lines.append("  every cell can be filled on both sides")
    return "\n".join(lines)
