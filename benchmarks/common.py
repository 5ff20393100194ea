"""Shared by the benchmarks: run a command in a child process and sample its tree's RSS."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Run:
    """Wall time and memory of one child run."""

    seconds: float
    peak_tree_mib: float  # peak of the summed RSS of the child and all its descendants
    peak_process_mib: float  # peak RSS of any single process of the tree
    stdout: str


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_sampled(args: list[str], env: dict[str, str] | None = None, interval: float = 0.05) -> Run:
    """Run `args`, sampling the RSS of its whole process tree every `interval` seconds."""
    peaks = {"tree": 0.0, "process": 0.0}
    start = time.perf_counter()
    process = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    )

    def sample() -> None:
        while process.poll() is None:
            pids, frontier = [process.pid], [process.pid]
            while frontier:
                frontier = [c for p in frontier for c in _children(p)]
                pids += frontier
            sizes = [_rss_mib(p) for p in pids]
            peaks["tree"] = max(peaks["tree"], sum(sizes))
            peaks["process"] = max(peaks["process"], max(sizes, default=0.0))
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - start
    thread.join()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({process.returncode}):\n{stderr[-3000:]}")
    return Run(seconds, peaks["tree"], peaks["process"], stdout)
