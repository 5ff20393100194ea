"""Ranks of a Slurm job array: each does a deterministic share and leaves a completion marker.

`--rank R --world-size N` (defaults: `SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN`
and `SLURM_ARRAY_TASK_COUNT`) picks the units `units[R::N]` of a stage. A rank
that finished writes `<folder>/_ranks/rank-RRRRR-of-NNNNN.json` carrying the
digest of the whole stage's work list, so a marker of another run is never taken
for this one. The step after the ranks (`--merge`) checks every marker and names
the ranks that are missing, then puts the parts together byte-identically to a
single-process run (the parts are the same units, made the same way).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from medscout_data.errors import StageError
from medscout_data.shards import write_json_atomic

T = TypeVar("T")
MARKER_DIR = "_ranks"
# Markers name ranks with five digits, and a merge checks one marker per rank: a world size past this is
# a typo (or a runaway variable), never a job array (Slurm's own MaxArraySize defaults to 1001).
MAX_WORLD_SIZE = 99_999


class RankError(StageError):
    """A bad rank setting, or ranks that have not all finished."""


@dataclass(frozen=True)
class Rank:
    """This process's place in the job array (0-based)."""

    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.world_size <= MAX_WORLD_SIZE or not 0 <= self.rank < self.world_size:
            raise RankError(
                f"--rank {self.rank} --world-size {self.world_size}: need 0 <= rank < world size "
                f"<= {MAX_WORLD_SIZE:,}"
            )

    @classmethod
    def resolve(
        cls, rank: int | None = None, world_size: int | None = None, env: Mapping[str, str] = os.environ
    ) -> Rank:
        """The options given, else the Slurm array's variables, else a single process."""
        given_size = world_size
        if world_size is None and env.get("SLURM_ARRAY_TASK_COUNT"):
            world_size = _env_int(env, "SLURM_ARRAY_TASK_COUNT")
        if rank is None and env.get("SLURM_ARRAY_TASK_ID") and world_size is not None:
            rank = _env_int(env, "SLURM_ARRAY_TASK_ID") - _env_int(env, "SLURM_ARRAY_TASK_MIN", 0)
        if (rank is None) != (world_size is None):
            raise RankError("give both --rank and --world-size (or run inside a Slurm job array)")
        # None means "not given"; a given 0 (e.g. SLURM_ARRAY_TASK_COUNT=0) is refused, never read as 1
        try:
            return cls(0 if rank is None else rank, 1 if world_size is None else world_size)
        except RankError as exc:
            if given_size is None and env.get("SLURM_ARRAY_TASK_COUNT"):
                names = "$SLURM_ARRAY_TASK_ID / $SLURM_ARRAY_TASK_MIN / $SLURM_ARRAY_TASK_COUNT"
                raise RankError(f"{names} of this Slurm job array: {exc}") from None
            raise

    @property
    def single(self) -> bool:
        return self.world_size == 1

    def share(self, units: Sequence[T]) -> list[T]:
        """This rank's units: every world_size-th one, starting at rank."""
        return list(units[self.rank :: self.world_size])

    @property
    def tag(self) -> str:
        return f"rank-{self.rank:05d}-of-{self.world_size:05d}"

    def __str__(self) -> str:
        return f"rank {self.rank} of {self.world_size}"


def _env_int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = env.get(name)
    if value is None and default is not None:
        return default
    try:
        return int(str(value))
    except ValueError as exc:
        raise RankError(f"${name}={value!r} is not an integer") from exc


def marker_path(folder: Path, rank: Rank) -> Path:
    return Path(folder) / MARKER_DIR / f"{rank.tag}.json"


def write_marker(folder: Path, rank: Rank, digest: str, info: Mapping[str, Any] | None = None) -> Path:
    """Record that `rank` finished the work whose list hashes to `digest`."""
    path = marker_path(folder, rank)
    write_json_atomic(
        {"rank": rank.rank, "world_size": rank.world_size, "digest": digest, **(info or {})}, path
    )
    return path


def missing_ranks(folder: Path, world_size: int, digest: str) -> list[int]:
    """Ranks of `world_size` with no marker for the work `digest` (stale or absent)."""
    missing = []
    for number in range(world_size):
        path = marker_path(folder, Rank(number, world_size))
        try:
            marker = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            missing.append(number)
            continue
        if not isinstance(marker, dict) or marker.get("digest") != digest:
            missing.append(number)
    return missing


def require_all_ranks(folder: Path, world_size: int, digest: str, rerun: str) -> None:
    """Refuse to merge while a rank is missing; `rerun` is the command with `{rank}` to fill in."""
    missing = missing_ranks(folder, world_size, digest)
    if missing:
        names = ", ".join(str(r) for r in missing[:20]) + (" ..." if len(missing) > 20 else "")
        raise RankError(
            f"{folder}: {len(missing)} of {world_size} ranks have not finished (rank {names}); "
            f"run them, e.g. `{rerun.format(rank=missing[0])}`, then merge again"
        )
