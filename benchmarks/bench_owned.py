"""What the owned-folder record costs: writing many small files (an export's PNGs) through
`OwnedFolder.claim` against the same atomic writes with a folder cache (what export did before).

    python benchmarks/bench_owned.py [--files 20000] [--bytes 2000] [--repeat 3]

Prints the core count, the best of `--repeat` runs of each (first write and rewrite into a folder
that already holds the files), and the ratios to the plain writes of the same run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from medscout_data.owned import OwnedFolder
from medscout_data.shards import write_bytes_atomic


def names(files: int) -> list[str]:
    return [f"images/ct/cell{i % 30}/item{i}-0.png" for i in range(files)]


def plain(root: Path, rels: list[str], data: bytes) -> None:
    made: set[str] = set()
    for rel in rels:
        target = root / rel
        if str(target.parent) not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(str(target.parent))
        write_bytes_atomic(data, target, make_parent=False)


def owned(root: Path, rels: list[str], data: bytes) -> None:
    with OwnedFolder(root, "bench") as folder:
        for rel in rels:
            write_bytes_atomic(data, folder.claim(rel), make_parent=False)


def best(repeat: int, run: Callable[[Path], None], work: Path, fresh: bool) -> float:
    times = []
    for _ in range(repeat):
        root = work / "out"
        if fresh:
            shutil.rmtree(root, ignore_errors=True)
        start = time.perf_counter()
        run(root)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--bytes", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rels, data = names(args.files), os.urandom(args.bytes)
    print(f"cores: {os.cpu_count()}; load {os.getloadavg()[0]:.2f}; {args.files} files of {args.bytes} B")
    work = Path(tempfile.mkdtemp(prefix="bench-owned-"))
    try:
        results = {}
        for label, fresh in (("first write", True), ("rewrite", False)):
            base = best(args.repeat, lambda root: plain(root, rels, data), work / "plain", fresh)
            mine = best(args.repeat, lambda root: owned(root, rels, data), work / "owned", fresh)
            results[label] = (base, mine)
            print(f"{label:<12} plain {base:6.2f} s   owned {mine:6.2f} s   owned / plain {mine / base:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
