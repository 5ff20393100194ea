"""The bench's floor and no-learning ceiling on synthetic data: baseline scores per cell.

    python benchmarks/bench_baselines.py [--work DIR] [--bench-per-cell 40]
        [--table docs/generated/baselines.md] [--chart docs/score-baselines.png]

Builds a larger synthetic sample than the demo's (40 subjects per source,
256 px, the paper's geometry, `pixels` X-ray references), splits it, runs the
random, prior and classical baselines and scores each (official profile,
Direct mode). Prints a Markdown table of mean accuracy x 100 per cell, and
the time each baseline took. The phantoms are schematic: real CT, MRI and
X-ray will be harder for the classical solvers.

`--table` and `--chart` write the table (Markdown) and its bar chart (PNG,
the chart `score --plot` draws) from the same scores, so the docs' table and
figure cannot disagree (docs/scoring.md includes both).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Figures, add_output_args, cores

from medscout_data.evaluation.compare import Column, plot_columns
from medscout_data.evaluation.score import score_file
from medscout_data.recipe import load_recipe, resolve_recipe_path
from medscout_data.report import RunReport

BASELINES = ("random", "prior", "classical")
CELLS = [(m, t) for m in ("ct", "mri", "xray") for t in ("scale", "jigsaw", "anomaly")]
TITLES = {"ct": "CT", "mri": "MRI", "xray": "X-ray"}


def recipe_file(work: Path, bench_per_cell: int) -> Path:
    """The sample recipe, scaled up: 10x the bench per cell in the pool, 40 subjects at 256 px
    (fewer leave too few X-ray images on the bench side for distinct anomaly items)."""
    text = resolve_recipe_path("sample").read_text()
    text = re.sub(r'name = "sample"', 'name = "baselines"', text)
    text = re.sub(r"items_per_cell = \d+", f"items_per_cell = {10 * bench_per_cell}", text)
    text = re.sub(r"bench_per_cell = \d+", f"bench_per_cell = {bench_per_cell}", text)
    text = re.sub(r"shard_max_items = \d+", "shard_max_items = 500", text)
    text = re.sub(r"subjects = \d+", "subjects = 40", text)
    text = re.sub(r"^size = \d+", "size = 256", text, flags=re.M)  # not crop_size
    text = re.sub(r"slices = \d+", "slices = 64", text)
    text = re.sub(r"max_size = \d+", "max_size = 256", text)
    path = work / "baselines.toml"
    path.write_text(text)
    load_recipe(path)
    return path


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "medscout_data.cli", *args], check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--bench-per-cell", type=int, default=40)
    add_output_args(parser, chart=True)
    args = parser.parse_args()
    figures = Figures(["modality", "task", *BASELINES], align="ll" + "r" * len(BASELINES))
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-baselines-"))
    work.mkdir(parents=True, exist_ok=True)
    shards = work / "shards"
    recipe = recipe_file(work, args.bench_per_cell)
    start = time.perf_counter()
    for modality in ("ct", "mri", "xray"):
        cli(
            "build",
            "--modality",
            modality,
            "--recipe",
            str(recipe),
            "--out",
            str(shards),
            "--workers",
            "2",
            "--quiet",
        )
    cli("split", "--shards", str(shards), "--quiet")
    print(f"cores: {cores()}; built and split in {time.perf_counter() - start:.0f} s ({shards})")
    scores, results = {}, {}
    for name in BASELINES:
        out = work / f"{name}.jsonl"
        start = time.perf_counter()
        cli("baseline", "--name", name, "--bench", str(shards), "--out", str(out), "--seed", "0", "--quiet")
        seconds = time.perf_counter() - start
        results[name] = score_file(out, shards, "official", "direct", RunReport("score"))
        result = scores[name] = results[name].as_dict()
        print(f"baseline {name}: {seconds:.1f} s for {result['overall']['count']} items")
    fill(figures, scores, args.bench_per_cell)
    print()
    print(figures.markdown())
    figures.write(args.table)
    if args.chart:
        columns = [Column(name, results[name], baseline=True) for name in BASELINES]
        title = f"Baselines on the synthetic bench ({args.bench_per_cell} items per cell), accuracy x100"
        print(f"chart: {plot_columns(columns, args.chart, title=title)}")


def fill(figures: Figures, scores: dict[str, dict], bench_per_cell: int) -> None:
    """Mean accuracy x 100 per cell and the Avg, one column per baseline."""
    for modality, task in CELLS:
        key = f"{modality}/{task}"
        figures.row(
            TITLES[modality], task, *(f"{100 * scores[b]['cells'][key]['accuracy']:.1f}" for b in BASELINES)
        )
    overall = (f"**{100 * scores[b]['overall']['accuracy']:.1f}**" for b in BASELINES)
    figures.row("**Med-Scout-Bench Avg**", "", *overall)
    figures.note(
        f"{bench_per_cell} bench items per cell; official profile, Direct mode, mean accuracy x 100."
        " The chart above is drawn from the same scores."
    )


if __name__ == "__main__":
    main()
