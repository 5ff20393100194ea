"""Benchmark: the ingest cache's footprint per kept image, against the pool it feeds, and at paper scale.

    python benchmarks/bench_cache.py [--subjects 3] [--slices 60] [--xray-images 24] [--items 60] [--work DIR]
        [--table docs/generated/cache.md]

Setup (not timed), all at the paper's sizes (512 px):
- `ct`: sample CT volumes (the phantom: PNG ~74 KB per soft-tissue slice);
- `ct-noisy`: the same volumes with extra scanner noise (30 HU), a harder case than real 512 px
  CT slices (40-65 KB as PNG), bounding the worst case (~125 KB and more per slice);
- `mri`: sample MRI volumes;
- `xray`: full-size JPEGs (2,500 x 3,000 px, ~1.3 MB; see bench_ingest_xray.py).

Measured per source: ingest with the paper recipe's ingest settings (every usable slice,
`max_images = 0`), then `build` of `--items` items per task with the paper's geometry
(crops 224 px; the weight-free `pixels` embedder for X-ray references) from the same cache:
- cache bytes per kept image (images and masks), against the 2 bytes per pixel of the former
  uncompressed cache (1-byte image + 1-byte mask, same pixels);
- pool bytes per item.
Projected to the paper's sources: cache size with every usable image and with the paper
recipe's `ingest.max_images`, against the pool of 36,000 items per modality. The source
counts are assumptions, printed with the result (change them with --paper-*).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
from common import Figures, add_output_args

from medscout_data.recipe import load_recipe, resolve_recipe_path

ROOT = Path(__file__).resolve().parent.parent
ITEMS_PER_MODALITY = 36_000  # the paper's pool: 12,000 items x 3 tasks


def recipe_file(work: Path, items: int, max_images: int = 0) -> Path:
    """The paper's recipe with a small pool, every usable image (or `max_images`), pixels embedder."""
    text = resolve_recipe_path("med-scout-bench").read_text()
    text = re.sub(r"items_per_cell = \d+", f"items_per_cell = {items}", text)
    text = re.sub(r"bench_per_cell = \d+", f"bench_per_cell = {max(1, items // 10)}", text)
    text = re.sub(r"max_images = \d+", f"max_images = {max_images}", text)
    text = re.sub(r'model = ".*"', 'model = "pixels"', text)
    text = re.sub(r'name = "med-scout-bench"', 'name = "bench-cache"', text)
    path = work / f"recipe-{items}-{max_images}.toml"
    path.write_text(text)
    load_recipe(path)
    return path


def noisy_copy(source: Path, target: Path, sigma_hu: float) -> Path:
    """The CT tree with extra Gaussian noise in every volume (seeded)."""
    import SimpleITK as sitk

    if (target / ".noisy").is_file():
        return target
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("segmentations"))
    for n, path in enumerate(sorted(target.glob("s*/ct.nii.gz"))):
        image = sitk.ReadImage(str(path))
        array = sitk.GetArrayFromImage(image).astype(np.float32)
        array += np.random.default_rng(n).normal(0, sigma_hu, array.shape).astype(np.float32)
        noisy = sitk.GetImageFromArray(np.clip(array, -1024, 3071).astype(np.int16))
        noisy.CopyInformation(image)
        sitk.WriteImage(noisy, str(path), useCompression=True)
    (target / ".noisy").write_text("")
    return target


def cli(*args: str) -> None:
    command = [sys.executable, "-m", "medscout_data.cli", *args, "--quiet"]
    result = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")


def measure(name: str, modality: str, root: Path, out: Path, recipe: Path) -> dict[str, float]:
    """Ingest + build one source; bytes of cache (per kept image) and pool (per item)."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    cli("ingest", "--modality", modality, "--root", str(root), "--recipe", str(recipe), "--out", str(out))
    ingest_seconds = time.perf_counter() - start
    catalogue = pl.read_parquet(out / "catalogue" / modality / "catalogue.parquet")
    cache = out / "cache" / modality
    masks = sum(p.stat().st_size for p in cache.glob("*.mask.stack"))
    images = sum(p.stat().st_size for p in cache.glob("*.stack")) - masks
    pixels = int((catalogue["height"] * catalogue["width"]).sum())
    cli("build", "--modality", modality, "--root", str(root), "--recipe", str(recipe), "--out", str(out))
    pool = list((out / "pool" / modality).glob("*.parquet"))
    items = sum(pl.scan_parquet(p).select(pl.len()).collect().item() for p in pool)
    return {
        "name": name,
        "modality": modality,
        "kept": catalogue.height,
        "mean_pixels": pixels / catalogue.height,
        "image_bytes": images / catalogue.height,
        "mask_bytes": masks / catalogue.height,
        "raw_bytes": 2 * pixels / catalogue.height,
        "item_bytes": sum(p.stat().st_size for p in pool) / items,
        "ingest_seconds": ingest_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-cache"))
    parser.add_argument("--subjects", type=int, default=3)
    parser.add_argument("--slices", type=int, default=60)
    parser.add_argument("--xray-images", type=int, default=24)
    parser.add_argument("--items", type=int, default=60, help="items per task built from each cache")
    parser.add_argument("--paper-ct-volumes", type=int, default=1228)
    parser.add_argument("--paper-ct-slices", type=int, default=300, help="usable slices per CT volume")
    parser.add_argument("--paper-mri-volumes", type=int, default=616)
    parser.add_argument("--paper-mri-slices", type=int, default=120, help="usable slices per MRI volume")
    parser.add_argument("--paper-xray-images", type=int, default=243_000, help="frontal MIMIC-CXR images")
    add_output_args(parser)
    args = parser.parse_args()
    from bench_ingest_xray import write_full_size_tree

    from medscout_data.sample import ensure_sample_source

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ct = ensure_sample_source(work / "ct", "totalseg-ct", args.subjects, 512, args.slices, 0)
    mri = ensure_sample_source(work / "mri", "totalseg-mri", args.subjects, 512, args.slices, 0)
    noisy = noisy_copy(ct, work / "ct-noisy", 30.0)
    xray = write_full_size_tree(work / "xray", args.xray_images, args.xray_images)  # ingest drops duplicates
    print(
        f"setup {time.perf_counter() - t0:.0f} s; cpu_count={os.cpu_count()} loadavg={os.getloadavg()[0]:.1f}"
    )
    recipe = recipe_file(work, args.items)
    figures = Figures(
        ["source", "kept", "px/image", "cache KB/image", "(masks)", "2 B/px KB", "smaller", "pool KB/item"]
    )
    sources = [("ct", "ct", ct), ("ct-noisy", "ct", noisy), ("mri", "mri", mri), ("xray", "xray", xray)]
    rows = [measure(name, modality, root, work / f"out-{name}", recipe) for name, modality, root in sources]
    print(
        f"\n{'source':<9} {'kept':>5} {'px/image':>9} {'cache KB/image':>14} {'(masks)':>8} "
        f"{'2 B/px KB':>9} {'ratio':>6} {'pool KB/item':>12}"
    )
    for r in rows:
        cache_kb, mask_kb, raw_kb = (
            (r["image_bytes"] + r["mask_bytes"]) / 1024,
            r["mask_bytes"] / 1024,
            r["raw_bytes"] / 1024,
        )
        print(
            f"{r['name']:<9} {r['kept']:>5} {r['mean_pixels']:>9.0f} {cache_kb:>14.1f} {mask_kb:>8.2f} "
            f"{raw_kb:>9.1f} {raw_kb / cache_kb:>5.1f}x {r['item_bytes'] / 1024:>12.1f}"
        )
        figures.row(
            r["name"],
            f"{r['kept']:.0f}",
            f"{r['mean_pixels']:,.0f}",
            f"{cache_kb:.1f}",
            f"{mask_kb:.2f}",
            f"{raw_kb:.1f}",
            f"{raw_kb / cache_kb:.1f}x",
            f"{r['item_bytes'] / 1024:.1f}",
        )
    project(rows, args, figures)
    figures.write(args.table)
    print(f"loadavg at the end {os.getloadavg()[0]:.1f}")


def project(rows: list[dict[str, float]], args: argparse.Namespace, figures: Figures) -> None:
    """Cache and pool at the paper's scale, with every usable image and with the paper recipe's budget."""
    budget = load_recipe("med-scout-bench").ingest.max_images
    available = {
        "ct": args.paper_ct_volumes * args.paper_ct_slices,
        "mri": args.paper_mri_volumes * args.paper_mri_slices,
        "xray": args.paper_xray_images,
    }
    print(
        f"\npaper scale (assumed: CT {args.paper_ct_volumes} volumes x {args.paper_ct_slices} usable slices, "
        f"MRI {args.paper_mri_volumes} x {args.paper_mri_slices}, X-ray {args.paper_xray_images:,} frontal; "
        f"pool {ITEMS_PER_MODALITY:,} items per modality; images as measured here at 512 px)"
    )
    budgeted = f"max_images={budget}"
    figures.table(
        f"Projected to the paper's sources (assumed: CT {args.paper_ct_volumes:,} volumes x"
        f" {args.paper_ct_slices} usable slices, MRI {args.paper_mri_volumes:,} x {args.paper_mri_slices},"
        f" X-ray {args.paper_xray_images:,} frontal images; pool {ITEMS_PER_MODALITY:,} items a modality):",
        [
            "source",
            "pool GB",
            "cache GB, every image",
            "x pool",
            f"cache GB, `{budgeted}`",
            "x pool",
            "former cache GB",
        ],
    )
    print(f"{'source':<9} {'pool GB':>8} {'cache GB, all':>14} {'x pool':>7} {budgeted:>17} {'x pool':>7}")
    for r in rows:
        per_image = r["image_bytes"] + r["mask_bytes"]
        pool = ITEMS_PER_MODALITY * r["item_bytes"] / 1e9
        everything = available[r["modality"]] * per_image / 1e9
        kept = min(available[r["modality"]], budget or available[r["modality"]]) * per_image / 1e9
        old = available[r["modality"]] * r["raw_bytes"] / 1e9
        print(
            f"{r['name']:<9} {pool:>8.2f} {everything:>14.1f} {everything / pool:>6.1f}x {kept:>17.2f} "
            f"{kept / pool:>6.2f}x   (former cache, all: {old:.0f} GB)"
        )
        figures.row(
            r["name"],
            f"{pool:.2f}",
            f"{everything:.1f}",
            f"{everything / pool:.1f}x",
            f"{kept:.2f}",
            f"{kept / pool:.2f}x",
            f"{old:.0f}",
        )
    figures.note(
        f"Sample sources at 512 px ({args.subjects} subjects of {args.slices} slices a volume source,"
        f" {args.xray_images} full-size X-ray JPEGs); ingest with the paper recipe's settings (every usable"
        " image), then `build` of"
        f" {args.items} items a task from the same cache. `2 B/px`: the former uncompressed cache (1-byte"
        " image + 1-byte mask). `ct-noisy` adds 30 HU of noise: a worst case above real CT's 40-65 KB PNGs."
    )


if __name__ == "__main__":
    main()
