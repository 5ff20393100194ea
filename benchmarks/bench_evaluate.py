"""Benchmark: `medscout-data evaluate` against a local server that answers instantly.

    python benchmarks/bench_evaluate.py [--per-cell 300 1200] [--concurrency 64] [--work DIR]
        [--table docs/generated/evaluate.md]

Setup (not timed): for each --per-cell, a bench of 9 cells (3 modalities x 3
tasks) with CT-like 512 px PNGs of ~73 KB (the sample phantom's size, above
real CT's 40-65 KB) and 224 px crops of ~16 KB: 4 images per scale item, 1 per
jigsaw / anomaly item, as the paper's recipe makes them. 1,200 per cell is the
full 10,800-item bench. A chat-completions server (aiohttp, in its own
process, reading every request body and answering at once) stands in for the
model.

Timed: the whole `evaluate` command in a child process (bench check, every
request, predictions.jsonl, scoring), at --concurrency. Prints requests/s end
to end, the client's CPU per request, the client's peak RSS (its process tree;
the server is not in it) and the RSS ratio between the largest and the smallest
bench (flat memory: close to 1), with the core count and load average. The
server shares the cores: on this machine the figure is a floor for the client.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import Figures, add_output_args, cores, run_sampled

from medscout_data import MODALITIES, TASKS
from medscout_data.imaging import encode_png
from medscout_data.schema import ITEM_SCHEMA
from medscout_data.seeding import rng_for
from medscout_data.shards import ShardWriter

SERVER = r"""
import json, sys
from aiohttp import web
BODY = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "9"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1000, "completion_tokens": 1, "total_tokens": 1001}}).encode()
async def chat(request):
    await request.read()
    return web.Response(body=BODY, content_type="application/json")
app = web.Application(client_max_size=64 * 1024 * 1024)
app.router.add_post("/v1/chat/completions", chat)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def slice_png(size: int, k: int, noise: float) -> bytes:
    """A CT-like slice (an ellipse of soft tissue with texture and noise) as PNG."""
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    body = (xx / 0.42) ** 2 + (yy / 0.32) ** 2 < 1
    image = np.where(body, 110 + 30 * np.sin(9 * xx + k) * np.cos(7 * yy), 0)
    image = image + rng_for(0, "bench-evaluate", size, k).normal(0, noise, image.shape) * body
    return encode_png(np.clip(image, 0, 255).astype(np.uint8))


def write_bench(root: Path, per_cell: int) -> int:
    """A bench of 9 x per_cell items under root/bench; returns the image bytes it holds."""
    full = [slice_png(512, k, 6) for k in range(8)]
    crops = [slice_png(224, k, 8) for k in range(8)]
    total = 0
    for modality in MODALITIES:
        for task in TASKS:
            path = root / "bench" / modality / task / "test-00000-of-00001.parquet"
            with ShardWriter(path, ITEM_SCHEMA, row_group_rows=64) as writer:
                for k in range(per_cell):
                    images = [full[k % 8]] + (
                        [crops[(k + j) % 8] for j in range(3)] if task == "scale" else []
                    )
                    total += sum(map(len, images))
                    writer.write(_row(modality, task, k, images))
    return total


def _row(modality: str, task: str, k: int, images: list[bytes]) -> dict:
    variant = ("tier", "box")[k % 2] if task == "scale" else ""
    target = {
        "scale": {"levels": [1, 2, 1], "boxes_1000": [[100, 100, 500, 500]] * 3},
        "jigsaw": {"grid": 2, "permutation": [2, 0, 3, 1]},
        "anomaly": {"grid": 4, "cell": 9},
    }[task]
    return {
        "id": f"{modality}-{task}-{k:05d}",
        "modality": modality,
        "task": task,
        "variant": variant,
        "images": [{"bytes": b, "path": None} for b in images],
        "question": "q" * 600,
        "question_cot": "q" * 700,
        "answer": "9",
        "target": json.dumps(target),
        "subject_id": f"s{k % 50}",
        "source_id": f"s{k % 50}",
        "source": "{}",
        "reference_subject_id": "",
        "seed": k,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)])
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("the benchmark server did not start")


def run_client(bench: Path, out: Path, port: int, concurrency: int) -> tuple[float, float, float, int]:
    """(wall s, client CPU s, peak RSS MiB of the client tree, requests) of one evaluate run."""
    command = [sys.executable, "-m", "medscout_data.cli", "evaluate", "--bench", str(bench)]
    command += ["--base-url", f"http://127.0.0.1:{port}/v1", "--model", "bench", "--out", str(out)]
    command += ["--concurrency", str(concurrency), "--quiet"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = run_sampled(command, env={"OPENAI_API_KEY": "bench-key"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    requests = (out / "predictions.jsonl").read_bytes().count(b"\n")
    return run.seconds, cpu, run.peak_tree_mib, requests


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-cell", type=int, nargs="+", default=[300, 1200])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--work", type=Path, default=None, help="Scratch folder (default: a temporary one).")
    add_output_args(parser)
    args = parser.parse_args()
    figures = Figures(
        [
            "bench items",
            "MiB of PNG",
            "requests",
            "wall",
            "requests/s",
            "client CPU/request",
            "client peak RSS",
        ],
        align="rrrrrrr",
    )
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-evaluate-", dir=args.work))
    port = free_port()
    server = start_server(port)
    print(f"cores: {cores()}; load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    peaks = []
    try:
        for per_cell in sorted(args.per_cell):
            root = work / f"bench-{per_cell}"
            image_bytes = write_bench(root, per_cell)
            wall, cpu, peak, requests = run_client(
                root / "bench", work / f"out-{per_cell}", port, args.concurrency
            )
            peaks.append(peak)
            print(
                f"{9 * per_cell:6d} items ({image_bytes / 2**20:5.0f} MiB of PNG): {requests} requests in "
                f"{wall:6.1f} s = {requests / wall:6.0f} requests/s end to end; client CPU "
                f"{1000 * cpu / requests:.2f} ms/request; client peak RSS {peak:5.0f} MiB; "
                f"load {os.getloadavg()[0]:.2f}"
            )
            figures.row(
                f"{9 * per_cell:,}",
                f"{image_bytes / 2**20:.0f}",
                f"{requests:,}",
                f"{wall:.1f} s",
                f"{requests / wall:.0f}",
                f"{1000 * cpu / requests:.2f} ms",
                f"{peak:.0f} MiB",
            )
            shutil.rmtree(root)
        if len(peaks) > 1:
            print(f"peak RSS ratio, largest / smallest bench: {peaks[-1] / peaks[0]:.2f}")
            figures.note(
                f"Client peak RSS, largest / smallest bench: {peaks[-1] / peaks[0]:.2f}x (flat: close to 1)."
            )
        figures.note(
            "The whole `evaluate` command in a child process (start-up, bench check, every request,"
            f" predictions.jsonl and scoring), concurrency {args.concurrency}, against a local aiohttp server"
            " answering at once on the same cores: a floor for the client. CT-like 512 px PNGs, 224 px crops."
        )
        figures.write(args.table)
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
