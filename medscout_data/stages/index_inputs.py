"""What the index stage reads: the catalogue's images, the key of their pixels, and the stage's errors.

An embedding is cached under its image id and the key of the catalogue row
that made its pixels (`row_key`), so a re-rendered image is embedded again;
`catalogue_fingerprint` says which catalogue a neighbours table was made from.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from medscout_data.errors import StageError
from medscout_data.layout import Layout

CATALOGUE_COLUMNS = [
    "image_id",
    "subject_id",
    "path",
    "view",
    "window",
    "height",
    "width",
    "body_fraction",
    "pixel_spacing_mm",
    "cache_file",
    "cache_index",
]


# Catalogue columns that change when an image's rendered pixels change: part of the embedding key.
ROW_KEY_COLUMNS = ("path", "view", "window", "height", "width", "body_fraction", "pixel_spacing_mm")


class IndexStageError(StageError):
    """The index stage cannot run: no catalogue, bad options, an output that cannot be written."""


class IndexMismatch(StageError):
    """Neighbours that were made for another model or run than the one asked for."""


def read_catalogue_images(path: Path) -> list[dict[str, Any]]:
    """The catalogue's rows (the columns index needs), sorted by image id, each with its `row_key`."""
    table = pq.read_table(path, columns=CATALOGUE_COLUMNS)
    rows = sorted(table.to_pylist(), key=lambda row: row["image_id"])
    for before, after in itertools.pairwise(rows):
        if before["image_id"] == after["image_id"]:
            raise IndexStageError(f"{path}: image_id {after['image_id']!r} appears twice; re-run ingest")
    for row in rows:
        row["row_key"] = row_key(row)
    return rows


def row_key(row: dict[str, Any]) -> str:
    """A short hash of the catalogue columns that shape an image's pixels."""
    text = json.dumps([row[c] for c in ROW_KEY_COLUMNS], default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def catalogue_fingerprint(rows: list[dict[str, Any]]) -> str:
    """sha256 of (image id, subject, row key) of every row: what the neighbours depend on."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(f"{row['image_id']}\x1f{row['subject_id']}\x1f{row['row_key']}\n".encode())
    return digest.hexdigest()


def _catalogue_images(layout: Layout, modality: str) -> list[dict[str, Any]]:
    catalogue = layout.catalogue(modality)
    if not catalogue.is_file():
        raise IndexStageError(
            f"{catalogue}: no catalogue; run `medscout-data ingest --modality {modality}` first"
        )
    images = read_catalogue_images(catalogue)
    if not images:
        raise IndexStageError(f"{catalogue}: the catalogue has no images to index")
    return images


def _check_modality(modality: str) -> None:
    if modality != "xray":
        raise IndexStageError(
            f"index is for X-ray only, got {modality!r}: CT/MRI references are slices of the same volume"
        )
