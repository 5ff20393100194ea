"""Build: the catalogue's images -> scale / jigsaw / anomaly items in Parquet shards, every cell full.

`catalog` reads the catalogue into image references; `planning` decides
every item in the main process (round 0) and the replacements of items no
attempt could make (rounds 1..); `making` makes one shard in a worker;
`run` drives it all (workers, rounds, ranks, pool.json); `estimate` is the
`--dry-run` forecast. Output is byte-identical for any `--workers` and any
rank split, because every decision is made from the plan and from what
earlier rounds made, never from timing.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "BuildError": "planning",
    "balanced": "planning",
    "quotas": "planning",
    "side_counts": "planning",
    "spread": "planning",
    "BuildOptions": "run",
    "build_modality": "run",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """The public names, imported when first used: a build worker imports only `making` and what
    it needs, not the driver (start-up time of every worker)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
