"""Running ingest: list a source, process its units (in parallel, resumably), write the catalogue.

Units whose part carries the same input hash are reused; the rest are
processed by a "spawn" process pool with a bounded number in flight, so memory
does not grow with the number of units. Each worker writes its unit's cache
stacks and part itself. The catalogue is then the parts concatenated in unit
order (identical bytes for any worker count), written atomically with the
source kind, root and the `recipe.ingest` digest in its Parquet metadata.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pyarrow.parquet as pq
from tqdm import tqdm

from medscout_data import MODALITIES
from medscout_data.layout import Layout
from medscout_data.recipe import Recipe
from medscout_data.report import RunReport
from medscout_data.schema import CATALOGUE_SCHEMA
from medscout_data.shards import ShardWriter, read_file_metadata
from medscout_data.sources.base import (
    INGEST_VERSION,
    IngestError,
    Job,
    Listing,
    config_digest,
    read_part_info,
    unit_hash,
)
from medscout_data.sources.detect import check_source, detect_source, source_fingerprint

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

    if source == "mimic-cxr":  # the DICOM twin of the JPG sample
        s = recipe.sample
        folder = layout.sample_root() / "mimic-cxr"
        return ensure_sample_source(folder, "mimic-cxr", s.subjects, s.size, s.slices, s.seed)
    return sample_root_for(layout, recipe, modality)


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
    """What a catalogue says about how it was made (empty when it does not exist)."""
    if not Path(path).is_file():
        return {}
    metadata = read_file_metadata(path)
    return {k: metadata[k] for k in INFO_KEYS if k in metadata}


def ensure_catalogue(
    layout: Layout,
    recipe: Recipe,
    modality: str,
    root: Path | str | None = None,
    source: str | None = None,
    workers: int = 1,
) -> Path:
    """The modality's catalogue; ingests first when it is missing or stale for this root, source, recipe."""
    root, kind = resolve_source(layout, recipe, modality, root, source)
    path = layout.catalogue(modality)
    if catalogue_info(path) == expected_info(root, kind, modality, recipe):
        return path
    log.info("ingest %s: catalogue %s missing or stale; ingesting %s", modality, path, root)
    report = run_ingest(layout, recipe, modality, root, kind, workers)
    log.info(report.summary())
    return path


def run_ingest(
    layout: Layout,
    recipe: Recipe,
    modality: str,
    root: Path | str | None = None,
    source: str | None = None,
    workers: int = 1,
    progress: bool = True,
) -> RunReport:
    """Ingest one modality's source into `layout`; returns the run's report (written beside the catalogue)."""
    root, kind = resolve_source(layout, recipe, modality, root, source)
    report = RunReport(stage=f"ingest {modality}")
    info = expected_info(root, kind, modality, recipe)
    report.info.update(source_kind=kind, source_root=str(root), catalogue=str(layout.catalogue(modality)))
    listing = _list(kind, root, modality, recipe)
    report.extend(listing.skips)
    report.counts.update(listing.counts)
    parts = layout.catalogue_dir(modality) / "parts"
    bar = tqdm(total=len(listing.keys), desc=f"ingest {modality}", unit="unit", disable=not progress)
    jobs = _jobs(listing, info, root, layout, recipe, modality, parts, report, bar)
    _run(jobs, workers, bar)
    bar.close()
    _assemble(listing, parts, layout.catalogue(modality), info, report)
    _prune(parts, layout.cache_dir(modality), listing, layout.catalogue(modality))
    report.write(layout.catalogue_dir(modality))
    return report


def _list(kind: str, root: Path, modality: str, recipe: Recipe) -> Listing:
    if kind == "totalseg":
        from medscout_data.sources.volumes import list_volumes

        return list_volumes(root, modality)
    from medscout_data.sources.xray import list_xray

    return list_xray(root, kind, recipe.ingest)


def _jobs(
    listing: Listing,
    info: dict[str, str],
    root: Path,
    layout: Layout,
    recipe: Recipe,
    modality: str,
    parts: Path,
    report: RunReport,
    bar: tqdm,
) -> Iterator[Job]:
    """Jobs for units without a current part, generated lazily (one unit's records at a time)."""
    context = {
        k: info[k] for k in ("ingest_version", "modality", "source_kind", "source_root", "ingest_digest")
    }
    for index, key in enumerate(listing.keys):
        unit = listing.unit(index)
        digest = unit_hash(context, root, unit)
        part = parts / f"{key}.parquet"
        done = read_part_info(part)
        if done is not None and done.unit_hash == digest:
            report.count("units_reused")
            bar.update()
            continue
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
    """One thread per worker process: the pool is the parallelism."""
    import cv2
    import SimpleITK as sitk

    cv2.setNumThreads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _run(jobs: Iterator[Job], workers: int, bar: tqdm) -> None:
    if workers <= 1:
        for job in jobs:
            process_job(job)
            bar.update()
        return
    context = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
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
        future.result()  # a worker's unexpected failure stops the run; finished units stay for the rerun
        bar.update()
    return rest


def _assemble(listing: Listing, parts: Path, path: Path, info: dict[str, str], report: RunReport) -> None:
    """Concatenate the parts in unit order into the catalogue, and gather their skips and counts."""
    seen: set[str] = set()
    with ShardWriter(path, CATALOGUE_SCHEMA, CATALOGUE_ROW_GROUP, metadata=info) as writer:
        for key in listing.keys:
            part = parts / f"{key}.parquet"
            done = read_part_info(part)
            if done is None:
                raise IngestError(f"{part}: the part of unit {key} vanished during the run; run ingest again")
            report.skips.extend(done.skips)  # logged by the worker that found them
            report.counts.update(done.counts)
            table = pq.read_table(part)
            ids = table.column("image_id").to_pylist()
            duplicates = seen.intersection(ids)
            if duplicates or len(set(ids)) != len(ids):
                raise IngestError(f"{part}: image ids repeat across units (e.g. {sorted(duplicates)[:3]})")
            seen.update(ids)
            writer.write_table(table)


def _prune(parts: Path, cache_dir: Path, listing: Listing, catalogue: Path) -> None:
    """Remove parts of units that no longer exist and cache files no catalogue row points at."""
    keys = set(listing.keys)
    for part in parts.glob("*.parquet"):
        if part.stem not in keys:
            part.unlink()
    table = pq.read_table(catalogue, columns=["cache_file", "mask_file"])
    used = set(table.column("cache_file").to_pylist()) | set(table.column("mask_file").to_pylist())
    stale = [p for p in cache_dir.glob("*.npy") if p.name not in used] if cache_dir.is_dir() else []
    for file in stale:
        file.unlink()
    if stale:
        log.info("removed %d stale cache file(s) from %s", len(stale), cache_dir)
