"""Reading a split's `manifest.json` safely, and checking the shards a stage is about to read.

Every stage that reads a split (validate, score, evaluate, export, preview,
push-bench, audit) goes through here: a manifest that is missing, not UTF-8,
not JSON, not an object, or has entries of the wrong type is a `ManifestError`
naming the file and the fix, never a traceback; and the shards read are
checked cheaply against it (present, same size, same sha256) so damaged
input is refused before anything is computed from it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medscout_data.errors import StageError
from medscout_data.layout import Layout
from medscout_data.shards import sha256_file

RERUN = "rerun `medscout-data split` to write it again"
COUNTS = ("pool", "bench", "train", "dropped")


class ManifestError(StageError):
    """The manifest or a shard it lists cannot be trusted; the message says why and what to do."""


def read_manifest(layout: Layout) -> dict[str, Any]:
    """The split's manifest, checked for shape; `ManifestError` otherwise."""
    path = layout.manifest()
    if path.is_dir():
        raise ManifestError(f"{path}: is a folder, not the split's manifest; remove it and {RERUN}")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"{path}: no manifest; run `medscout-data split` first") from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ManifestError(f"{path}: not UTF-8 text; {RERUN}") from None
    except ValueError as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc}); {RERUN}") from None
    except RecursionError:
        raise ManifestError(f"{path}: JSON nested too deeply to be a manifest; {RERUN}") from None
    problems = manifest_shape_problems(manifest)
    if problems:
        raise ManifestError(f"{path}: {problems[0]}; {RERUN}")
    return manifest


def manifest_shape_problems(manifest: Any) -> list[str]:
    """What is wrong with the manifest's structure (empty: usable by every reader, the card included)."""
    if not isinstance(manifest, dict):
        return [f"must be a JSON object, got {_kind(manifest)}"]
    problems = []
    expected = {"seed": int, "bench_per_cell": int, "shards": dict, "cells": dict, "recipe": dict}
    for key, kind in expected.items():
        if not _is(manifest.get(key), kind):
            problems.append(f"`{key}` must be a {kind.__name__}, got {_kind(manifest.get(key))}")
    for key, kind in {"subjects": dict, "totals": dict, "balance_options": dict, "pools": dict}.items():
        if key in manifest and not _is(manifest[key], kind):
            problems.append(f"`{key}` must be a {kind.__name__}, got {_kind(manifest[key])}")
    if problems:
        return problems
    problems += _fields("recipe", manifest["recipe"], {"name": str, "digest": str})
    for name, info in manifest["shards"].items():
        problems += _shard_entry_problems(name, info)
    for cell, counts in manifest["cells"].items():
        problems += _fields(f"cell {cell!r}", counts, dict.fromkeys(COUNTS, int))
        balance = counts.get("bench_balance", {}) if isinstance(counts, dict) else {}
        if not isinstance(balance, dict) or not all(_is(v, int) for v in balance.values()):
            problems.append(f"cell {cell!r}: `bench_balance` must map options to integer counts")
    for modality, entry in manifest.get("subjects", {}).items():
        kinds = {"bench": int, "train": int, "bench_sha256": str, "train_sha256": str, "plan_sha256": str}
        problems += _fields(f"subjects of {modality!r}", entry, kinds)
    for key, value in manifest.get("totals", {}).items():
        if not _is(value, int):
            problems.append(f"totals {key!r}: must be an integer, got {_kind(value)}")
    for task, options in manifest.get("balance_options", {}).items():
        if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
            problems.append(f"balance_options {task!r}: must be a non-empty list of strings")
    warnings = manifest.get("warnings", [])
    if not isinstance(warnings, list) or not all(isinstance(w, str) for w in warnings):
        problems.append("`warnings` must be a list of strings")
    for modality, entry in manifest.get("pools", {}).items():
        problems += _fields(f"pool of {modality!r}", entry, {"complete": bool, "fingerprint": str})
    return problems


def _shard_entry_problems(name: Any, info: Any) -> list[str]:
    if not isinstance(info, dict):
        return [f"shard {name!r}: entry must be an object, got {_kind(info)}"]
    problems = []
    if not isinstance(info.get("sha256"), str):
        problems.append(f"shard {name!r}: `sha256` must be a string, got {_kind(info.get('sha256'))}")
    for key in ("rows", "bytes"):
        if key in info and not _is(info[key], int):
            problems.append(f"shard {name!r}: `{key}` must be an integer, got {_kind(info[key])}")
    parts = Path(name).parts
    if Path(name).is_absolute() or ".." in parts or len(parts) != 4 or parts[0] not in ("bench", "train"):
        problems.append(f"shard {name!r}: must be a path bench|train/<modality>/<task>/<file> in the split")
    return problems


def _fields(where: str, entry: Any, kinds: dict[str, type]) -> list[str]:
    """Problems of an object whose `kinds` keys must hold values of those types."""
    if not isinstance(entry, dict):
        return [f"{where}: must be an object, got {_kind(entry)}"]
    return [
        f"{where}: `{key}` must be a {kind.__name__}, got {_kind(entry.get(key))}"
        for key, kind in kinds.items()
        if not _is(entry.get(key), kind)
    ]


def _is(value: Any, kind: type) -> bool:
    """isinstance, except that a bool is not an int here (JSON true is no count)."""
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def shard_names(manifest: dict[str, Any], side: str) -> list[str]:
    """The manifest's shards of one side (`bench` or `train`), sorted."""
    return sorted(name for name in manifest["shards"] if name.split("/")[0] == side)


def shard_problems(layout: Layout, manifest: dict[str, Any], names: Iterable[str]) -> list[str]:
    """Listed shards that are missing, have another size, or another sha256 (cheapest check first)."""
    problems = []
    for name in names:
        info = manifest["shards"].get(name)
        path = layout.root / name
        if info is None:
            problems.append(f"{path}: not listed in {layout.manifest()}")
        elif not path.is_file():
            problems.append(f"{path}: listed in {layout.manifest()} but missing")
        elif "bytes" in info and path.stat().st_size != info["bytes"]:
            problems.append(
                f"{path}: {path.stat().st_size} bytes, the manifest says {info['bytes']} (damaged or changed)"
            )
        elif sha256_file(path) != info["sha256"]:
            problems.append(f"{path}: sha256 differs from the manifest (damaged or changed after the split)")
    return problems


def verified_shards(layout: Layout, side: str, manifest: dict[str, Any] | None = None) -> list[Path]:
    """The paths of one side's shards, refused with `ManifestError` if any is missing or damaged."""
    manifest = manifest if manifest is not None else read_manifest(layout)
    names = shard_names(manifest, side)
    problems = shard_problems(layout, manifest, names)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ManifestError(
            f"{problems[0]}{more}; restore the files or rerun `medscout-data split`, "
            "then `medscout-data validate`"
        )
    return [layout.root / name for name in names]
