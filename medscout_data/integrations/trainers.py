"""`export --format trl|verl|easyr1`: Parquet a GRPO trainer reads as it is, and its reward file.

One split and one mode per folder; images stay the shards' PNG bytes, inside
the Parquet as a `datasets` Image feature (decoded to PIL by `datasets`, which
all three trainers load their data with). Every row carries the item's `id`,
`modality`, `task`, `variant` and `target`.

- `trl`: `OUT/data/<train|test>-NNNNN-of-NNNNN.parquet`, which
  `datasets.load_dataset(OUT)` reads, with a conversational `prompt` (a system
  turn, then one user turn: one image placeholder per image, then the
  question), `images` and `solution`; `OUT/rewards.py` defines
  `REWARD_FUNCS` for `GRPOTrainer(reward_funcs=...)` and `OUT/train_grpo.py`
  runs `GRPOTrainer` on it with the paper's settings.
- `verl`: `OUT/<train|test>.parquet` in verl's layout (`data_source`, `prompt`
  with one `<image>` per image, `images`, `ability`, `reward_model`
  `{style: rule, ground_truth}`, `extra_info`) and `OUT/reward.py` with
  `compute_score(data_source, solution_str, ground_truth, extra_info)`.
- `easyr1`: `OUT/<train|test>.parquet` with EasyR1's keys (`problem` with one
  `<image>` per image, `answer`, `images`) and `OUT/reward.py`, a batch reward
  function `compute_score(reward_inputs)`. EasyR1 builds only a user turn, so
  no system prompt reaches the model there (the others send the messages of
  `tasks.messages`, as `evaluate` does).

The reward files import `integrations.trainer_rewards` from the scorer copy in
`OUT/_medscout/`, so the training machine needs no medscout-data.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from tqdm import tqdm

from medscout_data import MODALITIES, TASKS
from medscout_data.evaluation.score import PROFILES
from medscout_data.integrations.export import (
    EXPORT_SPLITS,
    MIMIC_NOTE,
    MODES,
    TRAINER_FORMATS,
    check_choices,
    count_rows,
    png_bytes,
    solution_text,
    split_cells,
    write_cell_rows,
)
from medscout_data.integrations.grpo_settings import easyr1_overrides, verl_overrides
from medscout_data.integrations.trainer_files import reward_file, trl_script
from medscout_data.integrations.trainer_rewards import ground_truth_text
from medscout_data.integrations.vendor import write_vendored
from medscout_data.layout import Layout
from medscout_data.owned import OwnedFolder
from medscout_data.report import RunReport
from medscout_data.schema import IMAGE_TYPE
from medscout_data.shards import ShardWriter, write_bytes_atomic
from medscout_data.tasks.messages import row_messages, tagged_messages

log = logging.getLogger(__name__)

HF_SPLITS = {"train": "train", "bench": "test"}  # the bench is a test split to every trainer
ROWS_PER_FILE = 2000  # TRL data files: about 0.5 GB of PNG each at the paper's sizes
ROW_GROUP_ROWS = 64
DATA_SOURCE = "med_scout_bench"
ABILITY = "medical_geometry"
RUNTIME = ["medscout_data.integrations.trainer_rewards"]

_TEXT = {"dtype": "string", "_type": "Value"}
_IMAGES = {"feature": {"_type": "Image"}, "_type": "Sequence"}
_ITEM_FIELDS = [(name, pa.string(), _TEXT) for name in ("id", "modality", "task", "variant", "target")]
_PART = pa.struct([("type", pa.string()), ("text", pa.string())])


def _schema(fields: list[tuple[str, pa.DataType, Any]]) -> pa.Schema:
    """Arrow schema with the `huggingface` features (a JSON list `[...]` is a Python-list feature,
    read the same by datasets 3.x and 4.x)."""
    features = {name: feature for name, _, feature in fields}
    metadata = {"huggingface": json.dumps({"info": {"features": features}})}
    return pa.schema([(name, dtype) for name, dtype, _ in fields], metadata=metadata)


SCHEMAS = {
    "trl": _schema(
        [
            (
                "prompt",
                pa.list_(pa.struct([("role", pa.string()), ("content", pa.list_(_PART))])),
                [{"role": _TEXT, "content": [{"type": _TEXT, "text": _TEXT}]}],
            ),
            ("images", pa.list_(IMAGE_TYPE), _IMAGES),
            ("solution", pa.string(), _TEXT),
            *_ITEM_FIELDS,
        ]
    ),
    "verl": _schema(
        [
            ("data_source", pa.string(), _TEXT),
            (
                "prompt",
                pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])),
                [{"role": _TEXT, "content": _TEXT}],
            ),
            ("images", pa.list_(IMAGE_TYPE), _IMAGES),
            ("ability", pa.string(), _TEXT),
            (
                "reward_model",
                pa.struct([("style", pa.string()), ("ground_truth", pa.string())]),
                {"style": _TEXT, "ground_truth": _TEXT},
            ),
            (
                "extra_info",
                pa.struct(
                    [(name, pa.string()) for name in ("id", "modality", "task", "variant", "target", "split")]
                ),
                {name: _TEXT for name in ("id", "modality", "task", "variant", "target", "split")},
            ),
        ]
    ),
    "easyr1": _schema(
        [
            ("problem", pa.string(), _TEXT),
            ("answer", pa.string(), _TEXT),
            ("images", pa.list_(IMAGE_TYPE), _IMAGES),
            *_ITEM_FIELDS,
        ]
    ),
}


# ---------------------------------------------------------------- rows (pure)


def _images(row: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"bytes": data, "path": None} for data in png_bytes(row)]


def _item_columns(row: dict[str, Any]) -> dict[str, str]:
    return {key: str(row[key] or "") for key in ("id", "modality", "task", "variant", "target")}


def _placeholder(_: Any) -> dict[str, Any]:
    return {"type": "image", "text": None}  # TRL puts the row's image here, in order


def trl_row(row: dict[str, Any], mode: str, split: str) -> dict[str, Any]:
    """A TRL conversational row: the one message builder's system turn, then one image placeholder
    per image and the question (TRL's structured-content form, every content a part list)."""
    images = _images(row)
    system, user = row_messages(row, mode, _placeholder)
    prompt = [{"role": "system", "content": [{"type": "text", "text": system["content"]}]}, user]
    solution = solution_text(row["answer"])
    return {"prompt": prompt, "images": images, "solution": solution, **_item_columns(row)}


def verl_row(row: dict[str, Any], mode: str, split: str) -> dict[str, Any]:
    """A verl RLHFDataset row: the one message builder's messages with one `<image>` per image."""
    images = _images(row)
    truth = ground_truth_text(row["task"], row["variant"], row["target"])
    return {
        "data_source": DATA_SOURCE,
        "prompt": tagged_messages(row_messages(row, mode, _placeholder)),
        "images": images,
        "ability": ABILITY,
        "reward_model": {"style": "rule", "ground_truth": truth},
        "extra_info": {**_item_columns(row), "split": split},
    }


def easyr1_row(row: dict[str, Any], mode: str, split: str) -> dict[str, Any]:
    """An EasyR1 row (`problem` / `answer` / `images`)."""
    images = _images(row)
    return {
        "problem": tagged_messages(row_messages(row, mode, _placeholder))[1]["content"],  # the user turn
        "answer": ground_truth_text(row["task"], row["variant"], row["target"]),
        "images": images,
        **_item_columns(row),
    }


ROWS = {"trl": trl_row, "verl": verl_row, "easyr1": easyr1_row}
ROW_COLUMNS = ["id", "modality", "task", "variant", "images", "question", "question_cot", "answer", "target"]


# ---------------------------------------------------------------- export (I/O)


@dataclass(frozen=True)
class TrainerExportOptions:
    """What to export for which trainer."""

    format: str = "trl"
    split: str = "train"
    mode: str = "direct"
    profile: str = "official"
    modalities: tuple[str, ...] = MODALITIES
    tasks: tuple[str, ...] = TASKS
    progress: bool = True
    force: bool = False  # delete files in the way that medscout-data did not write (owned.py)

    def __post_init__(self) -> None:
        check_choices(
            ("format", self.format, TRAINER_FORMATS),
            ("split", self.split, EXPORT_SPLITS),
            ("mode", self.mode, MODES),
            ("profile", self.profile, PROFILES),
        )


@dataclass
class TrainerExport:
    """What a trainer export wrote."""

    folder: Path
    data: list[Path] = field(default_factory=list)
    reward: Path | None = None
    script: Path | None = None
    items: int = 0
    images: int = 0
    cells: dict[str, int] = field(default_factory=dict)
    report: RunReport = field(default_factory=lambda: RunReport("export"))
    command: str = ""

    @property
    def has_mimic(self) -> bool:
        return any(name.startswith("xray/") and n for name, n in self.cells.items())


def data_paths(out: Path, options: TrainerExportOptions, total: int) -> list[Path]:
    """The Parquet files of an export of `total` rows."""
    split = HF_SPLITS[options.split]
    if options.format != "trl":
        return [out / f"{split}.parquet"]
    n = max(1, -(-total // ROWS_PER_FILE))
    return [out / "data" / f"{split}-{k:05d}-of-{n:05d}.parquet" for k in range(n)]


def export_trainer(layout: Layout, out: Path, options: TrainerExportOptions) -> TrainerExport:
    """Write one split for one trainer under `out` (see the module docstring). The folder is an owned
    folder (owned.py): a file of the user's in the way is refused, and a rerun replaces this export's
    earlier files whole (a CT-only re-export leaves no X-ray rows behind)."""
    out = Path(out)
    info = {"split": options.split, "format": options.format, "mode": options.mode}
    report = RunReport("export", info=info)
    cells = split_cells(layout, options.split, options.modalities, options.tasks, report)
    total = sum(count_rows(path, report) for cell in cells for path in cell.files)
    result = TrainerExport(out, data_paths(out, options, total), report=report)
    stem = f"{options.split}-{options.mode}-{options.format}"
    with OwnedFolder(out, f"export {stem}", options.force) as folder:
        for path in result.data:  # the Parquet files and their temporary names: nothing foreign in the way
            relative = path.relative_to(out).as_posix()
            folder.claim(relative)
            folder.claim(f"{relative}.tmp")
        write_vendored(folder, RUNTIME)
        result.reward = folder.claim("rewards.py" if options.format == "trl" else "reward.py")
        write_bytes_atomic(reward_file(options.format, options.profile, options.mode).encode(), result.reward)
        if options.format == "trl":
            result.script = folder.claim("train_grpo.py")
            write_bytes_atomic(trl_script(HF_SPLITS[options.split]).encode(), result.script)
        _write_rows(cells, result, options, total)
        result.command = launch_command(result, options)
        report.count("items", result.items)
        report.count("images", result.images)
        files = [str(p) for p in result.data]
        report.info.update({"shards": str(layout.root), "cells": result.cells, "files": files})
        if result.has_mimic:
            report.info["licence_note"] = MIMIC_NOTE
        report.write(folder.claim_report(f"_reports/{stem}"))
    return result


def _write_rows(cells: list, result: TrainerExport, options: TrainerExportOptions, total: int) -> None:
    """Rows into the data files in cell order, `ROWS_PER_FILE` to a TRL file; each file renamed into
    place only when complete."""
    make_row, schema = ROWS[options.format], SCHEMAS[options.format]
    per_file = ROWS_PER_FILE if options.format == "trl" else max(total, 1)
    files = iter(result.data)
    writer: ShardWriter | None = None
    in_file = 0
    bar = tqdm(total=total, desc=f"export {options.format}", unit="item", disable=not options.progress)

    def write(row: dict[str, Any]) -> None:
        nonlocal writer, in_file
        record = make_row(row, options.mode, options.split)  # BadItem before anything is written
        if writer is None or in_file >= per_file:
            if writer is not None:
                writer.close()
            writer, in_file = ShardWriter(next(files), schema, ROW_GROUP_ROWS), 0
        writer.write(record)
        in_file += 1
        result.items += 1
        result.images += len(record["images"])

    try:
        for cell in cells:
            result.cells[cell.name] = write_cell_rows(cell, ROW_COLUMNS, result.report, bar, write)
        if writer is None:
            writer = ShardWriter(next(files), schema, ROW_GROUP_ROWS)
        writer.close()
        writer = None
        result.data = [path for path in result.data if path.is_file()]
    finally:
        bar.close()
        if writer is not None:
            writer.abort()


def launch_command(result: TrainerExport, options: TrainerExportOptions) -> str:
    """How to train on the export (MODEL is the user's)."""
    data = " ".join(str(p.resolve()) for p in result.data)
    reward = str(Path(result.reward or "").resolve())
    if options.format == "trl":
        return f"python {Path(result.script or '').resolve()} --model MODEL --output-dir OUTPUT"
    if options.format == "verl":
        parts = [
            "python -m verl.trainer.main_ppo",
            f"data.train_files={data}",
            "data.image_key=images",
            f"custom_reward_function.path={reward}",
            "custom_reward_function.name=compute_score",
            "actor_rollout_ref.model.path=MODEL",
            *verl_overrides(),
        ]
    else:
        parts = [
            "python -m verl.trainer.main config=examples/config.yaml",
            f"data.train_files={data}",
            "data.prompt_key=problem data.answer_key=answer data.image_key=images",
            "data.format_prompt=null data.min_pixels=null",
            f"worker.reward.reward_function={reward}:compute_score",
            "worker.actor.model.model_path=MODEL",
            *easyr1_overrides(),
        ]
    return " \\\n    ".join(parts)
