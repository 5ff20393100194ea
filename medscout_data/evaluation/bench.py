"""Finding, loading and verifying a bench: local shards, a staged Hub repo folder, or a Hub repo id.

`resolve_bench` finds the bench shards of a shards root, of a staged Hub
repo folder, or names a Hub repo id, and checks local shards before use;
`load_bench` reads only the metadata columns scoring needs (Parquet column
projection: images are never read); `bench_items` turns them into the
truths the reward compares against.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from medscout_data.evaluation.errors import ScoreError
from medscout_data.evaluation.predictions import preview
from medscout_data.evaluation.reward import BenchItem, Truth
from medscout_data.layout import MANIFEST

SCORE_COLUMNS = ["id", "modality", "task", "variant", "target"]


@dataclass(frozen=True)
class BenchSource:
    """Where a bench lives: local Parquet shards (and the train side, if any), or a Hub repo id.

    `integrity` says how the local shards were checked before use.
    """

    location: str
    files: tuple[Path, ...] = ()
    train_files: tuple[Path, ...] = ()
    repo_id: str = ""
    integrity: str = ""

    @property
    def is_hub(self) -> bool:
        return bool(self.repo_id)


_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
HUB_PREFIX = "hf://datasets/"


def resolve_bench(location: str | Path, verify: bool = True) -> BenchSource:
    """A bench from a shards root (`<root>/bench/<modality>/<task>/test-*.parquet`, train side
    from `<root>/train/`), a staged repo folder (`<dir>/data/<modality>/<task>/test-*.parquet`),
    a bench folder itself, one Parquet file, or a Hub dataset repo id (`owner/name`, or
    `hf://datasets/owner/name` to say so explicitly).

    A name that exists nowhere but looks like a local path is an error, never sent to the Hub.
    With `verify`, local shards are checked before use (`integrity`: the manifest's sha256, the
    staged record's sha256, or a decode check) and damage is refused.
    """
    # Imported here, not at module level: the exported VLMEvalKit files carry a copy of this module
    # (through score.py) and its module-level imports only, and the checks need stages/.
    from medscout_data.evaluation.integrity import (
        looks_like_a_path,
        manifest_verified,
        stage_record_files,
        stage_verified,
    )

    text = str(location)
    if text.startswith(HUB_PREFIX):
        return _hub_source(text, text[len(HUB_PREFIX) :])
    path = Path(text).expanduser()
    if not path.exists():
        why = looks_like_a_path(text)
        if why:
            raise ScoreError(
                f"{text}: no such bench folder ({why}, so it is taken for a mistyped local path, not "
                f"a Hub repo id); check the path, or write {HUB_PREFIX}{text.lstrip('./~')} for the Hub"
            )
        return _hub_source(text, text)
    if path.is_file():
        return _checked(text, (path,), (), "decode check" if verify else "")
    if path.name == "bench" and (path.parent / MANIFEST).is_file():
        path = path.parent  # the bench side of a shards root: check it against its manifest
    if (path / "bench").is_dir():
        train = tuple(sorted((path / "train").glob("*/*/train-*.parquet")))
        if verify:
            return BenchSource(text, manifest_verified(path), train, integrity="sha256 (manifest.json)")
        return _listed(text, path / "bench", train)
    if (path / "data").is_dir():
        record = stage_record_files(path) if verify else None
        if record is not None:
            return BenchSource(text, stage_verified(path, record), integrity="sha256 (staged record)")
        path = path / "data"
    source = _listed(text, path, ())
    return _checked(text, source.files, (), "decode check" if verify else "")


def _hub_source(text: str, repo_id: str) -> BenchSource:
    if not _REPO_ID.fullmatch(repo_id):
        raise ScoreError(f"{text}: no such bench folder (nor an owner/name Hub repo id)")
    return BenchSource(text, repo_id=repo_id, integrity="downloaded by datasets")


def _listed(text: str, folder: Path, train: tuple[Path, ...]) -> BenchSource:
    files = tuple(sorted(folder.glob("*/*/test-*.parquet")))
    if not files:
        raise ScoreError(f"{text}: no bench shards ({folder}/<modality>/<task>/test-*.parquet)")
    return BenchSource(text, files=files, train_files=train)


def _checked(text: str, files: tuple[Path, ...], train: tuple[Path, ...], integrity: str) -> BenchSource:
    from medscout_data.evaluation.integrity import decode_checked  # see resolve_bench

    for path in files if integrity else ():
        decode_checked(path)
    return BenchSource(text, files=files, train_files=train, integrity=integrity)


def read_metadata(files: Iterable[Path], columns: Sequence[str]) -> pa.Table:
    """The given columns of Parquet shards, concatenated (column projection: nothing else is read)."""
    tables = []
    for path in files:
        try:
            names = pq.read_schema(path).names
            missing = [c for c in columns if c not in names]
            if missing:
                raise ScoreError(f"{path}: not a bench shard, missing column(s) {', '.join(missing)}")
            tables.append(pq.read_table(path, columns=list(columns)))
        except (pa.ArrowException, OSError) as exc:
            raise ScoreError(f"{path}: not a readable Parquet shard ({exc})") from exc
    if not tables:
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    return pa.concat_tables(tables)


def load_hub_bench(repo_id: str, columns: Sequence[str], cache_dir: str | None = None) -> pa.Table:
    """The test split of a Hub dataset repo (or a local repo folder), only `columns`,
    through `datasets.load_dataset`."""
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ScoreError("loading a bench from the Hub needs `datasets`: pip install datasets") from exc
    try:
        dataset = datasets.load_dataset(repo_id, split="test", columns=list(columns), cache_dir=cache_dir)
    except Exception as exc:
        raise ScoreError(
            f"{repo_id}: cannot load the dataset's test split ({type(exc).__name__}: {exc})"
        ) from exc
    return dataset.with_format("arrow")[0 : len(dataset)]


def load_bench(source: BenchSource, columns: Sequence[str] = SCORE_COLUMNS) -> pa.Table:
    """The bench's metadata columns; ids must be unique."""
    table = load_hub_bench(source.repo_id, columns) if source.is_hub else read_metadata(source.files, columns)
    ids = table.column("id").to_pylist()
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dupes = sorted({i for i in ids if i in seen or seen.add(i)})
        raise ScoreError(f"{source.location}: duplicate item ids in the bench: {preview(dupes)}")
    return table


def bench_items(table: pa.Table, location: str = "bench") -> list[BenchItem]:
    """Truths of every bench row; a row with an unusable target is an error naming it."""
    columns = {name: table.column(name).to_pylist() for name in SCORE_COLUMNS}
    targets = _parse_targets(columns["target"], columns["id"], location)
    items = []
    for item_id, modality, task, variant, target in zip(
        columns["id"], columns["modality"], columns["task"], columns["variant"], targets, strict=True
    ):
        try:
            truth = Truth.from_item({"task": task, "variant": variant, "target": target})
        except (ValueError, KeyError, TypeError) as exc:
            raise ScoreError(f"{location}: item {item_id}: unusable target ({exc!r})") from exc
        items.append(BenchItem(item_id, modality, task, variant or "", truth))
    return items


def _parse_targets(texts: list[Any], ids: list[str], location: str) -> list[Any]:
    """Every target's JSON, parsed in one call (far faster than one call per row); on any
    problem, row by row to name the bad one."""
    try:
        parsed = json.loads("[" + ",".join(texts) + "]")
        if len(parsed) == len(texts):
            return parsed
    except (TypeError, json.JSONDecodeError):
        pass
    out = []
    for item_id, text in zip(ids, texts, strict=True):
        try:
            out.append(json.loads(text))
        except (TypeError, json.JSONDecodeError) as exc:
            raise ScoreError(f"{location}: item {item_id}: target is not JSON ({exc})") from exc
    return out
