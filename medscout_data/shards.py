"""Atomic Parquet and file writing: write to a temporary name, then rename.

A killed run leaves only `*.tmp` files behind, which a rerun overwrites; a
file under its final name is always complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq


def parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """Writer options: zstd for text columns; none for image bytes, PNG being compressed already."""
    compression = {name: ("none" if name == "images" else "zstd") for name in schema.names}
    return {"compression": compression, "use_dictionary": False, "write_statistics": False}


def tmp_path(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def _open_tmp(tmp: Path) -> int:
    """A temporary file for writing; O_NOFOLLOW: a link planted at its name is refused (ELOOP),
    never written through."""
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)


class ShardWriter:
    """One Parquet file, written row group by row group, renamed on `close()`.

    Memory holds at most one row group. `metadata` lands in the schema's
    key-value metadata (next to the `huggingface` key).
    """

    def __init__(
        self,
        path: Path,
        schema: pa.Schema,
        row_group_rows: int,
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        merged = dict(schema.metadata or {})
        merged.update({k.encode(): v.encode() for k, v in (metadata or {}).items()})
        self.schema = schema.with_metadata(merged)
        self.row_group_rows = row_group_rows
        self.rows = 0
        self._buffer: list[dict[str, Any]] = []
        self._tmp = tmp_path(self.path)
        self._writer = pq.ParquetWriter(self._tmp, self.schema, **parquet_options(self.schema))

    def write(self, row: dict[str, Any]) -> None:
        self._buffer.append(row)
        if len(self._buffer) >= self.row_group_rows:
            self._flush()

    def write_table(self, table: pa.Table) -> None:
        self._flush()
        self._writer.write_table(table.cast(self.schema), row_group_size=self.row_group_rows)
        self.rows += table.num_rows

    def _flush(self) -> None:
        if self._buffer:
            columns = {name: [row[name] for row in self._buffer] for name in self.schema.names}
            table = pa.Table.from_pydict(columns, schema=self.schema)  # several times faster than from_pylist
            self._writer.write_table(table, row_group_size=self.row_group_rows)
            self.rows += len(self._buffer)
            self._buffer = []

    def add_metadata(self, metadata: dict[str, str]) -> None:
        """Key-value metadata known only at the end (in the file footer; read it with `pq.read_metadata`)."""
        self._writer.add_key_value_metadata(metadata)

    def close(self) -> None:
        """Finish the file and move it to its final name."""
        self._flush()
        self._writer.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Drop the partial file."""
        self._writer.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_table_atomic(table: pa.Table, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a whole table to `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({k.encode(): v.encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(merged)
    tmp = tmp_path(path)
    with open(_open_tmp(tmp), "wb") as handle:
        pq.write_table(table, handle, **parquet_options(table.schema))
    os.replace(tmp, path)


def write_rows_atomic(rows: Iterable[dict[str, Any]], schema: pa.Schema, path: Path) -> None:
    """Write rows of a declared schema to `path` atomically."""
    write_table_atomic(pa.Table.from_pylist(list(rows), schema=schema), path)


@contextmanager
def atomic_writer(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """An open file under a temporary name, renamed to `path` when the block ends without error.

    On an error (or a kill) only the temporary file is left, and it is removed
    where possible: a file under its final name is always complete. The
    temporary name is the process's and thread's own, so several ranks writing
    the same file (each the same content) never rename each other's.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")  # concurrent writers
    encoding = None if "b" in mode else "utf-8"
    try:
        with open(_open_tmp(tmp), mode, encoding=encoding) as handle:
            yield handle
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(data: bytes, path: Path, make_parent: bool = True) -> None:
    """`data` to `path` atomically; `make_parent=False` when the caller made the folder already."""
    if make_parent:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path, "wb") as handle:
        handle.write(data)


def write_json_atomic(obj: Any, path: Path) -> None:
    """Pretty, key-sorted JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    write_bytes_atomic(text.encode("utf-8"), path)


def read_file_metadata(path: Path) -> dict[str, str]:
    """A Parquet file's key-value metadata (without reading any rows)."""
    raw = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in raw.items()}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
