"""Real faults for the tests: CLI runs in child processes, read-only folders, a full disk, a run
frozen while it holds its lock.

Read-only folders and full disks are real: as root (where permissions do not bind) a child
runs in its own mount namespace with the folder bind-mounted read-only, or on a small tmpfs;
as another user the folder is made read-only with chmod. Where neither is possible the
test is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medscout_data.shards import sha256_file

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "medscout_data.cli"]


def child_env() -> dict[str, str]:
    """The test's environment with this checkout first on the path, offline."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}


def cli(*args: str, prefix: Sequence[str] = (), timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`medscout-data ARGS` in a child process (stdout and stderr together in `.stdout`)."""
    return subprocess.run(
        [*prefix, *CLI, *args],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )


def command_args(command: str) -> list[str]:
    """A recorded `medscout-data ...` command line as this interpreter's argv."""
    words = shlex.split(command)
    assert words[0] == "medscout-data", command
    return words[1:]


def no_traceback(output: str) -> None:
    assert "Traceback" not in output, output


def _can_unshare() -> bool:
    if os.geteuid() != 0:
        return False
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[list[str]]:
    """A prefix for `cli(prefix=...)` under which `folder` is read-only (and the folder as it was after)."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")] if not p.is_symlink()}
        for path, mode in modes.items():
            path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        try:
            yield []
        finally:
            for path, mode in modes.items():
                path.chmod(mode)
        return
    if not _can_unshare():
        pytest.skip("root ignores permissions and no mount namespace can be made here")
    where = shlex.quote(str(folder))
    script = f'mount --bind {where} {where} && mount -o remount,bind,ro {where} && exec "$@"'
    yield ["unshare", "-m", "sh", "-c", script, "sh"]


def on_small_disk(script: str, mount: Path, size_kib: int) -> subprocess.CompletedProcess[str]:
    """Run a shell `script` with a `size_kib` tmpfs mounted at `mount` (a real full disk); `$CLI` in
    the script is the medscout-data command. Skips where no mount namespace can be made."""
    if not _can_unshare():
        pytest.skip("a small real filesystem needs root and mount namespaces")
    mount.mkdir(parents=True, exist_ok=True)
    cli_words = " ".join(shlex.quote(w) for w in CLI)
    body = (
        f"mount -t tmpfs -o size={size_kib}k tmpfs {shlex.quote(str(mount))}\nCLI={shlex.quote(cli_words)}\n"
    )
    return subprocess.run(
        ["unshare", "-m", "bash", "-euo", "pipefail", "-c", body + script],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
        check=False,
    )


def start_frozen_holder(args: Sequence[str], lock_file: Path, timeout: float = 120) -> subprocess.Popen[str]:
    """Start `medscout-data ARGS` and stop it (SIGSTOP) as soon as it holds `lock_file`."""
    process = subprocess.Popen(
        [*CLI, *args], env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    mark = f"(pid {process.pid})"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if mark in lock_file.read_text(encoding="utf-8"):
                os.kill(process.pid, signal.SIGSTOP)
                assert process.poll() is None, "the first run finished before it could be frozen"
                return process
        if process.poll() is not None:
            raise AssertionError(f"the first run ended before taking its lock:\n{process.stdout.read()}")
        time.sleep(0.001)
    process.kill()
    raise AssertionError(f"{lock_file} never named pid {process.pid}")


def resume(process: subprocess.Popen[str], timeout: float = 300) -> tuple[int, str]:
    """Let a frozen run go on; its exit code and output."""
    os.kill(process.pid, signal.SIGCONT)
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def kill_when(process: subprocess.Popen[str], ready, timeout: float = 120) -> None:
    """SIGKILL `process` as soon as `ready()` is true (it must still be running then)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            raise AssertionError(f"the run ended before the fault:\n{process.stdout.read()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("the fault's moment never came")
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)


# ------------------------------------------------------------------ editing a finished split


def copy_split(source: Path, target: Path) -> Path:
    """A writable copy of a split fixture (pool, plans, split, manifest)."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".lock-*"))
    return target


def reseal(root: Path) -> None:
    """Recompute every shard's sha256, size and rows in the manifest, as a careless tool would."""
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for name in manifest["shards"]:
        path = root / name
        manifest["shards"][name] = {
            "sha256": sha256_file(path),
            "rows": pq.ParquetFile(path).metadata.num_rows,
            "bytes": path.stat().st_size,
        }
    manifest_path.write_text(json.dumps(manifest))


def edit_column(path: Path, column: str, edit) -> None:
    """Rewrite one column of a shard in place (`edit(list) -> list`), keeping its schema."""
    table = pq.read_table(path)
    values = edit(table[column].to_pylist())
    field = table.schema.field(column)
    table = table.set_column(table.schema.get_field_index(column), field, pa.array(values, field.type))
    pq.write_table(table, path)


def shard(root: Path, side: str, modality: str, task: str) -> Path:
    return sorted((root / side / modality / task).glob("*.parquet"))[0]


def fail_on_call(real, first: int, error: OSError, last: int | None = None):
    """`real` that raises `error` from its `first`-th call (1-based) to its `last` (default: all after)."""
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= first and (last is None or calls["n"] <= last):
            raise error
        return real(*args, **kwargs)

    return wrapper


def copy_pool(source: Path, target: Path, modalities: Sequence[str] = ("ct", "mri", "xray")):
    """A new output root holding only the pool and plans of `modalities` from `source`."""
    from medscout_data.layout import Layout

    for modality in modalities:
        shutil.copytree(source / "pool" / modality, target / "pool" / modality)
        (target / "plan").mkdir(parents=True, exist_ok=True)
        shutil.copy(source / "plan" / f"{modality}.json", target / "plan" / f"{modality}.json")
    return Layout.at(target)
