"""Check: does the PNG encoder write the same bytes on every CPU kind? (ISA-L's run-time code paths)

    python benchmarks/check_png_cpu_paths.py [--cpus Nehalem,Haswell-v4,Skylake-Server,qemu64]

ISA-L picks its deflate code when a process starts, from the CPU: base C (no SSE4), SSE4,
AVX2 or AVX-512. A cluster build whose ranks land on different node kinds is byte-identical to
one process only where those paths write the same stream. This prints, per recipe level
(`png.compression`) and per emulated CPU (qemu user mode, `apt-get install qemu-user`), whether
`encoder_fingerprint` (fixed probe images, medscout_data/imaging.py) equals this machine's.
Emulated CPUs without AVX-512 are what valgrind and qemu expose; this machine's own path is
the native column. It needs no GPU and no network; each emulated run takes a few seconds.

It also prints the fingerprint's cost: computed once per process and setting (build's main
process and each rank), against the encoding of one 512 x 512 slice, in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = (
    "import json; from medscout_data.imaging import encoder_fingerprint; "
    "from medscout_data.recipe import PngConfig; "
    "print(json.dumps({level: encoder_fingerprint(PngConfig(level, 'sub')) for level in range(4)}))"
)


def fingerprints(prefix: list[str]) -> dict[str, str] | str:
    """Level -> fingerprint from a child interpreter (run under `prefix`), or why it failed."""
    python = os.path.realpath(sys.executable)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path[1:]])}
    command = [*prefix, python, "-c", PROBE]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        return (done.stderr.strip().splitlines() or ["failed"])[-1]
    return json.loads(done.stdout)


def cost() -> None:
    """The fingerprint's one-off cost against one image's encoding (medians of 20)."""
    import statistics
    import time

    import numpy as np

    from medscout_data.imaging import encode_png, encoder_fingerprint
    from medscout_data.recipe import PngConfig

    rng = np.random.Generator(np.random.PCG64(1))
    y, x = np.mgrid[0:512, 0:512]
    inside = (y - 256) ** 2 / 200**2 + (x - 256) ** 2 / 220**2 < 1
    body = inside * (110 + 50 * np.sin(x / 17) * np.cos(y / 23))
    image = np.clip(body + rng.normal(0, 6, (512, 512)) * (body > 0), 0, 255).astype(np.uint8)

    def median_ms(run) -> float:
        times = []
        for _ in range(20):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return 1000 * statistics.median(times)

    slice_ms = median_ms(lambda: encode_png(image))
    probe_ms = median_ms(lambda: encoder_fingerprint.__wrapped__(PngConfig()))
    print(
        f"encode one 512 px slice: {slice_ms:.2f} ms; fingerprint (once per process): {probe_ms:.2f} ms "
        f"= {probe_ms / slice_ms:.2f} slices; per-image cost: none"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpus", default="Nehalem,Haswell-v4,Skylake-Server,qemu64")
    args = parser.parse_args()
    import isal

    print(f"cores: {os.cpu_count()}  isal {isal.__version__} (ISA-L {isal.ISAL_VERSION})")
    native = fingerprints([])
    assert isinstance(native, dict), native
    print(f"native: {native}")
    cost()
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        print("qemu-x86_64 not found: apt-get install qemu-user, then run again")
        return
    for cpu in args.cpus.split(","):
        result = fingerprints([qemu, "-cpu", cpu])
        if isinstance(result, str):
            print(f"{cpu:>16}: could not run ({result})")
            continue
        verdicts = [f"L{level} {'same' if result[level] == native[level] else 'DIFFERS'}" for level in native]
        print(f"{cpu:>16}: {', '.join(verdicts)}")


if __name__ == "__main__":
    main()
