"""Replacing an output folder without deleting what the user put there.

`split` (bench/, train/) and `push-bench` (the stage folder) rebuild their
outputs beside the old ones and swap them in. Before that they tell their own
files from anyone else's: a folder's record (the previous manifest, the stage
marker) lists what the project wrote, and any other file is the user's. Such a
folder is refused unless `--force`, and what `--force` removes is said.
Work folders are made fresh (`tempfile.mkdtemp`) and carry a marker, so only
folders the project made are ever cleaned up after a killed run.
"""

from __future__ import annotations

import errno
import logging
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

WORK_MARKER = ".medscout-work"  # inside a work folder: made by medscout-data, safe to remove
SHOWN = 5  # file names quoted in a message

_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def os_error_reason(exc: OSError) -> str:
    """A short, plain reason for an I/O failure (pyarrow's errors carry the errno too)."""
    return _REASONS.get(exc.errno or 0) or exc.strerror or str(exc)


def os_error_path(exc: OSError, default: Path) -> Path:
    """The file an I/O error names, else `default` (pyarrow's errors name none)."""
    return Path(exc.filename) if exc.filename else default


def foreign_files(folder: Path, ours: Iterable[Path]) -> list[Path]:
    """Files under `folder` that are not in `ours` (what the project wrote there), sorted."""
    if not folder.is_dir():
        return []
    known = {Path(p) for p in ours}
    return sorted(p for p in folder.rglob("*") if (p.is_file() or p.is_symlink()) and p not in known)


def describe_files(paths: list[Path], root: Path) -> str:
    """`N file(s) (a, b, ... and M more)` relative to `root`."""
    names = [p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p) for p in paths[:SHOWN]]
    more = f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else ""
    return f"{len(paths)} file(s) ({', '.join(names)}{more})"


def human_size(n: float) -> str:
    """Bytes as `812 B`, `4.2 MiB`, `1.3 GiB`."""
    unit = "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            break
        n /= 1024
    return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"


def make_work_dir(parent: Path, prefix: str) -> Path:
    """A new, empty folder `parent/<prefix>XXXXXXXX` marked as ours."""
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    (folder / WORK_MARKER).write_bytes(b"")
    return folder


def unmark(folder: Path) -> None:
    """Drop the work marker of a folder that becomes an output."""
    (folder / WORK_MARKER).unlink(missing_ok=True)


def remove_work_dir(folder: Path) -> None:
    """Delete a work folder, only if it carries our marker."""
    if (folder / WORK_MARKER).exists():
        shutil.rmtree(folder, ignore_errors=True)


def clean_leftovers(parent: Path, prefix: str) -> None:
    """Remove work folders a killed run left in `parent` (only those that carry our marker)."""
    if not parent.is_dir():
        return
    for folder in parent.glob(f"{prefix}*"):
        if folder.is_dir() and (folder / WORK_MARKER).exists():
            log.info("removing %s, left by an interrupted run", folder)
            shutil.rmtree(folder, ignore_errors=True)
