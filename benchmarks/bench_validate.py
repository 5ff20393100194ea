"""Benchmark: `validate` on a paper-sized bench (10,800 items) with real-sized images, and what
hashing every item's images (the duplicate check) adds to it.

    python benchmarks/bench_validate.py [--bench-per-cell 1200] [--work DIR]
        [--table docs/generated/validate.md]

Writes a pool whose bench side is the paper's (3 modalities x 3 tasks x
`--bench-per-cell`, plus a small train side) with 512 px phantom CT slices
(PNG, about the size of the sample's) and 224 px crops, every image unique (a
PNG text chunk carries the item number, so the duplicate check has nothing to
find), splits it, then times in child processes: `validate`, `validate
--deep`, and, separately, reading every image's bytes alone and hashing them
alone, the two costs the duplicate check shares with the PNG check.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
from bench_split import write_pool
from common import Figures, add_output_args, run_sampled

from medscout_data.recipe import load_recipe
from medscout_data.sample import VolumeGeometry, _torso, ct_intensities, phantom_volume
from medscout_data.seeding import rng_for

SIZE, CROP, SLICES = 512, 224, 8


def base_images() -> tuple[list[bytes], list[bytes]]:
    """PNGs of 512 px phantom CT slices (soft-tissue window, scanner noise) and 224 px crops of them."""
    rng = rng_for(0, "bench-validate")
    geometry = VolumeGeometry(shape=(SLICES, SIZE, SIZE), spacing=(360 / SIZE, 360 / SIZE, 2.0))
    labels, offsets = phantom_volume(_torso(rng, SLICES * 2.0), geometry)
    hu = ct_intensities(labels, offsets, rng).astype(np.float32)
    slices = np.clip((hu - (40 - 200)) / 400 * 255, 0, 255).astype(np.uint8)
    full = [cv2.imencode(".png", image)[1].tobytes() for image in slices]
    crops = []
    for image in slices:
        for side in (229, 128):  # Level-1 (20%) and Level-2 (6.25%) crops of 512 px
            y, x = (int(v) for v in rng.integers(100, SIZE - side - 100, 2))
            crop = cv2.resize(image[y : y + side, x : x + side], (CROP, CROP), interpolation=cv2.INTER_AREA)
            crops.append(cv2.imencode(".png", crop)[1].tobytes())
    return full, crops


def unique(png: bytes, tag: str) -> bytes:
    """The same PNG with a tEXt chunk after IHDR: still a valid PNG, now with its own bytes."""
    data = b"medscout\0" + tag.encode()
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data
    chunk += struct.pack(">I", zlib.crc32(b"tEXt" + data) & 0xFFFFFFFF)
    return png[:33] + chunk + png[33:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench-per-cell", type=int, default=1200)
    parser.add_argument("--train-per-cell", type=int, default=100)
    parser.add_argument("--work", type=Path, default=None)
    add_output_args(parser)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-validate-"))
    paper = load_recipe("med-scout-bench")
    pool = dataclasses.replace(
        paper.pool,
        items_per_cell=args.bench_per_cell + args.train_per_cell,
        bench_per_cell=args.bench_per_cell,
    )
    recipe = dataclasses.replace(paper, pool=pool)
    full, crops = base_images()

    def images(modality: str, task: str, number: int) -> list[bytes]:
        tag = f"{modality}/{task}/{number}"
        shown = [unique(full[number % len(full)], tag)]
        if task == "scale":
            shown += [unique(crops[(number + k) % len(crops)], f"{tag}/{k}") for k in range(3)]
        return shown

    start = time.perf_counter()
    total = write_pool(work, pool.items_per_cell, subjects=120, recipe=recipe, images=images)
    print(f"wrote a {total}-item pool in {time.perf_counter() - start:.1f} s under {work}")
    print(
        f"image sizes: full {np.mean([len(p) for p in full]) / 1024:.0f} KiB, crop "
        f"{np.mean([len(p) for p in crops]) / 1024:.0f} KiB (PNG)"
    )
    cli = [sys.executable, "-m", "medscout_data.cli"]
    figures = Figures(["run", "wall", "peak RSS", "result"], align="lrrl")
    split = run_sampled([*cli, "split", "--shards", str(work), "--quiet"])
    print(f"cores: {os.cpu_count()}, load average at start: {os.getloadavg()[0]:.2f}")
    print(f"split: {split.seconds:.1f} s, peak RSS {split.peak_process_mib:.0f} MiB")
    figures.row("`split`", f"{split.seconds:.1f} s", f"{split.peak_process_mib:.0f} MiB", "")
    for extra in ([], ["--deep"]):
        run = run_sampled([*cli, "validate", "--shards", str(work), "--quiet", *extra])
        print(
            f"validate {' '.join(extra) or '(default)'}: {run.seconds:.1f} s, peak RSS "
            f"{run.peak_process_mib:.0f} MiB; {run.stdout.strip()}"
        )
        result = " ".join(run.stdout.split()).replace("|", "/")
        name = " ".join(["validate", *extra])
        figures.row(f"`{name}`", f"{run.seconds:.1f} s", f"{run.peak_process_mib:.0f} MiB", result)
    read_seconds, hash_seconds, count, size = image_costs(work)
    print(
        f"of which the duplicate check's share: reading {count} images ({size / 2**30:.2f} GiB) "
        f"{read_seconds:.1f} s (needed by the PNG check anyway), hashing them {hash_seconds:.2f} s"
    )
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    figures.row(
        f"reading every image's bytes ({count:,}, {size / 2**30:.2f} GiB)", f"{read_seconds:.1f} s", "", ""
    )
    figures.row("hashing them (the duplicate check's own cost)", f"{hash_seconds:.2f} s", "", "")
    figures.note(
        f"A {total:,}-item pool, {args.bench_per_cell:,} bench items a cell and {args.train_per_cell} train"
        f" items, 512 px phantom CT slices ({np.mean([len(p) for p in full]) / 1024:.0f} KiB PNG) and 224 px"
        f" crops ({np.mean([len(p) for p in crops]) / 1024:.0f} KiB), every image unique; each command a"
        " child process (peak RSS of its largest process). Reading the bytes: needed by the PNG check anyway."
    )
    figures.write(args.table)


def image_costs(root: Path) -> tuple[float, float, int, int]:
    """Seconds to read every image's bytes of the split, and to sha256 them, measured apart."""
    read_seconds = hash_seconds = 0.0
    count = size = 0
    for path in sorted([*(root / "bench").rglob("*.parquet"), *(root / "train").rglob("*.parquet")]):
        parquet = pq.ParquetFile(path)
        for group in range(parquet.num_row_groups):
            started = time.perf_counter()
            rows = parquet.read_row_group(group, columns=["images"]).to_pylist()
            read_seconds += time.perf_counter() - started
            started = time.perf_counter()
            for row in rows:
                for image in row["images"]:
                    hashlib.sha256(image["bytes"]).digest()
                    count += 1
                    size += len(image["bytes"])
            hash_seconds += time.perf_counter() - started
    return read_seconds, hash_seconds, count, size


if __name__ == "__main__":
    main()
