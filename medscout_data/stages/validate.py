"""Validate a split: the properties DESIGN.md promises, checked from the files alone.

- every shard the manifest lists exists with its sha256, and no other shard does;
- every shard opens, carries the `huggingface` features metadata, and its
  images are PNGs (every image's signature; full decode of a sample, or of
  everything with `deep=True`);
- no subject on both sides of a modality, and no anomaly reference from the
  other side;
- ids unique; each bench cell has exactly `bench_per_cell` items, balanced
  (tier/box, anomaly cells, jigsaw permutations within one of each other);
- the manifest's counts equal the rows, and dropped items stay under 1%.

Returns the list of problems; empty means valid.
"""

from __future__ import annotations

import io
import json
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from medscout_data.layout import Layout
from medscout_data.shards import sha256_file
from medscout_data.stages.plan import BENCH, TRAIN
from medscout_data.stages.split import MAX_DROPPED_FRACTION, balance_key

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
META_COLUMNS = ["id", "modality", "task", "variant", "target", "subject_id", "reference_subject_id"]


def validate_split(layout: Layout, deep: bool = False, progress: bool = True) -> list[str]:
    """All problems found in the split under `layout.root` (empty list: valid)."""
    path = layout.manifest()
    if not path.exists():
        return [f"{path}: no manifest; run `medscout-data split` first"]
    manifest = json.loads(path.read_text(encoding="utf-8"))
    problems = _check_files(layout, manifest)
    if problems:
        return problems  # contents of unlisted or altered files are not worth reading further
    rows = _read_metadata(layout, manifest, deep, progress, problems)
    problems += _check_disjoint(rows)
    problems += _check_counts(rows, manifest)
    problems += _check_balance(rows, manifest)
    return problems


def _check_files(layout: Layout, manifest: dict) -> list[str]:
    problems = []
    listed = manifest.get("shards", {})
    present = {
        p.relative_to(layout.root).as_posix()
        for side in (BENCH, TRAIN)
        for p in layout.split_dir(side).rglob("*.parquet")
    }
    for name in sorted(present - set(listed)):
        problems.append(f"{name}: shard not in the manifest")
    for name, info in sorted(listed.items()):
        if name not in present:
            problems.append(f"{name}: listed in the manifest but missing")
        elif sha256_file(layout.root / name) != info["sha256"]:
            problems.append(f"{name}: sha256 differs from the manifest (file changed after the split)")
    return problems


def _read_metadata(
    layout: Layout, manifest: dict, deep: bool, progress: bool, problems: list[str]
) -> list[dict]:
    """Metadata rows of every shard, with their side; image and schema problems go to `problems`."""
    rows = []
    names = sorted(manifest["shards"])
    for name in tqdm(names, desc="validate", unit="shard", disable=not progress):
        path = layout.root / name
        side = name.split("/")[0]
        try:
            problems.extend(_check_shard(path, name, deep))
            table = pq.read_table(path, columns=META_COLUMNS)
        except Exception as exc:  # any failure to read is the finding
            problems.append(f"{name}: does not decode: {exc}")
            continue
        for row in table.to_pylist():
            row["side"] = side
            row["shard"] = name
            rows.append(row)
    return rows


def _check_shard(path: Path, name: str, deep: bool) -> list[str]:
    problems = []
    parquet = pq.ParquetFile(path)
    metadata = parquet.schema_arrow.metadata or {}
    if b"huggingface" not in metadata:
        problems.append(f"{name}: no `huggingface` schema metadata; datasets would not decode its images")
    for group in range(parquet.num_row_groups):
        images = parquet.read_row_group(group, columns=["id", "images"]).to_pylist()
        for index, row in enumerate(images):
            for number, image in enumerate(row["images"]):
                data = image["bytes"] or b""
                if not data.startswith(PNG_SIGNATURE):
                    problems.append(f"{name}: item {row['id']} image {number} is not a PNG")
                elif deep or (group == 0 and index == 0):
                    try:
                        Image.open(io.BytesIO(data)).load()
                    except Exception as exc:
                        problems.append(f"{name}: item {row['id']} image {number} does not decode: {exc}")
    return problems


def _check_disjoint(rows: list[dict]) -> list[str]:
    problems = []
    subjects: dict[tuple[str, str], set[str]] = defaultdict(set)
    for row in rows:
        subjects[row["modality"], row["side"]].add(row["subject_id"])
    for modality in sorted({m for m, _ in subjects}):
        both = subjects[modality, BENCH] & subjects[modality, TRAIN]
        if both:
            problems.append(f"{modality}: {len(both)} subject(s) on both sides, e.g. {sorted(both)[0]}")
    for row in rows:
        reference = row["reference_subject_id"]
        other = TRAIN if row["side"] == BENCH else BENCH
        if reference and reference in subjects[row["modality"], other]:
            problems.append(
                f"{row['shard']}: item {row['id']} uses pixels of {other}-side subject {reference}"
            )
    seen = Counter(row["id"] for row in rows)
    duplicates = [i for i, n in seen.items() if n > 1]
    if duplicates:
        problems.append(f"{len(duplicates)} duplicate item id(s), e.g. {sorted(duplicates)[0]}")
    return problems


def _check_counts(rows: list[dict], manifest: dict) -> list[str]:
    problems = []
    actual = Counter((row["side"], f"{row['modality']}/{row['task']}") for row in rows)
    bench_per_cell = manifest["bench_per_cell"]
    for cell, counts in sorted(manifest["cells"].items()):
        if actual[BENCH, cell] != bench_per_cell:
            problems.append(f"bench {cell}: {actual[BENCH, cell]} items, expected {bench_per_cell}")
        for side in (BENCH, TRAIN):
            if actual[side, cell] != counts[side]:
                problems.append(f"{side} {cell}: {actual[side, cell]} items, manifest says {counts[side]}")
    extra = {cell for _, cell in actual} - set(manifest["cells"])
    problems += [f"{cell}: items of a cell the manifest does not list" for cell in sorted(extra)]
    totals = manifest.get("totals", {})
    if totals.get("pool") and totals.get("dropped", 0) / totals["pool"] >= MAX_DROPPED_FRACTION:
        problems.append(
            f"{totals['dropped']} dropped bench-side items: {MAX_DROPPED_FRACTION:.0%} or more of the pool"
        )
    return problems


def _check_balance(rows: list[dict], manifest: dict) -> list[str]:
    options = manifest["balance_options"]
    keys: dict[str, Counter] = defaultdict(Counter)
    for row in rows:
        if row["side"] == BENCH:
            keys[f"{row['modality']}/{row['task']}"][
                balance_key(row["task"], row["variant"], row["target"])
            ] += 1
    problems = []
    for cell, counter in sorted(keys.items()):
        task = cell.split("/")[1]
        counts = [counter.get(option, 0) for option in options[task]]
        if max(counts) - min(counts) > 1:
            problems.append(f"bench {cell}: unbalanced ({dict(counter)}); counts must differ by at most 1")
    return problems
