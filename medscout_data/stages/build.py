"""Build: the catalogue's images -> scale / jigsaw / anomaly items in Parquet shards.

Two steps, kept apart so the result cannot depend on the worker count:

1. Plan (main process, deterministic): for each task, split the cell's item
   count between the bench and train sides of the subject partition, give
   every subject of a side an even quota, pick each subject's images spread
   along its volume(s), and assign the balanced per-item choices (scale
   variant, jigsaw permutation, anomaly cell) by a seeded shuffle. Each item
   gets an `ItemSpec` with its own seed, derived from (recipe seed, item key).
2. Make (any worker): each shard of `pool.shard_max_items` specs is built by
   one worker, row group by row group, written to a temporary name and
   renamed. A shard whose file carries the digest of its specs is done; a
   rerun after a kill redoes only the rest.

Anomaly references never cross the subject partition: CT/MRI take a slice of
the same volume, X-ray the FAISS neighbours (same side by construction, and
checked again here).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import time
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from tqdm import tqdm

from medscout_data import TASKS, __version__
from medscout_data.cache import ImageCache
from medscout_data.errors import StageError
from medscout_data.layout import Layout
from medscout_data.recipe import Recipe
from medscout_data.report import RunReport
from medscout_data.schema import ITEM_SCHEMA
from medscout_data.seeding import derive_seed, rng_for
from medscout_data.shards import ShardWriter, read_file_metadata
from medscout_data.stages.plan import BENCH, TRAIN, SubjectPlan, ensure_plan
from medscout_data.stages.pool import DIGEST_KEY, write_pool_record
from medscout_data.tasks.geometry import TaskRejected, non_identity_permutations
from medscout_data.tasks.items import (
    ItemContent,
    ItemKey,
    anomaly_difference,
    anomaly_item,
    jigsaw_item,
    scale_item,
    to_row,
)

log = logging.getLogger(__name__)

FALLBACK_IMAGES = 7


class BuildError(StageError):
    """A build that cannot start; the message says what to do."""


@dataclass(frozen=True, slots=True)
class ImageRef:
    """Where one catalogued image lives and where it came from."""

    image_id: str
    subject_id: str
    source_id: str
    source_kind: str
    path: str
    slice_index: int
    z_mm: float
    pixel_spacing_mm: float
    window: str
    view: str
    official_split: str
    cache_file: str
    mask_file: str
    cache_index: int
    height: int
    width: int

    def pixels(self, cache: ImageCache) -> np.ndarray:
        """The 8-bit image from the cache."""
        return cache.read(self.cache_file, self.cache_index, self.height, self.width)

    def body(self, cache: ImageCache) -> np.ndarray:
        """The body mask from the cache."""
        return cache.read(self.mask_file, self.cache_index, self.height, self.width).astype(bool)

    def provenance(self) -> dict[str, Any]:
        """The source description stored in an item's `source` column."""
        info: dict[str, Any] = {"dataset": self.source_kind, "path": self.path, "image_id": self.image_id}
        if self.slice_index >= 0:
            info.update(plane="axial", slice=self.slice_index, z_mm=round(self.z_mm, 3), window=self.window)
        else:
            info.update(view=self.view)
        if not math.isnan(self.pixel_spacing_mm):
            info["pixel_spacing_mm"] = round(self.pixel_spacing_mm, 4)
        if self.official_split:
            info["official_split"] = self.official_split
        return info


@dataclass(frozen=True, slots=True)
class Reference:
    """A candidate anomaly reference with why it was chosen."""

    image: ImageRef
    rank: int = 0  # X-ray: neighbour rank (1 = top-1)
    score: float = float("nan")  # X-ray: cosine similarity


@dataclass(frozen=True, slots=True)
class ItemSpec:
    """Everything a worker needs to make one item, decided in the plan."""

    id: str
    modality: str
    task: str
    variant: str
    side: str
    seed: int
    candidates: tuple[ImageRef, ...]
    choice: tuple[int, ...] = ()  # jigsaw permutation, or (anomaly cell,)
    references: tuple[tuple[Reference, ...], ...] = ()  # per candidate

    def digest_text(self) -> str:
        refs = [[r.image.image_id for r in refs] for refs in self.references]
        return json.dumps(
            [
                self.id,
                self.variant,
                self.side,
                self.seed,
                [c.image_id for c in self.candidates],
                self.choice,
                refs,
            ]
        )


# ------------------------------------------------------------------ planning


def read_catalogue(path: Path) -> list[ImageRef]:
    """Catalogue rows as `ImageRef`s, in a stable order."""
    columns = [f.name for f in fields(ImageRef)]  # the catalogue columns an ImageRef keeps
    frame = pl.read_parquet(path, columns=columns).sort(["subject_id", "source_id", "z_mm", "image_id"])
    return [ImageRef(**row) for row in frame.iter_rows(named=True)]


def quotas(subjects: Sequence[str], total: int, rng: np.random.Generator) -> dict[str, int]:
    """Split `total` items as evenly as possible over `subjects`; the remainder goes to a seeded few."""
    base, extra = divmod(total, len(subjects))
    lucky = set(rng.permutation(len(subjects))[:extra].tolist())
    return {s: base + (i in lucky) for i, s in enumerate(subjects)}


def spread(count: int, n: int, rng: np.random.Generator) -> list[int]:
    """`count` indices into range(n), one drawn in each of `count` equal strata.

    Spreads a subject's items along its volume(s); with more items than
    images, every image is used about equally often.
    """
    edges = np.floor(np.linspace(0, n, count + 1)).astype(int)
    picks = []
    for lo, hi in itertools.pairwise(edges.tolist()):
        picks.append(int(rng.integers(lo, hi)) if hi > lo else min(lo, n - 1))
    return picks


def balanced(options: Sequence[Any], count: int, rng: np.random.Generator) -> list[Any]:
    """`count` draws from `options`, each as often as possible (counts differ by at most 1), shuffled.

    Every item's marginal is uniform over `options`, and a cell is balanced.
    """
    order = [options[i] for i in rng.permutation(len(options))]
    repeated = (order * (count // len(order) + 1))[:count]
    return [repeated[i] for i in rng.permutation(count)]


def side_counts(total: int, recipe: Recipe) -> dict[str, int]:
    """Items per side of one cell: the bench gets its exact share."""
    pool = recipe.pool
    if total >= pool.items_per_cell:
        bench = pool.bench_per_cell
    else:
        bench = max(1, round(total * pool.bench_fraction))
    return {BENCH: bench, TRAIN: total - bench}


NeighbourLookup = Callable[[Iterable[str]], dict[str, list[tuple[str, float]]]]


@dataclass(frozen=True)
class CellContext:
    """What planning one modality's cells needs to know."""

    modality: str
    recipe: Recipe
    plan: SubjectPlan
    images_by_subject: dict[str, list[ImageRef]]
    images_by_id: dict[str, ImageRef] = field(default_factory=dict)
    neighbours: NeighbourLookup | None = None  # X-ray: image ids -> neighbours, best first
    slices: dict[tuple[str, str], tuple[list[float], list[ImageRef]]] = field(default_factory=dict)

    @classmethod
    def of(
        cls, modality: str, recipe: Recipe, plan: SubjectPlan, images: list[ImageRef], neighbours=None
    ) -> CellContext:
        """Index the catalogue's images by subject, by id and, per volume and window, by z."""
        by_subject: dict[str, list[ImageRef]] = defaultdict(list)
        by_volume: dict[tuple[str, str], list[ImageRef]] = defaultdict(list)
        for image in images:
            by_subject[image.subject_id].append(image)
            if image.slice_index >= 0:
                by_volume[image.source_id, image.window].append(image)
        slices = {}
        for key, refs in by_volume.items():
            refs.sort(key=lambda r: (r.z_mm, r.image_id))
            slices[key] = ([r.z_mm for r in refs], refs)
        return cls(
            modality=modality,
            recipe=recipe,
            plan=plan,
            images_by_subject=dict(by_subject),
            images_by_id={image.image_id: image for image in images},
            neighbours=neighbours,
            slices=slices,
        )


def plan_cell(context: CellContext, task: str, total: int) -> list[ItemSpec]:
    """Every item of one modality x task cell, bench side first."""
    specs: list[ItemSpec] = []
    counts = side_counts(total, context.recipe)
    for side in (BENCH, TRAIN):
        subjects = [s for s in context.plan.subjects(side) if s in context.images_by_subject]
        if counts[side] and not subjects:
            raise BuildError(f"{context.modality}: no usable images for any {side}-side subject")
        specs.extend(_plan_side(context, task, side, subjects, counts[side], start=len(specs)))
    return specs


def _plan_side(
    context: CellContext, task: str, side: str, subjects: list[str], count: int, start: int
) -> list[ItemSpec]:
    recipe, modality = context.recipe, context.modality
    rng = rng_for(recipe.seed, "plan", modality, task, side)
    picks: list[tuple[str, int]] = []
    for subject, quota in quotas(subjects, count, rng).items():
        picks.extend(
            (subject, index) for index in spread(quota, len(context.images_by_subject[subject]), rng)
        )
    choices = _choices(task, recipe, count, rng)
    candidates = []
    for subject, index in picks:
        images = context.images_by_subject[subject]
        fallbacks = [images[i] for i in rng.permutation(len(images)) if i != index][:FALLBACK_IMAGES]
        candidates.append((images[index], *fallbacks))
    references = _references(context, task, side, candidates, rng)
    specs = []
    for offset, ((variant, choice), images, refs) in enumerate(
        zip(choices, candidates, references, strict=True)
    ):
        number = start + offset
        specs.append(
            ItemSpec(
                id=f"{modality}-{task}-{number:06d}",
                modality=modality,
                task=task,
                variant=variant,
                side=side,
                seed=derive_seed(recipe.seed, "item", modality, task, number),
                candidates=images,
                choice=choice,
                references=refs,
            )
        )
    return specs


def _choices(task: str, recipe: Recipe, count: int, rng: np.random.Generator) -> list[tuple[str, tuple]]:
    """Balanced per-item choices: scale variant, jigsaw permutation or anomaly cell."""
    if task == "scale":
        return [(v, ()) for v in balanced(["tier", "box"], count, rng)]
    if task == "jigsaw":
        perms = non_identity_permutations(recipe.jigsaw.grid**2)
        return [("", p) for p in balanced(perms, count, rng)]
    return [("", (c,)) for c in balanced(list(recipe.anomaly.cells), count, rng)]


def _references(
    context: CellContext,
    task: str,
    side: str,
    candidates: list[tuple[ImageRef, ...]],
    rng: np.random.Generator,
) -> list[tuple[tuple[Reference, ...], ...]]:
    """Per item, per candidate image: its anomaly references, in the order they are tried."""
    if task != "anomaly":
        return [()] * len(candidates)
    if context.modality == "xray":
        return _neighbour_references(context, side, candidates)
    return [tuple(_nearby_slices(context, c, rng) for c in item) for item in candidates]


def _nearby_slices(
    context: CellContext, candidate: ImageRef, rng: np.random.Generator
) -> tuple[Reference, ...]:
    """Slices of the candidate's volume and window within the recipe's distance, in seeded order."""
    low, high = context.recipe.anomaly.ref_distance_mm
    zs, refs = context.slices[candidate.source_id, candidate.window]
    window = refs[bisect_left(zs, candidate.z_mm - high) : bisect_right(zs, candidate.z_mm + high)]
    near = [r for r in window if abs(r.z_mm - candidate.z_mm) >= low]
    return tuple(
        Reference(near[i]) for i in rng.permutation(len(near))[: context.recipe.anomaly.max_references]
    )


def _neighbour_references(
    context: CellContext, side: str, candidates: list[tuple[ImageRef, ...]]
) -> list[tuple[tuple[Reference, ...], ...]]:
    """X-ray: the index's neighbours of each candidate (looked up once for the whole side)."""
    if context.neighbours is None:
        raise BuildError("X-ray anomaly items need the reference index; none was loaded")
    wanted = {image.image_id for item in candidates for image in item}
    table = context.neighbours(wanted)
    limit = context.recipe.anomaly.max_references
    return [
        tuple(tuple(_neighbour_refs(context, table, side, image))[:limit] for image in item)
        for item in candidates
    ]


def _neighbour_refs(
    context: CellContext, table: dict[str, list[tuple[str, float]]], side: str, candidate: ImageRef
) -> Iterable[Reference]:
    for rank, (neighbour_id, score) in enumerate(table.get(candidate.image_id, []), start=1):
        image = context.images_by_id.get(neighbour_id)
        if image is None or image.subject_id == candidate.subject_id:
            continue
        if context.plan.side(image.subject_id) != side:
            raise BuildError(
                f"neighbour {neighbour_id} of {candidate.image_id} is across the subject partition; "
                "the reference index is stale: rerun `medscout-data index`"
            )
        yield Reference(image, rank=rank, score=score)


# ------------------------------------------------------------------ making


@dataclass(frozen=True)
class ShardJob:
    """One shard to write: its specs and where."""

    path: Path
    digest: str
    specs: tuple[ItemSpec, ...]


@dataclass
class ShardResult:
    """What a worker made of one shard."""

    path: str
    items: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (item id, reason)
    fallbacks: int = 0


def make_item(spec: ItemSpec, cache: ImageCache, recipe: Recipe) -> dict[str, Any]:
    """The item's row, from its first usable candidate image; `TaskRejected` if none is."""
    rng = np.random.default_rng(spec.seed)
    reasons = []
    for position, candidate in enumerate(spec.candidates):
        try:
            content, reference = _content(spec, position, candidate, cache, rng, recipe)
        except TaskRejected as exc:
            reasons.append(f"{candidate.image_id}: {exc}")
            continue
        key = ItemKey(
            id=spec.id,
            modality=spec.modality,
            task=spec.task,
            variant=spec.variant,
            subject_id=candidate.subject_id,
            source_id=candidate.source_id,
            reference_subject_id=reference.image.subject_id if reference else "",
            seed=spec.seed,
        )
        source = candidate.provenance() | {"candidate": position}
        if reference is not None:
            source["reference"] = _reference_provenance(candidate, reference)
        return to_row(content, key, source, recipe.png)
    raise TaskRejected("; ".join(reasons))


def _content(
    spec: ItemSpec,
    position: int,
    candidate: ImageRef,
    cache: ImageCache,
    rng: np.random.Generator,
    recipe: Recipe,
) -> tuple[ItemContent, Reference | None]:
    image = candidate.pixels(cache)
    if spec.task == "scale":
        mask = candidate.body(cache)
        return scale_item(image, mask, rng, recipe, spec.modality, spec.variant), None
    if spec.task == "jigsaw":
        return jigsaw_item(image, spec.choice, recipe, spec.modality), None
    cell = spec.choice[0]
    for reference in spec.references[position]:
        ref_image = reference.image.pixels(cache)
        if (
            anomaly_difference(image, ref_image, cell, recipe.anomaly.grid)
            >= recipe.anomaly.min_cell_difference
        ):
            return anomaly_item(image, ref_image, cell, recipe, spec.modality), reference
    raise TaskRejected(
        f"none of {len(spec.references[position])} references differs visibly in cell {cell} "
        f"(min_cell_difference {recipe.anomaly.min_cell_difference})"
    )


def _reference_provenance(candidate: ImageRef, reference: Reference) -> dict[str, Any]:
    info = reference.image.provenance() | {"subject_id": reference.image.subject_id}
    if reference.image.slice_index >= 0:
        info["distance_mm"] = round(abs(reference.image.z_mm - candidate.z_mm), 3)
    if reference.rank:
        info.update(rank=reference.rank, score=round(reference.score, 6))
    return info


def write_shard(job: ShardJob, cache_dir: Path, recipe: Recipe) -> ShardResult:
    """Make and write one shard (runs in a worker)."""
    cache = ImageCache(cache_dir)
    result = ShardResult(str(job.path))
    metadata = {DIGEST_KEY: job.digest, "medscout_recipe": recipe.name, "medscout_version": __version__}
    with ShardWriter(job.path, ITEM_SCHEMA, recipe.pool.row_group_items, metadata) as writer:
        for spec in job.specs:
            try:
                row = make_item(spec, cache, recipe)
            except TaskRejected as exc:
                result.rejected.append((spec.id, str(exc)))
                continue
            result.fallbacks += json.loads(row["source"])["candidate"] > 0
            writer.write(row)
            result.items += 1
    return result


def shard_jobs(specs: list[ItemSpec], folder: Path, task: str, recipe: Recipe) -> list[ShardJob]:
    """Cut one cell's specs into shards named `<task>-NNNNN.parquet`, each with its digest."""
    size = recipe.pool.shard_max_items
    jobs = []
    for number, start in enumerate(range(0, len(specs), size)):
        chunk = tuple(specs[start : start + size])
        digest = hashlib.sha256()
        digest.update(f"{__version__}|{recipe.digest}".encode())
        for spec in chunk:
            digest.update(spec.digest_text().encode())
        jobs.append(ShardJob(folder / f"{task}-{number:05d}.parquet", digest.hexdigest(), chunk))
    return jobs


def is_done(job: ShardJob) -> bool:
    """A shard is done when its file exists and carries this job's digest."""
    if not job.path.exists():
        return False
    try:
        return read_file_metadata(job.path).get(DIGEST_KEY) == job.digest
    except Exception:  # unreadable leftovers are rebuilt
        return False


# ------------------------------------------------------------------ driver


@dataclass(frozen=True)
class BuildOptions:
    """What to build and how."""

    modality: str
    root: Path | None = None
    tasks: tuple[str, ...] = TASKS
    workers: int = 1
    limit: int | None = None
    model: str | None = None
    device: str = "auto"
    progress: bool = True
    command: str = ""  # the command line that resumes this build, recorded in pool.json


def build_modality(layout: Layout, recipe: Recipe, options: BuildOptions) -> RunReport:
    """Plan and make every requested cell of one modality; returns the run's report."""
    report = RunReport(stage=f"build {options.modality}")
    with _worker_pool(options.workers) as pool:  # workers start up while the main process plans
        context = _context(layout, recipe, options)
        jobs: list[ShardJob] = []
        planned: dict[str, int] = {}
        for task in options.tasks:
            total = min(options.limit or recipe.pool.items_per_cell, recipe.pool.items_per_cell)
            specs = plan_cell(context, task, total)
            planned[task] = len(specs)
            task_jobs = shard_jobs(specs, layout.pool_dir(options.modality), task, recipe)
            _remove_stale_shards(layout.pool_dir(options.modality), task, task_jobs)
            jobs.extend(task_jobs)
        record = _pool_record(context, recipe, options, jobs, planned)
        write_pool_record(layout, options.modality, record)
        done = [is_done(job) for job in jobs]
        todo = [job for job, finished in zip(jobs, done, strict=True) if not finished]
        reused = [job for job, finished in zip(jobs, done, strict=True) if finished]
        started = time.perf_counter()
        results = _run_jobs(pool, todo, layout.cache_dir(options.modality), recipe, options)
        report.info["make_seconds"] = round(time.perf_counter() - started, 3)
    _account(report, results, reused, planned)
    rows = {Path(r.path).name: r.items for r in results} | {job.path.name: _rows(job.path) for job in reused}
    for name, info in record["shards"].items():
        info["rows"] = rows[name]
    write_pool_record(layout, options.modality, record | {"complete": True})
    report.info["ingest_skipped_by_reason"] = _ingest_skips(layout, options.modality)
    report.write(layout.build_report_dir(options.modality))
    return report


@contextmanager
def _worker_pool(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """A process pool (spawned, not forked: safe whatever the parent imported), warmed up at once."""
    if workers == 1:
        yield None
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        pool.submit(_warm_up)
        yield pool


def _warm_up() -> None:
    """Nothing: submitting it makes the pool start its workers and import this module now."""


def _pool_record(
    context: CellContext, recipe: Recipe, options: BuildOptions, jobs: list[ShardJob], planned: dict[str, int]
) -> dict[str, Any]:
    """What this build will make (pool.json), written before any shard so a partial pool is known as such."""
    return {
        "complete": False,
        "recipe": recipe.name,
        "recipe_digest": recipe.digest,
        "version": __version__,
        "plan_sha256": context.plan.digest,
        "rerun": options.command or f"medscout-data build --modality {options.modality}",
        "planned": planned,
        "shards": {
            job.path.name: {"task": _task_of_path(str(job.path)), "digest": job.digest} for job in jobs
        },
    }


def _ingest_skips(layout: Layout, modality: str) -> dict[str, int]:
    """Sources ingest skipped, by reason (from its report), for the build summary."""
    path = layout.catalogue_dir(modality) / "report.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8")).get("skipped_by_reason", {})


def _context(layout: Layout, recipe: Recipe, options: BuildOptions) -> CellContext:
    from medscout_data.sources import ensure_catalogue

    catalogue = ensure_catalogue(layout, recipe, options.modality, root=options.root, workers=options.workers)
    images = read_catalogue(catalogue)
    if not images:
        raise BuildError(f"{catalogue}: the catalogue has no usable images; see its errors.parquet")
    subjects = sorted({image.subject_id for image in images})
    plan = ensure_plan(layout.plan(options.modality), subjects, options.modality, recipe)
    neighbours = None
    if options.modality == "xray" and "anomaly" in options.tasks:
        neighbours = _neighbour_lookup(layout, recipe, options)
    return CellContext.of(options.modality, recipe, plan, images, neighbours)


def _neighbour_lookup(layout: Layout, recipe: Recipe, options: BuildOptions) -> NeighbourLookup:
    """X-ray anomaly references: a lookup of the reference index's neighbours, best first.

    The table (k rows per image, hundreds of thousands of images at MIMIC-CXR
    scale) stays on disk; only the rows of the images a plan asks about are read.
    """
    from medscout_data.stages.index import ensure_neighbours

    path = ensure_neighbours(
        layout,
        recipe,
        "xray",
        model=options.model,
        device=options.device,
        root=options.root,
        workers=options.workers,
    )

    def lookup(image_ids: Iterable[str]) -> dict[str, list[tuple[str, float]]]:
        frame = (
            pl.scan_parquet(path)
            .select(["image_id", "rank", "neighbour_id", "score"])
            .filter(pl.col("image_id").is_in(sorted(image_ids)))
            .sort(["image_id", "rank"])
            .collect()
        )
        out: dict[str, list[tuple[str, float]]] = defaultdict(list)
        for image_id, neighbour_id, score in frame.select(["image_id", "neighbour_id", "score"]).iter_rows():
            out[image_id].append((neighbour_id, float(score)))
        return dict(out)

    return lookup


def _remove_stale_shards(folder: Path, task: str, jobs: list[ShardJob]) -> None:
    """Shards of this task beyond the current plan (e.g. from a larger --limit) would be read as
    items of this pool: remove them."""
    keep = {job.path.name for job in jobs}
    for path in folder.glob(f"{task}-*.parquet"):
        if path.name not in keep:
            log.info("removing stale shard %s", path)
            path.unlink()


def _run_jobs(
    pool: ProcessPoolExecutor | None,
    todo: list[ShardJob],
    cache_dir: Path,
    recipe: Recipe,
    options: BuildOptions,
) -> list[ShardResult]:
    """Write every shard of `todo`, in the pool when there is one; results in `todo` order."""
    bar = tqdm(
        total=sum(len(job.specs) for job in todo),
        desc=f"build {options.modality}",
        unit="item",
        disable=not options.progress,
    )
    results: dict[int, ShardResult] = {}
    if pool is None:
        for number, job in enumerate(todo):
            results[number] = _checked(job, lambda job=job: write_shard(job, cache_dir, recipe))
            bar.update(len(job.specs))
    else:
        futures = {pool.submit(write_shard, job, cache_dir, recipe): n for n, job in enumerate(todo)}
        for future in as_completed(futures):
            job = todo[futures[future]]
            results[futures[future]] = _checked(job, future.result)
            bar.update(len(job.specs))
    bar.close()
    return [results[n] for n in range(len(todo))]


def _checked(job: ShardJob, run) -> ShardResult:
    """The shard's result, or a BuildError naming the shard (finished shards stay for a resume)."""
    try:
        return run()
    except Exception as exc:
        raise BuildError(
            f"{job.path.name} failed: {type(exc).__name__}: {exc}; finished shards are kept, rerun to resume"
        ) from exc


def _account(
    report: RunReport, results: list[ShardResult], reused: list[ShardJob], planned: dict[str, int]
) -> None:
    made: dict[str, int] = defaultdict(int)
    report.count("shards_reused", len(reused))
    report.count("shards_written", len(results))
    for job in reused:
        made[_task_of_path(str(job.path))] += _rows(job.path)
    for result in results:
        made[_task_of_path(result.path)] += result.items
        report.count("fallback_images", result.fallbacks)
        for item_id, reason in result.rejected:
            report.skip(item_id, "item-rejected", f"{item_id}: {reason}")
    for task, count in made.items():
        report.count(f"items_{task}", count)
    report.info["planned"] = planned
    items = sum(made.values())
    report.info["items"] = items
    made_now = sum(r.items for r in results)
    report.info["items_per_second"] = round(made_now / max(report.info["make_seconds"], 1e-9), 1)


def _task_of_path(path: str) -> str:
    return Path(path).name.split("-")[0]


def _rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows
