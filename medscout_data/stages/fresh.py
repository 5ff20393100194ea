"""fresh-bench: a new bench from the same bench-side subjects and recipe under another item seed.

A contamination check for models trained on (or tuned against) a published
bench: the same subjects, recipe, counts per cell and balance, but items that
were never published. From a split's shards root (manifest, subject plans,
catalogues, image caches, X-ray reference index), for each modality x task cell
of the original bench:

- the recipe is the one the pool was built with (stored in its plan), with the
  new seed: every item's own seed and the planner's draws change, the subject
  partition does not (the plan is copied; bench-side subjects only are used);
- items are planned by build's planner (`_plan_side`, bench side, exactly the
  original bench's count) and made by build's workers' code (`make_chunk`,
  `ShardAssembly`), with build's replacement rounds for the items that fail;
- nothing the original bench holds can be remade: its scale items' full images
  (a scale item shows its source image as it is) are left out of the scale
  planner's images, and its jigsaw (image, permutation) and anomaly (image,
  cell, reference) keys are marked taken, so the planner never offers them;
- every image of every new item is then hashed (sha256 of the PNG bytes) and
  compared with every image of the original bench: one shared image refuses
  the whole run, before any bench is written;
- the items are written as a pool under `OUT/pool/` (with `pool.json` and the
  copied plan in `OUT/plan/`) and `split` turns it into `OUT/bench/` and
  `OUT/manifest.json`, so `evaluate`, `score`, `audit` and `validate` take
  `OUT` like any shards root. `OUT/fresh.json` records the original (its
  manifest's sha256 and seed), the new seed and the image-hash check.

Item ids carry the seed (`fresh<S>-ct-scale-000000`), so predictions made on
one bench are never scored against the other by mistake. Same shards and seed
give byte-identical output; a killed run resumes (finished pool shards are
kept by their plan digest).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from tqdm import tqdm

from medscout_data import MODALITIES, TASKS, __version__
from medscout_data.errors import StageError
from medscout_data.layout import Layout
from medscout_data.locking import stage_lock
from medscout_data.recipe import Recipe
from medscout_data.shards import sha256_file, write_json_atomic
from medscout_data.stages.build.catalog import CellContext, read_catalogue
from medscout_data.stages.build.making import (
    NOTHING_LEFT,
    ShardAssembly,
    ShardJob,
    chunk_specs,
    finished_outcomes,
    make_chunk,
    shard_jobs,
)
from medscout_data.stages.build.planning import (
    MAX_ROUNDS,
    ItemSpec,
    Outcome,
    Planner,
    _plan_side,
    plan_replacements,
    record_outcomes,
)
from medscout_data.stages.build.run import _executor, _Inline, _neighbour_lookup
from medscout_data.stages.manifest import read_manifest, verified_shards
from medscout_data.stages.plan import BENCH, SubjectPlan, load_plan
from medscout_data.stages.pool import listed_shards, write_pool_record
from medscout_data.stages.split import SplitOptions, split_pool

log = logging.getLogger(__name__)

RECORD = "fresh.json"


class FreshError(StageError):
    """A fresh bench that cannot be made as asked; the message says why and what to do."""


@dataclass(frozen=True)
class FreshOptions:
    """Where the original split is, the new item seed, and where the fresh bench goes."""

    shards: Path
    seed: int
    out: Path
    modalities: tuple[str, ...] = ()  # only these of the original bench's (default: all)
    workers: int = 1  # processes making items (the output is the same for any number)
    progress: bool = True
    command: str = "medscout-data fresh-bench"


@dataclass
class Original:
    """What the original bench holds, per modality: what the planner must not offer again."""

    scale_images: dict[str, set[str]] = field(default_factory=dict)  # modality -> source image ids
    taken: dict[tuple[str, str], set[tuple]] = field(default_factory=dict)  # (modality, task) -> keys
    hashes: set[bytes] = field(default_factory=set)  # sha256 of every image of every item
    items: int = 0


def fresh_bench(options: FreshOptions) -> dict[str, Any]:
    """Make the fresh bench under `options.out`; returns its record (also `OUT/fresh.json`)."""
    source, out = Layout.at(options.shards), Layout.at(options.out)
    manifest = read_manifest(source)
    cells = _bench_cells(manifest, options.modalities)
    _check_out(source, out, options, manifest, {m for m, _ in cells})
    bench_files = verified_shards(source, BENCH, manifest)
    original = read_original(bench_files)
    out.root.mkdir(parents=True, exist_ok=True)
    with stage_lock(out.root, "fresh-bench", options.command), _executor(options.workers) as executor:
        for modality in sorted({m for m, _ in cells}, key=MODALITIES.index):
            tasks = [t for t in TASKS if (modality, t) in cells]
            _build_modality(
                source, out, modality, tasks, manifest["bench_per_cell"], original, options, executor
            )
        checked = _check_hashes(out, cells, original)
        split = split_pool(
            out,
            SplitOptions(
                seed=options.seed,
                bench_per_cell=manifest["bench_per_cell"],
                progress=options.progress,
                command=options.command,
            ),
        )
        record = {
            "created_by": f"medscout-data {__version__}",
            "seed": options.seed,
            "original": {
                "shards": str(options.shards),
                "manifest_sha256": sha256_file(source.manifest()),
                "seed": manifest["seed"],
                "recipe": manifest["recipe"],
                "items": original.items,
            },
            "bench_per_cell": manifest["bench_per_cell"],
            "cells": {name: counts["bench"] for name, counts in split["cells"].items()},
            "images_checked": checked,
            "images_shared_with_original": 0,
        }
        write_json_atomic(record, out.root / RECORD)
    return record


# ---------------------------------------------------------------- inputs


def _check_out(
    source: Layout, out: Layout, options: FreshOptions, manifest: dict[str, Any], modalities: set[str]
) -> None:
    """Refuse an --out that is the original, holds another fresh bench's seed or modalities, or holds
    other files."""
    if options.seed == manifest["seed"]:
        raise FreshError(
            f"--seed {options.seed} is the seed {source.root} was built with; a fresh bench needs another"
        )
    if out.root.resolve() == source.root.resolve():
        raise FreshError(f"--out {out.root} is the original shards root; choose a new folder")
    if not out.root.exists() or not any(out.root.iterdir()):
        return
    try:
        previous = json.loads((out.root / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = None
    plans = [load_plan(p).seed for p in sorted(out.root.glob("plan/*.json"))] if previous is None else []
    if previous is None and not (plans and set(plans) == {options.seed}):
        raise FreshError(
            f"--out {out.root} is not empty and holds no fresh bench of seed {options.seed}; "
            "choose an empty or new folder"
        )
    others = sorted({p.stem for p in out.root.glob("plan/*.json")} - modalities)
    if others:
        raise FreshError(
            f"--out {out.root} holds a fresh {', '.join(others)} pool of an earlier run, which this run "
            "does not ask for; choose another folder"
        )
    if previous is not None and previous.get("seed") != options.seed:
        raise FreshError(
            f"--out {out.root} holds the fresh bench of seed {previous.get('seed')}; choose another folder "
            f"for seed {options.seed}"
        )


def _bench_cells(manifest: dict[str, Any], modalities: tuple[str, ...]) -> set[tuple[str, str]]:
    """The (modality, task) cells of the original bench that hold items (of `modalities`, if given)."""
    cells = set()
    for name, counts in manifest["cells"].items():
        modality, _, task = name.partition("/")
        if isinstance(counts, dict) and counts.get("bench") and (not modalities or modality in modalities):
            cells.add((modality, task))
    if not cells:
        raise FreshError(f"the original manifest lists no bench items of modality {', '.join(modalities)}")
    return cells


BENCH_COLUMNS = ["modality", "task", "target", "source", "images"]


def read_original(files: list[Path]) -> Original:
    """The original bench's image hashes and planner keys, a row group at a time."""
    original = Original()
    for path in files:
        parquet = pq.ParquetFile(path)
        for group in range(parquet.num_row_groups):
            for row in parquet.read_row_group(group, columns=BENCH_COLUMNS).to_pylist():
                _take_row(original, row, path)
    return original


def _take_row(original: Original, row: dict[str, Any], path: Path) -> None:
    original.items += 1
    for image in row["images"]:
        original.hashes.add(hashlib.sha256(image["bytes"]).digest())
    try:
        source, target = json.loads(row["source"]), json.loads(row["target"])
        modality, task, image_id = row["modality"], row["task"], source["image_id"]
    except (ValueError, KeyError, TypeError) as exc:
        raise FreshError(f"{path}: an item without a readable source or target ({exc!r})") from exc
    if task == "scale":
        original.scale_images.setdefault(modality, set()).add(image_id)
    elif task == "jigsaw":
        key = (image_id, tuple(target["permutation"]), "")
        original.taken.setdefault((modality, task), set()).add(key)
    elif task == "anomaly":
        reference = (source.get("reference") or {}).get("image_id", "")
        key = (image_id, (int(target["cell"]),), reference)
        original.taken.setdefault((modality, task), set()).add(key)


def _context(
    source: Layout, modality: str, recipe: Recipe, plan: SubjectPlan, tasks: list[str]
) -> CellContext:
    """The original catalogue, plan and (X-ray anomaly) reference index, under the fresh recipe."""
    catalogue = source.catalogue(modality)
    if not catalogue.is_file() or not source.cache_dir(modality).is_dir():
        raise FreshError(
            f"{catalogue}: fresh-bench needs the build's catalogue and image cache under --shards "
            f"(catalogue/{modality}, cache/{modality}); run it on the root the bench was built in"
        )
    images = read_catalogue(catalogue)
    neighbours = None
    if modality == "xray" and "anomaly" in tasks:
        from medscout_data.stages.embedders import parse_model_spec

        spec = parse_model_spec(recipe.index.model).resolved()
        path = source.index_dir(modality, spec.text) / "neighbours.parquet"
        if not path.is_file():
            raise FreshError(
                f"{path}: no X-ray reference index; fresh-bench reuses the one the bench was built with"
            )
        neighbours = _neighbour_lookup(path)
    return CellContext.of(modality, recipe, plan, images, neighbours)


# ---------------------------------------------------------------- making


def _build_modality(
    source: Layout,
    out: Layout,
    modality: str,
    tasks: list[str],
    count: int,
    original: Original,
    options: FreshOptions,
    executor: Executor,
) -> None:
    """Plan and make one modality's fresh bench cells into OUT/pool/<modality>/ with its pool.json."""
    path = source.plan(modality)
    if not path.is_file():
        raise FreshError(f"{path}: no subject plan; fresh-bench needs the plan the bench was split by")
    old = load_plan(path)
    recipe = old.recipe_settings().with_seed(options.seed)
    plan = replace(old, seed=options.seed, settings=recipe.to_dict())
    write_json_atomic(plan.to_dict(), out.plan(modality))
    context = _context(source, modality, recipe, plan, tasks)
    folder = out.pool_dir(modality)
    folder.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "complete": False,
        "recipe": recipe.name,
        "recipe_digest": recipe.digest,
        "version": __version__,
        "plan_sha256": plan.digest,
        "rerun": options.command,
        "world_size": 1,
        "planned": {},
        "shards": {},
        "made": {},
    }
    write_pool_record(out, modality, record)
    for task in tasks:
        task_context = context
        if task == "scale":
            task_context = _without(context, original.scale_images.get(modality, set()))
        planner = Planner(task_context, task)
        planner.taken.update(original.taken.get((modality, task), set()))
        made = _make_task(planner, count, folder, source.cache_dir(modality), record, options, executor)
        record["planned"][task] = count
        record["made"][task] = {BENCH: made, "train": 0}
        if made < count:
            raise FreshError(_too_small(modality, task, made, count))
    record["complete"] = True
    write_pool_record(out, modality, record)


def _too_small(modality: str, task: str, made: int, count: int) -> str:
    return (
        f"{modality}/{task}: only {made} of {count} fresh items could be made from bench-side images "
        "the original bench does not already show (a scale item shows its source image as it is); the "
        "bench side is too small for a second bench of this size: leave the modality out (--modality), "
        "or build the original from more subjects"
    )


def _without(context: CellContext, image_ids: set[str]) -> CellContext:
    """The context without these source images (the original bench's scale images)."""
    kept = [i for images in context.images_by_subject.values() for i in images if i.image_id not in image_ids]
    return CellContext.of(context.modality, context.recipe, context.plan, kept, context.neighbours)


def _make_task(
    planner: Planner,
    count: int,
    folder: Path,
    cache_dir: Path,
    record: dict[str, Any],
    options: FreshOptions,
    executor: Executor,
) -> int:
    """Round 0 of the bench side, then build's replacement rounds; how many items were made."""
    context, task = planner.context, planner.task
    prefix = f"fresh{options.seed}-"
    subjects = context.subjects(BENCH)
    if not subjects:
        raise FreshError(_too_small(context.modality, task, 0, count))
    current = [replace(s, id=prefix + s.id) for s in _plan_side(planner, BENCH, subjects, count, start=0)]
    specs: dict[str, ItemSpec] = {}
    outcomes: dict[str, Outcome] = {}
    bar = tqdm(
        total=count, desc=f"fresh {context.modality}/{task}", unit="item", disable=not options.progress
    )
    for round_ in range(MAX_ROUNDS + 1):
        specs.update((s.id, s) for s in current)
        stem = task if round_ == 0 else f"{task}-r{round_:02d}"
        for spec in current:
            if not spec.attempts:
                outcomes[spec.id] = Outcome(-1, NOTHING_LEFT)
        made_now = 0
        jobs = shard_jobs([s for s in current if s.attempts], folder, stem, context.recipe)
        for job, got in _made(jobs, cache_dir, context.recipe, executor):
            outcomes.update(got)
            rows = sum(o.index >= 0 for o in got.values())
            made_now += rows
            record["shards"][job.path.name] = {
                "task": task,
                "digest": job.digest,
                "round": round_,
                "rows": rows,
            }
            bar.update(rows)
        record_outcomes(planner, current, outcomes)
        failed = [s for s in specs.values() if outcomes[s.id].index < 0]
        exhausted = round_ > 0 and not any(s.attempts for s in current)
        hopeless = task == "scale" and round_ > 0 and made_now == 0
        if not failed or exhausted or hopeless:
            break
        made = [s for s in specs.values() if outcomes[s.id].index >= 0]
        current = plan_replacements(planner, failed, made, outcomes, round_ + 1)
    bar.close()
    return sum(outcomes[s].index >= 0 for s in specs)


def _made(
    jobs: list[ShardJob], cache_dir: Path, recipe: Recipe, executor: Executor
) -> Iterator[tuple[ShardJob, dict[str, Outcome]]]:
    """Each job with its outcomes, in order: a shard already on disk with the job's digest is kept,
    the others are made in the workers (all at once) and written here, chunk by chunk in order
    (temp name, then renamed), so the bytes are the same for any worker count."""
    todo = []
    for job in jobs:
        done = finished_outcomes(job)
        if done is not None:
            yield job, done
            continue
        chunks = [executor.submit(make_chunk, specs, cache_dir, recipe) for specs in chunk_specs(job, recipe)]
        todo.append((job, chunks))
        if isinstance(executor, _Inline):  # made already: write it now, hold nothing
            yield _assembled(*todo.pop(), recipe)
    for job, chunks in todo:
        yield _assembled(job, chunks, recipe)


def _assembled(job: ShardJob, chunks: list[Future], recipe: Recipe) -> tuple[ShardJob, dict[str, Outcome]]:
    assembly = ShardAssembly(job, recipe, len(chunks))
    try:
        for number, future in enumerate(chunks):
            assembly.add(number, future.result())
    except BaseException:
        assembly.abort()
        raise
    return job, assembly.result.outcomes


# ---------------------------------------------------------------- the image check


def _check_hashes(out: Layout, cells: set[tuple[str, str]], original: Original) -> int:
    """Hash every image of the fresh pool; refuse if any is an image of the original bench."""
    checked, shared = 0, []
    for item_id, image in _pool_images(out, sorted({m for m, _ in cells})):
        checked += 1
        if hashlib.sha256(image).digest() in original.hashes:
            shared.append(item_id)
    if shared:
        raise FreshError(
            f"{len(shared)} fresh item(s) share an image with the original bench (first: {shared[0]}), "
            "by sha256 of the PNG bytes; no bench was written. This means two sources hold the same "
            "pixels; run `medscout-data validate --deep` on the original"
        )
    return checked


def _pool_images(out: Layout, modalities: list[str]) -> Iterator[tuple[str, bytes]]:
    for modality in modalities:
        for path in listed_shards(out, modality):
            parquet = pq.ParquetFile(path)
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group, columns=["id", "images"])
                for item_id, images in zip(
                    table.column("id").to_pylist(), table.column("images").to_pylist(), strict=True
                ):
                    for image in images:
                        yield item_id, image["bytes"]


__all__ = ["FreshError", "FreshOptions", "fresh_bench", "read_original"]
