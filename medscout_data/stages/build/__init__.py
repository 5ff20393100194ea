"""Build: the catalogue's images -> scale / jigsaw / anomaly items in Parquet shards, every cell full.

`catalog` reads the catalogue into image references; `planning` decides
every item in the main process (round 0) and the replacements of items no
attempt could make (rounds 1..); `making` makes one shard in a worker;
`run` drives it all (workers, rounds, ranks, pool.json); `estimate` is the
`--dry-run` forecast. Output is byte-identical for any `--workers` and any
rank split, because every decision is made from the plan and from what
earlier rounds made, never from timing.
"""

from medscout_data.stages.build.planning import BuildError, balanced, quotas, side_counts, spread
from medscout_data.stages.build.run import BuildOptions, build_modality

__all__ = ["BuildError", "BuildOptions", "balanced", "build_modality", "quotas", "side_counts", "spread"]
