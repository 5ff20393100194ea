"""Recipes: every count, seed, size, window and threshold of a run, from TOML.

A recipe is a tree of frozen dataclasses. Loading is strict: an unknown key, a
missing required key, a value of the wrong type or a number outside its range
(`RANGES`: every number has one, so a window width of 0 or a count in the
quintillions is refused when the recipe loads, not when a stage crashes on it)
is a `RecipeError` that names the file and the key, never a silently ignored setting. `Recipe.digest` is a
stable hash of the whole recipe, recorded in every output it shapes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class RecipeError(ValueError):
    """A recipe that cannot be used, with the file and key at fault."""


@dataclass(frozen=True)
class Window:
    """A CT display window in Hounsfield units."""

    name: str
    width: float
    level: float


@dataclass(frozen=True)
class SampleConfig:
    """Shape of the procedural sample sources used when no `--root` is given."""

    subjects: int = 10
    size: int = 128
    slices: int = 40
    seed: int = 0


@dataclass(frozen=True)
class PoolConfig:
    """How many items to build and how to shard them."""

    items_per_cell: int
    bench_per_cell: int
    shard_max_items: int = 1000
    row_group_items: int = 64

    @property
    def bench_fraction(self) -> float:
        """Fraction of subjects (and items) on the bench side of the partition."""
        return self.bench_per_cell / self.items_per_cell


PLANES = ("auto", "axial", "coronal", "sagittal")


@dataclass(frozen=True)
class IngestConfig:
    """Decoding and rendering of sources into 8-bit 2-D images."""

    ct_windows: tuple[Window, ...] = (Window("soft-tissue", 400.0, 40.0),)
    ct_body_threshold_hu: float = -500.0
    mri_percentiles: tuple[float, float] = (1.0, 99.0)
    min_body_fraction: float = 0.3
    max_size: int = 512
    xray_views: tuple[str, ...] = ("PA", "AP")
    xray_chunk_images: int = 256
    # Images whose shorter side is below this many pixels are skipped (`too-small`).
    min_image_size: int = 32
    # Slicing plane of CT/MRI volumes: "auto" slices in the acquisition plane when the axial in-plane
    # spacing would be more than `plane_anisotropy` times as coarse as the finest plane's.
    plane: str = "auto"
    plane_anisotropy: float = 2.0
    # Crop CT/MRI slices to the body's bounding box (over the volume) plus this margin on each side,
    # as a fraction of the box's longer side; body fraction is measured inside the crop.
    crop_to_body: bool = True
    body_crop_margin: float = 0.05
    # At most this many images per modality are cached (0: all usable ones): each volume gets an equal
    # share of slices, in slabs of three `slab_step_mm` apart (so anomaly references stay in reach);
    # X-ray subjects get one image each in a seeded order, then a second, ...
    max_images: int = 0
    slab_step_mm: float = 6.0
    # Keep one of identical images of different sources (one radiograph under two patient ids);
    # the others are recorded as `duplicate-image` (sources/runner.py).
    drop_duplicates: bool = True


@dataclass(frozen=True)
class ScaleConfig:
    """Hierarchical Scale Localization."""

    n_crops: int = 3
    level_areas: tuple[float, float] = (0.20, 0.0625)
    centre_range: tuple[float, float] = (0.2, 0.8)
    crop_size: int = 224
    min_anatomy_fraction: float = 0.6
    max_tries: int = 64
    # How crops reach crop_size: "direct" (straight resize, the paper's) or "matched" (every crop
    # through one effective resolution first; tasks/resampling.py), with grain put back on the
    # crops that lost noise by averaging (match_noise) and a Gaussian of resample_blur pixels.
    resampling: str = "direct"
    resample_blur: float = 1.2
    match_noise: bool = True
    max_enlargement: float = 3.0  # smallest level's native crop -> crop_size; more is rejected
    min_structure: float = 3.0  # grey levels (tasks/content.py); flatter crops are redrawn
    # One answer: every crop's best match in the full image (tasks/solvers.py) overlaps its own box
    # by at least this IoU, else the attempt is rejected; 0 turns the check off.
    min_match_iou: float = 0.5


@dataclass(frozen=True)
class JigsawConfig:
    """Topological Jigsaw Reconstruction."""

    grid: int = 2
    min_structure: float = 3.0  # every tile, grey levels (tasks/content.py)
    min_tile_difference: float = 3.0  # every pair of tiles, grey levels
    # One answer: the classical solver's best wrong arrangement costs at least this much more than the
    # truth (tasks/solvers.py; the cost is in units of the image's mean seam), else rejected; a
    # negative value turns the check off.
    min_solution_margin: float = 0.05


@dataclass(frozen=True)
class AnomalyConfig:
    """Anomaly Consistency Detection (cut-paste of one central cell)."""

    grid: int = 4
    cells: tuple[int, ...] = (5, 6, 9, 10)
    ref_distance_mm: tuple[float, float] = (4.0, 12.0)
    min_cell_difference: float = 10.0
    max_references: int = 8
    paste: str = "hard"  # "hard" (as in the paper) or "matched" (intensity statistics matched)
    min_structure: float = 3.0  # the cell and half its edge neighbours, grey levels (tasks/content.py)


@dataclass(frozen=True)
class IndexConfig:
    """Reference search for X-ray cut-paste."""

    model: str = "pixels"
    k: int = 8
    batch_size: int = 64
    search: str = "exact"


@dataclass(frozen=True)
class PngConfig:
    """PNG encoding of item images: ISA-L deflate level (0-2; 3 is CPU-dependent) and the PNG row filter."""

    compression: int = 1
    filter: str = "sub"


@dataclass(frozen=True)
class Recipe:
    """A whole run's settings. `name` and `seed` identify it in every output."""

    name: str
    seed: int
    pool: PoolConfig
    sample: SampleConfig = field(default_factory=SampleConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    jigsaw: JigsawConfig = field(default_factory=JigsawConfig)
    anomaly: AnomalyConfig = field(default_factory=AnomalyConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    png: PngConfig = field(default_factory=PngConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return dataclasses.asdict(self)

    @property
    def digest(self) -> str:
        """sha256 of the canonical JSON form: equal recipes, equal digests."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def with_seed(self, seed: int | None) -> Recipe:
        """The same recipe with another seed (None keeps this one)."""
        return self if seed is None else dataclasses.replace(self, seed=seed)


SEEDS = (0, 2**63 - 1)
COUNTS = (1, 100_000_000)  # items or images: a hundred million is far beyond any real run
GREY = (0.0, 255.0)  # thresholds on 8-bit grey levels
FRACTION = (0.0, 1.0)
# Inclusive range of every number in a recipe, by `Class.field` (a tuple's elements share it).
RANGES: dict[str, tuple[float, float]] = {
    "Recipe.seed": SEEDS,
    "Window.width": (1.0, 100_000.0),
    "Window.level": (-100_000.0, 100_000.0),
    "SampleConfig.subjects": (1, 10_000),
    "SampleConfig.size": (32, 4096),
    "SampleConfig.slices": (1, 4096),
    "SampleConfig.seed": SEEDS,
    "PoolConfig.items_per_cell": COUNTS,
    "PoolConfig.bench_per_cell": COUNTS,
    "PoolConfig.shard_max_items": COUNTS,
    "PoolConfig.row_group_items": COUNTS,
    "IngestConfig.ct_body_threshold_hu": (-2000.0, 4000.0),
    "IngestConfig.mri_percentiles": (0.0, 100.0),
    "IngestConfig.min_body_fraction": FRACTION,
    "IngestConfig.max_size": (8, 65_536),
    "IngestConfig.xray_chunk_images": (1, 1_000_000),
    "IngestConfig.min_image_size": (1, 65_536),
    "IngestConfig.plane_anisotropy": (1.0, 1000.0),
    "IngestConfig.body_crop_margin": FRACTION,
    "IngestConfig.max_images": (0, COUNTS[1]),
    "IngestConfig.slab_step_mm": (0.01, 1000.0),
    "ScaleConfig.n_crops": (1, 64),
    "ScaleConfig.level_areas": FRACTION,
    "ScaleConfig.centre_range": FRACTION,
    "ScaleConfig.crop_size": (8, 4096),
    "ScaleConfig.min_anatomy_fraction": FRACTION,
    "ScaleConfig.max_tries": (1, 1_000_000),
    "ScaleConfig.resample_blur": (0.3, 4.0),
    "ScaleConfig.max_enlargement": (1.0, 100.0),
    "ScaleConfig.min_structure": GREY,
    "ScaleConfig.min_match_iou": FRACTION,
    "JigsawConfig.grid": (2, 16),
    "JigsawConfig.min_structure": GREY,
    "JigsawConfig.min_tile_difference": GREY,
    "JigsawConfig.min_solution_margin": (-1.0, 10.0),  # negative: the check is off
    "AnomalyConfig.grid": (2, 32),
    "AnomalyConfig.cells": (0, 32 * 32 - 1),
    "AnomalyConfig.ref_distance_mm": (0.0, 1000.0),
    "AnomalyConfig.min_cell_difference": GREY,
    "AnomalyConfig.max_references": (1, 10_000),
    "AnomalyConfig.min_structure": GREY,
    "IndexConfig.k": (1, 10_000),
    "IndexConfig.batch_size": (1, 65_536),
    "PngConfig.compression": (0, 2),  # ISA-L level 3 writes other bytes on AVX2 and AVX-512 CPUs
}


def recipe_dirs() -> list[Path]:
    """Where recipe names are looked up: the source tree's recipes/, then the install's."""
    return [
        Path(__file__).resolve().parent.parent / "recipes",
        Path(sys.prefix) / "share" / "medscout-data" / "recipes",
    ]


def resolve_recipe_path(name_or_path: str) -> Path:
    """A recipe name (`sample`, `med-scout-bench`) or a path to a TOML file."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or candidate.exists():
        if not candidate.is_file():
            raise RecipeError(f"{candidate}: recipe file not found")
        return candidate
    for folder in recipe_dirs():
        path = folder / f"{name_or_path}.toml"
        if path.is_file():
            return path
    known = sorted({p.stem for d in recipe_dirs() if d.is_dir() for p in d.glob("*.toml")})
    raise RecipeError(f"unknown recipe {name_or_path!r}; known: {', '.join(known) or 'none'}")


def load_recipe(name_or_path: str | Path = "sample") -> Recipe:
    """Load and validate a recipe; every problem is a `RecipeError` naming file and key."""
    path = resolve_recipe_path(str(name_or_path))
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: not valid TOML: {exc}") from exc
    recipe = _build(Recipe, data, path, "")
    _check_ranges(recipe, path)
    _check(recipe, path)
    return recipe


def recipe_from_dict(data: dict[str, Any], where: str = "<stored recipe>") -> Recipe:
    """A recipe from its `to_dict()` form (e.g. stored beside a pool), validated like a file."""
    recipe = _build(Recipe, _lists(data), Path(where), "")
    _check_ranges(recipe, Path(where))
    _check(recipe, Path(where))
    return recipe


def _lists(value: Any) -> Any:
    """JSON/asdict form -> TOML-like form (tuples become lists) for `_build`."""
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_lists(v) for v in value]
    return value


def _build(cls: type, data: Any, path: Path, where: str) -> Any:
    """Construct dataclass `cls` from a TOML table, refusing unknown keys."""
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: [{where or 'top level'}] must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        keys = ", ".join(f"{where}.{k}".lstrip(".") for k in unknown)
        raise RecipeError(f"{path}: unknown key(s) {keys}; known: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, path, f"{where}.{name}".lstrip("."))
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        keys = ", ".join(f"{where}.{m}".lstrip(".") for m in missing)
        raise RecipeError(f"{path}: missing required key(s) {keys}")
    return cls(**kwargs)


def _convert(hint: Any, value: Any, path: Path, key: str) -> Any:
    """Check `value` against a type hint, turning TOML arrays into tuples."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path, key)
    if origin is tuple:
        if not isinstance(value, list):
            raise RecipeError(f"{path}: {key} must be an array, got {value!r}")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, path, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise RecipeError(f"{path}: {key} must have {len(args)} elements, got {value!r}")
        return tuple(
            _convert(a, v, path, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if origin in (typing.Union, types.UnionType):
        raise RecipeError(f"{path}: {key}: union types are not supported in recipes")
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    raise RecipeError(f"{path}: {key} must be {hint.__name__}, got {value!r}")


def _check_ranges(node: Any, path: Path, where: str = "") -> None:
    """Every number of a built recipe (defaults included) against `RANGES`, naming the key."""
    for spec in dataclasses.fields(node):
        key = f"{where}.{spec.name}".lstrip(".")
        value = getattr(node, spec.name)
        values = enumerate(value) if isinstance(value, tuple) else [(None, value)]
        for index, element in values:
            name = key if index is None else f"{key}[{index}]"
            if dataclasses.is_dataclass(element):
                _check_ranges(element, path, name)
            elif isinstance(element, int | float) and not isinstance(element, bool):
                low, high = RANGES[f"{type(node).__name__}.{spec.name}"]
                if not low <= element <= high:  # NaN fails too
                    raise RecipeError(f"{path}: {name} must be in [{low}, {high}], got {element!r}")


def _check(recipe: Recipe, path: Path) -> None:
    """Cross-field rules a type check cannot see."""
    pool, scale, anomaly = recipe.pool, recipe.scale, recipe.anomaly
    rules = [
        (0 < pool.bench_per_cell < pool.items_per_cell, "pool.bench_per_cell must be in (0, items_per_cell)"),
        (pool.shard_max_items > 0 and pool.row_group_items > 0, "pool shard sizes must be positive"),
        (len(recipe.ingest.ct_windows) > 0, "ingest.ct_windows needs at least one window"),
        (
            len({w.name for w in recipe.ingest.ct_windows}) == len(recipe.ingest.ct_windows),
            "ingest.ct_windows names must be unique",
        ),
        (all(0 < a < 1 for a in scale.level_areas), "scale.level_areas must be in (0, 1)"),
        (
            0 <= scale.centre_range[0] < scale.centre_range[1] <= 1,
            "scale.centre_range must be increasing in [0, 1]",
        ),
        (scale.n_crops > 0 and scale.crop_size >= 8, "scale.n_crops and scale.crop_size must be positive"),
        (scale.resampling in ("direct", "matched"), "scale.resampling must be direct or matched"),
        (0.3 <= scale.resample_blur <= 4.0, "scale.resample_blur must be in [0.3, 4] pixels"),
        (scale.max_enlargement >= 1.0, "scale.max_enlargement must be at least 1"),
        (
            min(scale.min_structure, recipe.jigsaw.min_structure, anomaly.min_structure) >= 0
            and recipe.jigsaw.min_tile_difference >= 0,
            "min_structure and min_tile_difference thresholds must be >= 0",
        ),
        (recipe.jigsaw.grid >= 2, "jigsaw.grid must be at least 2"),
        (anomaly.paste in ("hard", "matched"), "anomaly.paste must be hard or matched"),
        (all(0 <= c < anomaly.grid**2 for c in anomaly.cells), "anomaly.cells must index the grid"),
        (
            0 <= anomaly.ref_distance_mm[0] <= anomaly.ref_distance_mm[1],
            "anomaly.ref_distance_mm must be increasing",
        ),
        *_ingest_rules(recipe),
        (recipe.index.search in ("exact", "ivf", "hnsw"), "index.search must be exact, ivf or hnsw"),
        (recipe.png.filter in ("sub", "up", "none"), "png.filter must be sub, up or none"),
    ]
    for ok, message in rules:
        if not ok:
            raise RecipeError(f"{path}: {message}")


def _ingest_rules(recipe: Recipe) -> list[tuple[bool, str]]:
    """Rules of `[ingest]`, some against `[anomaly]` (slabs must hold references in its distance range)."""
    ingest, low_high = recipe.ingest, recipe.anomaly.ref_distance_mm
    return [
        (0 <= ingest.min_body_fraction <= 1, "ingest.min_body_fraction must be in [0, 1]"),
        (1 <= ingest.min_image_size <= ingest.max_size, "ingest.min_image_size must be in [1, max_size]"),
        (ingest.xray_chunk_images > 0, "ingest.xray_chunk_images must be positive"),
        (ingest.plane in PLANES, f"ingest.plane must be one of {', '.join(PLANES)}"),
        (ingest.plane_anisotropy >= 1, "ingest.plane_anisotropy must be at least 1"),
        (0 <= ingest.body_crop_margin <= 1, "ingest.body_crop_margin must be in [0, 1]"),
        (ingest.max_images >= 0, "ingest.max_images must be 0 (all) or positive"),
        (
            ingest.max_images == 0 or low_high[0] <= ingest.slab_step_mm <= low_high[1],
            "ingest.slab_step_mm must lie within anomaly.ref_distance_mm when ingest.max_images is set",
        ),
    ]
