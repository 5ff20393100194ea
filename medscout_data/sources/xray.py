"""Chest X-ray sources (MIMIC-CXR-JPG and MIMIC-CXR DICOM) -> 8-bit radiographs in padded chunks.

Inputs are every image file under `<root>/files`, sorted by path and joined on
`dicom_id` (the file name) with the source's index: the JPG release's
`mimic-cxr-2.0.0-metadata.csv.gz` (subject, study, ViewPosition) or the DICOM
release's `cxr-record-list.csv.gz` (subject, study; the view comes from the
ViewPosition tag). `mimic-cxr-2.0.0-split.csv.gz`, when present, gives the
official split, kept as provenance only. Frontal views (`recipe.ingest.xray_views`)
are kept; every other image is recorded with its reason.

Metadata rows whose file is missing are listed by id; a dicom_id whose rows
disagree (on ViewPosition, subject or study) is a `metadata-conflict` and not
used. With `ingest.max_images`, at most that many frontal images are kept: one
per subject in an order fixed by a hash of the subject id, then a second per
subject, and so on (views are known from the JPG metadata; for DICOM, whose
view is only in the file, every image counts); the rest are recorded as
`left-out-by-budget`.

A unit is a chunk of `xray_chunk_images` consecutive inputs. Its usable images,
shrunk to a longest side of `max_size` (and at least `min_image_size` on the
shorter side), go into one image stack with `height` x `width` in the
catalogue, plus a mask stack of the anatomy region. A file that is really a
16-bit PNG (or TIFF) under a `.jpg` name is decoded at its real bit depth and
windowed to its robust range instead of being clipped to white.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np
import polars as pl

from medscout_data.cache import STACK_SUFFIX, StackWriter
from medscout_data.imaging import fit_longest_side, resize
from medscout_data.recipe import IngestConfig
from medscout_data.report import Skip
from medscout_data.seeding import stable_rank
from medscout_data.sources import dicom
from medscout_data.sources.base import (
    InputError,
    Job,
    Listing,
    Unit,
    UnitResult,
    link_problem,
    pixel_digest,
    skip_link,
    write_unit_part,
)
from medscout_data.sources.detect import JPG_METADATA, RECORD_LIST, SPLIT_CSV, SUFFIXES, image_folder
from medscout_data.sources.masks import fill_holes, largest_component
from medscout_data.sources.releases import view_of_dataset, view_of_row

INDEX_COLUMNS = {
    "mimic-cxr-jpg": (JPG_METADATA, ("dicom_id", "subject_id", "study_id", "ViewPosition")),
    "mimic-cxr": (RECORD_LIST, ("dicom_id", "subject_id", "study_id")),
}


# ----------------------------------------------------------------- listing


def list_images(root: Path, suffixes: tuple[str, ...], skips: list[Skip] | None = None) -> list[str]:
    """Relative POSIX paths of every image file under the root's image folder, sorted. Links are
    not followed into folders; an image name that is a symlink loop or a broken link, and a folder
    that cannot be listed, are left out and recorded in `skips` (a rerun skips them again)."""
    found = []
    skips = [] if skips is None else skips
    stack = [image_folder(root)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda e: e.name)  # skips in a stable order
        except OSError as exc:
            where = folder.relative_to(root).as_posix()
            skips.append(
                Skip(where, "unreadable-folder", f"{where}: cannot be listed ({exc.strerror}); skipped")
            )
            continue
        for entry in entries:
            path = folder / entry.name
            if entry.is_dir(follow_symlinks=False):
                stack.append(path)
            elif entry.name.lower().endswith(suffixes):
                problem = link_problem(path) if entry.is_symlink() else None  # d_type: no extra stat
                relative = path.relative_to(root).as_posix()
                if problem is None:
                    found.append(relative)
                else:
                    skip_link(relative, problem, skips)
    return sorted(found)


def list_xray(root: Path, kind: str, config: IngestConfig) -> Listing:
    """Chunks of the sorted image files, each record joined with its metadata row."""
    skips: list[Skip] = []
    counts: Counter[str] = Counter()
    paths = list_images(root, SUFFIXES[kind], skips)
    counts["found"] = len(paths)
    frame = pl.DataFrame(
        {"path": paths, "dicom_id": [PurePosixPath(p).stem for p in paths]},
        schema={"path": pl.String, "dicom_id": pl.String},
    )
    first = frame.get_column("dicom_id").is_first_distinct()
    for path, dicom_id in frame.filter(~first).iter_rows():
        skips.append(Skip(path, "duplicate-id", f"{path}: another file already has dicom_id {dicom_id}"))
    frame = frame.filter(first)
    index_name, _ = INDEX_COLUMNS[kind]
    meta = _read_index(root / index_name, kind, skips)
    if meta is not None:
        frame = _join_index(frame, meta, index_name, skips, counts)
    split = _read_split(root / SPLIT_CSV, kind, skips)
    if split is not None:
        frame = frame.join(split, on="dicom_id", how="left")
    wanted = ("m_subject", "m_study", "m_view", "m_view_source", "m_meta")
    missing_columns = [c for c in wanted if c not in frame.columns]
    frame = frame.with_columns([pl.lit(None, pl.String).alias(c) for c in missing_columns]).sort("path")
    if config.max_images:
        frame = _within_budget(frame, kind, config, skips, counts)
    chunk = config.xray_chunk_images
    n_units = math.ceil(frame.height / chunk)

    def unit(index: int) -> Unit:
        rows = frame.slice(index * chunk, chunk).iter_rows(named=True)
        return Unit(f"chunk-{index:05d}", tuple(_record(row) for row in rows))

    return Listing([f"chunk-{i:05d}" for i in range(n_units)], unit, skips, counts)


def _join_index(
    frame: pl.DataFrame, meta: pl.DataFrame, name: str, skips: list[Skip], counts: Counter[str]
) -> pl.DataFrame:
    """Files joined with their metadata rows; rows without a file listed, conflicting ids left out."""
    missing = meta.join(frame, on="dicom_id", how="anti")
    counts["metadata_rows_without_file"] = missing.height
    for dicom_id, subject, study in missing.select("dicom_id", "m_subject", "m_study").iter_rows():
        message = f"{dicom_id}: listed in {name} (subject {subject}, study {study}) but no file {dicom_id}.*"
        skips.append(Skip(dicom_id, "missing-file", message + " is under the root"))
    frame = frame.join(meta, on="dicom_id", how="left")
    conflicts = frame.filter(pl.col("m_conflict").is_not_null())
    for path, conflict in conflicts.select("path", "m_conflict").iter_rows():
        skips.append(Skip(path, "metadata-conflict", f"{path}: {name} {conflict}; the image is not used"))
    return frame.filter(pl.col("m_conflict").is_null()).drop("m_conflict")


def _within_budget(
    frame: pl.DataFrame, kind: str, config: IngestConfig, skips: list[Skip], counts: Counter[str]
) -> pl.DataFrame:
    """At most `max_images` eligible images: one per subject in hash order, then a second, and so on."""
    folder_subject = pl.col("path").str.extract(r"p(\d+)/s[^/]+/[^/]+$", 1)
    subject = pl.coalesce(pl.col("m_subject"), folder_subject, pl.lit(""))
    view = pl.col("m_view").str.strip_chars().str.to_uppercase()
    eligible = view.is_in(list(config.xray_views)) if kind == "mimic-cxr-jpg" else pl.lit(True)
    frame = frame.with_columns(_subject=subject, _eligible=eligible.fill_null(False))
    ranks = {s: stable_rank(0, "ingest-budget", s) for s in frame.get_column("_subject").unique().to_list()}
    ordered = frame.filter("_eligible").with_columns(
        _turn=pl.int_range(pl.len()).over("_subject", order_by="path"),
        _hash=pl.col("_subject").replace_strict(ranks, return_dtype=pl.String),
    )
    ordered = ordered.sort(["_turn", "_hash", "path"])
    left_out = ordered.slice(config.max_images)
    counts["images_left_out_by_budget"] = left_out.height
    for path in left_out.get_column("path").to_list():
        skips.append(
            Skip(path, "left-out-by-budget", f"{path}: beyond ingest.max_images = {config.max_images}")
        )
    keep = frame.join(left_out.select("path"), on="path", how="anti")
    return keep.drop("_subject", "_eligible").sort("path")


def _read_index(path: Path, kind: str, skips: list[Skip]) -> pl.DataFrame | None:
    """The metadata CSV as dicom_id -> m_subject, m_study, m_view, m_meta (row as JSON), m_conflict."""
    name, required = INDEX_COLUMNS[kind]
    if not path.is_file():
        fallback = "subject and study ids come from the folder names" + (
            "; without it no JPG has a view, so none can be used" if kind == "mimic-cxr-jpg" else ""
        )
        problem = "is not a file" if path.exists() else "not found under the root"
        skips.append(Skip(name, "missing-metadata", f"{name}: {problem}; {fallback}"))
        return None
    try:
        table = pl.read_csv(path, infer_schema=False)
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        skips.append(Skip(name, "bad-metadata", f"{name}: cannot be read as CSV ({_one_line(exc)})"))
        return None
    missing = [c for c in required if c not in table.columns]
    if missing:
        skips.append(Skip(name, "bad-metadata", f"{name}: missing column(s) {', '.join(missing)}"))
        return None
    views = [view_of_row(row) for row in table.iter_rows(named=True)]
    table = table.with_columns(
        m_view=pl.Series([v or None for v, _ in views], dtype=pl.String),
        m_view_source=pl.Series([f for _, f in views], dtype=pl.String),
    )
    return (
        table.unique("dicom_id", keep="first", maintain_order=True)
        .select(
            "dicom_id",
            m_subject=pl.col("subject_id"),
            m_study=pl.col("study_id"),
            m_view=pl.col("m_view"),
            m_view_source=pl.col("m_view_source"),
            m_meta=pl.struct(table.drop("m_view", "m_view_source").columns).struct.json_encode(),
        )
        .join(_conflicts(table), on="dicom_id", how="left")
    )


def _conflicts(table: pl.DataFrame) -> pl.DataFrame:
    """dicom_id -> m_conflict: a description of how its duplicate rows disagree (only for those that do)."""
    columns = {"ViewPosition": "m_view", "subject_id": "subject_id", "study_id": "study_id"}
    grouped = table.group_by("dicom_id").agg(
        [pl.col(c).unique(maintain_order=True).alias(label) for label, c in columns.items()],
        rows=pl.len(),
    )
    described = []
    for row in grouped.filter(pl.col("rows") > 1).iter_rows(named=True):
        parts = [
            f"{label} ({', '.join(str(v) for v in row[label])})" for label in columns if len(row[label]) > 1
        ]
        if parts:
            described.append((row["dicom_id"], f"has {row['rows']} rows that disagree on {'; '.join(parts)}"))
    return pl.DataFrame(described, schema={"dicom_id": pl.String, "m_conflict": pl.String}, orient="row")


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _read_split(path: Path, kind: str, skips: list[Skip]) -> pl.DataFrame | None:
    if not path.is_file():
        if kind == "mimic-cxr-jpg":
            problem = "is not a file" if path.exists() else "not found"
            message = f"{SPLIT_CSV}: {problem}; official_split stays empty (provenance only)"
            skips.append(Skip(SPLIT_CSV, "missing-split", message))
        return None
    try:
        table = pl.read_csv(path, infer_schema=False, columns=["dicom_id", "split"])
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        skips.append(Skip(SPLIT_CSV, "bad-metadata", f"{SPLIT_CSV}: cannot be read ({_one_line(exc)})"))
        return None
    return table.unique("dicom_id", keep="first", maintain_order=True).rename({"split": "m_split"})


def _record(row: dict[str, Any]) -> dict[str, Any]:
    """One input's facts from its joined row; ids fall back to the pSUBJECT/sSTUDY folders."""
    parts = PurePosixPath(row["path"]).parts
    subject = _folder_id(parts, -3, "p")
    study = _folder_id(parts, -2, "s")
    return {
        "path": row["path"],
        "dicom_id": row["dicom_id"],
        "subject_id": row.get("m_subject") or subject,
        "study_id": row.get("m_study") or study,
        "view": (row.get("m_view") or "").strip().upper(),
        "view_source": row.get("m_view_source") or "",
        "has_metadata": row.get("m_meta") is not None,
        "official_split": row.get("m_split") or "",
        "meta": row.get("m_meta") or "{}",
    }


def _folder_id(parts: tuple[str, ...], position: int, prefix: str) -> str:
    if len(parts) < -position:
        return ""
    match = re.fullmatch(prefix + r"(\d+)", parts[position])
    return match.group(1) if match else ""


# ------------------------------------------------------------------ images


def load_jpg(path: Path, max_size: int) -> tuple[np.ndarray, str]:
    """A JPEG (or whatever image the file really holds) as uint8 grayscale, and the format found.

    A JPEG much larger than `max_size` is decoded at a reduced DCT scale. A
    16-bit or float image (a PNG or TIFF under a .jpg name) is windowed to its
    robust range (0.5-99.5th percentile) rather than clipped to white by an
    8-bit conversion.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            found = image.format or "unknown"
            if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
                return window_to_range(np.asarray(image, np.float32)), found
            image.draft("L", (max_size, max_size))
            return np.asarray(image.convert("L")), found
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputError("unreadable", f"not a readable JPEG ({exc})") from exc


def window_to_range(values: np.ndarray) -> np.ndarray:
    """High-bit-depth grey values to uint8 over their robust range (percentiles 0.5 .. 99.5)."""
    step = max(1, max(values.shape) // 512)
    low, high = (float(v) for v in np.percentile(values[::step, ::step], (0.5, 99.5)))
    if high <= low:
        low, high = float(values.min()), float(values.max())
    if high <= low:
        raise InputError("constant-image", f"every pixel is {low:g}")
    scaled = (values - np.float32(low)) * np.float32(255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def fit(image: np.ndarray, max_size: int) -> np.ndarray:
    """Shrink (anti-aliased) so the longest side is at most `max_size`; smaller images stay as they are."""
    height, width = image.shape
    if max(height, width) <= max_size:
        return image
    new_height, new_width = fit_longest_side(height, width, max_size)
    return resize(image, new_width, new_height)


def xray_body_mask(image: np.ndarray) -> np.ndarray:
    """The anatomy region of a radiograph: not the dark background around the body or collimation.

    Smoothed image above half of Otsu's level, largest component, holes filled
    (dark lung fields inside the chest count as anatomy).
    """
    sigma = max(1.0, max(image.shape) / 256)
    smooth = cv2.GaussianBlur(image, (0, 0), sigma)
    level, _ = cv2.threshold(smooth, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return fill_holes(largest_component(smooth > level / 2))


# -------------------------------------------------------------------- a unit


def _load(job: Job, record: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """One input's display image (full size) and facts; `InputError` when it is not used."""
    path, views = job.root / record["path"], job.config.xray_views
    facts = {k: record.get(k, "") for k in ("subject_id", "study_id", "view", "view_source")}
    facts["pixel_spacing_mm"] = math.nan
    facts["format"] = "DICOM"
    if job.kind == "mimic-cxr-jpg":
        if not record["has_metadata"]:
            raise InputError("no-view", f"not in {JPG_METADATA}, so its view is unknown")
        _check_view(facts["view"], views)
        image, facts["format"] = load_jpg(path, job.config.max_size)
        return image, facts
    ds = dicom.open_dicom(path)
    facts["view"], facts["view_source"] = view_of_dataset(ds)
    _check_view(facts["view"], views)
    facts["subject_id"] = facts["subject_id"] or str(ds.get("PatientID", "") or "").strip()
    if not facts["subject_id"]:
        raise InputError(
            "no-subject", f"no subject id: not in {RECORD_LIST}, no pSUBJECT folder, no PatientID"
        )
    facts["pixel_spacing_mm"] = dicom.pixel_spacing_mm(ds)
    return dicom.render_dicom(ds), facts


def _check_view(view: str, views: tuple[str, ...]) -> None:
    if not view:
        raise InputError(
            "no-view",
            "no ViewPosition, no known ViewCodeSequence code meaning and no procedure description "
            "naming one view",
        )
    if view not in views:
        raise InputError("view-filtered", f"view {view} is not one of {', '.join(views)} (recipe.ingest)")


def _usable_image(full: np.ndarray, config: IngestConfig) -> np.ndarray:
    """The image shrunk to `max_size`; `InputError` when it is too small or constant."""
    image = fit(full, config.max_size)
    if min(image.shape) < config.min_image_size:
        raise InputError(
            "too-small",
            f"{image.shape[0]}x{image.shape[1]} px is below ingest.min_image_size {config.min_image_size}",
        )
    if image.min() == image.max():
        raise InputError("constant-image", f"every pixel is {image.min()}")
    return image


def process_chunk(job: Job) -> None:
    """Decode a chunk's images into one image stack and one mask stack, then write the chunk's part."""
    result = UnitResult()
    cache_file, mask_file = f"{job.unit.key}{STACK_SUFFIX}", f"{job.unit.key}.mask{STACK_SUFFIX}"
    images = StackWriter(job.cache_dir / cache_file, "image")
    masks = StackWriter(job.cache_dir / mask_file, "mask")
    try:
        for record in job.unit.records:
            _add(job, record, images, masks, result)
        if result.rows:
            images.close()
            masks.close()
        else:
            images.abort()
            masks.abort()
    except BaseException:
        images.abort()
        masks.abort()
        raise
    result.counts.update(used=len(result.rows), images=len(result.rows))
    write_unit_part(job, result)


def _add(
    job: Job, record: dict[str, Any], images: StackWriter, masks: StackWriter, result: UnitResult
) -> None:
    """Decode one input into the chunk's stacks, or record why it is not used."""
    name = record["path"]
    try:
        full, facts = _load(job, record)
        image = _usable_image(full, job.config)
    except InputError as exc:
        result.skip(name, exc.reason, f"{name}: {exc.message}")
        return
    except OSError as exc:
        result.skip(name, "unreadable", f"{name}: cannot be read ({exc.strerror or exc})")
        return
    except Exception as exc:  # one odd file must not stop a long run; recorded with its cause
        result.skip(name, "decode-error", f"{name}: {type(exc).__name__}: {exc}")
        return
    if facts["format"] not in ("JPEG", "DICOM"):
        result.counts[f"not_jpeg_content_{facts['format'].lower()}"] += 1
    mask = xray_body_mask(image)
    index = images.add(image)
    masks.add(mask)
    spacing = facts["pixel_spacing_mm"] * full.shape[1] / image.shape[1]
    result.rows.append(_row(job, record, facts, image, float(mask.mean()), spacing, index))
    result.counts[f"views_from_{facts['view_source']}"] += 1


def _row(
    job: Job,
    record: dict[str, Any],
    facts: dict[str, Any],
    image: np.ndarray,
    fraction: float,
    spacing: float,
    index: int,
) -> dict[str, Any]:
    meta = json.loads(record["meta"])
    return {
        "image_id": record["dicom_id"],
        "modality": job.modality,
        "source_kind": job.kind,
        "subject_id": facts["subject_id"],
        "source_id": record["dicom_id"],
        "study_id": facts["study_id"],
        "path": record["path"],
        "plane": "",
        "slice_index": -1,
        "z_mm": math.nan,
        "pixel_spacing_mm": spacing,
        "slice_spacing_mm": math.nan,
        "window": "",
        "view": facts["view"],
        "view_source": facts["view_source"],
        "official_split": record["official_split"],
        "body_fraction": fraction,
        "height": image.shape[0],
        "width": image.shape[1],
        "cache_file": f"{job.unit.key}{STACK_SUFFIX}",
        "mask_file": f"{job.unit.key}.mask{STACK_SUFFIX}",
        "cache_index": index,
        "crop_x": 0,
        "crop_y": 0,
        "meta": json.dumps(meta, sort_keys=True, ensure_ascii=False),
        "pixel_sha256": pixel_digest(image),
    }
