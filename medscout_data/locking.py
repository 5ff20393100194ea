"""One writer per stage folder: a lock file that a second run finds taken.

Two `build`s (or `ingest`s, `split`s, ...) on one `--out` would overwrite each
other's temporary files and reports. Each stage holds a POSIX lock on
`<folder>/.lock-<name>` while it writes; the operating system releases it when
the process ends, however it ends, so a killed run never leaves a stale lock.
Ranks of one array job take one lock each (their names carry the rank).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medscout_data.errors import StageError

log = logging.getLogger(__name__)

_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}


class LockError(StageError):
    """Another run holds the folder, or the folder cannot be written."""


@contextmanager
def stage_lock(folder: Path, name: str, command: str) -> Iterator[None]:
    """Hold `<folder>/.lock-<name>` for the block; `command` is what a second run is told is running."""
    folder = Path(folder)
    path = folder / f".lock-{name}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)  # not via links
        handle = open(fd, "r+", encoding="utf-8")  # noqa: SIM115 (held for the whole block)
    except OSError as exc:
        raise LockError(
            f"{folder}: cannot write here ({exc.strerror}); choose a writable output folder"
        ) from exc
    try:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in _UNSUPPORTED:
                log.warning("%s: this filesystem has no file locks; concurrent runs are not detected", folder)
            else:
                handle.seek(0)
                holder = handle.read().strip() or "another medscout-data run"
                raise LockError(
                    f"{folder}: {holder} is already writing here; wait for it to finish, "
                    "or give this run another output folder"
                ) from exc
        handle.seek(0)
        handle.truncate()
        handle.write(f"`{command}` (pid {os.getpid()})\n")
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock
