"""Benchmark: X-ray ingest on full-size JPEGs as MIMIC-CXR-JPG ships them (~2,500 x 3,000 px, 1-2 MB).

    python benchmarks/bench_ingest_xray.py [--images 48] [--distinct N] [--workers 1 2] [--work DIR]
        [--table docs/generated/ingest-xray.md]

Setup (not timed): `--distinct` synthetic radiographs (the sample's phantom,
drawn at 3,000 x 2,500 px, slightly blurred like a detector's point spread,
JPEG quality 95: 1.1-1.5 MB each) copied to `--images` files under distinct
dicom_ids in the MIMIC-CXR-JPG layout, with the metadata and split CSVs.

Timed, each in its own child process: `run_ingest` with the paper recipe's
ingest settings (frontal views, longest side 512), for each worker count:
images/s and MB/s of JPEG read, CPU time per image (process and workers: less skewed by a
loaded machine than wall time), and the cache's bytes per image. JPEGs are
decoded at a reduced DCT scale (Pillow's draft mode), then shrunk.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from common import Figures, add_output_args, cores, run_sampled

HEIGHT, WIDTH = 3000, 2500
WHO = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)  # CPU of the run and its (finished) workers


def write_full_size_tree(root: Path, images: int, distinct: int) -> Path:
    """A MIMIC-CXR-JPG tree of full-size radiographs; reused when it is already there."""
    import cv2
    import polars as pl
    from PIL import Image

    from medscout_data.sample import _chest_params, chest_radiograph, subject_radiographs
    from medscout_data.seeding import rng_for

    marker = root / ".bench.json"
    settings = {"images": images, "distinct": distinct, "size": [HEIGHT, WIDTH]}
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        return root
    shutil.rmtree(root, ignore_errors=True)
    blobs = []
    for n in range(distinct):
        rng = rng_for(0, "bench-xray", n)
        pixels = chest_radiograph(_chest_params(rng), "PA" if n % 2 else "AP", HEIGHT, WIDTH, rng)
        pixels = cv2.GaussianBlur(pixels, (0, 0), 0.7)
        buffer = io.BytesIO()
        Image.fromarray(np.round(pixels * 255).astype(np.uint8)).save(buffer, "JPEG", quality=95)
        blobs.append(buffer.getvalue())
    rows = []
    for n in range(images):
        item = subject_radiographs(n, 32, 0)[0]  # ids and folders of a sample subject; pixels unused
        path = root / item.folder / f"{item.dicom_id}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blobs[n % distinct])
        rows.append(
            {
                "dicom_id": item.dicom_id,
                "subject_id": item.subject_id,
                "study_id": item.study_id,
                "ViewPosition": "PA" if n % 2 else "AP",
                "Rows": HEIGHT,
                "Columns": WIDTH,
                "split": "train",
            }
        )
    frame = pl.DataFrame(rows)
    for name, columns in (
        (
            "mimic-cxr-2.0.0-metadata.csv.gz",
            ["dicom_id", "subject_id", "study_id", "ViewPosition", "Rows", "Columns"],
        ),
        ("mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"]),
    ):
        buffer = io.BytesIO()
        frame.select(columns).write_csv(buffer)
        (root / name).write_bytes(gzip.compress(buffer.getvalue(), mtime=0))
    marker.write_text(json.dumps(settings))
    return root


def child(root: Path, out: Path, workers: int) -> None:
    """One timed run: ingest `root` into a fresh `out`; print figures as JSON."""
    from medscout_data.layout import Layout
    from medscout_data.recipe import load_recipe
    from medscout_data.sources import run_ingest

    shutil.rmtree(out, ignore_errors=True)
    recipe = load_recipe("med-scout-bench")
    start = time.perf_counter()
    report = run_ingest(Layout.at(out), recipe, "xray", root, workers=workers, progress=False)
    seconds = time.perf_counter() - start
    cache = sum(p.stat().st_size for p in (out / "cache" / "xray").glob("*.stack"))
    cpu = sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime for who in WHO)
    figures = {"seconds": seconds, "images": report.counts["images"], "cache_bytes": cache, "cpu": cpu}
    print(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-ingest-xray"))
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument(
        "--distinct", type=int, default=None, help="distinct images (default: all; ingest drops duplicates)"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--child", nargs=3, metavar=("ROOT", "OUT", "WORKERS"), help=argparse.SUPPRESS)
    add_output_args(parser)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]), int(args.child[2]))
        return
    t0 = time.perf_counter()
    table = Figures(["workers", "images", "wall", "images/s", "MB/s", "CPU ms/image", "cache KB/image"])
    args.distinct = args.distinct or args.images
    root = write_full_size_tree(args.work / "src", args.images, args.distinct)
    files = sorted((root / "files").rglob("*.jpg"))
    megabytes = sum(f.stat().st_size for f in files) / 1e6
    print(
        f"setup: {len(files)} JPEGs of {WIDTH}x{HEIGHT} px, {megabytes / len(files):.2f} MB each "
        f"({args.distinct} distinct), {time.perf_counter() - t0:.0f} s"
    )
    print(f"cpu_count={cores()} loadavg={os.getloadavg()[0]:.1f} (load skews figures)")
    header = f"{'workers':>7} {'images':>6} {'seconds':>8} {'images/s':>9} {'MB/s':>6} {'CPU ms/image':>12}"
    print(header + f" {'cache KB/image':>14}")
    rates = {}
    for workers in args.workers:
        out = args.work / f"out-{workers}"
        run = run_sampled([sys.executable, __file__, "--child", str(root), str(out), str(workers)])
        figures = json.loads(run.stdout.strip().splitlines()[-1])
        rate = figures["images"] / figures["seconds"]
        rates[workers] = rate
        per_image_kb = figures["cache_bytes"] / figures["images"] / 1024
        print(
            f"{workers:>7} {figures['images']:>6} {figures['seconds']:>8.1f} {rate:>9.1f} "
            f"{megabytes / figures['seconds']:>6.1f} {1000 * figures['cpu'] / figures['images']:>12.1f} "
            f"{per_image_kb:>14.1f}"
        )
        table.row(
            workers,
            figures["images"],
            f"{figures['seconds']:.1f} s",
            f"{rate:.1f}",
            f"{megabytes / figures['seconds']:.1f}",
            f"{1000 * figures['cpu'] / figures['images']:.1f}",
            f"{per_image_kb:.1f}",
        )
    if 1 in rates and 2 in rates:
        print(f"speed-up with 2 workers: {rates[2] / rates[1]:.2f}x; loadavg now {os.getloadavg()[0]:.1f}")
    table.note(
        f"{len(files)} full-size JPEGs of {WIDTH} x {HEIGHT} px, {megabytes / len(files):.2f} MB each"
        f" ({args.distinct} distinct), the paper recipe's ingest settings; each run a child process. CPU ms"
        " per image (process and workers, start-up included) is less skewed by the machine's load than wall."
    )
    table.write(args.table)


if __name__ == "__main__":
    main()
