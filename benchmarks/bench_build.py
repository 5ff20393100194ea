"""Benchmark: build throughput and memory on 512x512 slices, against a straightforward baseline.

    python benchmarks/bench_build.py [--items-per-cell 300] [--baseline-items 90] [--work DIR]

Setup (not timed): sample CT volumes at 512x512, ingested once with the
paper's recipe settings (crop size 224, PNG via OpenCV).

Timed, each in its own child process with the RSS of its whole process tree
sampled: `build` with 1 and 2 workers, and with 2 workers at twice the item
count (memory must stay flat). Baseline in the same script, for the same item
plans: per-item PIL images yielded into `datasets.Dataset.from_generator(...)
.to_parquet(...)`, which encodes PNGs with Pillow's default settings.
Also compares PNG sizes: our encoder vs Pillow's default on the same images.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import run_sampled

from medscout_data.recipe import load_recipe, resolve_recipe_path

ROOT = Path(__file__).resolve().parent.parent


def recipe_file(work: Path, items_per_cell: int) -> Path:
    """The paper's recipe with a smaller pool (same geometry, sizes and PNG settings)."""
    text = resolve_recipe_path("med-scout-bench").read_text()
    text = re.sub(r"items_per_cell = \d+", f"items_per_cell = {items_per_cell}", text)
    text = re.sub(r"bench_per_cell = \d+", f"bench_per_cell = {max(1, items_per_cell // 10)}", text)
    text = re.sub(r'name = "med-scout-bench"', 'name = "bench-build"', text)
    path = work / f"recipe-{items_per_cell}.toml"
    path.write_text(text)
    load_recipe(path)  # validate
    return path


def setup(work: Path, subjects: int, slices: int) -> tuple[Path, Path]:
    """Sample CT at 512 px, ingested once into `work/base`; returns (source root, shards root)."""
    from medscout_data.layout import Layout
    from medscout_data.sample import write_samples
    from medscout_data.sources import run_ingest

    source = write_samples(
        work / "src", subjects=subjects, size=512, slices=slices, seed=0, sources=("totalseg-ct",)
    )
    base = work / "base"
    recipe = load_recipe(recipe_file(work, 100))
    run_ingest(Layout.at(base), recipe, "ct", root=source["totalseg-ct"], workers=2)
    return source["totalseg-ct"], base


def fresh_root(base: Path, name: str) -> Path:
    """A shards root sharing the ingested catalogue and cache (hard links), with no pool."""
    root = base.parent / name
    shutil.rmtree(root, ignore_errors=True)
    for folder in ("catalogue", "cache"):
        shutil.copytree(base / folder, root / folder, copy_function=os.link)
    return root


def time_build(base: Path, source: Path, recipe: Path, workers: int, name: str):
    root = fresh_root(base, name)
    args = [sys.executable, "-m", "medscout_data.cli", "build", "--modality", "ct", "--root", str(source)]
    args += ["--recipe", str(recipe), "--out", str(root), "--workers", str(workers), "--quiet"]
    return run_sampled(args), root


BASELINE = """
import sys, time
from pathlib import Path
import datasets
from PIL import Image
from medscout_data.stages.build import BuildOptions, CellContext, _content, plan_cell, read_catalogue
from medscout_data.cache import ImageCache
from medscout_data.layout import Layout
from medscout_data.stages.plan import ensure_plan
from medscout_data.recipe import load_recipe
from medscout_data.tasks.geometry import TaskRejected
import numpy as np

root, recipe_path, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
layout, recipe = Layout.at(root), load_recipe(recipe_path)
images = read_catalogue(layout.catalogue("ct"))
plan = ensure_plan(layout.plan("ct"), sorted({i.subject_id for i in images}), "ct", recipe)
context = CellContext.of("ct", recipe, plan, images)
specs = [s for task in ("scale", "jigsaw", "anomaly") for s in plan_cell(context, task, count)]
cache = ImageCache(layout.cache_dir("ct"))

made = [0]

def rows():
    for spec in specs:
        rng = np.random.default_rng(spec.seed)
        try:
            content, _ = _content(spec, 0, spec.candidates[0], cache, rng, recipe)
        except TaskRejected:
            continue
        made[0] += 1
        yield {"id": spec.id, "images": [Image.fromarray(a) for a in content.images],
               "question": content.question, "answer": content.answer}

start = time.perf_counter()
features = datasets.Features({"id": datasets.Value("string"), "images": datasets.List(datasets.Image()),
                              "question": datasets.Value("string"), "answer": datasets.Value("string")})
ds = datasets.Dataset.from_generator(rows, features=features, cache_dir=str(root / "hf-cache"))
ds.to_parquet(str(root / "baseline.parquet"))
print(made[0], time.perf_counter() - start)
"""


def time_baseline(base: Path, recipe: Path, count: int):
    root = fresh_root(base, "baseline")
    run = run_sampled([sys.executable, "-c", BASELINE, str(root), str(recipe), str(count)])
    items, seconds = run.stdout.split()
    return int(items), float(seconds), run


def png_sizes(pool: Path, limit: int = 300) -> tuple[int, int]:
    """(our PNG bytes, Pillow-default PNG bytes) over the images of the first `limit` items."""
    import pyarrow.parquet as pq
    from PIL import Image

    ours = pillow = 0
    seen = 0
    for path in sorted(pool.glob("*.parquet")):
        for row in pq.read_table(path, columns=["images"]).to_pylist():
            for image in row["images"]:
                ours += len(image["bytes"])
                buffer = io.BytesIO()
                Image.open(io.BytesIO(image["bytes"])).save(buffer, format="PNG")
                pillow += buffer.tell()
            seen += 1
            if seen >= limit:
                return ours, pillow
    return ours, pillow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items-per-cell", type=int, default=300)
    parser.add_argument("--baseline-items", type=int, default=60, help="items per cell for the baseline")
    parser.add_argument("--subjects", type=int, default=4)
    parser.add_argument("--slices", type=int, default=80)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-build-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    source, base = setup(work, args.subjects, args.slices)
    print(
        f"setup: {args.subjects} CT volumes of 512x512x{args.slices} sampled and ingested in "
        f"{time.perf_counter() - start:.0f} s"
    )
    print(f"cores: {os.cpu_count()}")
    n = args.items_per_cell
    results = {}
    for label, count, workers in (("1 worker", n, 1), ("2 workers", n, 2), ("2 workers, 2x items", 2 * n, 2)):
        run, root = time_build(
            base, source, recipe_file(work, count), workers, label.replace(" ", "_").replace(",", "")
        )
        items = 3 * count
        results[label] = (items / run.seconds, run)
        print(
            f"build {label:<20} {items:>5} items: {run.seconds:6.1f} s  {items / run.seconds:6.1f} items/s  "
            f"peak RSS tree {run.peak_tree_mib:5.0f} MiB, largest process {run.peak_process_mib:4.0f} MiB"
        )
    items, seconds, run = time_baseline(base, recipe_file(work, args.baseline_items), args.baseline_items)
    baseline_rate = items / seconds
    print(
        f"baseline (PIL + datasets.from_generator.to_parquet) {items} items: {seconds:.1f} s  "
        f"{baseline_rate:.1f} items/s  peak RSS {run.peak_tree_mib:.0f} MiB"
    )
    for label, (rate, _) in results.items():
        print(f"ratio build {label} / baseline: {rate / baseline_rate:.1f}x")
    ours, pillow = png_sizes(root / "pool" / "ct")
    print(
        f"PNG bytes, ours / Pillow default on the same images: {ours / pillow:.3f} ({ours:,} vs {pillow:,})"
    )


if __name__ == "__main__":
    main()
