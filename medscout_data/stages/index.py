"""Stage `index` (X-ray): image embeddings and subject-disjoint nearest neighbours with FAISS.

Every catalogued X-ray is embedded with the recipe's model (BiomedCLIP's image
tower for the paper, the weight-free `pixels` embedder for the sample; see
`medscout_data.stages.embedders`) and, for each image, its k most similar images by
cosine similarity are found. A neighbour is never the image itself, never an
image of the same subject, and never an image on the other side of the subject
plan: each side (bench, train) gets its own FAISS index. `build` takes the
top-1 neighbour as the anomaly reference.

Ranks of a job array (`index --rank R --world-size N`, one per GPU): the
catalogue is cut into blocks of `batch_size` images, rank R embeds blocks R,
R+N, R+2N, ... into `_ranks/rank-R-of-N/` and leaves the marker
`_ranks/rank-R-of-N.json`. The merge (`index --merge`, or any later `index` or
`build` that finds rank outputs for the current catalogue and model) checks
that every rank finished, naming those that did not, moves their parts into
`embeddings/` and searches once. A block is one batch whoever embeds it, so the
neighbours are byte-identical to a single process's on the CPU.

Outputs, under `index/xray/<model-slug>/`:

    embeddings/model.json, embeddings/part-NNNNN.parquet   (image_id, row_key, vector)
    neighbours.parquet   image_id, subject_id, rank (1-based), neighbour_id, neighbour_subject_id, score
    index.json, errors.parquet, report.json
    _ranks/rank-RRRRR-of-NNNNN/, _ranks/rank-RRRRR-of-NNNNN.json   (a rank's parts and marker, until merged)

Embeddings are cached by image id (and a key of the catalogue row that made
the pixels), so a rerun, or a grown catalogue, embeds only what is new. The
neighbours table records the model, its weights, the embedding dim, the search
kind, k, the plan digest and the catalogue fingerprint in its Parquet metadata;
it is remade when any of them changes, and indices of two models never mix
(each model has its own folder, and `load_neighbours` checks the model). Every
writer holds a lock on the model's folder (ranks one each), and only files the
stage wrote are ever removed.

What the stage reads of the catalogue is `index_inputs.py`; the neighbours
table (schema, rows, reading it back) is `neighbours.py`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import re
import shlex
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medscout_data.layout import Layout
from medscout_data.locking import stage_lock
from medscout_data.ranks import MARKER_DIR, Rank, RankError, marker_path, require_all_ranks, write_marker
from medscout_data.recipe import Recipe
from medscout_data.report import RunReport, Skip
from medscout_data.shards import read_file_metadata, write_json_atomic, write_table_atomic
from medscout_data.stages.embedders import (
    ModelSpec,
    ModelUnavailable,
    ResolvedModel,
    load_embedder,
    parse_model_spec,
    resolve_model,
)
from medscout_data.stages.embeddings import EmbeddingStore, catalogue_blocks, embed_missing
from medscout_data.stages.index_inputs import (  # noqa: F401  (public names, importable from here)
    CATALOGUE_COLUMNS,
    ROW_KEY_COLUMNS,
    IndexMismatch,
    IndexStageError,
    _catalogue_images,
    _check_modality,
    catalogue_fingerprint,
    read_catalogue_images,
    row_key,
)
from medscout_data.stages.neighbours import (  # noqa: F401  (public names, importable from here)
    NEIGHBOUR_SCHEMA,
    load_neighbours,
    neighbour_table,
    neighbours_metadata,
)
from medscout_data.stages.plan import SubjectPlan, ensure_plan
from medscout_data.stages.search import SEARCH_KINDS, SearchConfig, faiss_gpus

log = logging.getLogger(__name__)

NEIGHBOURS = "neighbours.parquet"
WORK_FILE = "work.json"  # in a rank's folder: the work it was started on
_RANK_NAME = re.compile(r"rank-(\d+)-of-(\d+)(\.json)?")


@dataclass(frozen=True)
class IndexOptions:
    """How to embed and search: model spec, device, batch size, k and search kind."""

    model: str
    device: str = "auto"
    batch_size: int = 64
    k: int = 8
    search: str = "exact"
    workers: int = 1

    @classmethod
    def from_recipe(
        cls,
        recipe: Recipe,
        model: str | None = None,
        device: str = "auto",
        batch_size: int | None = None,
        k: int | None = None,
        search: str | None = None,
        workers: int = 1,
    ) -> IndexOptions:
        """The recipe's [index] settings, each overridden where an argument is given."""
        cfg = recipe.index
        options = cls(
            model=model or cfg.model,
            device=device,
            batch_size=batch_size or cfg.batch_size,
            k=k or cfg.k,
            search=search or cfg.search,
            workers=workers,
        )
        if options.search not in SEARCH_KINDS:
            raise IndexStageError(f"search must be one of {', '.join(SEARCH_KINDS)}, got {options.search!r}")
        if min(options.k, options.batch_size, options.workers) < 1:
            raise IndexStageError("k, batch size and workers must be at least 1")
        if options.device not in ("auto", "cpu", "cuda"):
            raise IndexStageError(f"device must be auto, cpu or cuda, got {options.device!r}")
        return options


# ----------------------------------------------------------------------------- catalogue


# ----------------------------------------------------------------------------- neighbours


# ----------------------------------------------------------------------------- one run's inputs


@dataclass(frozen=True)
class IndexJob:
    """What one index run works on: the catalogue's rows, the model spec, the output folder."""

    layout: Layout
    modality: str
    options: IndexOptions
    images: list[dict[str, Any]]
    spec: ModelSpec

    @classmethod
    def of(cls, layout: Layout, modality: str, options: IndexOptions) -> IndexJob:
        _check_modality(modality)
        images = _catalogue_images(layout, modality)
        return cls(layout, modality, options, images, parse_model_spec(options.model).resolved())

    @property
    def folder(self) -> Path:
        return self.layout.index_dir(self.modality, self.spec.text)

    @property
    def neighbours(self) -> Path:
        return self.folder / NEIGHBOURS

    @property
    def store_dir(self) -> Path:
        return self.folder / "embeddings"

    def rank_dir(self, rank: Rank) -> Path:
        return self.folder / MARKER_DIR / rank.tag

    def blocks(self) -> list[list[dict[str, Any]]]:
        return catalogue_blocks(self.images, self.options.batch_size)

    def work_digest(self, model: ResolvedModel) -> str:
        """What ranks must agree on: the catalogue, the model identity and the block size."""
        work = {
            "catalogue": catalogue_fingerprint(self.images),
            "model": model.identity(),
            "block": self.options.batch_size,
        }
        return hashlib.sha256(json.dumps(work, sort_keys=True).encode()).hexdigest()

    def cli(self, *extra: str) -> str:
        """The command line that runs this job (for lock holders and rerun hints)."""
        words = ["medscout-data", "index", "--modality", self.modality, "--out", str(self.layout.root)]
        words += ["--model", self.spec.text, "--batch-size", str(self.options.batch_size), *extra]
        return shlex.join(words)

    def rank_cli(self, rank: Rank) -> str:
        return self.cli("--rank", str(rank.rank), "--world-size", str(rank.world_size))


# ----------------------------------------------------------------------------- the stage


def ensure_neighbours(
    layout: Layout,
    recipe: Recipe,
    modality: str = "xray",
    model: str | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    k: int | None = None,
    root: Path | None = None,
    workers: int = 1,
    search: str | None = None,
) -> Path:
    """The neighbours table for this model, catalogue and plan, made first if missing or stale.

    Runs ingest (which keeps an up-to-date catalogue), then `index_catalogue`
    (which merges the outputs of ranks when there are any, refusing while one is
    missing). `model`, `batch_size`, `k` and `search` override the recipe's [index].
    """
    _check_modality(modality)
    options = IndexOptions.from_recipe(recipe, model, device, batch_size, k, search, workers)
    try:
        from medscout_data.sources import ensure_catalogue
    except ImportError as exc:
        raise IndexStageError(f"the ingest stage is not available ({exc}); index needs a catalogue") from exc
    ensure_catalogue(layout, recipe, modality, root=root, workers=workers)
    return index_catalogue(layout, recipe, modality, options)


def index_catalogue(
    layout: Layout,
    recipe: Recipe,
    modality: str,
    options: IndexOptions,
    merge: bool = False,
    world_size: int | None = None,
) -> Path:
    """The neighbours table of the catalogue as it is; (re)made when missing or stale. Its path.

    What is missing is embedded here, unless ranks have embedded this
    catalogue with this model: then every rank must have finished and their
    embeddings are merged (`merge` insists on that; `world_size` picks which
    ranks when several splits were run).
    """
    job = IndexJob.of(layout, modality, options)
    plan = _plan(layout, recipe, job)
    wanted = _wanted(job, plan)
    try:
        model = resolve_model(job.spec)
    except ModelUnavailable:
        if _is_current(job.neighbours, wanted):
            log.warning("%s: no model weights here, but its neighbours are current; using them", job.spec)
            return job.neighbours
        raise
    wanted.update(weights=model.weights, embedding_dim=str(model.dim))
    digest = job.work_digest(model)
    current = _is_current(job.neighbours, wanted)
    world = world_size or _rank_world(job, digest, required=merge and not current)
    if current and not (merge and world):
        if world:
            log.warning("%s: rank outputs are left from a merge; `index --merge` removes them", job.folder)
        log.info("%s is current for %s", job.neighbours, job.spec.text)
        return job.neighbours
    with _writing(job.folder, "index", job.cli(*(["--merge"] if merge else []))):
        if not current:
            report = RunReport("index")
            report.count("images", len(job.images))
            if world:
                store = _merged_store(job, model, digest, world, report)
            else:
                store = _embedded_store(job, model, report)
            _write_neighbours(job, plan, store, wanted, report, world)
        if world:
            _remove_rank_outputs(job, model, digest, world)
    return job.neighbours


def embed_rank(layout: Layout, modality: str, options: IndexOptions, rank: Rank) -> Path:
    """Embed this rank's share of the catalogue's blocks (never running ingest); its marker's path.

    Images the merged store already holds are reused; a rerun of a killed rank
    embeds only the blocks it had not written.
    """
    job = IndexJob.of(layout, modality, options)
    model = resolve_model(job.spec)
    digest = job.work_digest(model)
    with _writing(job.folder, f"index-{rank.tag}", job.rank_cli(rank)):
        own = _rank_store(job, model, digest, rank)
        merged = EmbeddingStore(job.store_dir, model.identity(), create=False)
        report = RunReport(f"index {rank}")
        blocks = rank.share(job.blocks())
        report.count("images", sum(len(block) for block in blocks))
        unreadable = embed_missing(
            blocks,
            own,
            lambda: load_embedder(model, options.device),
            layout.cache_dir(modality),
            options.workers,
            report,
            reuse=(merged,),
        )
        info = {
            "counts": dict(report.counts),
            "unreadable": unreadable,
            "skipped": [asdict(skip) for skip in report.skips],
            "model": job.spec.text,
            "weights": model.weights,
            "batch_size": options.batch_size,
            "catalogue_sha256": catalogue_fingerprint(job.images),
            "seconds": round(report.seconds, 3),
        }
        path = write_marker(job.folder, rank, digest, info)
    log.info(report.summary())
    return path


def _embedded_store(job: IndexJob, model: ResolvedModel, report: RunReport) -> EmbeddingStore:
    """Embed here what the store lacks."""
    store = EmbeddingStore(job.store_dir, model.identity())
    embed_missing(
        job.blocks(),
        store,
        lambda: load_embedder(model, job.options.device),
        job.layout.cache_dir(job.modality),
        job.options.workers,
        report,
    )
    return store


def _rank_store(job: IndexJob, model: ResolvedModel, digest: str, rank: Rank) -> EmbeddingStore:
    """The rank's own store, emptied first if it was started on other work."""
    folder = job.rank_dir(rank)
    work = {"digest": digest, "rank": rank.rank, "world_size": rank.world_size}
    store = EmbeddingStore(folder, model.identity())
    if _read_json(folder / WORK_FILE) != work:
        if len(store):
            log.info("%s: made for another catalogue, model or batch size; starting afresh", folder)
        store.remove()
        store = EmbeddingStore(folder, model.identity())
        write_json_atomic(work, folder / WORK_FILE)
    return store


# ----------------------------------------------------------------------------- merging ranks


def _rank_world(job: IndexJob, digest: str, required: bool) -> int | None:
    """The world size of the ranks that embedded this work, None when no rank did."""
    found = _rank_worlds(job.folder, digest)
    if len(found) == 1:
        return found.pop()
    if len(found) > 1:
        sizes = ", ".join(map(str, sorted(found)))
        raise RankError(
            f"{job.folder}: ranks of several world sizes ({sizes}) embedded this catalogue; "
            f"merge one of them: `{job.cli('--merge', '--world-size', 'N')}`"
        )
    if required:
        raise RankError(
            f"{job.folder}: no rank has embedded this catalogue with {job.spec.text} and batch size "
            f"{job.options.batch_size}; run `{job.cli('--rank', 'R', '--world-size', 'N')}` for "
            "R = 0 .. N-1 first (with the same --recipe and --batch-size as this merge)"
        )
    return None


def _rank_worlds(folder: Path, digest: str) -> set[int]:
    """World sizes with a marker or a started rank folder for the work `digest`."""
    ranks = folder / MARKER_DIR
    worlds = set()
    for path in ranks.iterdir() if ranks.is_dir() else ():
        match = _RANK_NAME.fullmatch(path.name)
        if match is None:
            continue
        record = _read_json(path if match.group(3) else path / WORK_FILE)
        if isinstance(record, dict) and record.get("digest") == digest:
            worlds.add(int(match.group(2)))
    return worlds


def _merged_store(
    job: IndexJob, model: ResolvedModel, digest: str, world: int, report: RunReport
) -> EmbeddingStore:
    """Every rank finished: their parts moved into the store, their reports into `report`."""
    rerun = job.cli().replace("{", "{{").replace("}", "}}") + f" --rank {{rank}} --world-size {world}"
    try:
        require_all_ranks(job.folder, world, digest, rerun)
    except RankError as exc:
        raise RankError(f"{exc}{_stale_note(job, world, digest)}") from exc
    store = EmbeddingStore(job.store_dir, model.identity())
    unreadable: set[str] = set()
    for number in range(world):
        rank = Rank(number, world)
        marker = _read_json(marker_path(job.folder, rank))
        for key, count in marker.get("counts", {}).items():
            if key != "images":
                report.count(key, count)
        report.extend([Skip(**skip) for skip in marker.get("skipped", [])])
        unreadable.update(marker.get("unreadable", []))
        with stage_lock(job.folder, f"index-{rank.tag}", job.rank_cli(rank)):
            own = EmbeddingStore(job.rank_dir(rank), model.identity(), create=False)
            report.count("embeddings_from_ranks", store.absorb(own))
    _check_complete(job, store, unreadable, world)
    store.compact()
    report.info["ranks"] = world
    return store


def _stale_note(job: IndexJob, world: int, digest: str) -> str:
    """Why markers of this world size do not count, when some exist for other work."""
    here = {"batch_size": job.options.batch_size, "model": job.spec.text}
    here["catalogue_sha256"] = catalogue_fingerprint(job.images)
    for number in range(world):
        marker = _read_json(marker_path(job.folder, Rank(number, world)))
        if isinstance(marker, dict) and marker.get("digest") != digest:
            differs = [f"{key} {marker.get(key)!r} there, {value!r} here" for key, value in here.items()]
            differs = [d for d, key in zip(differs, here, strict=True) if marker.get(key) != here[key]]
            what = "; ".join(differs) or "other model weights"
            return f". Rank {number}'s marker is for other work ({what}): rerun the ranks with this setting"
    return ""


def _check_complete(job: IndexJob, store: EmbeddingStore, unreadable: set[str], world: int) -> None:
    """Every image is embedded or was unreadable; else name the ranks whose share has holes."""
    holes: dict[int, int] = defaultdict(int)
    for position, row in enumerate(job.images):
        if store.key(row["image_id"]) != row["row_key"] and row["image_id"] not in unreadable:
            holes[(position // job.options.batch_size) % world] += 1
    if holes:
        ranks = ", ".join(str(r) for r in sorted(holes))
        first = Rank(min(holes), world)
        raise RankError(
            f"{job.folder}: {sum(holes.values())} image(s) of rank {ranks} have no embedding although "
            f"their markers say finished (were parts removed?); rerun them, e.g. `{job.rank_cli(first)}`"
        )


def _remove_rank_outputs(job: IndexJob, model: ResolvedModel, digest: str, world: int) -> None:
    """The merged ranks' folders and markers: only what the ranks wrote."""
    for number in range(world):
        rank = Rank(number, world)
        with stage_lock(job.folder, f"index-{rank.tag}", job.rank_cli(rank)):
            folder = job.rank_dir(rank)
            if folder.is_dir():
                (folder / WORK_FILE).unlink(missing_ok=True)
                EmbeddingStore(folder, model.identity(), create=False).remove()
            marker = marker_path(job.folder, rank)
            if (_read_json(marker) or {}).get("digest") == digest:
                marker.unlink()
    with contextlib.suppress(OSError):  # other ranks' outputs (or a user's files) are still there
        (job.folder / MARKER_DIR).rmdir()
    log.info("%s: the outputs of %d rank(s) are merged into %s", job.folder, world, job.store_dir)


# ----------------------------------------------------------------------------- outputs


def _write_neighbours(
    job: IndexJob,
    plan: SubjectPlan,
    store: EmbeddingStore,
    wanted: dict[str, str],
    report: RunReport,
    world: int | None,
) -> None:
    embedded = [row for row in job.images if store.key(row["image_id"]) == row["row_key"]]
    vectors = store.vectors([row["image_id"] for row in embedded])
    config = SearchConfig(kind=job.options.search, use_gpu=job.options.device != "cpu")
    table, stats = neighbour_table(embedded, vectors, plan, job.options.k, config)
    report.count("neighbour_rows", table.num_rows)
    report.count("short_queries", stats["short_queries"])
    if stats["no_neighbour_queries"]:
        log.warning(
            "%d image(s) have no neighbour: their side of the plan has no other subject",
            stats["no_neighbour_queries"],
        )
    write_table_atomic(table, job.neighbours, {f"medscout.{key}": value for key, value in wanted.items()})
    info = {**wanted, "recipe_seed": plan.seed, "faiss_gpus": faiss_gpus(), **stats, **report.as_dict()}
    # FAISS builds HNSW graphs with many threads: its neighbours may differ slightly between runs.
    info["deterministic"] = job.options.search != "hnsw"
    info["options"] = asdict(job.options)
    info["ranks"] = world or 1
    write_json_atomic(info, job.folder / "index.json")
    report.write(job.folder)
    log.info(report.summary())


def _wanted(job: IndexJob, plan: SubjectPlan) -> dict[str, str]:
    """The metadata a current neighbours table carries (weights and dim are added once resolved)."""
    return {
        "modality": job.modality,
        "model": job.spec.text,
        "k": str(job.options.k),
        "search": job.options.search,
        "plan_sha256": plan.digest,
        "catalogue_sha256": catalogue_fingerprint(job.images),
    }


def _plan(layout: Layout, recipe: Recipe, job: IndexJob) -> SubjectPlan:
    path = layout.plan(job.modality)
    try:
        return ensure_plan(path, sorted({row["subject_id"] for row in job.images}), job.modality, recipe)
    except OSError as exc:
        raise IndexStageError(_os_error_message(exc, path)) from exc


@contextmanager
def _writing(folder: Path, name: str, command: str) -> Iterator[None]:
    """Hold the folder's lock for `name`; a failed write (read-only, disk full) is one clear error."""
    try:
        with stage_lock(folder, name, command):
            yield
    except OSError as exc:
        raise IndexStageError(_os_error_message(exc, folder)) from exc


def _os_error_message(exc: OSError, where: Path) -> str:
    what = exc.filename or where
    if exc.errno == errno.ENOSPC:
        advice = "the disk is full: free space (or use another --out) and rerun; finished parts are kept"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        advice = "this folder cannot be written: choose a writable --out"
    else:
        advice = "rerun once the cause is fixed; finished parts are kept"
    return f"{what}: {exc.strerror or exc}; {advice}"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_current(path: Path, wanted: dict[str, str]) -> bool:
    if not path.is_file():
        return False
    metadata = read_file_metadata(path)
    return all(metadata.get(f"medscout.{key}") == value for key, value in wanted.items())
