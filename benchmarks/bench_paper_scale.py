"""Benchmark: the paper rebuild on the sample, three modalities at 12,000 items per cell, to a valid split.

    python benchmarks/bench_paper_scale.py [--work DIR] [--workers 2] [--items-per-cell 12000]
        [--subjects 40] [--slices 100] [--xray-subjects 6000] [--table docs/generated/paper-scale.md]

The paper's recipe (`med-scout-bench`: 512 px, crops 224 px, 1,200 bench items per cell) with one
change: the X-ray reference embedder is the weight-free `pixels` one (BiomedCLIP's weights cannot be
fetched here; the geometry and counts are the paper's). Stages, each a child process of the CLI with
the RSS of its whole process tree sampled: sample, ingest, index (X-ray), build, per modality; then
split and validate --deep. Prints wall time, peak RSS and the disk each stage's output takes (with
--table, as the docs' snippet), and fails loudly if any stage does.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Figures, add_output_args, cores, run_sampled

from medscout_data.recipe import load_recipe, resolve_recipe_path

SOURCES = {"ct": "totalseg-ct", "mri": "totalseg-mri", "xray": "mimic-cxr-jpg"}


def recipe_file(work: Path, items_per_cell: int) -> Path:
    text = resolve_recipe_path("med-scout-bench").read_text()
    text = re.sub(r'(?m)^model = ".*"$', 'model = "pixels"', text)
    text = re.sub(r"items_per_cell = \d+", f"items_per_cell = {items_per_cell}", text)
    text = re.sub(r"bench_per_cell = \d+", f"bench_per_cell = {max(1, items_per_cell // 10)}", text)
    path = work / "paper-pixels.toml"
    path.write_text(text)
    load_recipe(path)
    return path


def disk(*paths: Path) -> int:
    """Bytes under the given files and folders."""
    total = 0
    for path in paths:
        if path.is_file():
            total += path.stat().st_size
        elif path.is_dir():
            total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return total


def stage(rows: list[tuple], label: str, args: list[str], outputs: list[Path]) -> str:
    run = run_sampled([sys.executable, "-m", "medscout_data.cli", *args])
    size = disk(*outputs)
    rows.append((label, run.seconds, run.peak_tree_mib, size))
    print(
        f"{label:<22} {run.seconds:8.1f} s  peak RSS {run.peak_tree_mib:7.0f} MiB  {size / 1e9:7.2f} GB",
        flush=True,
    )
    return run.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--items-per-cell", type=int, default=12000)
    parser.add_argument("--subjects", type=int, default=40, help="CT and MRI subjects")
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument(
        "--xray-subjects", type=int, default=6000, help="about 12,000 frontal images: one per item and cell"
    )
    parser.add_argument("--modalities", nargs="+", default=["ct", "mri", "xray"])
    add_output_args(parser)
    args = parser.parse_args()
    figures = Figures(["stage", "wall", "peak RSS", "disk"])
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-paper-"))
    work.mkdir(parents=True, exist_ok=True)
    recipe, out, workers = recipe_file(work, args.items_per_cell), work / "shards", str(args.workers)
    print(f"cores: {cores()}, workers {workers}, load average {os.getloadavg()[0]:.1f}; work {work}")
    rows: list[tuple] = []
    started = time.perf_counter()
    for modality in args.modalities:
        source = SOURCES[modality]
        subjects = args.xray_subjects if modality == "xray" else args.subjects
        sample_args = ["sample", "--out", str(work / "src"), "--source", source, "--subjects", str(subjects)]
        sample_args += ["--size", "512", "--slices", str(args.slices)]
        stage(rows, f"{modality} sample", sample_args, [work / "src" / source])
        common = ["--modality", modality, "--root", str(work / "src" / source), "--recipe", str(recipe)]
        common += ["--out", str(out), "--workers", workers]
        stage(
            rows,
            f"{modality} ingest",
            ["ingest", *common],
            [out / "catalogue" / modality, out / "cache" / modality],
        )
        if modality == "xray":
            stage(rows, "xray index", ["index", *common[:-2]], [out / "index" / modality])
        summary = stage(rows, f"{modality} build", ["build", *common, "--quiet"], [out / "pool" / modality])
        print("  " + summary.strip().replace("\n", "\n  "))
    stage(rows, "split", ["split", "--shards", str(out)], [out / "bench", out / "train"])
    stage(rows, "validate --deep", ["validate", "--shards", str(out), "--deep"], [])
    total = time.perf_counter() - started
    print(f"\ntotal {total:.0f} s; load average {os.getloadavg()[0]:.1f}\n")
    for label, seconds, rss, size in rows:
        figures.row(label, f"{seconds:.0f} s", f"{rss:.0f} MiB", f"{size / 1e9:.2f} GB" if size else "-")
    figures.note(
        f"{args.items_per_cell:,} items a modality x task, {args.workers} workers; sample sources:"
        f" {args.subjects} CT and MRI subjects of {args.slices} slices at 512 px,"
        f" {args.xray_subjects:,} X-ray subjects; the X-ray embedder is the weight-free `pixels` one."
        " Each stage a child process of the CLI, with the RSS of its whole process tree; disk is what"
        f" the stage's output takes. {total:,.0f} s in all."
    )
    print(figures.markdown())
    subprocess.run([sys.executable, "-m", "medscout_data.cli", "validate", "--shards", str(out)], check=True)
    figures.write(args.table)


if __name__ == "__main__":
    main()
