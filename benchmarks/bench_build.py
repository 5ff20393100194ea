"""Benchmark: build throughput, PNG size and memory on 512 px CT slices, against a bare and a naive pipeline.

    python benchmarks/bench_build.py [--items-per-cell 600] [--naive-items 40] [--noise-hu 60] [--work DIR]
        [--table docs/generated/build.md]

Inputs (setup, not timed), each ingested once with the paper's recipe (crops 224 px):
- `noisy`: sample CT volumes cropped in-plane to the body, resampled to 512 x 512 and given
  Gaussian noise in HU: slices of about 125 KB of PNG, noisier than real CT (40-65 KB), the hard case;
- `sample`: the sample phantom at 512 px (about 74 KB per slice).

Timed, side by side in one run, each in a child process with the RSS of its whole process tree
sampled (wall time of the whole process: start-up, planning and writing included):
- `build --workers 2` at N and 2N items per cell (peak RSS must stay flat), and `--workers 1`;
- `bare`: only the geometry (the same planned items, the project's task functions), PNGs encoded with
  OpenCV (the previous encoder: RLE strategy, Sub filter, level 1), rows written with pyarrow, in 2
  processes: what an encode-bound pipeline costs;
- `naive`: the peer of the issue: per-item PIL images, Pillow's default PNG, scikit-image resize,
  `datasets.Dataset.from_generator(...).to_parquet(...)`, one process.
PNG size: the pool's images as written, against the same images re-encoded by OpenCV as before and by
Pillow's default.
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

from common import Figures, add_output_args, cores, run_sampled

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


def noisy_volumes(source: Path, noise_hu: float) -> None:
    """Each sample CT cropped in-plane to its body, resampled to 512 x 512, plus Gaussian noise (in place)."""
    import numpy as np
    import SimpleITK as sitk

    for number, path in enumerate(sorted(source.glob("*/ct.nii.gz"))):
        volume = sitk.ReadImage(str(path))
        array = sitk.GetArrayFromImage(volume)  # (z, y, x) in the file's index order
        body = array > -500
        ys, xs = np.nonzero(body.any(axis=0))
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        side = max(y1 - y0, x1 - x0)
        cropped = volume[int(x0) : int(x0) + side, int(y0) : int(y0) + side, :]
        spacing = cropped.GetSpacing()
        size = (512, 512, cropped.GetSize()[2])
        new_spacing = (spacing[0] * side / 512, spacing[1] * side / 512, spacing[2])
        resampled = sitk.Resample(
            cropped,
            size,
            sitk.Transform(),
            sitk.sitkLinear,
            cropped.GetOrigin(),
            new_spacing,
            cropped.GetDirection(),
            -1024.0,
            sitk.sitkFloat32,
        )
        data = sitk.GetArrayFromImage(resampled)
        rng = np.random.default_rng(number)
        data += rng.normal(0.0, noise_hu, data.shape).astype(np.float32) * (data > -500)
        out = sitk.GetImageFromArray(np.round(data).astype(np.int16))
        out.CopyInformation(resampled)
        sitk.WriteImage(out, str(path))


def setup(work: Path, kind: str, subjects: int, slices: int, noise_hu: float) -> tuple[Path, Path]:
    """Sources of one input kind, ingested once into `work/<kind>/base`; returns (source, shards root)."""
    from medscout_data.layout import Layout
    from medscout_data.sample import write_samples
    from medscout_data.sources import run_ingest

    folder = work / kind
    source = write_samples(
        folder / "src", subjects=subjects, size=512, slices=slices, seed=0, sources=("totalseg-ct",)
    )
    source = source["totalseg-ct"]
    if kind == "noisy":
        noisy_volumes(source, noise_hu)
    base = folder / "base"
    run_ingest(Layout.at(base), load_recipe(recipe_file(work, 100)), "ct", root=source, workers=2)
    return source, base


def slice_kb(base: Path, limit: int = 40) -> float:
    """Median PNG size (KB, this encoder) of the ingested slices."""
    import statistics

    import polars as pl

    from medscout_data.cache import ImageCache
    from medscout_data.imaging import encode_png
    from medscout_data.layout import Layout

    layout = Layout.at(base)
    rows = pl.read_parquet(layout.catalogue("ct")).head(limit).iter_rows(named=True)
    cache = ImageCache(layout.cache_dir("ct"))
    return statistics.median(len(encode_png(cache.image(row))) / 1024 for row in rows)


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


PLAN = """
import sys, time
from pathlib import Path
import numpy as np
from medscout_data.layout import Layout
from medscout_data.recipe import load_recipe
from medscout_data.stages.build.catalog import CellContext, read_catalogue
from medscout_data.stages.build.planning import Planner, plan_cell
from medscout_data.stages.plan import ensure_plan

root, recipe_path, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
start = time.perf_counter()
layout, recipe = Layout.at(root), load_recipe(recipe_path)
images = read_catalogue(layout.catalogue("ct"))
plan = ensure_plan(layout.plan("ct"), sorted({i.subject_id for i in images}), "ct", recipe)
context = CellContext.of("ct", recipe, plan, images)
specs = [s for task in ("scale", "jigsaw", "anomaly") for s in plan_cell(Planner(context, task), count)]
"""

BARE = (
    PLAN
    + """
import cv2, pyarrow as pa, pyarrow.parquet as pq
from concurrent.futures import ProcessPoolExecutor
from medscout_data.cache import ImageCache
from medscout_data.tasks.geometry import TaskRejected
from medscout_data.tasks.items import anomaly_difference, anomaly_item, jigsaw_item, scale_item
from medscout_data.seeding import rng_for

PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
          cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]
SCHEMA = pa.schema([("id", pa.string()), ("images", pa.list_(pa.binary())), ("answer", pa.string())])

def make(part):
    cache = ImageCache(layout.cache_dir("ct"))
    rows = {"id": [], "images": [], "answer": []}
    made = 0
    for spec in specs[part::2]:
        for attempt in spec.attempts:
            image = attempt.image.pixels(cache)
            try:
                if spec.task == "scale":
                    rng = rng_for(spec.seed, "attempt", attempt.image.image_id, attempt.draw)
                    content = scale_item(image, attempt.image.body(cache), rng, recipe, "ct", spec.variant)
                elif spec.task == "jigsaw":
                    content = jigsaw_item(image, attempt.choice, recipe, "ct")
                else:
                    reference = attempt.reference.image.pixels(cache)
                    cell = attempt.choice[0]
                    if anomaly_difference(image, reference, cell, 4) < recipe.anomaly.min_cell_difference:
                        continue
                    content = anomaly_item(image, reference, attempt.choice[0], recipe, "ct")
            except TaskRejected:
                continue
            rows["id"].append(spec.id)
            rows["images"].append([cv2.imencode(".png", a, PARAMS)[1].tobytes() for a in content.images])
            rows["answer"].append(content.answer)
            made += 1
            break
    table = pa.Table.from_pydict(rows, schema=SCHEMA)
    pq.write_table(table, root / f"bare-{part}.parquet", compression="none")
    return made

if __name__ == "__main__":
    with ProcessPoolExecutor(2) as pool:
        made = sum(pool.map(make, [0, 1]))
    print(made, time.perf_counter() - start)
"""
)

NAIVE = (
    PLAN
    + """
import datasets
from PIL import Image
from skimage.transform import resize as sk_resize
from medscout_data.cache import ImageCache
from medscout_data.tasks.geometry import TaskRejected, cell_box, fit_to_grid, sample_crop_box, shuffle_tiles

made = [0]

def to_uint8(array):
    return np.clip(np.round(array), 0, 255).astype(np.uint8)

def naive_images(spec, cache):
    attempt = spec.attempts[0]
    image = attempt.image.pixels(cache)
    h, w = image.shape
    if spec.task == "scale":
        mask, rng, crops = attempt.image.body(cache), np.random.default_rng(spec.seed), []
        size = (round(224 * h / max(h, w)), round(224 * w / max(h, w)))
        for _ in range(3):
            area = recipe.scale.level_areas[int(rng.integers(2))]
            for _ in range(64):
                x0, y0, x1, y1 = sample_crop_box(h, w, area, (0.2, 0.8), rng)
                if mask[y0:y1, x0:x1].mean() >= 0.6:
                    break
            else:
                raise TaskRejected("no crop")
            crop = sk_resize(image[y0:y1, x0:x1], size, preserve_range=True, anti_aliasing=True)
            crops.append(to_uint8(crop))
        return [image, *crops]
    if spec.task == "jigsaw":
        return [shuffle_tiles(image, attempt.choice, 2)]
    fitted = fit_to_grid(image, 4)
    reference = attempt.reference.image.pixels(cache)
    ref = to_uint8(sk_resize(reference, fitted.shape, preserve_range=True, anti_aliasing=True))
    x0, y0, x1, y1 = cell_box(*fitted.shape, attempt.choice[0], 4)
    out = fitted.copy()
    out[y0:y1, x0:x1] = ref[y0:y1, x0:x1]
    return [out]

def rows():
    cache = ImageCache(layout.cache_dir("ct"))  # made here: datasets hashes the generator's globals
    for spec in specs:
        if not spec.attempts:
            continue
        try:
            images = naive_images(spec, cache)
        except TaskRejected:
            continue
        made[0] += 1
        yield {"id": spec.id, "images": [Image.fromarray(a) for a in images], "answer": spec.variant}

features = datasets.Features({"id": datasets.Value("string"), "images": datasets.Sequence(datasets.Image()),
                              "answer": datasets.Value("string")})
ds = datasets.Dataset.from_generator(rows, features=features, cache_dir=str(root / "hf-cache"))
ds.to_parquet(str(root / "naive.parquet"))
print(made[0], time.perf_counter() - start)
"""
)


def time_script(base: Path, name: str, script: str, recipe: Path, count: int):
    root = fresh_root(base, name)
    path = root / f"{name}.py"
    path.write_text(script)
    run = run_sampled([sys.executable, str(path), str(root), str(recipe), str(count)])
    items, seconds = run.stdout.split()[-2:]
    return int(items), float(seconds), run


def png_sizes(pool: Path, limit: int = 300) -> tuple[int, int, int]:
    """(ours, OpenCV as before, Pillow default) PNG bytes over the images of the first `limit` items."""
    import cv2
    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image

    params = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
    params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]
    ours = before = pillow = seen = 0
    for path in sorted(pool.glob("*.parquet")):
        for row in pq.read_table(path, columns=["images"]).to_pylist():
            for image in row["images"]:
                ours += len(image["bytes"])
                array = np.asarray(Image.open(io.BytesIO(image["bytes"])))
                before += len(cv2.imencode(".png", array, params)[1])
                buffer = io.BytesIO()
                Image.fromarray(array).save(buffer, format="PNG")
                pillow += buffer.tell()
            seen += 1
            if seen >= limit:
                return ours, before, pillow
    return ours, before, pillow


def bench_input(work: Path, kind: str, args: argparse.Namespace, figures: Figures) -> None:
    start = time.perf_counter()
    source, base = setup(work, kind, args.subjects, args.slices, args.noise_hu)
    print(
        f"\n== {kind}: {args.subjects} CT volumes, 512 px slices, "
        f"median {slice_kb(base):.0f} KB of PNG per slice"
    )
    print(f"   (setup {time.perf_counter() - start:.0f} s, not timed)")
    kb = slice_kb(base)
    n = args.items_per_cell
    rates, seconds_of = {}, {}
    for label, count, workers in (("2 workers", n, 2), ("2 workers, 2x items", 2 * n, 2), ("1 worker", n, 1)):
        run, root = time_build(base, source, recipe_file(work, count), workers, f"{kind}-{workers}-{count}")
        items = 3 * count
        rates[label] = items / run.seconds
        seconds_of[label] = run.seconds
        print(
            f"build {label:<20} {items:>6} items {run.seconds:6.1f} s {rates[label]:6.1f} items/s   "
            f"peak RSS tree {run.peak_tree_mib:5.0f} MiB, largest process {run.peak_process_mib:4.0f} MiB"
        )
        figures.row(
            f"{kind} ({kb:.0f} KB slices)",
            f"`build`, {label}",
            f"{items:,}",
            f"{run.seconds:.1f} s",
            f"{rates[label]:.1f}",
            f"{run.peak_tree_mib:.0f} MiB",
            f"{run.peak_process_mib:.0f} MiB",
        )
        if label == "2 workers":
            pool = root / "pool" / "ct"
    extra = seconds_of["2 workers, 2x items"] - seconds_of["2 workers"]
    print(
        f"steady rate, 2 workers (the {3 * n} extra items of the 2x run, start-up and planning left out): "
        f"{3 * n / extra:.1f} items/s"
    )
    items, seconds, run = time_script(base, f"{kind}-bare", BARE, recipe_file(work, n), n)
    bare = items / seconds
    print(
        f"bare (geometry + OpenCV PNG + pyarrow, 2 processes) {items} items {seconds:.1f} s "
        f"{bare:.1f} items/s"
    )
    figures.row(
        kind,
        "bare: geometry + OpenCV PNG + pyarrow, 2 processes",
        f"{items:,}",
        f"{seconds:.1f} s",
        f"{bare:.1f}",
        "",
        "",
    )
    items, seconds, run = time_script(
        base, f"{kind}-naive", NAIVE, recipe_file(work, args.naive_items), args.naive_items
    )
    naive = items / seconds
    print(
        f"naive peer (PIL + skimage + datasets.from_generator) {items} items {seconds:.1f} s "
        f"{naive:.1f} items/s"
    )
    figures.row(
        kind,
        "naive: PIL + skimage + `datasets`, 1 process",
        f"{items:,}",
        f"{seconds:.1f} s",
        f"{naive:.1f}",
        "",
        "",
    )
    print(
        f"ratio build (2 workers) / naive: {rates['2 workers'] / naive:.1f}x   build / bare: "
        f"{rates['2 workers'] / bare:.2f}x"
    )
    ours, before, pillow = png_sizes(pool)
    print(
        f"PNG bytes: ours / OpenCV as before {ours / before:.3f}, ours / Pillow default {ours / pillow:.3f}"
    )
    figures.note(
        f"{kind}: steady rate with 2 workers (the {3 * n:,} extra items of the 2x run)"
        f" {3 * n / extra:.1f} items/s; build (2 workers) is {rates['2 workers'] / naive:.1f}x the naive"
        f" peer and {rates['2 workers'] / bare:.2f}x bare; PNG bytes {ours / before:.3f}x the previous"
        f" OpenCV encoder's, {ours / pillow:.3f}x Pillow's default."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items-per-cell", type=int, default=600)
    parser.add_argument("--naive-items", type=int, default=40, help="items per cell for the naive peer")
    parser.add_argument("--subjects", type=int, default=4)
    parser.add_argument("--slices", type=int, default=60)
    parser.add_argument("--noise-hu", type=float, default=60.0)
    parser.add_argument("--inputs", nargs="+", default=["noisy", "sample"], choices=["noisy", "sample"])
    parser.add_argument("--work", type=Path, default=None)
    add_output_args(parser)
    args = parser.parse_args()
    figures = Figures(
        ["input", "run", "items", "wall", "items/s", "peak RSS (tree)", "largest process"], align="llrrrrr"
    )
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-build-"))
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    print(
        f"cores: {cores()}, load average at start {load:.1f}; targets: >= 400 items/s with 2 workers "
        "on noisy slices, >= 30x the naive peer, PNG <= 1.05x the previous encoder, RSS flat"
    )
    for kind in args.inputs:
        bench_input(work, kind, args, figures)
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")
    figures.note(
        f"{args.subjects} sample CT volumes of {args.slices} slices at 512 px, the paper's recipe (crops"
        f" 224 px), {args.items_per_cell:,} items a cell ({args.naive_items} for the naive peer); `noisy`"
        f" adds {args.noise_hu:g} HU of Gaussian noise (harder than real CT's 40-65 KB PNGs). Wall time of"
        " the whole process (start-up, planning and writing included); RSS of its process tree. Targets"
        " (issue 15): 400 items/s with 2 workers on noisy slices, 30x the naive peer, PNG within 1.05x the"
        " previous encoder."
    )
    figures.write(args.table)


if __name__ == "__main__":
    main()
