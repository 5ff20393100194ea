"""The build driver: plan, make shards in workers, replace what failed, record the pool.

Per task, round 0 is planned and its shards submitted at once, so workers
start while the next task is planned. When every shard of a task's round is
back, the items no attempt could make are planned again (round 1, 2, ...)
from other images of the same side and submitted; a task stops when its
cells are full, when a round made nothing, or after `MAX_ROUNDS`. What is
still short is reported per side with what would fill it.

With `--rank R --world-size N` a process makes only its share of round 0
(`shards[R::N]`) and leaves a completion marker; `--merge` checks that every
rank finished, then runs the rounds and writes the pool record, so the
pool is byte-identical to a single-process build.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from medscout_data import TASKS, __version__
from medscout_data.imaging import encoder_fingerprint
from medscout_data.layout import Layout
from medscout_data.locking import stage_lock
from medscout_data.ranks import Rank, RankError, missing_ranks, write_marker
from medscout_data.recipe import Recipe
from medscout_data.report import RunReport, Skip
from medscout_data.stages.build.catalog import CellContext, NeighbourLookup, read_catalogue
from medscout_data.stages.build.making import (
    NOTHING_LEFT,
    Chunk,
    ShardAssembly,
    ShardJob,
    ShardResult,
    chunk_specs,
    finished_outcomes,
    init_worker,
    make_chunk,
    shard_jobs,
    warm_up,
)
from medscout_data.stages.build.planning import (
    MAX_ROUNDS,
    BuildError,
    ItemSpec,
    Outcome,
    Planner,
    plan_cell,
    plan_replacements,
    record_outcomes,
)
from medscout_data.stages.build.shortfall import Rejections, balance_short, count_shortfall
from medscout_data.stages.plan import BENCH, TRAIN, ensure_plan
from medscout_data.stages.pool import read_pool_record, write_pool_record
from medscout_data.workers import process_pool

log = logging.getLogger(__name__)


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
    rank: Rank = field(default_factory=Rank)
    merge: bool = False


@dataclass
class TaskRun:
    """One task's rounds: its planner, every spec made so far, and the outcomes."""

    task: str
    planner: Planner
    planned: int
    round: int = 0
    specs: dict[str, ItemSpec] = field(default_factory=dict)  # id -> the spec of its latest round
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)  # shard names of the current round not back yet
    jobs: list[ShardJob] = field(default_factory=list)  # every job of every round
    round_made: int = 0
    rejections: Rejections = field(default_factory=Rejections)  # rejected attempts of every round


def build_modality(layout: Layout, recipe: Recipe, options: BuildOptions) -> RunReport:
    """Plan and make every requested cell of one modality; returns the run's report."""
    rank = options.rank
    stage = f"build {options.modality}" + ("" if rank.single else f" ({rank})")
    lock = "build" if rank.single else f"build-{rank.tag}"
    with stage_lock(layout.pool_dir(options.modality), lock, options.command or stage):
        report = RunReport(stage=stage)
        with _executor(options.workers) as executor:  # workers start while the main process plans
            build = _Build(layout, recipe, options, executor, report)
            build.run()
        if rank.single:
            report.write(layout.build_report_dir(options.modality))
        return report


@contextmanager
def _executor(workers: int) -> Iterator[Executor]:
    if workers == 1:
        yield _Inline()
        return
    with process_pool(workers, initializer=init_worker) as pool:
        pool.submit(warm_up)
        yield pool


class _Inline(Executor):
    """Runs each job when it is submitted, in this process (`--workers 1`)."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed to the caller through the future, as a pool would
            future.set_exception(exc)
        return future


class _Build:
    """One build run of one modality (state shared by its steps)."""

    def __init__(
        self, layout: Layout, recipe: Recipe, options: BuildOptions, executor: Executor, report: RunReport
    ) -> None:
        self.layout, self.recipe, self.options, self.executor, self.report = (
            layout,
            recipe,
            options,
            executor,
            report,
        )
        self.folder = layout.pool_dir(options.modality)
        self.cache_dir = layout.cache_dir(options.modality)
        self.previous = read_pool_record(layout, options.modality)
        self.record: dict[str, Any] = {}
        self.runs: dict[str, TaskRun] = {}
        self.futures: dict[Future, tuple[str, ShardAssembly, int, int]] = {}  # task, shard, chunk, items
        self.results: list[ShardResult] = []
        self.reused: list[ShardJob] = []
        self.rows: dict[str, int] = {}  # shard name -> items it holds
        self.round0: list[ShardJob] = []  # every task's round-0 shards, in plan order (ranks share these)
        self.missing: list[int] = []  # positions in round0 of shards neither on disk nor made here
        self.bar: tqdm | None = None

    # ------------------------------------------------------------ steps

    def run(self) -> None:
        options = self.options
        context = _context(self.layout, self.recipe, options)
        self.record = self._start_record(context)
        self.bar = tqdm(desc=self.report.stage, unit="item", disable=not options.progress, total=0)
        started = time.perf_counter()
        try:
            for task in options.tasks:
                planned = min(
                    options.limit or self.recipe.pool.items_per_cell, self.recipe.pool.items_per_cell
                )
                run = TaskRun(task, Planner(context, task), planned)
                self.runs[task] = run
                specs = plan_cell(run.planner, planned)
                self._start_round(run, specs)
            if not options.rank.single and not options.merge:
                return self._finish_rank()
            if options.merge:
                self._require_ranks()
            self._drain()
        finally:
            self.bar.close()
            self.report.info["make_seconds"] = round(time.perf_counter() - started, 3)
        self._finish(context)

    def _start_record(self, context: CellContext) -> dict[str, Any]:
        """pool.json says `complete: false` before anything is made, so a killed build is known as partial."""
        record = {
            "complete": False,
            "recipe": self.recipe.name,
            "recipe_digest": self.recipe.digest,
            "version": __version__,
            "png_encoder": encoder_fingerprint(self.recipe.png),
            "plan_sha256": context.plan.digest,
            "rerun": self.options.command or f"medscout-data build --modality {self.options.modality}",
            "world_size": self.options.rank.world_size,
            "planned": {},
            "shards": {},
        }
        if self.options.merge and self.previous:
            record["world_size"] = int(self.previous.get("world_size", 1))
        write_pool_record(self.layout, self.options.modality, record)
        return record

    def _start_round(self, run: TaskRun, specs: list[ItemSpec]) -> None:
        """Record the round's shards in pool.json, then hand them to the workers (or reuse them)."""
        for spec in specs:
            run.specs[spec.id] = spec
        stem = run.task if run.round == 0 else f"{run.task}-r{run.round:02d}"
        jobs = shard_jobs([s for s in specs if s.attempts], self.folder, stem, self.recipe)
        for spec in specs:
            if not spec.attempts:  # the side has nothing left to try: keep why the last attempts failed
                run.outcomes.setdefault(spec.id, Outcome(-1, NOTHING_LEFT))
        run.jobs.extend(jobs)
        run.round_made = 0
        first = len(self.round0)
        if run.round == 0:
            self.round0.extend(jobs)
        self.record["planned"][run.task] = run.planned
        for job in jobs:
            self.record["shards"][job.path.name] = {
                "task": run.task,
                "digest": job.digest,
                "round": run.round,
            }
        self._update_ranks_digest()
        write_pool_record(self.layout, self.options.modality, self.record)
        missing, todo = False, []
        for position, job in enumerate(jobs, start=first):
            outcomes = finished_outcomes(job)
            if outcomes is not None:
                self.reused.append(job)
                self._take(run, job, outcomes)
            elif self._is_mine(run, position):
                todo.append(job)
            else:
                missing = True
                if run.round == 0:
                    self.missing.append(position)
        run.pending.update(job.path.name for job in todo)  # all of them before any can come back
        for job in todo:
            self._submit(run, job)
        if not todo and not missing and (self.options.rank.single or self.options.merge):
            self._next_round(run)  # everything was on disk already; otherwise the last chunk back does it

    def _is_mine(self, run: TaskRun, position: int) -> bool:
        """Whether this process makes the shard: its rank's share of round 0 (none in the merge)."""
        if run.round > 0 or (self.options.rank.single and not self.options.merge):
            return True
        if self.options.merge:
            return False
        return position % self.options.rank.world_size == self.options.rank.rank

    def _submit(self, run: TaskRun, job: ShardJob) -> None:
        """Hand the shard's chunks to the workers; the main process assembles the shard."""
        chunks = chunk_specs(job, self.recipe)
        assembly = ShardAssembly(job, self.recipe, len(chunks))
        self.bar.total += len(job.specs)
        self.bar.refresh()
        for number, specs in enumerate(chunks):
            future = self.executor.submit(make_chunk, specs, self.cache_dir, self.recipe)
            self.futures[future] = (run.task, assembly, number, len(specs))
            if isinstance(self.executor, _Inline):  # made already: write it now, hold nothing
                self._collect(future)

    def _drain(self) -> None:
        """Collect chunks as workers finish them; start each task's next round when its round is back."""
        try:
            while self.futures:
                done, _ = wait(list(self.futures), return_when=FIRST_COMPLETED)
                for future in done:
                    self._collect(future)
        except BaseException:
            for _, assembly, _, _ in self.futures.values():
                assembly.abort()
            raise

    def _collect(self, future: Future) -> None:
        task, assembly, number, size = self.futures.pop(future)
        chunk = _checked(assembly.job, future)
        self.bar.update(size)
        try:
            complete = assembly.add(number, chunk)
        except OSError as exc:
            assembly.abort()
            raise _write_error(assembly.job, exc) from exc
        if not complete:
            return
        self.results.append(assembly.result)
        run = self.runs[task]
        run.pending.discard(assembly.job.path.name)
        self._take(run, assembly.job, assembly.result.outcomes)
        if not run.pending and (self.options.rank.single or self.options.merge):
            self._next_round(run)

    def _take(self, run: TaskRun, job: ShardJob, outcomes: dict[str, Outcome]) -> None:
        run.outcomes.update(outcomes)
        for item, outcome in outcomes.items():
            run.rejections.add(run.specs[item], outcome)
        made = sum(o.index >= 0 for o in outcomes.values())
        run.round_made += made
        self.rows[job.path.name] = made

    def _next_round(self, run: TaskRun) -> None:
        """Plan replacements for what this round could not make, unless the task is done or stuck."""
        round_specs = [s for s in run.specs.values() if s.round == run.round]
        record_outcomes(run.planner, round_specs, run.outcomes)
        failed = [s for s in run.specs.values() if run.outcomes[s.id].index < 0]
        exhausted = run.round > 0 and not any(s.attempts for s in round_specs)
        hopeless = run.task == "scale" and run.round > 0 and run.round_made == 0  # draws repeat their images
        if not failed or run.round >= MAX_ROUNDS or exhausted or hopeless:
            return
        made = [s for s in run.specs.values() if run.outcomes[s.id].index >= 0]
        run.round += 1
        replacements = plan_replacements(run.planner, failed, made, run.outcomes, run.round)
        log.info("%s: replacing %d item(s), round %d", run.task, len(replacements), run.round)
        self._start_round(run, replacements)

    # ------------------------------------------------------------ ranks

    def _update_ranks_digest(self) -> None:
        round0 = [(job.path.name, job.digest) for job in self.round0]
        self.record["ranks_digest"] = hashlib.sha256(json.dumps(round0).encode()).hexdigest()

    def _finish_rank(self) -> None:
        self._drain()
        rank = self.options.rank
        write_marker(self.folder, rank, self.record["ranks_digest"], {"shards": len(self.results)})
        self.report.info.update(items=sum(r.items for r in self.results), rank=str(rank))
        self.report.count("shards_written", len(self.results))
        self.report.count("shards_reused", len(self.reused))

    def _require_ranks(self) -> None:
        """The merge: every rank's marker, and every round-0 shard, must be there."""
        world = int(self.record.get("world_size", 1))
        if world <= 1:
            raise RankError(
                f"{self.folder}: no ranked build to merge (pool.json records world size {world}); "
                "run `build --rank R --world-size N` first, or build without --merge"
            )
        missing = set(missing_ranks(self.folder, world, self.record["ranks_digest"]))
        missing.update(position % world for position in self.missing)
        if missing:
            names = ", ".join(str(r) for r in sorted(missing))
            raise RankError(
                f"{self.folder}: rank(s) {names} of {world} have not finished (or wrote their shards with "
                "another version, recipe or PNG encoder); rerun them on this kind of node "
                f"(`medscout-data build ... --rank {min(missing)} --world-size {world}`), then merge again"
            )

    # ------------------------------------------------------------ the end

    def _finish(self, context: CellContext) -> None:
        report, record = self.report, self.record
        for name, info in record["shards"].items():
            info["rows"] = self.rows[name]
        record["made"], record["shortfall"], record["balance_short"] = {}, {}, {}
        for task, run in self.runs.items():
            record["made"][task] = self._account(run)
            shortfall = count_shortfall(task, run.specs.values(), run.outcomes, context)
            if shortfall:
                record["shortfall"][task] = shortfall
            unbalanced = balance_short(task, run.specs.values(), run.outcomes, run.rejections, context)
            if unbalanced:
                record["balance_short"][task] = unbalanced
            report.info.setdefault("rejected_attempts", {})[task] = run.rejections.by_rule()
        record["complete"] = True
        write_pool_record(self.layout, self.options.modality, record)
        self._prune()
        report.count("shards_reused", len(self.reused))
        report.count("shards_written", len(self.results))
        report.info["planned"] = dict(record["planned"])
        report.info["made"] = record["made"]
        report.info["shortfall"] = record["shortfall"]
        report.info["balance_short"] = record["balance_short"]
        report.info["items"] = sum(report.counts[f"items_{t}"] for t in self.runs)
        made_now = sum(r.items for r in self.results)
        report.info["items_per_second"] = round(made_now / max(report.info["make_seconds"], 1e-9), 1)
        report.info["ingest_skipped_by_reason"] = _ingest_skips(self.layout, self.options.modality)
        report.info["duplicate_images"] = report.info["ingest_skipped_by_reason"].get("duplicate-image", 0)

    def _account(self, run: TaskRun) -> dict[str, int]:
        made = {BENCH: 0, TRAIN: 0}
        sources: Counter[str] = Counter()
        for spec in run.specs.values():
            outcome = run.outcomes[spec.id]
            if outcome.index < 0:  # summed up in the shortfall, so not logged one by one
                self.report.skips.append(Skip(spec.id, "item-short", f"{spec.id}: {outcome.describe()}"))
                continue
            made[spec.side] += 1
            sources[spec.attempts[outcome.index].image.image_id] += 1
            if outcome.index > 0 or spec.round > 0:
                self.report.count("fallback_images")
            if spec.round > 0:
                self.report.count("replaced_items")
        self.report.count(f"items_{run.task}", made[BENCH] + made[TRAIN])
        shared = sum(n for n in sources.values() if n > 1)
        self.report.info.setdefault("items_sharing_source_image", {})[run.task] = shared
        self.report.info.setdefault("rounds", {})[run.task] = run.round
        return made

    def _prune(self) -> None:
        """Remove shards this project wrote for an earlier plan (the old pool.json names them); only those."""
        ours = set(self.record["shards"])
        old = set((self.previous or {}).get("shards", {})) if isinstance(self.previous, dict) else set()
        removed = []
        for name in sorted(old - ours):
            path = self.folder / name
            if path.is_file():
                path.unlink()
                removed.append(name)
        for name in sorted(old | ours):
            (self.folder / f"{name}.tmp").unlink(missing_ok=True)
        for leftover in self.folder.glob("pool.json.*-*.tmp"):  # a killed writer's (atomic_writer names)
            leftover.unlink(missing_ok=True)
        if removed:
            log.info("removed %d shard(s) of an earlier plan from %s: %s", len(removed), self.folder, removed)
            self.report.info["removed_shards"] = removed


def _write_error(job: ShardJob, exc: OSError) -> BuildError:
    return BuildError(
        f"{job.path}: cannot write ({exc.strerror or exc}); free space or fix permissions, then rerun: "
        "finished shards are kept"
    )


def _checked(job: ShardJob, future: Future) -> Chunk:
    """The chunk a worker made, or a BuildError naming its shard (finished shards stay for a resume)."""
    try:
        return future.result()
    except OSError as exc:
        raise _write_error(job, exc) from exc
    except Exception as exc:
        raise BuildError(
            f"{job.path.name} failed: {type(exc).__name__}: {exc}; finished shards are kept, rerun to resume"
        ) from exc


def _ingest_skips(layout: Layout, modality: str) -> dict[str, int]:
    """Sources ingest skipped, by reason (from its report), for the build summary."""
    path = layout.catalogue_dir(modality) / "report.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("skipped_by_reason", {})
    except (OSError, ValueError, AttributeError):
        return {}


# ---------------------------------------------------------------- inputs


def _context(layout: Layout, recipe: Recipe, options: BuildOptions) -> CellContext:
    """The catalogue, subject plan and (X-ray anomaly) reference index this build plans from."""
    catalogue = _catalogue(layout, recipe, options)
    images = read_catalogue(catalogue)
    if not images:
        raise BuildError(f"{catalogue}: the catalogue has no usable images; see its errors.parquet")
    subjects = sorted({image.subject_id for image in images})
    plan = ensure_plan(layout.plan(options.modality), subjects, options.modality, recipe)
    neighbours = None
    if options.modality == "xray" and "anomaly" in options.tasks:
        neighbours = _neighbour_lookup(_neighbours_path(layout, recipe, options))
    return CellContext.of(options.modality, recipe, plan, images, neighbours)


def _ranked(options: BuildOptions) -> bool:
    return not options.rank.single or options.merge


def _catalogue(layout: Layout, recipe: Recipe, options: BuildOptions) -> Path:
    """Ingest first when needed; ranks never ingest (every rank would), they need it done."""
    if _ranked(options):
        path = layout.catalogue(options.modality)
        if not path.is_file():
            raise BuildError(
                f"{path}: no catalogue; ranked builds need ingest done first: run `medscout-data ingest "
                f"--modality {options.modality}` (or its ranks and `ingest --merge`)"
            )
        return path
    from medscout_data.sources import ensure_catalogue

    return ensure_catalogue(layout, recipe, options.modality, root=options.root, workers=options.workers)


def _neighbours_path(layout: Layout, recipe: Recipe, options: BuildOptions) -> Path:
    if _ranked(options):
        path = _index_folder(layout, recipe, options) / "neighbours.parquet"
        if not path.is_file():
            raise BuildError(
                f"{path}: no reference index; ranked builds need `medscout-data index --modality xray` "
                "done first"
            )
        return path
    from medscout_data.stages.index import ensure_neighbours

    return ensure_neighbours(
        layout,
        recipe,
        options.modality,
        model=options.model,
        device=options.device,
        root=options.root,
        workers=options.workers,
    )


def _index_folder(layout: Layout, recipe: Recipe, options: BuildOptions) -> Path:
    """Where index keeps this model's neighbours (the spec resolved as index resolves it)."""
    from medscout_data.stages.embedders import parse_model_spec

    spec = parse_model_spec(options.model or recipe.index.model).resolved()
    return layout.index_dir(options.modality, spec.text)


def _neighbour_lookup(path: Path) -> NeighbourLookup:
    """X-ray anomaly references: the index's neighbours of the images asked about, best first.

    The table (k rows per image, hundreds of thousands of images at MIMIC-CXR
    scale) stays on disk; only the rows of the images a plan asks about are read.
    """

    def lookup(image_ids: Iterable[str]) -> dict[str, list[tuple[str, float]]]:
        import polars as pl

        frame = (
            pl.scan_parquet(path)
            .select(["image_id", "rank", "neighbour_id", "score"])
            .filter(pl.col("image_id").is_in(sorted(set(image_ids))))
            .sort(["image_id", "rank"])
            .collect()
        )
        out: dict[str, list[tuple[str, float]]] = defaultdict(list)
        for image_id, neighbour_id, score in frame.select(["image_id", "neighbour_id", "score"]).iter_rows():
            out[image_id].append((neighbour_id, float(score)))
        return dict(out)

    return lookup


__all__ = ["BuildError", "BuildOptions", "build_modality"]
