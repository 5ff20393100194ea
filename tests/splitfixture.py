"""Helpers for tests that change a split: a manifest for hand-made shards, one flipped byte."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from medscout_data.shards import sha256_file


def write_manifest_for(root: Path, like: Path) -> None:
    """A manifest (copied from `like`) listing the shards under `root`'s bench/ and train/ as they are
    now, as if they had been written that way by `split`."""
    manifest = json.loads((like / "manifest.json").read_text())
    manifest["shards"] = {
        path.relative_to(root).as_posix(): {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
        for side in ("bench", "train")
        for path in sorted((root / side).rglob("*.parquet"))
    }
    (root / "manifest.json").write_text(json.dumps(manifest))


def copy_split(source: Path, target: Path) -> Path:
    """A writable copy of a split root (bench/, train/, pool/, plan/, manifest.json)."""
    shutil.copytree(source, target)
    return target


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Invert one byte of a file (by default in the middle, inside the image data of a shard)."""
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if offset is None else offset
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSONL file."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def side_rows(root: Path, side: str = "bench", pattern: str = "*/*/*.parquet") -> dict[str, dict]:
    """id -> row of every shard of one side of a split (images included)."""
    import pyarrow.parquet as pq

    tables = [pq.read_table(p) for p in sorted((root / side).glob(pattern))]
    return {row["id"]: row for table in tables for row in table.to_pylist()}


def cli_ok(*args: str) -> str:
    """Run the CLI in-process; its output, after checking it exited 0."""
    from click.testing import CliRunner

    from medscout_data.cli import cli

    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def stage_repo(shards: Path, stage: Path) -> Path:
    """The bench of `shards` staged as a Hub repo folder (push-bench --dry-run: no network)."""
    cli_ok(
        "push-bench", "--repo-id", "me/bench", "--dry-run", "--stage-dir", str(stage), "--shards", str(shards)
    )
    return stage
