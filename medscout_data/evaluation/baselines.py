"""Baseline predictions on a bench: random answers, the best constant answer, classical vision.

- `random`: an answer in the right format, drawn per item from a generator
  seeded by (seed, item id): uniform labels, uniform box corners, a uniform
  non-identity permutation, a uniform candidate cell.
- `prior`: one constant answer per modality x task (x scale variant): the
  most common tier sequence, the mean box per position, the most frequent
  permutation, the most frequent cell. Computed from the train side when the
  bench comes with one (`<shards>/train/`); otherwise from the bench's own
  truths, which is an ORACLE prior (it has seen the answers) and is reported
  as such.
- `classical`: per modality x task x variant, the strongest of the shortcut
  audit's solvers (evaluation/audit.py), chosen with its thresholds on the
  train side (evaluation/classical.py); without a train side, the fixed
  solvers below. Scale: OpenCV
  template matching of each crop, resized to every candidate level's size,
  in the full image; the best level and location win. Jigsaw: every
  non-identity permutation scored by the discontinuity of the seams it would
  create (mean absolute difference of the touching raw pixel lines) plus a
  prior that the image's outer frame is background (dark); the lowest cost
  wins. Anomaly: each candidate cell's boundary discontinuity against the
  gradients just inside and outside it; the most seam-like wins.

A baseline knows only what the question states: the number of crops, the
level areas, the grid and the candidate cells. Images are decoded with
OpenCV from the Parquet bytes, row group by row group.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from medscout_data.errors import StageError
from medscout_data.evaluation.score import (
    BenchSource,
    Box,
    Truth,
    load_hub_bench,
    read_metadata,
    resolve_bench,
)
from medscout_data.imaging import ImageDecodeError, decode_gray, fit_longest_side, resize
from medscout_data.owned import owned_file
from medscout_data.recipe import ScaleConfig
from medscout_data.report import RunReport
from medscout_data.seeding import rng_for
from medscout_data.shards import atomic_writer
from medscout_data.tasks.geometry import (
    box_to_grid,
    cell_box,
    crop_shape,
    fit_to_grid,
    non_identity_permutations,
    tiles,
)
from medscout_data.tasks.solvers import FRAME_BAND, arrangement_costs, permutation_costs

log = logging.getLogger(__name__)

BASELINES = ("random", "prior", "classical")
META_COLUMNS = ["id", "modality", "task", "variant", "question", "target"]
TRUTH_COLUMNS = ["modality", "task", "variant", "target"]
SCALE_WORK_SIZE = 256  # template matching runs with the full image's longest side at most this
MAX_JIGSAW_PERMUTATIONS = 400_000  # exhaustive search up to 3x3 grids


class BaselineError(StageError):
    """A baseline cannot run; the message says why."""


class UnsupportedItem(ValueError):
    """This solver cannot answer this item (recorded and skipped)."""


# ---------------------------------------------------------------- what the question states


@dataclass(frozen=True)
class AnswerShape:
    """What an answer must look like, as the question states it."""

    kind: str  # tier | box | jigsaw | anomaly
    size: int  # crops, tiles, or 1
    grid: int = 0
    cells: tuple[int, ...] = ()
    level_areas: tuple[float, ...] = ()


_AREA = re.compile(r"Label (\d+) \(about ([\d.]+)% of the full image's area\)")
_CELLS = re.compile(r"cells \(([\d, ]+)\)")


def answer_shape(task: str, variant: str, question: str, truth: Truth) -> AnswerShape:
    """The answer's shape from the item: counts and grid (stated in the question), level areas
    and candidate cells parsed from the question (falling back to the paper's geometry)."""
    if task == "scale":
        areas = [float(a) / 100 for _, a in sorted(_AREA.findall(question or ""), key=lambda m: int(m[0]))]
        return AnswerShape(truth.kind, truth.size, level_areas=tuple(areas) or ScaleConfig().level_areas)
    if task == "jigsaw":
        return AnswerShape("jigsaw", truth.size, grid=truth.grid)
    match = _CELLS.search(question or "")
    cells = tuple(int(c) for c in match.group(1).split(",")) if match else interior_cells(truth.grid)
    return AnswerShape("anomaly", 1, grid=truth.grid, cells=cells)


def interior_cells(grid: int) -> tuple[int, ...]:
    """Cells not on the grid's border ({5, 6, 9, 10} on 4x4)."""
    return tuple(r * grid + c for r in range(1, grid - 1) for c in range(1, grid - 1))


def tier_text(levels: Sequence[int]) -> str:
    return ", ".join(f"Label {level}" for level in levels)


def box_text(boxes: Sequence[Sequence[int]]) -> str:
    return ", ".join("({}, {}, {}, {})".format(*(int(v) for v in box)) for box in boxes)


# ---------------------------------------------------------------- random


def random_answer(shape: AnswerShape, rng: np.random.Generator) -> str:
    """An answer in the right format, uniformly at random."""
    if shape.kind == "tier":
        return tier_text(rng.integers(1, len(shape.level_areas) + 1, shape.size))
    if shape.kind == "box":
        return box_text([_random_box(rng) for _ in range(shape.size)])
    if shape.kind == "jigsaw":
        options = non_identity_permutations(shape.size)
        return " ".join(map(str, options[int(rng.integers(len(options)))]))
    return str(shape.cells[int(rng.integers(len(shape.cells)))])


def _random_box(rng: np.random.Generator) -> Box:
    x1, x2 = sorted(int(v) for v in rng.integers(0, 1001, 2))
    y1, y2 = sorted(int(v) for v in rng.integers(0, 1001, 2))
    return x1, y1, x2, y2


# ---------------------------------------------------------------- prior


def constant_answer(truths: Sequence[Truth]) -> str:
    """The best constant answer for truths of one kind: the most common tier sequence,
    the mean box per position, the most common permutation or cell (ties: smallest)."""
    kind = truths[0].kind
    if kind == "box":
        mean = np.mean(np.array([t.boxes for t in truths], np.float64), axis=0)
        return box_text(np.rint(mean).astype(int).tolist())
    values = [t.labels if kind == "tier" else t.permutation if kind == "jigsaw" else t.cell for t in truths]
    counts = Counter(values)
    best = min(counts, key=lambda v: (-counts[v], v))
    if kind == "tier":
        return ", ".join(best)
    return " ".join(map(str, best)) if kind == "jigsaw" else str(best)


def prior_table(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str, str], str]:
    """Constant answers per (modality, task, variant), and per ("*", task, variant) pooled
    over modalities as the fallback for a modality the prior has not seen."""
    groups: dict[tuple[str, str, str], list[Truth]] = defaultdict(list)
    for row in rows:
        truth = Truth.from_item(row)
        variant = row.get("variant") or ""
        groups[(row["modality"], row["task"], variant)].append(truth)
        groups[("*", row["task"], variant)].append(truth)
    table = {}
    for key, truths in groups.items():
        size = Counter(t.size for t in truths).most_common(1)[0][0]  # one crop count per cell in practice
        table[key] = constant_answer([t for t in truths if t.size == size])
    return table


def load_prior(source: BenchSource) -> tuple[dict[tuple[str, str, str], str], str]:
    """The prior table and where it came from: `train`, or `bench-oracle` when there is no
    train side and the bench's own truths stand in (an oracle: it has seen the answers)."""
    if source.train_files:
        return prior_table(read_metadata(source.train_files, TRUTH_COLUMNS).to_pylist()), "train"
    log.warning(
        "no train side next to %s: the prior is computed from the bench's own truths", source.location
    )
    if source.is_hub:
        table = load_hub_bench(source.repo_id, TRUTH_COLUMNS)
    else:
        table = read_metadata(source.files, TRUTH_COLUMNS)
    return prior_table(table.to_pylist()), "bench-oracle"


# ---------------------------------------------------------------- classical: scale


def match_crop(full: np.ndarray, crop: np.ndarray, level_areas: Sequence[float]) -> tuple[int, Box]:
    """(level, pixel box) of the best normalised cross-correlation of `crop`, resized to each
    level's size in `full`, over every location."""
    height, width = full.shape
    best = (-math.inf, 1, (0, 0, width, height))
    for level, area in enumerate(level_areas, 1):
        h, w = crop_shape(height, width, area)
        if h > height or w > width or min(h, w) < 2:
            continue
        template = resize(crop, w, h)
        scores = cv2.matchTemplate(full, template, cv2.TM_CCOEFF_NORMED)
        _, value, _, (x, y) = cv2.minMaxLoc(scores)
        if value > best[0]:
            best = (value, level, (x, y, x + w, y + h))
    return best[1], best[2]


def solve_scale(
    full: np.ndarray,
    crops: Sequence[np.ndarray],
    level_areas: Sequence[float],
    work_size: int = SCALE_WORK_SIZE,
) -> list[tuple[int, Box]]:
    """(level, box on the 0..1000 grid) per crop, by template matching at a working resolution."""
    height, width = full.shape
    work_h, work_w = fit_longest_side(height, width, min(work_size, max(height, width)))
    work = resize(full, work_w, work_h)
    out = []
    for crop in crops:
        level, box = match_crop(work, crop, level_areas)
        out.append((level, box_to_grid(box, work_h, work_w)))
    return out


# ---------------------------------------------------------------- classical: jigsaw


def centroid_costs(pieces: Sequence[np.ndarray], grid: int) -> np.ndarray:
    """(tiles, positions) moment of a tile's grey levels about the image centre if placed there.

    The body lies in the middle of the frame: the arrangement that puts the
    bright mass nearest the centre (lowest moment of inertia) is the body
    centroid's guess. It ignores seams entirely.
    """
    th, tw = pieces[0].shape
    height, width = th * grid, tw * grid
    yy, xx = np.mgrid[0:th, 0:tw].astype(np.float64) + 0.5
    place = np.zeros((len(pieces), grid * grid))
    for k in range(grid * grid):
        row, col = divmod(k, grid)
        distance = ((xx + col * tw - width / 2) / width) ** 2 + ((yy + row * th - height / 2) / height) ** 2
        for t, piece in enumerate(pieces):
            place[t, k] = float((piece * distance).mean())
    return place


def best_permutation(
    grid: int, place: np.ndarray, seams: tuple[np.ndarray, np.ndarray] | None = None, seam_weight: float = 1.0
) -> tuple[int, ...]:
    """The non-identity permutation of least cost (`tasks.solvers.permutation_costs`)."""
    candidates = np.array(non_identity_permutations(grid * grid), np.int64)
    cost = permutation_costs(grid, candidates, place, seams, seam_weight)
    return tuple(int(v) for v in candidates[int(np.argmin(cost))])


def jigsaw_pieces(shuffled: np.ndarray, grid: int) -> list[np.ndarray]:
    """The shuffled image's tiles as float arrays; `UnsupportedItem` for grids too large to search
    or images too small for the frame band."""
    if math.factorial(grid * grid) > MAX_JIGSAW_PERMUTATIONS:
        raise UnsupportedItem(f"exhaustive jigsaw search supports grids up to 3x3, not {grid}x{grid}")
    fitted = fit_to_grid(shuffled, grid).astype(np.float32)
    if min(fitted.shape) < 2 * grid * FRAME_BAND:
        raise UnsupportedItem(
            f"image {fitted.shape[1]}x{fitted.shape[0]} too small for a {grid}x{grid} jigsaw"
        )
    return tiles(fitted, grid)


def solve_jigsaw(shuffled: np.ndarray, grid: int) -> tuple[int, ...]:
    """Seam continuity: the permutation whose reassembly has the most continuous seams
    (`pair_costs`), with FRAME_WEIGHT x the frame's brightness (`frame_costs`) against
    background borders that match each other."""
    pieces = jigsaw_pieces(shuffled, grid)
    candidates = np.array(non_identity_permutations(grid * grid), np.int64)
    return tuple(int(v) for v in candidates[int(np.argmin(arrangement_costs(pieces, grid, candidates)))])


def solve_jigsaw_centroid(shuffled: np.ndarray, grid: int) -> tuple[int, ...]:
    """Body centroid only: the permutation that puts the image's bright mass nearest its centre."""
    pieces = jigsaw_pieces(shuffled, grid)
    return best_permutation(grid, centroid_costs(pieces, grid))


# ---------------------------------------------------------------- classical: anomaly


def seam_score(image: np.ndarray, box: Box) -> float:
    """How much a cell's boundary looks like a cut, averaged over its sides: each side's mean
    absolute step across it, over the mean step one pixel inside and one outside (parallel to
    it) + 1 grey level. A pasted cell has a cut on every side; a neighbour shares only one.
    Sides on the image's edge are left out."""
    x0, y0, x1, y1 = box
    height, width = image.shape
    rows, cols = slice(y0, y1), slice(x0, x1)
    ratios = []
    if x0 >= 2:
        ratios.append(_side_ratio(image[rows, x0 - 2 : x0 + 2].T))
    if x1 <= width - 2:
        ratios.append(_side_ratio(image[rows, x1 - 2 : x1 + 2].T))
    if y0 >= 2:
        ratios.append(_side_ratio(image[y0 - 2 : y0 + 2, cols]))
    if y1 <= height - 2:
        ratios.append(_side_ratio(image[y1 - 2 : y1 + 2, cols]))
    return float(np.mean(ratios)) if ratios else 0.0


def _side_ratio(lines: np.ndarray) -> float:
    """`lines`: 4 pixel lines parallel to a side, the side lying between the 2nd and 3rd."""
    steps = np.abs(np.diff(lines, axis=0)).mean(axis=1)
    return float(steps[1] / ((steps[0] + steps[2]) / 2 + 1.0))


def solve_anomaly(
    tampered: np.ndarray,
    grid: int,
    cells: Sequence[int],
    score: Callable[[np.ndarray, Box], float] = seam_score,
) -> int:
    """The candidate cell that scores highest: by default the most seam-like boundary
    (`seam_score`); the audit passes other cell scores (e.g. its brightness step)."""
    image = fit_to_grid(tampered, grid).astype(np.float32)
    height, width = image.shape
    if min(height, width) < 4 * grid:
        raise UnsupportedItem(f"image {width}x{height} too small for a {grid}x{grid} cell search")
    scores = [score(image, cell_box(height, width, cell, grid)) for cell in cells]
    return int(cells[int(np.argmax(scores))])


# ---------------------------------------------------------------- answering


def classical_answer(shape: AnswerShape, images: Sequence[np.ndarray]) -> str:
    """The classical solver's answer text for one item's decoded images."""
    if shape.kind in ("tier", "box"):
        if len(images) != shape.size + 1:
            raise UnsupportedItem(f"expected {shape.size + 1} images, got {len(images)}")
        found = solve_scale(images[0], images[1:], shape.level_areas)
        return tier_text([f[0] for f in found]) if shape.kind == "tier" else box_text([f[1] for f in found])
    if shape.kind == "jigsaw":
        return " ".join(map(str, solve_jigsaw(images[0], shape.grid)))
    return str(solve_anomaly(images[0], shape.grid, shape.cells))


@dataclass(frozen=True)
class BaselineOptions:
    """Which baseline, its seed, and whether to show a progress bar."""

    name: str
    seed: int = 0
    progress: bool = True
    force: bool = False  # replace an `out` that medscout-data did not write (owned.py)


def iter_rows(source: BenchSource, columns: Sequence[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) for every bench row, streamed row group by row group (local shards) or
    batch by batch (Hub), with image bytes left undecoded."""
    if source.is_hub:
        yield from iter_hub_rows(source.repo_id, columns)
        return
    for path in source.files:
        try:
            shard = pq.ParquetFile(path)
            for group in range(shard.num_row_groups):
                for row in shard.read_row_group(group, columns=list(columns)).to_pylist():
                    yield str(path), row
        except (OSError, ValueError) as exc:
            raise BaselineError(f"{path}: not a readable bench shard ({exc})") from exc


def iter_hub_rows(
    repo_id: str, columns: Sequence[str], cache_dir: str | None = None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(repo id, row) for the test split of a Hub dataset repo (or a local repo folder),
    images as undecoded bytes, 64 rows at a time."""
    import datasets

    try:
        dataset = datasets.load_dataset(repo_id, split="test", columns=list(columns), cache_dir=cache_dir)
    except Exception as exc:
        raise BaselineError(
            f"{repo_id}: cannot load the dataset's test split ({type(exc).__name__}: {exc})"
        ) from exc
    if "images" in columns:
        sequence = getattr(datasets, "List", None) or datasets.Sequence  # List since datasets 4
        dataset = dataset.cast_column("images", sequence(datasets.Image(decode=False)))
    for batch in dataset.with_format("arrow").iter(batch_size=64):
        for row in batch.to_pylist():
            yield repo_id, row


def count_rows(source: BenchSource) -> int | None:
    """Rows in the bench, from the Parquet footers (None for a Hub repo)."""
    return None if source.is_hub else sum(pq.ParquetFile(p).metadata.num_rows for p in source.files)


def decode_images(row: dict[str, Any]) -> list[np.ndarray]:
    """The row's images as 8-bit grayscale arrays (OpenCV decode of the stored bytes)."""
    images = []
    for number, image in enumerate(row.get("images") or []):
        data = (image or {}).get("bytes")
        if not data:
            raise ImageDecodeError(f"image {number} has no bytes")
        images.append(decode_gray(data))
    return images


def _answer(
    row: dict[str, Any],
    options: BaselineOptions,
    prior: dict[tuple[str, str, str], str] | None,
    classical: Any = None,
) -> str:
    try:
        truth = Truth.from_item(row)  # counts and grid only: the question states them
    except (KeyError, TypeError, ValueError) as exc:
        raise UnsupportedItem(f"unusable target ({exc!r})") from exc
    shape = answer_shape(row["task"], row.get("variant") or "", row.get("question") or "", truth)
    if options.name == "random":
        return random_answer(shape, rng_for(options.seed, "baseline-random", row["id"]))
    if options.name == "prior":
        variant = row.get("variant") or ""
        key = (row["modality"], row["task"], variant)
        fallback = ("*", row["task"], variant)
        if prior is None or (key not in prior and fallback not in prior):
            raise UnsupportedItem(f"the prior has no {row['task']} {variant} items")
        return prior.get(key) or prior[fallback]
    images = decode_images(row)
    return classical.answer(row, shape, images) if classical else classical_answer(shape, images)


def run_baseline(
    bench: str | Path | BenchSource,
    out: str | Path,
    options: BaselineOptions,
    report: RunReport | None = None,
    classical: Any = None,
) -> RunReport:
    """Write one JSONL prediction (`id`, `response`) per bench item to `out`, atomically.

    `classical` is the per-cell solver choice of `evaluation.classical` (its `run_classical`
    learns it on the train side and passes it); without it `classical` uses the fixed solvers.

    An item a baseline cannot answer (undecodable image, unsupported grid)
    is recorded in the report and gets no line; scoring counts it as missing.
    """
    if options.name not in BASELINES:
        raise BaselineError(f"unknown baseline {options.name!r}; use one of {', '.join(BASELINES)}")
    report = report or RunReport(f"baseline-{options.name}")
    with owned_file(out, "baseline --out", options.force) as target:  # refused before any work
        source = bench if isinstance(bench, BenchSource) else resolve_bench(bench)
        prior = None
        if options.name == "prior":
            prior, origin = load_prior(source)
            report.info["prior_from"] = origin
        if options.name == "classical":
            report.info["classical_from"] = getattr(classical, "origin", "fixed")
            report.info["classical_choice"] = classical.summary() if classical is not None else {}
        columns = META_COLUMNS + (["images"] if options.name == "classical" else [])
        with atomic_writer(target) as handle:
            rows = iter_rows(source, columns)
            _write_answers(handle, rows, count_rows(source), options, prior, report, classical)
    return report


def _write_answers(
    handle: Any,
    rows: Iterator[tuple[str, dict[str, Any]]],
    total: int | None,
    options: BaselineOptions,
    prior: dict[tuple[str, str, str], str] | None,
    report: RunReport,
    classical: Any = None,
) -> None:
    bar = tqdm(rows, total=total, desc=f"baseline {options.name}", unit="item", disable=not options.progress)
    for where, row in bar:
        report.count("items")
        try:
            response = _answer(row, options, prior, classical)
        except (ImageDecodeError, UnsupportedItem, cv2.error) as exc:
            report.skip(f"{where}#{row['id']}", type(exc).__name__, f"{where}: item {row['id']}: {exc}")
            continue
        handle.write(json.dumps({"id": row["id"], "response": response}) + "\n")
        report.count("written")
