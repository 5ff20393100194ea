"""Export: split shards -> training JSONL with the images as PNG files beside it.

Two formats:

- `swift`: ms-swift GRPO and `swift infer` rows (the format the paper's
  training used). One line per item: `messages` (`tasks.messages`: the mode's
  system prompt, then one user turn of one `<image>` tag per image, in order,
  then the question: what ms-swift's server makes of `evaluate`'s request),
  `images` (PNG paths, same order), `solution` (`<answer>...</answer>`, for
  accuracy rewards), and extra columns `id`, `modality`, `task`, `variant` and
  `target` (JSON text), which ms-swift hands to reward functions as keyword
  lists (what `score.DenseGeometricReward` reads). Each row carries its system
  prompt, so no `--system` is needed; `system-<mode>.txt` holds the same text,
  byte for byte (no trailing newline), for tools that take a file.
  `plugin.py` registers the Dense Geometric Reward components in ms-swift's
  `orms` (`integrations.swift`) for `--external_plugins`; it carries its own
  copy of the scorer (`_medscout/`), so the training box needs no medscout-data.
- `jsonl`: a generic row for other trainers: `id`, `modality`, `task`,
  `variant`, `system` (the mode's system prompt), `question`, `answer`,
  `images`, `target`.

Images are the shards' PNG bytes written as they are (no re-encode) to
`<out>/images/<modality>/<task>/<id>-<k>.png`. Paths in the JSONL are
relative to the JSONL's folder by default, so the folder can be moved or
copied to a training machine whole; ms-swift opens relative paths from the
working directory, else under `$ROOT_IMAGE_DIR`, so run it from `<out>` or
set `ROOT_IMAGE_DIR=<out>`. `absolute_paths` writes resolved absolute paths.

Shards are read row group by row group, so memory stays flat. The JSONL is
written under a temporary name and renamed once every image is on disk; a
killed export leaves no JSONL that points at missing files. Items that
cannot be exported (no PNG bytes, duplicate id) are skipped and recorded in
`<out>/_reports/<split>-<mode>-<format>/` (errors.parquet + report.json).

`<out>` is an owned folder (owned.py), the export `<split>-<mode>-<tag>` one
writer in its record: a file it did not write is never replaced (`force`
deletes it, naming it), no write goes through a link, and doing the export
again replaces its own earlier files whole (a CT-only rerun leaves no X-ray
image of the first one).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from medscout_data import MODALITIES, TASKS
from medscout_data.errors import StageError
from medscout_data.evaluation.score import PROFILES
from medscout_data.integrations.grpo_settings import swift_flags
from medscout_data.integrations.swift import reward_names
from medscout_data.integrations.vendor import BOOTSTRAP, write_vendored
from medscout_data.layout import Layout
from medscout_data.owned import OwnedFolder
from medscout_data.report import RunReport
from medscout_data.shards import atomic_writer, write_bytes_atomic
from medscout_data.stages.manifest import ManifestError, read_manifest, verified_shards
from medscout_data.stages.pool import listed_shards
from medscout_data.tasks.messages import item_messages, question_of, system_prompt, tagged_messages

log = logging.getLogger(__name__)

EXPORT_SPLITS = ("train", "bench")
PREVIEW_SPLITS = ("bench", "train", "pool")
JSONL_FORMATS = ("swift", "jsonl")
TRAINER_FORMATS = ("trl", "verl", "easyr1")  # Parquet + reward file; see trainers.py
TOOL_FORMATS = ("lmms-eval", "vlmeval")  # bench only; see lmms_export.py and vlmeval_export.py
FORMATS = JSONL_FORMATS + TRAINER_FORMATS + TOOL_FORMATS
MODES = ("direct", "cot")
FILE_TAGS = {"swift": "swift", "jsonl": "generic"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXPORT_COLUMNS = [
    "id",
    "modality",
    "task",
    "variant",
    "images",
    "question",
    "question_cot",
    "answer",
    "target",
]
MIMIC_NOTE = (
    "MIMIC-CXR is PhysioNet credentialed data: its terms forbid public redistribution of these "
    "X-ray images; keep them where only credentialed users can read them."
)


class ExportError(StageError):
    """The shards cannot be exported as asked; the message says why and what to do."""


class BadItem(ValueError):
    """One row that cannot be used; `reason` is its short tag in the run report."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# ---------------------------------------------------------------- reading the split


@dataclass(frozen=True)
class Cell:
    """The shards of one modality x task cell."""

    modality: str
    task: str
    files: tuple[Path, ...]

    @property
    def name(self) -> str:
        return f"{self.modality}/{self.task}"


def side_files(
    layout: Layout, split: str, report: RunReport | None = None
) -> dict[tuple[str, str], list[Path]]:
    """(modality, task) -> shards of `bench` or `train`, checked against the manifest (size and
    sha256: damaged input is refused with `ManifestError`), or of the build `pool`: exactly the
    shards its `pool.json` lists that are on disk (planned ones not yet made are recorded in
    `report`; other files in pool/ are the user's and never read)."""
    if split == "pool":
        found: dict[tuple[str, str], list[Path]] = {}
        for modality in MODALITIES:
            for task in TASKS:
                listed = listed_shards(layout, modality, task)
                for path in listed:
                    if not path.is_file() and report is not None:
                        report.skip(str(path), "pool-shard-missing", f"{path}: in pool.json, not made yet")
                found[(modality, task)] = [path for path in listed if path.is_file()]
        return found
    if split not in EXPORT_SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(PREVIEW_SPLITS)}")
    found = {}
    for path in verified_shards(layout, split):
        _side, modality, task, *_ = path.relative_to(layout.root).parts
        found.setdefault((modality, task), []).append(path)
    return found


def split_cells(
    layout: Layout,
    split: str,
    modalities: Sequence[str] = MODALITIES,
    tasks: Sequence[str] = TASKS,
    report: RunReport | None = None,
) -> list[Cell]:
    """Non-empty cells of a split, in pipeline order; an error naming the folder when there are none."""
    files = side_files(layout, split, report)
    cells = [
        Cell(modality, task, tuple(files.get((modality, task), ())))
        for modality in MODALITIES
        if modality in modalities
        for task in TASKS
        if task in tasks
    ]
    cells = [cell for cell in cells if cell.files]
    if not cells:
        folder = layout.root / ("pool" if split == "pool" else layout.split_dir(split).name)
        step = "medscout-data build" if split == "pool" else "medscout-data split"
        raise ExportError(
            f"{folder}: no {split} shards for modality {'/'.join(modalities)} and task {'/'.join(tasks)}; "
            f"run `{step}` first (or check --shards)"
        )
    return cells


def count_rows(path: Path, report: RunReport) -> int:
    """Rows of a shard from its footer (no data read); 0, recorded, when it is unreadable."""
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowException, OSError) as exc:
        report.skip(str(path), "unreadable-shard", f"{path}: not a readable Parquet shard ({exc})")
        return 0


def iter_rows(path: Path, columns: Sequence[str], report: RunReport) -> Iterator[dict[str, Any]]:
    """Rows of one shard, one row group in memory at a time. An unreadable shard or row
    group is recorded in `report` and skipped."""
    try:
        source = pq.ParquetFile(path)
        groups = source.num_row_groups
        missing = [c for c in columns if c not in source.schema_arrow.names]
    except (pa.ArrowException, OSError) as exc:
        report.skip(str(path), "unreadable-shard", f"{path}: not a readable Parquet shard ({exc})")
        return
    if missing:
        report.skip(str(path), "not-an-item-shard", f"{path}: missing column(s) {', '.join(missing)}")
        return
    for group in range(groups):
        try:
            rows = source.read_row_group(group, columns=list(columns)).to_pylist()
        except (pa.ArrowException, OSError) as exc:
            where = f"{path}#row-group-{group}"
            report.skip(where, "unreadable-row-group", f"{where}: cannot read ({exc})")
            continue
        yield from rows


def manifest_summary(layout: Layout) -> dict[str, Any]:
    """Seed and recipe of the split, for reports and pages (empty without a usable manifest:
    the pool has none before `split`)."""
    try:
        manifest = read_manifest(layout)
    except ManifestError:
        return {}
    return {"seed": manifest.get("seed"), "recipe": manifest.get("recipe")}


# ---------------------------------------------------------------- records (pure)


def safe_name(text: str) -> str:
    """A file-name-safe form of an item id (ids are already safe; this guards odd ones)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "item"


def image_relpath(modality: str, task: str, item_id: str, k: int) -> str:
    """Where image `k` of an item goes, relative to the export folder."""
    return f"images/{safe_name(modality)}/{safe_name(task)}/{safe_name(item_id)}-{k}.png"


def swift_messages(row: dict[str, Any], paths: list[str], mode: str) -> list[dict[str, str]]:
    """The item's messages (`tasks.messages`) in ms-swift's form: system prompt, then one user turn
    of one `<image>` tag per image (the paths go to `images`, in the same order), then the question."""
    return tagged_messages(item_messages(question_of(row, mode), paths, mode, lambda _: {"type": "image"}))


def solution_text(answer: str) -> str:
    return f"<answer>{answer}</answer>"


def swift_record(row: dict[str, Any], paths: list[str], mode: str) -> dict[str, Any]:
    """An ms-swift GRPO row: user turn, image paths, solution, and the columns rewards need."""
    return {
        "messages": swift_messages(row, paths, mode),
        "images": paths,
        "solution": solution_text(row["answer"]),
        "id": row["id"],
        "modality": row["modality"],
        "task": row["task"],
        "variant": row["variant"] or "",
        "target": row["target"],
    }


def generic_record(row: dict[str, Any], paths: list[str], mode: str) -> dict[str, Any]:
    """A trainer-neutral row: question, answer text and image paths."""
    return {
        "id": row["id"],
        "modality": row["modality"],
        "task": row["task"],
        "variant": row["variant"] or "",
        "system": system_prompt(mode),
        "question": question_of(row, mode),
        "answer": row["answer"],
        "images": paths,
        "target": row["target"],
    }


RECORDS = {"swift": swift_record, "jsonl": generic_record}


def png_bytes(row: dict[str, Any]) -> list[bytes]:
    """The PNG bytes of a row's images; `BadItem` when one is missing or not a PNG."""
    images = row.get("images") or []
    if not images:
        raise BadItem("no-images", "the item has no images")
    out = []
    for k, image in enumerate(images):
        data = (image or {}).get("bytes")
        if not data:
            raise BadItem("no-image-bytes", f"image {k} has no bytes (path: {(image or {}).get('path')!r})")
        if not data.startswith(PNG_SIGNATURE):
            raise BadItem("not-png", f"image {k} is not PNG data")
        out.append(data)
    return out


# ---------------------------------------------------------------- export (I/O)


@dataclass(frozen=True)
class ExportOptions:
    """What to export and how."""

    split: str = "train"
    format: str = "swift"
    mode: str = "direct"
    profile: str = "official"  # written into the swift plugin's settings
    absolute_paths: bool = False
    modalities: tuple[str, ...] = MODALITIES
    tasks: tuple[str, ...] = TASKS
    progress: bool = True
    force: bool = False  # delete files in the way that medscout-data did not write (owned.py)

    def __post_init__(self) -> None:
        check_choices(
            ("split", self.split, EXPORT_SPLITS),
            ("format", self.format, JSONL_FORMATS),
            ("mode", self.mode, MODES),
            ("profile", self.profile, PROFILES),
        )


def check_choices(*choices: tuple[str, str, Sequence[str]]) -> None:
    """`ValueError` naming the first (name, value, allowed) whose value is not allowed."""
    for name, value, allowed in choices:
        if value not in allowed:
            raise ValueError(f"unknown {name} {value!r}; use one of {', '.join(allowed)}")


@dataclass
class ExportResult:
    """What an export wrote."""

    jsonl: Path
    system: Path | None
    items: int
    images: int
    cells: dict[str, int] = field(default_factory=dict)
    report: RunReport = field(default_factory=lambda: RunReport("export"))
    plugin: Path | None = None
    command: str = ""  # how to train on it (swift)

    @property
    def has_mimic(self) -> bool:
        return any(name.startswith("xray/") and n for name, n in self.cells.items())


def output_stem(options: ExportOptions) -> str:
    """`<split>-<mode>-<tag>`: the export's name (its JSONL, report folder and writer in the record)."""
    return f"{options.split}-{options.mode}-{FILE_TAGS[options.format]}"


def output_names(out: Path, options: ExportOptions) -> tuple[Path, Path, Path]:
    """(JSONL, system prompt, report folder) of an export."""
    stem = output_stem(options)
    return out / f"{stem}.jsonl", out / f"system-{options.mode}.txt", out / "_reports" / stem


def warn_mimic_elsewhere(folder: OwnedFolder, modalities: Sequence[str]) -> None:
    """An export without X-ray into a folder where other exports left MIMIC-derived images: say so."""
    if "xray" in modalities:
        return
    others = folder.writers_under("images/xray/")
    if others:
        log.warning(
            "%s still holds X-ray (MIMIC-CXR-derived) images of other exports: %s; %s",
            folder.root,
            ", ".join(others),
            MIMIC_NOTE,
        )


def export_split(layout: Layout, out: Path, options: ExportOptions) -> ExportResult:
    """Write one split's items as JSONL + PNG files under `out` (see the module docstring)."""
    out = Path(out)
    report = RunReport(
        "export", info={"split": options.split, "format": options.format, "mode": options.mode}
    )
    cells = split_cells(layout, options.split, options.modalities, options.tasks, report)
    jsonl, system, report_dir = output_names(out, options)
    sizes = {path: count_rows(path, report) for cell in cells for path in cell.files}
    cells = [Cell(c.modality, c.task, tuple(p for p in c.files if sizes[p])) for c in cells]
    total = sum(sizes.values())
    result = ExportResult(jsonl, system if options.format == "swift" else None, 0, 0, report=report)
    with OwnedFolder(out, f"export {output_stem(options)}", options.force) as folder:
        if result.system is not None:  # before the JSONL: a JSONL in place means everything is there
            # exactly the prompt the rows carry: ms-swift's --system sends a file's text verbatim
            text = system_prompt(options.mode).encode("utf-8")
            write_bytes_atomic(text, folder.claim(result.system.name))
            result.plugin = write_swift_plugin(folder, options.mode, options.profile)
            result.command = swift_command(result, options)
        bar = tqdm(total=total, desc=f"export {options.split}", unit="item", disable=not options.progress)
        try:
            with atomic_writer(folder.claim(jsonl.name)) as handle:
                images = ImageWriter(folder, options.absolute_paths)
                for cell in cells:
                    result.cells[cell.name] = _export_cell(cell, images, options, handle, result, bar)
        finally:
            bar.close()
        _finish_report(result, layout, folder, options, report_dir.relative_to(out).as_posix())
    warn_mimic_elsewhere(folder, options.modalities)
    return result


# ---------------------------------------------------------------- ms-swift plugin

PLUGIN = '''"""ms-swift reward plugin for Med-Scout-Bench, written by `medscout-data export --format swift`.

Registers the Dense Geometric Reward components in ms-swift's `orms`, each its own
class so the training log keeps them apart:

    medscout_accuracy  MedScoutAccuracy   accuracy in [0, 1]
    medscout_format    MedScoutFormat     format in [0, 0.5]
    medscout_cot       MedScoutCot        0.5 for <think>...</think><answer>...</answer> (cot mode)
    medscout_total     MedScoutTotal      their sum (one reward instead of three)

Use: swift rlhf --rlhf_type grpo --external_plugins THIS_FILE --reward_funcs medscout_accuracy
medscout_format [medscout_cot] ... (ms-swift 3.x and 4.x). The rewards read the dataset columns
`task`, `variant` and `target` of the exported JSONL. Settings: PROFILE and MODE below.
"""

PROFILE = "{profile}"  # official: the authors' released reward code; paper: the paper's formulas
MODE = "{mode}"  # direct, or cot (adds the 0.5 CoT template reward); written from `export --mode`
{bootstrap}
import importlib as _importlib
import importlib.util as _util

from medscout_data.integrations.swift import register

# ms-swift 4.x keeps `orms` in swift.rewards, 3.x in swift.plugin.
_REGISTRY = "swift.rewards" if _util.find_spec("swift.rewards") is not None else "swift.plugin"
REWARDS = register(_importlib.import_module(_REGISTRY).orms, profile=PROFILE, mode=MODE)
'''

SWIFT_RUNTIME = ["medscout_data.integrations.swift"]


def write_swift_plugin(folder: OwnedFolder, mode: str, profile: str = "official") -> Path:
    """`plugin.py` and the scorer copy it imports (`_medscout/`) in the export folder."""
    write_vendored(folder, SWIFT_RUNTIME)
    path = folder.claim("plugin.py")
    text = PLUGIN.format(profile=profile, mode=mode, bootstrap=BOOTSTRAP)
    write_bytes_atomic(text.encode("utf-8"), path)
    return path


def swift_command(result: ExportResult, options: ExportOptions) -> str:
    """A `swift rlhf` GRPO command for the export with the paper's settings (MODEL is the user's).
    Relative image paths are opened under ROOT_IMAGE_DIR, so it is set to the export folder and the
    command runs from anywhere. The rows carry the system prompt, so there is no --system."""
    root = result.jsonl.parent.resolve()
    env = "" if options.absolute_paths else f"ROOT_IMAGE_DIR={shlex.quote(str(root))} "
    parts = [
        f"{env}swift rlhf --rlhf_type grpo --model MODEL",
        f"--dataset {shlex.quote(str(result.jsonl.resolve()))}",
        f"--external_plugins {shlex.quote(str(Path(result.plugin or root / 'plugin.py').resolve()))}",
        f"--reward_funcs {' '.join(reward_names(options.mode))}",
        *swift_flags(),
    ]
    return " \\\n    ".join(parts)


def _export_cell(
    cell: Cell, images: ImageWriter, options: ExportOptions, handle: Any, result: ExportResult, bar: tqdm
) -> int:
    """Write one cell's rows; returns how many were exported."""
    make_record = RECORDS[options.format]

    def write(row: dict[str, Any]) -> None:
        paths = images.write(row)
        handle.write(json.dumps(make_record(row, paths, options.mode), ensure_ascii=False) + "\n")
        result.images += len(paths)

    exported = write_cell_rows(cell, EXPORT_COLUMNS, result.report, bar, write)
    result.items += exported
    return exported


def write_cell_rows(
    cell: Cell, columns: Sequence[str], report: RunReport, bar: tqdm, write: Callable[[dict[str, Any]], None]
) -> int:
    """`write(row)` for every row of a cell; a row it refuses with `BadItem` is recorded in `report`
    and skipped. Returns how many rows were written."""
    written = 0
    for path in cell.files:
        for row in iter_rows(path, columns, report):
            bar.update(1)
            try:
                write(row)
            except BadItem as exc:
                where = f"{path}:{row.get('id')}"
                report.skip(where, exc.reason, f"{where}: {exc}")
                continue
            written += 1
    return written


@dataclass
class ImageWriter:
    """Writes each item's PNG bytes as they are under `<folder>/images/`, once per id,
    each file under a temporary name first (a killed run leaves no truncated PNG)."""

    folder: OwnedFolder
    absolute: bool = False
    seen: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.base = str(Path(self.folder.root).resolve())

    def write(self, row: dict[str, Any]) -> list[str]:
        """The row's image paths for the JSONL; `BadItem` for a repeated id or unusable images."""
        item_id = str(row["id"])
        if item_id in self.seen:
            raise BadItem("duplicate-id", f"duplicate item id {item_id} (an earlier row has it and is kept)")
        blobs = png_bytes(row)
        self.seen.add(item_id)
        paths = []
        for k, data in enumerate(blobs):
            relative = image_relpath(row["modality"], row["task"], item_id, k)
            write_bytes_atomic(data, self.folder.claim(relative), make_parent=False)
            paths.append(os.path.join(self.base, relative) if self.absolute else relative)
        return paths


def _finish_report(
    result: ExportResult, layout: Layout, folder: OwnedFolder, options: ExportOptions, report_dir: str
) -> None:
    report = result.report
    report.count("items", result.items)
    report.count("images", result.images)
    report.info.update(
        {
            "shards": str(layout.root),
            "jsonl": str(result.jsonl),
            "system": str(result.system) if result.system else "",
            "absolute_paths": options.absolute_paths,
            "cells": result.cells,
            "split_manifest": manifest_summary(layout),
        }
    )
    if result.has_mimic:
        report.info["licence_note"] = MIMIC_NOTE
    report.write(folder.claim_report(report_dir))
    log.info(report.summary())
