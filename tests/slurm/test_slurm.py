"""The examples/slurm scripts on a REAL Slurm (slurmctld + slurmd + munge, started by `.ci/slurm-up`).

Collected only when MEDSCOUT_SLURM_TESTS=1 (`.ci/tools-test` sets it after `.ci/slurm-up`; the conftest
leaves this folder out otherwise). Each script is run as a user would (`bash examples/slurm/X.sbatch`):
it submits a 2-task array and the merge as a separate job depending on it; the outputs must be
byte-identical to one process. Every wait is bounded, and jobs still queued at the end are cancelled.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "medscout_data.cli"]
STAGE_SECONDS = 150  # a stage's array and merge, queued and run on 2 cores
DONE = {"COMPLETED"}
ENDED = DONE | {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL"}
ENDED |= {"DEADLINE"}


def _slurm(*args: str) -> str:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=20, check=True).stdout


@pytest.fixture(scope="module")
def cluster() -> Iterator[list[str]]:
    """The running test cluster; yields a list the tests add their job ids to (cancelled at the end)."""
    try:
        state = _slurm("sinfo", "-h", "-o", "%t").split()
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.fail(f"no Slurm answers (run `.ci/slurm-up` first and export SLURM_CONF): {exc}")
    assert state and state[0].startswith(("idle", "mix", "alloc")), f"the node is {state}"
    jobs: list[str] = []
    yield jobs
    if jobs:
        subprocess.run(["scancel", *jobs], capture_output=True, timeout=20, check=False)


def _submit(script: str, workdir: Path, jobs: list[str], **settings: str) -> tuple[str, str]:
    """Run `bash examples/slurm/<script>` with `settings`; the array's and the merge's job ids."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
    env |= {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "MEDSCOUT": " ".join(CLI), "RANKS": "2"}
    env |= {"CPUS": "1", "LOGS": str(workdir / "logs"), **settings}
    done = subprocess.run(
        ["bash", str(REPO / "examples" / "slurm" / script)],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    found = re.search(r"as job (\d+) and the merge as job (\d+)", done.stdout)
    assert found, done.stdout
    jobs.extend(found.groups())
    return found[1], found[2]


def _states(job: str) -> list[str]:
    """The state of every job (array tasks included) that `job` names."""
    text = _slurm("scontrol", "show", "job", "-o", job)
    return re.findall(r"\bJobState=(\S+)", text)


def _wait(jobs: tuple[str, ...], workdir: Path, seconds: float = STAGE_SECONDS) -> None:
    """Wait (bounded) until every job ended; fail naming the states and the job logs unless all completed."""
    deadline = time.monotonic() + seconds
    while True:
        states = {job: _states(job) for job in jobs}
        if all(s and set(s) <= ENDED for s in states.values()):
            break
        if time.monotonic() > deadline:
            subprocess.run(["scancel", *jobs], capture_output=True, timeout=20, check=False)
            pytest.fail(f"not done after {seconds:.0f} s: {states}\n{_logs(workdir)}")
        time.sleep(0.5)
    assert all(set(s) <= DONE for s in states.values()), f"{states}\n{_logs(workdir)}"


def _logs(workdir: Path) -> str:
    logs = sorted((workdir / "logs").glob("*"))
    return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in logs)


def _data(root: Path, *folders: str) -> dict[str, str]:
    """Digests of the data files under `folders`: no locks, markers, reports."""
    files = [p for folder in folders for p in (root / folder).rglob("*") if p.is_file()]
    keep = [p for p in files if p.suffix in {".parquet", ".stack"} or p.parent.name == "plan"]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(keep)}


def _one_process(root: Path, recipe: Path, *stages: tuple[str, str, Path]) -> None:
    for stage, modality, source in stages:
        args = [*CLI, stage, "--modality", modality, "--root", str(source), "--recipe", str(recipe)]
        subprocess.run([*args, "--out", str(root), "--quiet"], check=True, capture_output=True, timeout=300)


def test_ingest_and_build_arrays_with_their_merges_equal_one_process(
    cluster: list[str], tmp_path: Path, test_recipe: Path, sample_sources
) -> None:
    started = time.monotonic()
    ct, xray = sample_sources["totalseg-ct"], sample_sources["mimic-cxr-jpg"]
    out = tmp_path / "slurm"
    common = {"OUT": str(out), "RECIPE": str(test_recipe)}
    _wait(_submit("ingest.sbatch", tmp_path, cluster, MODALITY="ct", ROOT=str(ct), **common), tmp_path)
    _wait(_submit("ingest.sbatch", tmp_path, cluster, MODALITY="xray", ROOT=str(xray), **common), tmp_path)
    _wait(_submit("build.sbatch", tmp_path, cluster, MODALITY="ct", ROOT=str(ct), **common), tmp_path)
    logs = _logs(tmp_path)
    assert "rank 0 of 2" in logs and "rank 1 of 2" in logs, logs  # the arrays really ran as two ranks
    assert "shards written 0" in logs, logs  # every pool shard came from a rank, none from the merge

    single = tmp_path / "single"
    _one_process(single, test_recipe, ("ingest", "ct", ct), ("ingest", "xray", xray), ("build", "ct", ct))
    folders = ("catalogue", "cache", "plan", "pool")
    expected, got = _data(single, *folders), _data(out, *folders)
    assert any(name.startswith("pool/ct/") for name in expected)
    assert any(name.startswith("catalogue/xray/") for name in expected)
    assert got == expected, sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))
    assert time.monotonic() - started < 3 * STAGE_SECONDS
