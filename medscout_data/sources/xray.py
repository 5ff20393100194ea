"""Chest X-ray sources (MIMIC-CXR-JPG and MIMIC-CXR DICOM) -> 8-bit radiographs in padded chunks.

Inputs are every image file under `<root>/files`, sorted by path and joined on
`dicom_id` (the file name) with the source's index: the JPG release's
`mimic-cxr-2.0.0-metadata.csv.gz` (subject, study, ViewPosition) or the DICOM
release's `cxr-record-list.csv.gz` (subject, study; the view comes from the
ViewPosition tag). `mimic-cxr-2.0.0-split.csv.gz`, when present, gives the
official split, kept as provenance only. Frontal views (`recipe.ingest.xray_views`)
are kept; every other image is recorded with its reason.

A unit is a chunk of `xray_chunk_images` consecutive inputs. Its usable images,
shrunk to a longest side of `max_size`, go into one (n, max_size, max_size)
uint8 stack, zero-padded, with `height` x `width` in the catalogue, plus a
mask stack of the anatomy region.
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

from medscout_data.cache import save_stack
from medscout_data.imaging import fit_longest_side, resize
from medscout_data.recipe import IngestConfig
from medscout_data.report import Skip
from medscout_data.sources import dicom
from medscout_data.sources.base import InputError, Job, Listing, Unit, UnitResult, write_part
from medscout_data.sources.detect import JPG_METADATA, RECORD_LIST, SPLIT_CSV, SUFFIXES, image_folder
from medscout_data.sources.masks import fill_holes, largest_component

INDEX_COLUMNS = {
    "mimic-cxr-jpg": (JPG_METADATA, ("dicom_id", "subject_id", "study_id", "ViewPosition")),
    "mimic-cxr": (RECORD_LIST, ("dicom_id", "subject_id", "study_id")),
}


# ----------------------------------------------------------------- listing


def list_images(root: Path, suffixes: tuple[str, ...]) -> list[str]:
    """Relative POSIX paths of every image file under the root's image folder, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(image_folder(root)):
        dirnames.sort()
        relative = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if relative == "." else relative + "/"
        found.extend(prefix + name for name in filenames if name.lower().endswith(suffixes))
    return sorted(found)


def list_xray(root: Path, kind: str, config: IngestConfig) -> Listing:
    """Chunks of the sorted image files, each record joined with its metadata row."""
    skips: list[Skip] = []
    counts: Counter[str] = Counter()
    paths = list_images(root, SUFFIXES[kind])
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
        frame = frame.join(meta, on="dicom_id", how="left")
        counts["metadata_rows_without_file"] = meta.height - frame.get_column("m_meta").is_not_null().sum()
    split = _read_split(root / SPLIT_CSV, kind, skips)
    if split is not None:
        frame = frame.join(split, on="dicom_id", how="left")
    frame = frame.sort("path")
    chunk = config.xray_chunk_images
    n_units = math.ceil(frame.height / chunk)

    def unit(index: int) -> Unit:
        rows = frame.slice(index * chunk, chunk).iter_rows(named=True)
        return Unit(f"chunk-{index:05d}", tuple(_record(row) for row in rows))

    return Listing([f"chunk-{i:05d}" for i in range(n_units)], unit, skips, counts)


def _read_index(path: Path, kind: str, skips: list[Skip]) -> pl.DataFrame | None:
    """The metadata CSV as dicom_id -> m_subject, m_study, m_view, m_meta (the whole row as JSON)."""
    name, required = INDEX_COLUMNS[kind]
    if not path.is_file():
        fallback = "subject and study ids come from the folder names" + (
            "; without it no JPG has a view, so none can be used" if kind == "mimic-cxr-jpg" else ""
        )
        skips.append(Skip(name, "missing-metadata", f"{name}: not found under the root; {fallback}"))
        return None
    try:
        table = pl.read_csv(path, infer_schema=False)
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        skips.append(Skip(name, "bad-metadata", f"{name}: cannot be read as CSV ({exc})"))
        return None
    missing = [c for c in required if c not in table.columns]
    if missing:
        skips.append(Skip(name, "bad-metadata", f"{name}: missing column(s) {', '.join(missing)}"))
        return None
    view = pl.col("ViewPosition") if "ViewPosition" in table.columns else pl.lit(None, pl.String)
    return table.unique("dicom_id", keep="first", maintain_order=True).select(
        "dicom_id",
        m_subject=pl.col("subject_id"),
        m_study=pl.col("study_id"),
        m_view=view,
        m_meta=pl.struct(table.columns).struct.json_encode(),
    )


def _read_split(path: Path, kind: str, skips: list[Skip]) -> pl.DataFrame | None:
    if not path.is_file():
        if kind == "mimic-cxr-jpg":
            message = f"{SPLIT_CSV}: not found; official_split stays empty (provenance only)"
            skips.append(Skip(SPLIT_CSV, "missing-split", message))
        return None
    try:
        table = pl.read_csv(path, infer_schema=False, columns=["dicom_id", "split"])
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        skips.append(Skip(SPLIT_CSV, "bad-metadata", f"{SPLIT_CSV}: cannot be read ({exc})"))
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


def load_jpg(path: Path, max_size: int) -> np.ndarray:
    """A JPEG as uint8 grayscale; decoded at a reduced DCT scale when it is much larger than `max_size`."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.draft("L", (max_size, max_size))
            return np.asarray(image.convert("L"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputError("unreadable", f"not a readable JPEG ({exc})") from exc


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
    facts = {k: record[k] for k in ("subject_id", "study_id", "view")}
    facts["pixel_spacing_mm"] = math.nan
    if job.kind == "mimic-cxr-jpg":
        if not record["has_metadata"]:
            raise InputError("no-view", f"not in {JPG_METADATA}, so its view is unknown")
        _check_view(facts["view"], views)
        return load_jpg(path, job.config.max_size), facts
    ds = dicom.open_dicom(path)
    facts["view"] = dicom.view_position(ds)
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
        raise InputError("no-view", "no ViewPosition")
    if view not in views:
        raise InputError("view-filtered", f"view {view} is not one of {', '.join(views)} (recipe.ingest)")


def process_chunk(job: Job) -> None:
    """Decode a chunk's images into one padded stack and its masks, then write the chunk's part."""
    result = UnitResult()
    size = job.config.max_size
    records = job.unit.records
    images = np.zeros((len(records), size, size), np.uint8)  # zero pages cost nothing until written
    masks = np.zeros((len(records), size, size), bool)
    cache_file, mask_file = f"{job.unit.key}.npy", f"{job.unit.key}.mask.npy"
    for record in records:
        name = record["path"]
        try:
            full, facts = _load(job, record)
            image = fit(full, size)
            if image.min() == image.max():
                raise InputError("constant-image", f"every pixel is {image.min()}")
        except InputError as exc:
            result.skip(name, exc.reason, f"{name}: {exc.message}")
            continue
        except Exception as exc:  # one odd file must not stop a long run; recorded with its cause
            result.skip(name, "decode-error", f"{name}: {type(exc).__name__}: {exc}")
            continue
        index, (height, width) = len(result.rows), image.shape
        images[index, :height, :width] = image
        mask = xray_body_mask(image)
        masks[index, :height, :width] = mask
        spacing = facts["pixel_spacing_mm"] * full.shape[1] / width
        result.rows.append(_row(job, record, facts, image, float(mask.mean()), spacing, index))
    if result.rows:
        save_stack(job.cache_dir / cache_file, images[: len(result.rows)])
        save_stack(job.cache_dir / mask_file, masks[: len(result.rows)])
    result.counts.update(used=len(result.rows), images=len(result.rows))
    write_part(job.part, result, job.unit_hash)


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
        "official_split": record["official_split"],
        "body_fraction": fraction,
        "height": image.shape[0],
        "width": image.shape[1],
        "cache_file": f"{job.unit.key}.npy",
        "mask_file": f"{job.unit.key}.mask.npy",
        "cache_index": index,
        "meta": json.dumps(meta, sort_keys=True, ensure_ascii=False),
    }
