"""Benchmark: ingest speed and memory on realistic CT volumes (512 x 512 x 300, int16).

    python benchmarks/bench_ingest.py [--work DIR] [--volumes 2 4] [--workers 1 2] [--slices 300]
        [--table docs/generated/ingest.md]

Setup (not timed): sample CT volumes written once under `--work` (the
anisotropic sample subjects included), and one source root per volume count
(links to the same subject folders).

Timed, each in its own child process (`run_ingest` with the paper's recipe:
soft-tissue window, max_size 512): slices/s over all slices read, and peak
memory: the main process's exact peak (VmHWM, which does the work with one
worker), and, sampled from /proc every 50 ms, the largest single process (a
worker, with two) and the whole process tree. `ru_maxrss` is not used: on
Linux it carries the parent's RSS over fork and exec, so a child of a big
process reports the parent's peak. Memory per process must not grow with the
number of volumes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from common import Figures, add_output_args, cores, run_sampled

from medscout_data.recipe import load_recipe


def child(root: Path, out: Path, workers: int) -> None:
    """One timed run: ingest `root` into a fresh `out`, print figures as JSON."""
    from medscout_data.layout import Layout
    from medscout_data.sources import run_ingest

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    report = run_ingest(
        Layout.at(out), load_recipe("med-scout-bench"), "ct", root, workers=workers, progress=False
    )
    seconds = time.perf_counter() - start
    counts = report.counts
    print(
        json.dumps(
            {
                "seconds": seconds,
                "slices": counts["slices_kept"] + counts["slices_dropped_low_body"],
                "images": counts["images"],
                "volumes": counts["used"],
                "main_hwm_mib": vm_hwm_mib(),
            }
        )
    )


def vm_hwm_mib() -> float:
    """This process's peak resident memory since exec (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def setup(work: Path, volumes: list[int], slices: int) -> dict[int, Path]:
    """Write max(volumes) sample CT volumes once; one root per count, linking the first n subjects."""
    from medscout_data.sample import ensure_sample_source

    n_max = max(volumes)
    source = ensure_sample_source(work / "src", "totalseg-ct", n_max, 512, slices, 0)
    roots = {}
    for n in volumes:
        root = work / f"root-{n}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        shutil.copy(source / "meta.csv", root / "meta.csv")
        for index in range(n):
            (root / f"s{index:04d}").symlink_to(source / f"s{index:04d}", target_is_directory=True)
        roots[n] = root
    return roots


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-ingest"))
    parser.add_argument("--volumes", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--child", nargs=3, metavar=("ROOT", "OUT", "WORKERS"), help=argparse.SUPPRESS)
    add_output_args(parser)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]), int(args.child[2]))
        return
    t0 = time.perf_counter()
    table = Figures(
        ["volumes", "workers", "slices", "wall", "slices/s", "main MiB", "largest MiB", "tree MiB"]
    )
    roots = setup(args.work, args.volumes, args.slices)
    print(f"setup (sample volumes 512x512x{args.slices}): {time.perf_counter() - t0:.0f} s")
    print(f"cpu_count={cores()} loadavg={os.getloadavg()[0]:.1f} (load skews figures)")
    header = (
        f"{'volumes':>7} {'workers':>7} {'slices':>6} {'seconds':>8} {'slices/s':>9} "
        f"{'main MiB':>9} {'largest MiB':>11} {'tree MiB':>9}"
    )
    print(header)
    results = []
    for workers in args.workers:
        for n in args.volumes:
            out = args.work / f"out-{n}-{workers}"
            run = run_sampled([sys.executable, __file__, "--child", str(roots[n]), str(out), str(workers)])
            figures = json.loads(run.stdout.strip().splitlines()[-1])
            rate = figures["slices"] / figures["seconds"]
            results.append((n, workers, rate, figures))
            figures["largest_mib"] = max(run.peak_process_mib, figures["main_hwm_mib"])
            print(
                f"{n:>7} {workers:>7} {figures['slices']:>6} {figures['seconds']:>8.1f} {rate:>9.1f} "
                f"{figures['main_hwm_mib']:>9.0f} {figures['largest_mib']:>11.0f} {run.peak_tree_mib:>9.0f}"
            )
            table.row(
                n,
                workers,
                figures["slices"],
                f"{figures['seconds']:.1f} s",
                f"{rate:.1f}",
                f"{figures['main_hwm_mib']:.0f}",
                f"{figures['largest_mib']:.0f}",
                f"{run.peak_tree_mib:.0f}",
            )
    rates = {(n, w): r for n, w, r, _ in results}
    n_max = max(args.volumes)
    if (n_max, 1) in rates and (n_max, 2) in rates:
        print(f"speed-up with 2 workers ({n_max} volumes): {rates[(n_max, 2)] / rates[(n_max, 1)]:.2f}x")
    peaks = {(n, w): f["largest_mib"] for n, w, _, f in results}
    for workers in args.workers:
        counts = sorted(n for n, w in peaks if w == workers)
        if len(counts) >= 2:
            low, high = peaks[(counts[0], workers)], peaks[(counts[-1], workers)]
            print(
                f"peak RSS of the largest process, {workers} worker(s): {counts[0]} volumes {low:.0f} MiB, "
                f"{counts[-1]} volumes {high:.0f} MiB (ratio {high / low:.2f})"
            )
            table.note(
                f"Largest process, {workers} worker(s): {high / low:.2f}x"
                f" from {counts[0]} to {counts[-1]} volumes."
            )
    table.note(
        f"Sample CT volumes of 512 x 512 x {args.slices} (int16), the paper's recipe; each run a child"
        " process."
        " `main MiB`: the main process's exact peak (VmHWM); `largest`: the largest single process, sampled."
    )
    table.write(args.table)


if __name__ == "__main__":
    main()
