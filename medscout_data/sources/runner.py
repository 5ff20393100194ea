"""Running ingest: list a source, process its units (in parallel, resumably, by rank), write the catalogue.

Units whose part carries the same input hash are reused; the rest are
processed by a spawned process pool whose workers die with the main process
(`medscout_data.workers.process_pool`), with a bounded number in flight, so
memory does not grow with the number of units. Each worker writes its unit's
cache stacks and part itself. The catalogue is then the parts concatenated in
unit order (identical bytes for any worker count or rank split), written
atomically with the source kind, root and the `recipe.ingest` digest in its
Parquet metadata.

Ranks (`--rank R --world-size N`, or a Slurm array) each process the units
`keys[R::N]` and leave a completion marker; `merge_ranks` (`ingest --merge`,
or `ensure_catalogue` when markers exist) checks that every rank finished and
every part is current, then assembles the catalogue as one process would.

A run holds a lock on the catalogue and cache folders, so two ingests on one
`--out` fail clearly; a rank holds a lock of its own. A run that will process
anything first removes the old catalogue, so a run that dies (a full disk)
never leaves a catalogue that looks whole over a changed cache. Pruning
deletes only what ingest recorded writing: parts of units that are gone and
the cache files those parts list.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import statistics
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from medscout_data import MODALITIES
from medscout_data.layout import Layout
from medscout_data.locking import stage_lock
from medscout_data.ranks import MARKER_DIR, Rank, RankError, require_all_ranks, write_marker
from medscout_data.recipe import Recipe
from medscout_data.report import RunReport, Skip
from medscout_data.schema import CATALOGUE_SCHEMA
from medscout_data.shards import ShardWriter, read_file_metadata
from medscout_data.sources.base import (
    FILTER_REASONS,
    INGEST_VERSION,
    IngestError,
    Job,
    Listing,
    config_digest,
    part_files,
    read_part_info,
    unit_hash,
)
from medscout_data.sources.detect import check_source, detect_source, source_fingerprint
from medscout_data.sources.releases import source_release
from medscout_data.workers import process_pool

log = logging.getLogger(__name__)

CATALOGUE_ROW_GROUP = 8192
INFO_KEYS = (
    "ingest_version",
    "modality",
    "source_kind",
    "source_root",
    "source_fingerprint",
    "ingest_digest",
)
CONTEXT_KEYS = ("ingest_version", "modality", "source_kind", "source_root", "ingest_digest")
LOGGED_SKIPS_PER_REASON = 20
DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


def resolve_source(
    layout: Layout, recipe: Recipe, modality: str, root: Path | str | None, source: str | None
) -> tuple[Path, str]:
    """The absolute source root (the embedded sample when None) and its kind (detected when None)."""
    if modality not in MODALITIES:
        raise IngestError(f"unknown modality {modality!r}; use one of {', '.join(MODALITIES)}")
    if source is not None:
        check_source(source, modality)
    if root is None:
        root = _sample_root(layout, recipe, modality, source)
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise IngestError(f"source root {root} does not exist or is not a folder; check --root")
    return root, source or detect_source(root, modality)


def _sample_root(layout: Layout, recipe: Recipe, modality: str, source: str | None) -> Path:
    from medscout_data.sample import ensure_sample_source, sample_root_for

    try:
        if source == "mimic-cxr":  # the DICOM twin of the JPG sample
            s = recipe.sample
            folder = layout.sample_root() / "mimic-cxr"
            return ensure_sample_source(folder, "mimic-cxr", s.subjects, s.size, s.slices, s.seed)
        return sample_root_for(layout, recipe, modality)
    except OSError as exc:
        raise IngestError(
            f"{exc.filename or layout.sample_root()}: cannot write the sample source ({exc.strerror}); "
            "choose a writable --out, or pass --root"
        ) from exc


def expected_info(root: Path, kind: str, modality: str, recipe: Recipe) -> dict[str, str]:
    """The catalogue metadata a run on this root, kind and `recipe.ingest` writes."""
    return {
        "ingest_version": INGEST_VERSION,
        "modality": modality,
        "source_kind": kind,
        "source_root": str(root),
        "source_fingerprint": source_fingerprint(root, kind),
        "ingest_digest": config_digest(recipe.ingest),
    }


def catalogue_info(path: Path) -> dict[str, str]:
    """What a catalogue says about how it was made (empty when it does not exist or is unreadable)."""
    if not Path(path).is_file():
        return {}
    try:
        metadata = read_file_metadata(path)
    except Exception:  # a damaged catalogue is simply not current
        return {}
    return {k: metadata[k] for k in INFO_KEYS if k in metadata}


def ensure_catalogue(
    layout: Layout,
    recipe: Recipe,
    modality: str,
    root: Path | str | None = None,
    source: str | None = None,
    workers: int = 1,
) -> Path:
    """The modality's catalogue; ingests (or merges finished ranks) when it is missing or stale."""
    root, kind = resolve_source(layout, recipe, modality, root, source)
    path = layout.catalogue(modality)
    if catalogue_info(path) == expected_info(root, kind, modality, recipe):
        return path
    world = None
    if any((layout.catalogue_dir(modality) / MARKER_DIR).glob("rank-*.json")):
        info = expected_info(root, kind, modality, recipe)
        listing = _listing(kind, root, modality, recipe, info, RunReport(stage="listing"))
        world = _marked_world_size(layout.catalogue_dir(modality), _work_digest(info, listing))
    if world:
        log.info("ingest %s: rank markers of a %d-rank run found; merging their parts", modality, world)
        report = merge_ranks(layout, recipe, modality, root, kind, world, progress=False)
    else:
        log.info("ingest %s: catalogue %s missing or stale; ingesting %s", modality, path, root)
        report = run_ingest(layout, recipe, modality, root, kind, workers)
    log.info(report.summary())
    return path


# ------------------------------------------------------------------ a run


def run_ingest(
    layout: Layout,
    recipe: Recipe,
    modality: str,
    root: Path | str | None = None,
    source: str | None = None,
    workers: int = 1,
    progress: bool = True,
    rank: Rank | None = None,
    command: str = "",
) -> RunReport:
    """Ingest one modality's source (or this rank's share of it) into `layout`; returns the run's report.

    A single process writes the catalogue and its report; a rank of several
    writes its parts and a completion marker, and `merge_ranks` writes the rest.
    """
    rank = rank or Rank()
    root, kind = resolve_source(layout, recipe, modality, root, source)
    command = command or f"medscout-data ingest --modality {modality}"
    report = RunReport(stage=f"ingest {modality}" + ("" if rank.single else f" ({rank})"))
    with _disk_errors(layout, modality, report), _locks(layout, modality, rank, command):
        info = expected_info(root, kind, modality, recipe)
        listing = _listing(kind, root, modality, recipe, info, report)
        indexes = rank.share(range(len(listing.keys)))
        bar = tqdm(total=len(indexes), desc=f"ingest {modality}", unit="unit", disable=not progress)
        jobs = _jobs(listing, indexes, info, root, layout, recipe, modality, report, bar)
        _run(jobs, workers, bar)
        bar.close()
        if rank.single:
            _finish(layout, modality, listing, info, report, drop=recipe.ingest.drop_duplicates)
        else:
            marker = write_marker(
                layout.catalogue_dir(modality), rank, _work_digest(info, listing), report.as_dict()
            )
            report.info["marker"] = str(marker)
    return report


def merge_ranks(
    layout: Layout,
    recipe: Recipe,
    modality: str,
    root: Path | str | None = None,
    source: str | None = None,
    world_size: int | None = None,
    progress: bool = True,
    command: str = "",
) -> RunReport:
    """Assemble the catalogue from the parts of ranks that all finished (byte-identical to one process).

    `world_size` defaults to the one the rank markers name; a missing or stale
    rank is a `RankError` naming it and the command that runs it.
    """
    root, kind = resolve_source(layout, recipe, modality, root, source)
    command = command or f"medscout-data ingest --modality {modality} --merge"
    report = RunReport(stage=f"ingest {modality} (merge)")
    with _disk_errors(layout, modality, report), _locks(layout, modality, Rank(), command):
        info = expected_info(root, kind, modality, recipe)
        listing = _listing(kind, root, modality, recipe, info, report)
        folder = layout.catalogue_dir(modality)
        digest = _work_digest(info, listing)
        world = world_size or _marked_world_size(folder, digest)
        if not world:
            raise RankError(
                f"{folder / MARKER_DIR}: no rank has finished this source with this recipe; run the ranks "
                f"(`medscout-data ingest --modality {modality} --root {root} --rank R --world-size N`) first"
            )
        rerun = (
            f"medscout-data ingest --modality {modality} --root {root} --rank {{rank}} --world-size {world}"
        )
        require_all_ranks(folder, world, digest, rerun)
        report.info["world_size"] = world
        _finish(layout, modality, listing, info, report, world, recipe.ingest.drop_duplicates)
    return report


def _marked_world_size(folder: Path, digest: str) -> int | None:
    """The world size of the rank markers under `folder` that carry `digest` (the largest), else None."""
    sizes = set()
    for path in (folder / MARKER_DIR).glob("rank-*-of-*.json"):
        try:
            marker = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(marker, dict) and marker.get("digest") == digest:
                sizes.add(int(marker["world_size"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return max(sizes) if sizes else None


def _work_digest(info: dict[str, str], listing: Listing) -> str:
    """Digest of the whole work list: what every rank's marker must carry."""
    blob = json.dumps([info, listing.keys], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@contextmanager
def _locks(layout: Layout, modality: str, rank: Rank, command: str) -> Iterator[None]:
    """Hold the catalogue and cache folders (a rank: its own lock in each)."""
    name = "ingest" if rank.single else f"ingest-{rank.tag}"
    with ExitStack() as stack:
        for folder in (layout.catalogue_dir(modality), layout.cache_dir(modality)):
            stack.enter_context(stage_lock(folder, name, command))
        yield


@contextmanager
def _disk_errors(layout: Layout, modality: str, report: RunReport) -> Iterator[None]:
    """A write that fails (full disk, read-only folder) becomes one clear IngestError, kept in report.json."""
    try:
        yield
    except OSError as exc:
        where = exc.filename or layout.catalogue_dir(modality)
        if exc.errno in DISK_FULL or "No space left" in str(exc):
            fix = "free some space (or choose another --out) and run ingest again: finished units are kept"
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            fix = "choose a writable --out (or fix the folder's permissions)"
        else:
            fix = "run ingest again: finished units are kept"
        message = f"{where}: {exc.strerror or exc}; {fix}"
        report.info["failed"] = message
        with suppress(OSError):  # the disk that failed may not take the report either
            report.write(layout.catalogue_dir(modality))
        raise IngestError(message) from exc


def _listing(
    kind: str, root: Path, modality: str, recipe: Recipe, info: dict[str, str], report: RunReport
) -> Listing:
    report.info.update(source_kind=kind, source_root=str(root), catalogue="")
    if kind == "totalseg":
        from medscout_data.sources.volumes import list_volumes

        listing = list_volumes(root, modality, recipe.ingest)
    else:
        from medscout_data.sources.xray import list_xray

        listing = list_xray(root, kind, recipe.ingest)
    record_skips(report, listing.skips)
    report.counts.update(listing.counts)
    return listing


def record_skips(report: RunReport, skips: list[Skip]) -> None:
    """Add skips to the report, logging a few per reason (filters at debug level) and a count for the rest."""
    report.skips.extend(skips)
    by_reason: Counter[str] = Counter()
    for item in skips:
        by_reason[item.reason] += 1
        if by_reason[item.reason] <= LOGGED_SKIPS_PER_REASON:
            level = logging.DEBUG if item.reason in FILTER_REASONS else logging.WARNING
            log.log(level, "skipped %s", item.message)
    for reason, count in sorted(by_reason.items()):
        if count > LOGGED_SKIPS_PER_REASON:
            level = logging.DEBUG if reason in FILTER_REASONS else logging.WARNING
            log.log(level, "%d more skipped with reason %s; all are in errors.parquet", count - 20, reason)


def _jobs(
    listing: Listing,
    indexes: list[int],
    info: dict[str, str],
    root: Path,
    layout: Layout,
    recipe: Recipe,
    modality: str,
    report: RunReport,
    bar: tqdm,
) -> Iterator[Job]:
    """Jobs for units without a current part, generated lazily (one unit's records at a time).

    The old catalogue is removed before the first job: from then on the cache
    changes under it.
    """
    context = {k: info[k] for k in CONTEXT_KEYS}
    parts = layout.catalogue_dir(modality) / "parts"
    first = True
    for index in indexes:
        key = listing.keys[index]
        unit = listing.unit(index)
        digest = unit_hash(context, root, unit)
        part = parts / f"{key}.parquet"
        done = read_part_info(part)
        if done is not None and done.unit_hash == digest:
            report.count("units_reused")
            bar.update()
            continue
        if first:
            layout.catalogue(modality).unlink(missing_ok=True)
            first = False
        report.count("units_run")
        yield Job(
            info["source_kind"], modality, root, layout.cache_dir(modality), part, digest, recipe.ingest, unit
        )


def process_job(job: Job) -> str:
    """Process one unit (in a worker or in-process); its outputs are its files."""
    if job.kind == "totalseg":
        from medscout_data.sources.volumes import process_volume

        process_volume(job)
    else:
        from medscout_data.sources.xray import process_chunk

        process_chunk(job)
    return job.unit.key


def _init_worker() -> None:
    """One thread per worker process (the pool is the parallelism); ITK's own warnings off."""
    import cv2
    import SimpleITK as sitk

    cv2.setNumThreads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    sitk.ProcessObject.SetGlobalWarningDisplay(False)


def _run(jobs: Iterator[Job], workers: int, bar: tqdm) -> None:
    if workers <= 1:
        for job in jobs:
            process_job(job)
            bar.update()
        return
    try:
        with process_pool(workers, initializer=_init_worker) as pool:
            pending: set[Future[str]] = set()
            for job in jobs:
                pending.add(pool.submit(process_job, job))
                if len(pending) >= 2 * workers:
                    pending = _collect(pending, bar, FIRST_COMPLETED)
            _collect(pending, bar, ALL_COMPLETED)
    except BrokenProcessPool as exc:
        raise IngestError(
            "a worker process died (killed for memory?); finished units are kept: "
            "run ingest again, with fewer --workers if memory is short"
        ) from exc


def _collect(pending: set[Future[str]], bar: tqdm, when: str) -> set[Future[str]]:
    done, rest = wait(pending, return_when=when)
    for future in done:
        future.result()  # a worker's failure (a full disk) stops the run; finished units stay for the rerun
        bar.update()
    return rest


# ------------------------------------------------------------ the catalogue


def _finish(
    layout: Layout,
    modality: str,
    listing: Listing,
    info: dict[str, str],
    report: RunReport,
    world: int = 1,
    drop: bool = True,
) -> None:
    """Assemble the catalogue from current parts, prune what ingest no longer needs, write the report."""
    catalogue = layout.catalogue(modality)
    report.info["catalogue"] = str(catalogue)
    release, evidence = source_release(Path(info["source_root"]), info["source_kind"], listing.keys)
    report.info["source_release"] = {"release": release, "evidence": evidence}
    parts = layout.catalogue_dir(modality) / "parts"
    _assemble(listing, parts, catalogue, info, report, world, release, drop)
    _prune(layout.catalogue_dir(modality) / "parts", layout.cache_dir(modality), listing, report)
    report.write(layout.catalogue_dir(modality))


def _assemble(
    listing: Listing,
    parts: Path,
    path: Path,
    info: dict[str, str],
    report: RunReport,
    world: int,
    release: str = "",
    drop: bool = True,
) -> None:
    """Concatenate the parts in unit order into the catalogue, and gather their skips and counts.

    Every part must carry its unit's current input hash; one that does not
    (its unit changed, or its rank never ran it) stops the merge, naming it.
    """
    seen: set[str] = set()
    first_of: dict[str, tuple[str, str, str]] = {}  # pixel digest -> (image, subject, source) kept
    context = {k: info[k] for k in CONTEXT_KEYS}
    per_subject: dict[str, dict[str, int]] = {}
    with ShardWriter(path, CATALOGUE_SCHEMA, CATALOGUE_ROW_GROUP, metadata=info) as writer:
        for index, key in enumerate(listing.keys):
            part = parts / f"{key}.parquet"
            done = read_part_info(part)
            if done is None or done.unit_hash != unit_hash(
                context, Path(info["source_root"]), listing.unit(index)
            ):
                owner = f" (rank {index % world} of {world})" if world > 1 else ""
                state = "is missing" if done is None else "is stale (its inputs changed)"
                raise IngestError(f"{part}: the part of unit {key}{owner} {state}; run ingest again")
            report.skips.extend(done.skips)  # logged by the worker that found them
            report.counts.update(done.counts)
            if info["source_kind"] == "totalseg":
                per_subject[key] = _slice_counts(done.counts)
            table = pq.read_table(part)
            ids = table.column("image_id").to_pylist()
            duplicates = seen.intersection(ids)
            if duplicates or len(set(ids)) != len(ids):
                raise IngestError(f"{part}: image ids repeat across units (e.g. {sorted(duplicates)[:3]})")
            seen.update(ids)
            if drop:
                table = drop_duplicates(table, first_of, report)
            writer.write_table(_with_release(table, release))
    if per_subject:
        report.info["slices_per_subject"] = per_subject
        report.info["slices_kept_summary"] = kept_summary(per_subject)


def _with_release(table: pa.Table, release: str) -> pa.Table:
    """The rows with the source's release, and an empty view source where a unit left none."""
    column = pa.array([release] * table.num_rows, pa.string())
    table = table.set_column(table.schema.get_field_index("source_release"), "source_release", column)
    position = table.schema.get_field_index("view_source")
    return table.set_column(position, "view_source", table.column(position).fill_null(""))


def drop_duplicates(
    table: pa.Table, first_of: dict[str, tuple[str, str, str]], report: RunReport
) -> pa.Table:
    """The part's rows whose pixels no other source's earlier row had; each dropped one is a
    `duplicate-image` skip naming both ids (the first in unit order is kept: the same for any
    worker count or rank split).

    One radiograph under two patient ids (or one volume under two) would otherwise make
    byte-identical items, and could put the same pixels on both sides of the subject partition.
    Identical slices of one volume (a phantom constant along z) are that volume's own and kept.
    """
    keep = []
    columns = ("image_id", "subject_id", "source_id", "path", "pixel_sha256")
    values = zip(*(table.column(c).to_pylist() for c in columns), strict=True)
    for image_id, subject, source_id, path, digest in values:
        first = first_of.setdefault(digest, (image_id, subject, source_id)) if digest else None
        keep.append(first is None or first[0] == image_id or first[2] == source_id)
        if keep[-1]:
            continue
        report.skips.append(
            Skip(
                path,
                "duplicate-image",
                f"{path}: image {image_id} (subject {subject}) has the same pixels as image {first[0]} "
                f"(subject {first[1]}); kept {first[0]} only",
            )
        )
        report.count("duplicate_images")
    return table if all(keep) else table.filter(pa.array(keep))


def _slice_counts(counts: Counter[str]) -> dict[str, int]:
    names = ("kept", "usable", "dropped_low_body", "dropped_no_background", "left_out_by_budget")
    keys = ("slices_kept", "slices_usable", "slices_dropped_low_body", "slices_dropped_no_background")
    values = [counts.get(k, 0) for k in keys] + [counts.get("slices_left_out_by_budget", 0)]
    return dict(zip(names, values, strict=True))


def kept_summary(per_subject: dict[str, dict[str, int]]) -> str:
    """One line: slices kept per subject (min, median, max) and the subjects that kept none."""
    kept = [counts["kept"] for counts in per_subject.values()]
    none = sorted(subject for subject, counts in per_subject.items() if not counts["kept"])
    text = f"slices kept per subject: min {min(kept)}, median {statistics.median(kept):g}, max {max(kept)}"
    if none:
        text += (
            f"; {len(none)} subject(s) kept none ({', '.join(none[:5])}{', ...' if len(none) > 5 else ''})"
        )
    return text


def _prune(parts: Path, cache_dir: Path, listing: Listing, report: RunReport) -> None:
    """Remove the parts of units that no longer exist, and the cache files those parts list.

    Files ingest did not record writing (anything else a user keeps there) are never touched.
    """
    keys = set(listing.keys)
    removed = 0
    for part in sorted(parts.glob("*.parquet")) if parts.is_dir() else []:
        if part.stem in keys or read_part_info(part) is None:
            continue
        for name in sorted(part_files(part)):
            target = cache_dir / name
            if target.exists():
                target.unlink()
                removed += 1
        part.unlink()
        report.count("parts_removed")
    if removed:
        report.count("cache_files_removed", removed)
        log.info("removed %d cache file(s) of units no longer in the source from %s", removed, cache_dir)
