"""The catalogue as build sees it: image references, anomaly references, and indexes over them.

Read once in the main process (in a stable order), then shared by planning:
images by subject, by id, and per volume and window sorted along the slicing
normal, so nearby slices are found by bisection.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from medscout_data.cache import ImageCache
from medscout_data.recipe import Recipe
from medscout_data.stages.plan import SubjectPlan


@dataclass(frozen=True, slots=True)
class ImageRef:
    """Where one catalogued image lives and where it came from."""

    image_id: str
    subject_id: str
    source_id: str
    source_kind: str
    path: str
    plane: str
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
    view_source: str = ""  # X-ray: the metadata field that gave `view`
    source_release: str = ""  # the source dataset's release (sources/releases.py)

    def pixels(self, cache: ImageCache) -> np.ndarray:
        """The 8-bit image from the cache."""
        return cache.read(self.cache_file, self.cache_index, self.height, self.width)

    def body(self, cache: ImageCache) -> np.ndarray:
        """The body mask from the cache."""
        return cache.read(self.mask_file, self.cache_index, self.height, self.width).astype(bool)

    @property
    def is_slice(self) -> bool:
        return self.slice_index >= 0

    def provenance(self) -> dict[str, Any]:
        """The source description stored in an item's `source` column."""
        info: dict[str, Any] = {"dataset": self.source_kind, "path": self.path, "image_id": self.image_id}
        if self.source_release:
            info["release"] = self.source_release
        if self.is_slice:
            info.update(
                plane=self.plane or "axial",
                slice=self.slice_index,
                z_mm=round(self.z_mm, 3),
                window=self.window,
            )
        else:
            info.update(view=self.view)
            if self.view_source and self.view_source != "ViewPosition":
                info["view_from"] = self.view_source
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


def read_catalogue(path: Path) -> list[ImageRef]:
    """Catalogue rows as `ImageRef`s, in a stable order."""
    import polars as pl  # here, not at the top: build workers import this module and never read tables

    from medscout_data.errors import StageError

    columns = [f.name for f in fields(ImageRef)]
    try:
        frame = pl.read_parquet(path, columns=columns)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise StageError(
            f"{path}: the catalogue is damaged or unreadable ({' '.join(str(exc).split())[:200]}); "
            "rerun `medscout-data ingest` for this modality"
        ) from None
    frame = frame.sort(["subject_id", "source_id", "z_mm", "image_id"])
    return [ImageRef(**row) for row in frame.iter_rows(named=True)]


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
        cls,
        modality: str,
        recipe: Recipe,
        plan: SubjectPlan,
        images: list[ImageRef],
        neighbours: NeighbourLookup | None = None,
    ) -> CellContext:
        """Index the catalogue's images by subject, by id and, per volume and window, by position."""
        by_subject: dict[str, list[ImageRef]] = defaultdict(list)
        by_volume: dict[tuple[str, str], list[ImageRef]] = defaultdict(list)
        for image in images:
            by_subject[image.subject_id].append(image)
            if image.is_slice:
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

    def subjects(self, side: str) -> list[str]:
        """The side's subjects that have usable images, sorted."""
        return [s for s in self.plan.subjects(side) if s in self.images_by_subject]

    def nearby_slices(self, candidate: ImageRef) -> list[ImageRef]:
        """Slices of the candidate's volume and window within the recipe's distance, in volume order."""
        low, high = self.recipe.anomaly.ref_distance_mm
        zs, refs = self.slices[candidate.source_id, candidate.window]
        window = refs[bisect_left(zs, candidate.z_mm - high) : bisect_right(zs, candidate.z_mm + high)]
        return [r for r in window if abs(r.z_mm - candidate.z_mm) >= low]
