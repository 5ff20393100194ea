"""Benchmark: time and peak RSS of `export` (and `preview`) as the item count grows.

    python benchmarks/bench_export.py [--items 2000 8000] [--size 256] [--work DIR]
        [--table docs/generated/export.md]

Writes synthetic train shards in the split's layout (ct scale / jigsaw /
anomaly, 4 / 1 / 1 PNGs of --size px, the recipe's row groups), then runs
in child processes, for each item count:

- baseline: read the shards row group by row group and write every PNG with
  a plain `write_bytes` (no JSONL, no temporary names);
- export:   `medscout-data export --format swift` (manifest check, atomic image
  writes, JSONL, plugin);
- vlmeval:  `medscout-data export --format vlmeval` of the same items as a bench
  (manifest check, base64 TSV);
- preview:  `medscout-data preview --per-cell 4` (reads only the chosen row groups).

Prints wall time, items/s, MB/s of image bytes, peak RSS of each, the export /
baseline time ratio, and the peak-RSS ratio between the largest and the
smallest count (flat memory: close to 1).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import Figures, Run, add_output_args, cores, run_sampled

from medscout_data.imaging import encode_png
from medscout_data.recipe import load_recipe
from medscout_data.schema import ITEM_SCHEMA
from medscout_data.seeding import rng_for
from medscout_data.shards import ShardWriter, sha256_file

IMAGES = {"scale": 4, "jigsaw": 1, "anomaly": 1}
TARGETS = {
    "scale": {"levels": [1, 2, 1], "boxes": [[0.1, 0.1, 0.5, 0.5]] * 3},
    "jigsaw": {"grid": 2, "permutation": [2, 0, 3, 1]},
    "anomaly": {"grid": 4, "cell": 9},
}


def phantom_pngs(size: int, count: int) -> list[bytes]:
    """A few distinct CT-like PNGs (smooth ellipse + noise), reused across rows."""
    pngs = []
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    for k in range(count):
        rng = rng_for(0, "bench-export", k)
        body = (xx / 0.42) ** 2 + (yy / 0.32) ** 2 < 1
        image = np.where(body, 110 + 30 * np.sin(9 * xx + k) * np.cos(7 * yy), 0)
        image = np.clip(image + rng.normal(0, 6, image.shape) * body, 0, 255).astype(np.uint8)
        pngs.append(encode_png(image))
    return pngs


def write_split(root: Path, items: int, size: int, side: str = "train") -> int:
    """`items` items of one side spread over ct's three tasks; returns the image bytes written into rows."""
    recipe = load_recipe("med-scout-bench")
    pngs = phantom_pngs(size, 8)
    image_bytes = 0
    per_task = items // len(IMAGES)
    for task, n_images in IMAGES.items():
        shards = max(1, -(-per_task // recipe.pool.shard_max_items))
        for shard in range(shards):
            start = shard * recipe.pool.shard_max_items
            stop = min(per_task, start + recipe.pool.shard_max_items)
            prefix = "train" if side == "train" else "test"
            path = root / side / "ct" / task / f"{prefix}-{shard:05d}-of-{shards:05d}.parquet"
            with ShardWriter(path, ITEM_SCHEMA, recipe.pool.row_group_items) as writer:
                for number in range(start, stop):
                    images = [pngs[(number + k) % len(pngs)] for k in range(n_images)]
                    image_bytes += sum(map(len, images))
                    writer.write(_row(task, number, images))
    return image_bytes


def _row(task: str, number: int, images: list[bytes]) -> dict:
    return {
        "id": f"ct-{task}-{number:06d}",
        "modality": "ct",
        "task": task,
        "variant": "tier" if task == "scale" else "",
        "images": [{"bytes": b, "path": None} for b in images],
        "question": "q" * 400,
        "question_cot": "q" * 480,
        "answer": "Label 1, Label 2, Label 1" if task == "scale" else "2 0 3 1" if task == "jigsaw" else "9",
        "target": json.dumps(TARGETS[task]),
        "subject_id": f"s{number % 500:04d}",
        "source_id": f"s{number % 500:04d}",
        "source": "{}",
        "reference_subject_id": "",
        "seed": number,
    }


def write_manifest(root: Path) -> None:
    """The manifest `split` would write for these shards (what export checks them against)."""
    shards = {
        p.relative_to(root).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(root.glob("*/ct/*/*.parquet"))
    }
    manifest = {
        "seed": 0,
        "bench_per_cell": 0,
        "shards": shards,
        "cells": {},
        "recipe": {"name": "benchmark", "digest": "benchmark"},
    }
    (root / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


BASELINE = """
import sys
from pathlib import Path
import pyarrow.parquet as pq
root, out = Path(sys.argv[1]), Path(sys.argv[2])
for path in sorted(root.glob("train/*/*/*.parquet")):
    source = pq.ParquetFile(path)
    for group in range(source.num_row_groups):
        for row in source.read_row_group(group, columns=["id", "modality", "task", "images"]).to_pylist():
            folder = out / row["modality"] / row["task"]
            folder.mkdir(parents=True, exist_ok=True)
            for k, image in enumerate(row["images"]):
                (folder / f"{row['id']}-{k}.png").write_bytes(image["bytes"])
"""


def best_of(repeat: int, args: list[str]) -> Run:
    """The fastest of `repeat` runs (the disk is shared; the minimum is the least disturbed)."""
    return min((run_sampled(args) for _ in range(repeat)), key=lambda run: run.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[2000, 8000])
    parser.add_argument("--size", type=int, default=256, help="image side, px")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each command; the fastest counts")
    parser.add_argument("--work", type=Path, default=None)
    add_output_args(parser)
    args = parser.parse_args()
    figures = Figures(
        ["items", "command", "wall", "items/s", "MB/s of PNG", "peak RSS (tree)"], align="rlrrrr"
    )
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-export-"))
    cli = [sys.executable, "-m", "medscout_data.cli"]
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"cores: {cores()}; load {load}; images {args.size} px; best of {args.repeat}; work {work}")
    peaks, ratios = {}, []
    for items in args.items:
        root = work / f"shards-{items}"
        shutil.rmtree(root, ignore_errors=True)
        image_mb = write_split(root, items, args.size) / 1e6
        write_split(root, items, args.size, side="bench")
        write_manifest(root)
        base = best_of(args.repeat, [sys.executable, "-c", BASELINE, str(root), str(work / f"base-{items}")])
        out = work / f"export-{items}"
        export = best_of(
            args.repeat,
            [*cli, "export", "--split", "train", "--shards", str(root), "--out", str(out), "--quiet"],
        )
        lines = len((out / "train-direct-swift.jsonl").read_text(encoding="utf-8").splitlines())
        tsv = best_of(
            args.repeat,
            [
                *cli,
                "export",
                "--format",
                "vlmeval",
                "--shards",
                str(root),
                "--out",
                str(work / "v"),
                "--quiet",
            ],
        )
        view = best_of(
            args.repeat,
            [*cli, "preview", "--split", "train", "--shards", str(root), "--out", str(work / "p"), "--quiet"],
        )
        peaks[items] = export.peak_tree_mib
        print(f"{lines} items, {image_mb:.0f} MB of PNG:")
        for name, run in (("baseline", base), ("export", export), ("vlmeval", tsv)):
            print(
                f"  {name:<8} {run.seconds:7.2f} s {lines / run.seconds:7.0f} items/s "
                f"{image_mb / run.seconds:6.1f} MB/s  peak RSS {run.peak_tree_mib:5.0f} MiB"
            )
            figures.row(
                f"{lines:,}",
                NAMES[name],
                f"{run.seconds:.2f} s",
                f"{lines / run.seconds:,.0f}",
                f"{image_mb / run.seconds:.1f}",
                f"{run.peak_tree_mib:.0f} MiB",
            )
        print(
            f"  preview  {view.seconds:7.2f} s (4 items per cell)      peak RSS {view.peak_tree_mib:5.0f} MiB"
        )
        print(f"  export / baseline time: {export.seconds / base.seconds:.2f}x")
        figures.row(
            f"{lines:,}", NAMES["preview"], f"{view.seconds:.2f} s", "", "", f"{view.peak_tree_mib:.0f} MiB"
        )
        ratios.append(f"{export.seconds / base.seconds:.2f}x at {lines:,} items")
    print(f"load at the end: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    low, high = min(peaks), max(peaks)
    print(
        f"export peak RSS {high} vs {low} items: {peaks[high] / peaks[low]:.2f}x "
        f"for {high / low:.0f}x the items"
    )
    figures.note(
        f"Synthetic train shards of {args.size} px PNGs (scale 4 images, jigsaw and anomaly 1), best of"
        f" {args.repeat}, each command a child process. Export / baseline time: {', '.join(ratios)}; export's"
        f" peak RSS {peaks[high] / peaks[low]:.2f}x for {high / low:.0f}x the items (flat: close to 1)."
    )
    figures.write(args.table)


NAMES = {
    "baseline": "baseline: plain copy of every PNG",
    "export": "`export --format swift` (manifest check, JSONL)",
    "vlmeval": "`export --format vlmeval` (base64 TSV)",
    "preview": "`preview --per-cell 4`",
}


if __name__ == "__main__":
    main()
