"""Benchmark: time and peak RSS of `split` on a paper-sized pool (108,000 items, small images).

    python benchmarks/bench_split.py [--items-per-cell 12000] [--work DIR] [--table docs/generated/split.md]

Writes a synthetic pool in the real shard format (3 modalities x 3 tasks,
items balanced like `build` makes them, tiny PNGs, a complete pool record per
modality), then runs the split in a
child process and reports wall time, items/s and the child's peak RSS.
Targets from the issue: under 60 s and under 1 GB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from common import Figures, add_output_args, cores

from medscout_data import MODALITIES, TASKS
from medscout_data.layout import Layout
from medscout_data.recipe import Recipe, load_recipe
from medscout_data.schema import ITEM_SCHEMA
from medscout_data.seeding import rng_for
from medscout_data.shards import ShardWriter, write_json_atomic
from medscout_data.stages.build import balanced, side_counts
from medscout_data.stages.plan import make_plan
from medscout_data.stages.pool import DIGEST_KEY, write_pool_record
from medscout_data.tasks import prompts
from medscout_data.tasks.geometry import non_identity_permutations

TINY_PNG = cv2.imencode(".png", np.arange(64, dtype=np.uint8).reshape(8, 8))[1].tobytes()
N_IMAGES = {"scale": 4, "jigsaw": 1, "anomaly": 1}


ImageSource = Callable[[str, str, int], list[bytes]]  # (modality, task, item number) -> PNGs


def tiny_images(modality: str, task: str, number: int) -> list[bytes]:
    """One 8x8 PNG per image slot (the split never decodes images)."""
    return [TINY_PNG] * N_IMAGES[task]


def write_pool(
    root: Path,
    items_per_cell: int,
    subjects: int,
    recipe: Recipe | None = None,
    images: ImageSource = tiny_images,
) -> int:
    """A pool shaped like `build`'s output (shards, plans, complete pool records), written fast."""
    recipe = recipe or load_recipe("med-scout-bench")
    layout = Layout.at(root)
    total = 0
    for modality in MODALITIES:
        names = [f"{modality}-subject-{i:05d}" for i in range(subjects)]
        plan = make_plan(
            names, modality, recipe.seed, recipe.pool.bench_fraction, recipe.name, recipe.to_dict()
        )
        write_json_atomic(plan.to_dict(), layout.plan(modality))
        shards: dict[str, dict] = {}
        for task in TASKS:
            total += _write_cell(layout, recipe, plan, modality, task, items_per_cell, images, shards)
        record = {"complete": True, "recipe": recipe.name, "rerun": "benchmark", "shards": shards}
        write_pool_record(layout, modality, record | {"planned": dict.fromkeys(TASKS, items_per_cell)})
    return total


def _write_cell(layout, recipe, plan, modality, task, items_per_cell, images, shards) -> int:
    rng = rng_for(0, "bench-split", modality, task)
    pool = recipe.pool
    counts = side_counts(items_per_cell, pool.items_per_cell, pool.bench_per_cell, pool.bench_fraction)
    rows = []
    for side, count in counts.items():
        subjects = plan.subjects(side)
        variants = balanced(["tier", "box"], count, rng) if task == "scale" else [""] * count
        perms = balanced(non_identity_permutations(4), count, rng)
        cells = balanced([5, 6, 9, 10], count, rng)
        for k in range(count):
            subject = subjects[k % len(subjects)]
            rows.append((side, subject, variants[k], perms[k], cells[k]))
    size = recipe.pool.shard_max_items
    for shard, start in enumerate(range(0, len(rows), size)):
        path = layout.pool_dir(modality) / f"{task}-{shard:05d}.parquet"
        digest = f"benchmark-{modality}-{task}-{shard}"
        metadata = {DIGEST_KEY: digest}
        with ShardWriter(path, ITEM_SCHEMA, recipe.pool.row_group_items, metadata) as writer:
            for number, (_side, subject, variant, perm, cell) in enumerate(rows[start : start + size], start):
                answer, target = _truth(task, variant, perm, cell)
                writer.write(
                    {
                        "id": f"{modality}-{task}-{number:06d}",
                        "modality": modality,
                        "task": task,
                        "variant": variant,
                        "images": [{"bytes": png, "path": None} for png in images(modality, task, number)],
                        "question": "q" * 400,
                        "question_cot": "q" * 480,
                        "answer": answer,
                        "target": json.dumps(target),
                        "subject_id": subject,
                        "source_id": subject,
                        "source": "{}",
                        "reference_subject_id": subject if task == "anomaly" else "",
                        "seed": number,
                    }
                )
        shards[path.name] = {"task": task, "digest": digest, "rows": len(rows[start : start + size])}
    return len(rows)


def _truth(task: str, variant: str, perm: tuple[int, ...], cell: int) -> tuple[str, dict]:
    """A consistent answer and target (validate recomputes one from the other)."""
    if task == "jigsaw":
        return prompts.jigsaw_answer(perm), {"grid": 2, "permutation": list(perm)}
    if task == "anomaly":
        row, col = divmod(cell, 4)
        return prompts.anomaly_answer(cell), {"grid": 4, "cell": cell, "row": row, "col": col}
    levels = [1, 2, 1]
    boxes = [
        [0.1, 0.1, 0.1 + 0.2**0.5, 0.1 + 0.2**0.5],
        [0.5, 0.5, 0.75, 0.75],
        [0.3, 0.2, 0.3 + 0.2**0.5, 0.2 + 0.2**0.5],
    ]
    grid = [[round(1000 * v) for v in box] for box in boxes]
    answer = prompts.tier_answer(levels) if variant == "tier" else prompts.box_answer(grid)
    return answer, {"levels": levels, "boxes": boxes, "boxes_1000": grid}


# VmHWM, not ru_maxrss: on Linux ru_maxrss carries the parent's peak over fork and exec.
CHILD = """
import sys, time
from pathlib import Path
from medscout_data.layout import Layout
from medscout_data.stages.split import SplitOptions, split_pool
start = time.perf_counter()
manifest = split_pool(Layout.at(sys.argv[1]), SplitOptions(progress=False))
status = Path("/proc/self/status").read_text().splitlines()
peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(time.perf_counter() - start, peak_kib, manifest["totals"]["bench"])
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items-per-cell", type=int, default=12000)
    parser.add_argument("--subjects", type=int, default=1200, help="subjects per modality")
    parser.add_argument("--work", type=Path, default=None)
    add_output_args(parser)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-split-"))
    start = time.perf_counter()
    total = write_pool(work, args.items_per_cell, args.subjects)
    print(f"wrote a {total}-item pool in {time.perf_counter() - start:.1f} s under {work}")
    figures = Figures(["run", "wall", "items/s", "peak RSS"])
    out = subprocess.run([sys.executable, "-c", CHILD, str(work)], capture_output=True, text=True, check=True)
    seconds, max_rss_kib, bench = out.stdout.split()
    seconds = float(seconds)
    print(f"cores: {cores()}")
    print(
        f"split of {total} items (bench {bench}): {seconds:.1f} s, {total / seconds:,.0f} items/s, "
        f"peak RSS {int(max_rss_kib) / 1024:.0f} MiB (targets: < 60 s, < 1024 MiB)"
    )
    figures.row(
        f"`split` of a {total:,}-item pool (bench {int(bench):,})",
        f"{seconds:.1f} s",
        f"{total / seconds:,.0f}",
        f"{int(max_rss_kib) / 1024:.0f} MiB",
    )
    figures.note(
        f"{args.items_per_cell:,} items a cell, {args.subjects:,} subjects a modality, tiny PNGs; the split"
        " in a child process (pool-record checks, work folder and swap included). Targets: under 60 s"
        " and under 1 GiB."
    )
    figures.write(args.table)


if __name__ == "__main__":
    main()
