"""Benchmark: scoring 10,800 predictions (the full bench) per profile and mode.

    python benchmarks/bench_score.py [--per-cell 1200] [--repeats 3] [--table docs/generated/score.md]

Setup (not timed): a bench of 9 cells x --per-cell items (scale half tier,
half box) with realistic targets, written with `ShardWriter` and the item
schema (each image a small PNG); predictions as JSONL: 40% exact answers,
30% random well-formed answers, 20% CoT responses with ~400 characters of
reasoning, 10% junk.

Timed (best of --repeats): loading the bench's metadata columns and truths;
reading the predictions; `score_bench` for each profile x mode; `score_file`
end to end per profile (the bench's decode check included: this bench has no
manifest). Baseline in the same script: the same rewards through the
GRPO-style `total_rewards(completions, items)` on plain rows, which parses
each item's JSON target on every call.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from common import Figures, add_output_args

from medscout_data import MODALITIES, TASKS
from medscout_data.evaluation.score import (
    bench_items,
    load_bench,
    read_predictions,
    resolve_bench,
    score_bench,
    score_file,
    total_rewards,
)
from medscout_data.imaging import encode_png
from medscout_data.report import RunReport
from medscout_data.schema import ITEM_SCHEMA
from medscout_data.shards import ShardWriter
from medscout_data.tasks.geometry import box_to_grid, box_to_unit, non_identity_permutations, sample_crop_box

PERMUTATIONS = non_identity_permutations(4)
THINKING = "The full image shows the thorax; comparing texture and edges of each view. " * 5


def target_of(task: str, variant: str, rng: np.random.Generator) -> tuple[dict, str]:
    """(target, answer) of a plausible item."""
    if task == "scale":
        levels = [int(v) for v in rng.integers(1, 3, 3)]
        boxes = [sample_crop_box(512, 512, (0.2, 0.0625)[lv - 1], (0.2, 0.8), rng) for lv in levels]
        grid = [list(box_to_grid(b, 512, 512)) for b in boxes]
        target = {"levels": levels, "boxes": [box_to_unit(b, 512, 512) for b in boxes], "boxes_1000": grid}
        if variant == "tier":
            return target, ", ".join(f"Label {lv}" for lv in levels)
        return target, ", ".join("({}, {}, {}, {})".format(*b) for b in grid)
    if task == "jigsaw":
        perm = PERMUTATIONS[int(rng.integers(len(PERMUTATIONS)))]
        return {"grid": 2, "permutation": list(perm)}, " ".join(map(str, perm))
    cell = int(rng.choice([5, 6, 9, 10]))
    return {"grid": 4, "cell": cell, "row": cell // 4, "col": cell % 4}, str(cell)


def response_of(answer: str, task: str, variant: str, rng: np.random.Generator) -> str:
    roll = rng.random()
    if roll < 0.4:
        return answer
    if roll < 0.7:
        return target_of(task, variant, rng)[1]
    if roll < 0.9:
        return f"<think>{THINKING}</think>\n<answer>{answer}</answer>"
    return "I cannot tell from these images."


def setup(work: Path, per_cell: int) -> tuple[Path, Path, list[dict]]:
    """Bench shards under work/bench and predictions.jsonl; returns (root, predictions, rows)."""
    rng = np.random.default_rng(0)
    png = {"bytes": encode_png(np.full((16, 16), 128, np.uint8)), "path": None}
    records, rows = [], []
    for modality in MODALITIES:
        for task in TASKS:
            path = work / "bench" / modality / task / "test-00000-of-00001.parquet"
            with ShardWriter(path, ITEM_SCHEMA, row_group_rows=64) as writer:
                for k in range(per_cell):
                    variant = ("tier", "box")[k % 2] if task == "scale" else ""
                    target, answer = target_of(task, variant, rng)
                    row = {
                        "id": f"{modality}-{task}-{k:05d}",
                        "modality": modality,
                        "task": task,
                        "variant": variant,
                        "images": [png] * (4 if task == "scale" else 1),
                        "question": "q",
                        "question_cot": "q",
                        "answer": answer,
                        "target": json.dumps(target),
                        "subject_id": "s",
                        "source_id": "s",
                        "source": "{}",
                        "reference_subject_id": "",
                        "seed": k,
                    }
                    writer.write(row)
                    rows.append(row)
                    records.append({"id": row["id"], "response": response_of(answer, task, variant, rng)})
    predictions = work / "predictions.jsonl"
    predictions.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return work, predictions, rows


def best_of(repeats: int, fn) -> tuple[float, object]:
    """(best wall seconds, result); the process CPU seconds of that run go to CPU_SECONDS."""
    best, result = (float("inf"), float("inf")), None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
    CPU_SECONDS.append(best[1])
    return best[0], result


CPU_SECONDS: list[float] = []


def ms(seconds: float) -> str:
    """Wall ms (and CPU ms of the same run: on a busy machine wall time includes waiting for a core)."""
    return f"{seconds * 1000:8.1f} ms wall {CPU_SECONDS[-1] * 1000:7.1f} ms cpu"


def cells(seconds: float) -> tuple[str, str]:
    """Wall and CPU ms of the last timed run, for the docs' table."""
    return f"{seconds * 1000:.1f}", f"{CPU_SECONDS[-1] * 1000:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-cell", type=int, default=1200)
    parser.add_argument("--repeats", type=int, default=3)
    add_output_args(parser)
    args = parser.parse_args()
    figures = Figures(["step", "wall ms", "CPU ms", "per item / result"], align="lrrl")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        root, predictions, rows = setup(Path(tmp), args.per_cell)
        n = len(rows)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(
            f"bench_score: {n} items, {cores} cores available, load average {load:.1f} "
            "(scoring is single-threaded)"
        )
        source = resolve_bench(root / "bench")  # no manifest here: the decode check
        seconds, items = best_of(args.repeats, lambda: bench_items(load_bench(source)))
        print(f"  load bench metadata + truths   {ms(seconds)}")
        figures.row("load bench metadata + truths", *cells(seconds), "")
        seconds, preds = best_of(args.repeats, lambda: read_predictions(predictions, RunReport("score")))
        print(f"  read predictions               {ms(seconds)}")
        figures.row("read predictions", *cells(seconds), "")
        score_times = {}
        for profile in ("official", "paper"):
            for mode in ("direct", "cot"):
                seconds, result = best_of(
                    args.repeats, lambda p=profile, m=mode: score_bench(items, preds, p, m)
                )
                score_times[profile, mode] = seconds
                avg = 100 * result.overall.means()["accuracy"]
                print(
                    f"  score_bench {profile:<8} {mode:<6}    {ms(seconds)}"
                    f"  ({seconds / n * 1e6:.1f} us/item, Med-Scout-Bench Avg {avg:.1f})"
                )
                figures.row(
                    f"`score_bench` {profile} {mode}",
                    *cells(seconds),
                    f"{seconds / n * 1e6:.1f} us, avg {avg:.1f}",
                )
        for profile in ("official", "paper"):
            seconds, _ = best_of(args.repeats, lambda p=profile: score_file(predictions, root / "bench", p))
            print(f"  score_file end to end {profile:<8} {ms(seconds)}")
            figures.row(
                f"`score_file` end to end, {profile} (decode check of the bench)", *cells(seconds), ""
            )
        completions = [preds[r["id"]] for r in rows]
        plain = [{"task": r["task"], "variant": r["variant"], "target": r["target"]} for r in rows]
        seconds, _ = best_of(args.repeats, lambda: total_rewards(completions, plain, "official", "direct"))
        ratio = seconds / score_times["official", "direct"]
        print(
            f"  baseline total_rewards(rows)   {ms(seconds)}"
            f"  ({ratio:.2f}x score_bench official direct: JSON targets parsed per call)"
        )
        figures.row(
            "baseline: `total_rewards(rows)`", *cells(seconds), f"{ratio:.2f}x `score_bench` official direct"
        )
        figures.note(
            f"{n:,} predictions ({args.per_cell:,} a cell; 40% exact, 30% random well-formed,"
            f" 20% CoT, 10% junk), best of {args.repeats}; scoring is single-threaded. The baseline"
            " parses each item's JSON target on every call, as a GRPO reward on plain rows does."
        )
    figures.write(args.table)


if __name__ == "__main__":
    main()
