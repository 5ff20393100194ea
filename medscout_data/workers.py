"""Worker processes that die with their parent.

A `kill -9` of a stage's main process must not leave its workers running (they
would go on writing into the output folder and holding memory). Every worker
started here asks Linux to kill it when its parent dies (`PR_SET_PDEATHSIG`),
and also runs a watchdog thread that exits once the parent is gone, for systems
without prctl. Workers are spawned, not forked: safe whatever the parent imported.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

PR_SET_PDEATHSIG = 1
WATCHDOG_SECONDS = 0.5


def die_with_parent(parent_pid: int) -> None:
    """Make this process exit when `parent_pid` (its parent) dies."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog below still covers it
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    threading.Thread(target=_watch, args=(parent_pid,), name="parent-watchdog", daemon=True).start()


def _watch(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(WATCHDOG_SECONDS)
    os._exit(1)


def _start_worker(parent_pid: int, initializer: Callable[..., Any] | None, args: tuple) -> None:
    die_with_parent(parent_pid)
    if initializer is not None:
        initializer(*args)


def process_pool(
    workers: int, initializer: Callable[..., Any] | None = None, initargs: tuple = ()
) -> ProcessPoolExecutor:
    """A spawned process pool whose workers die with this process.

    Submit from the main thread: Linux sends the parent-death signal when the
    thread that started a worker ends.
    """
    return ProcessPoolExecutor(
        workers,
        mp_context=get_context("spawn"),
        initializer=_start_worker,
        initargs=(os.getpid(), initializer, initargs),
    )
