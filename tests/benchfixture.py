"""Small, real bench trees for the score and baseline tests.

Items come from `medscout_data.tasks.items` (the pipeline's own item functions) on
phantom images from `medscout_data.sample` (CT and MRI slices of a phantom
volume, chest radiographs), written with `ShardWriter` and `ITEM_SCHEMA` to
the layouts `score` reads:

    <root>/bench/<modality>/<task>/test-00000-of-00001.parquet     (shards root)
    <root>/train/<modality>/<task>/train-00000-of-00001.parquet    (optional)
    <root>/manifest.json                                           (sizes + sha256, as split writes)
    <dir>/data/<modality>/<task>/test-00000-of-00001.parquet + README.md (staged repo)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from medscout_data.recipe import Recipe, load_recipe
from medscout_data.sample import (
    Torso,
    VolumeGeometry,
    ct_intensities,
    mri_intensities,
    phantom_volume,
    radiographs,
)
from medscout_data.schema import ITEM_SCHEMA
from medscout_data.seeding import rng_for
from medscout_data.shards import ShardWriter, sha256_file
from medscout_data.tasks.geometry import TaskRejected, non_identity_permutations
from medscout_data.tasks.items import (
    ItemContent,
    ItemKey,
    anomaly_difference,
    anomaly_item,
    jigsaw_item,
    scale_item,
    to_row,
)

SIZE = 128


def _torso(rng: np.random.Generator, length_mm: float) -> Torso:
    n = 40
    blobs = np.column_stack(
        [
            rng.uniform(-0.7, 0.7, n) * 150,
            rng.uniform(-0.7, 0.7, n) * 100,
            rng.uniform(0, length_mm, n),
            rng.uniform(4, 10, n),
            rng.choice([-1.0, 1.0], n) * rng.uniform(0.5, 1.0, n),
        ]
    ).astype(np.float32)
    return Torso(
        half_width=rng.uniform(140, 175),
        half_depth=rng.uniform(95, 120),
        lung_scale=rng.uniform(0.9, 1.1),
        liver_scale=rng.uniform(0.9, 1.1),
        heart_scale=rng.uniform(0.9, 1.1),
        rib_period=rng.uniform(22, 30),
        blobs=blobs,
    )


def volume_slices(modality: str, subject: int, seed: int, slices: int = 24) -> np.ndarray:
    """(slices, SIZE, SIZE) uint8 slices of one phantom volume: CT soft-tissue window or MRI 1-99%."""
    rng = rng_for(seed, "benchfixture", modality, subject)
    geometry = VolumeGeometry(shape=(slices, SIZE, SIZE), spacing=(380 / SIZE, 380 / SIZE, 2.0))
    labels, offsets = phantom_volume(_torso(rng, slices * 2.0), geometry)
    if modality == "ct":
        values = ct_intensities(labels, offsets, rng).astype(np.float32)
        low, high = 40 - 200, 40 + 200
    else:
        values = mri_intensities(labels, offsets, rng).astype(np.float32)
        low, high = np.percentile(values, [1, 99])
    return np.clip((values - low) / (high - low) * 255, 0, 255).astype(np.uint8)


def xray_images(seed: int, subjects: int = 8) -> list[np.ndarray]:
    """Frontal phantom radiographs (uint8), one per subject."""
    frontal = {}
    for image in radiographs(subjects, SIZE, seed):
        if image.view in ("PA", "AP") and image.subject_id not in frontal:
            frontal[image.subject_id] = (image.pixels * 255).round().astype(np.uint8)
    return list(frontal.values())


def body_mask(image: np.ndarray) -> np.ndarray:
    return image > 10


def modality_images(modality: str, seed: int) -> list[tuple[str, np.ndarray, list[np.ndarray]]]:
    """(subject, image, anomaly reference candidates) triples."""
    if modality == "xray":
        images = xray_images(seed)
        return [
            (f"x{i}", img, [images[(i + k) % len(images)] for k in (1, 2, 3)]) for i, img in enumerate(images)
        ]
    out = []
    for subject in range(3):
        volume = volume_slices(modality, subject, seed)
        for index in range(6, 20, 2):
            refs = [volume[index + d] for d in (3, -3, 4, -4) if 0 <= index + d < len(volume)]
            out.append((f"s{subject}", volume[index], refs))
    return out


def cell_rows(modality: str, per_cell: int, seed: int, recipe: Recipe) -> dict[str, list[dict[str, Any]]]:
    """`per_cell` item rows of each task (scale alternating tier/box) for one modality."""
    images = modality_images(modality, seed)
    rows: dict[str, list[dict[str, Any]]] = {"scale": [], "jigsaw": [], "anomaly": []}
    for k in range(per_cell * 4):
        subject, image, refs = images[k % len(images)]
        for task, task_rows in rows.items():
            if len(task_rows) >= per_cell:
                continue
            variant = ("tier", "box")[len(task_rows) % 2] if task == "scale" else ""
            content = _content(task, variant, image, refs, rng_for(seed, modality, task, k), recipe, modality)
            if content is None:
                continue
            key = ItemKey(
                f"{modality}-{task}-{len(task_rows):04d}", modality, task, variant, subject, subject, "", k
            )
            task_rows.append(to_row(content, key, {"dataset": "benchfixture"}, recipe.png))
    return rows


def _content(
    task: str,
    variant: str,
    image: np.ndarray,
    refs: list[np.ndarray],
    rng: np.random.Generator,
    recipe: Recipe,
    modality: str,
) -> ItemContent | None:
    if task == "scale":
        try:
            return scale_item(image, body_mask(image), rng, recipe, modality, variant)
        except TaskRejected:
            return None
    if task == "jigsaw":
        permutations = non_identity_permutations(recipe.jigsaw.grid**2)
        try:
            return jigsaw_item(image, permutations[int(rng.integers(len(permutations)))], recipe, modality)
        except TaskRejected:  # a featureless tile: this image makes no jigsaw
            return None
    cell = int(recipe.anomaly.cells[int(rng.integers(len(recipe.anomaly.cells)))])
    for ref in refs:
        if anomaly_difference(image, ref, cell, recipe.anomaly.grid) >= recipe.anomaly.min_cell_difference:
            try:
                return anomaly_item(image, ref, cell, recipe, modality)
            except TaskRejected:  # a featureless cell or neighbour
                return None
    return None


def write_side(folder: Path, prefix: str, rows: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    """rows[modality][task] -> folder/<modality>/<task>/<prefix>-00000-of-00001.parquet."""
    for modality, by_task in rows.items():
        for task, task_rows in by_task.items():
            path = folder / modality / task / f"{prefix}-00000-of-00001.parquet"
            with ShardWriter(path, ITEM_SCHEMA, row_group_rows=4) as writer:
                for row in task_rows:
                    writer.write(row)


def bench_rows(
    modalities: Sequence[str] = ("ct", "xray"), per_cell: int = 4, seed: int = 0
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    recipe = load_recipe("sample")
    return {m: cell_rows(m, per_cell, seed, recipe) for m in modalities}


def make_shards(
    root: Path,
    modalities: Sequence[str] = ("ct", "xray"),
    per_cell: int = 4,
    seed: int = 0,
    train_per_cell: int = 0,
) -> Path:
    """A shards root with a bench side (and a train side when `train_per_cell` > 0)."""
    write_side(root / "bench", "test", bench_rows(modalities, per_cell, seed))
    if train_per_cell:
        write_side(root / "train", "train", bench_rows(modalities, train_per_cell, seed + 1))
    write_manifest(root, seed, per_cell)
    return root


def write_manifest(root: Path, seed: int = 0, per_cell: int = 0) -> Path:
    """A manifest.json of the shape `split` writes, listing every shard under bench/ and train/."""
    shards, cells = {}, {}
    for path in sorted(root.glob("*/*/*/*.parquet")):
        side, modality, task = path.relative_to(root).parts[:3]
        if side not in ("bench", "train"):
            continue
        rows = pq.ParquetFile(path).metadata.num_rows
        shards[path.relative_to(root).as_posix()] = {
            "sha256": sha256_file(path),
            "rows": rows,
            "bytes": path.stat().st_size,
        }
        counts = cells.setdefault(f"{modality}/{task}", {"pool": 0, "bench": 0, "train": 0, "dropped": 0})
        counts[side] += rows
        counts["pool"] += rows
    recipe = {"name": "benchfixture", "digest": "0" * 64}
    manifest = {"seed": seed, "bench_per_cell": per_cell, "recipe": recipe, "cells": cells}
    path = root / "manifest.json"
    path.write_text(json.dumps({**manifest, "shards": shards}, indent=1), encoding="utf-8")
    return path


def make_staged_repo(
    folder: Path, modalities: Sequence[str] = ("ct",), per_cell: int = 2, seed: int = 0
) -> Path:
    """A staged Hub repo folder: data/<modality>/<task>/test-*.parquet and a dataset card."""
    write_side(folder / "data", "test", bench_rows(modalities, per_cell, seed))
    card = (
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: test\n"
        "    path: data/*/*/test-*.parquet\n---\n# benchfixture\n"
    )
    (folder / "README.md").write_text(card, encoding="utf-8")
    return folder
