"""`export --format vlmeval`: the bench as a VLMEvalKit TSV, with the dataset class and a wrapper script.

    OUT/MedScoutBench.tsv      index, image, question, answer, id, modality, task, variant, target,
                               question_cot
    OUT/medscout_vlmeval.py    python OUT/medscout_vlmeval.py --model NAME [--mode cot] | --score PREDICTIONS
    OUT/_medscout/             the scorer copy it imports (no medscout-data needed where VLMEvalKit runs)

`image` holds the base64 of the shard's PNG bytes (no re-encode): one string
for one image, a JSON list of strings (which VLMEvalKit's `toliststr` reads)
for several, in prompt order. `index` is the row number (VLMEvalKit's key);
`id` is the item id. The bench is read through its manifest (damaged shards
are refused) one row group at a time, and the TSV is renamed into place
when complete. Rows that cannot be exported are recorded in
`OUT/_reports/vlmeval/`.
"""

from __future__ import annotations

import base64
import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from medscout_data import MODALITIES, TASKS
from medscout_data.evaluation.score import PROFILES
from medscout_data.integrations.export import (
    MIMIC_NOTE,
    BadItem,
    Cell,
    count_rows,
    manifest_summary,
    png_bytes,
    split_cells,
    write_cell_rows,
)
from medscout_data.integrations.vendor import BOOTSTRAP, write_vendored
from medscout_data.layout import Layout
from medscout_data.owned import OwnedFolder
from medscout_data.report import RunReport
from medscout_data.shards import atomic_writer, write_bytes_atomic

log = logging.getLogger(__name__)

TSV_NAME = "MedScoutBench.tsv"
TSV_COLUMNS = ["index", "image", "question", "answer", "id", "modality", "task", "variant", "target"]
TSV_COLUMNS += ["question_cot"]
READ_COLUMNS = ["id", "modality", "task", "variant", "images", "question", "question_cot", "answer", "target"]
VLMEVAL_RUNTIME = ["medscout_data.integrations.vlmeval"]

WRAPPER = '''"""Med-Scout-Bench for VLMEvalKit, written by `medscout-data export --format vlmeval`.

    python medscout_vlmeval.py --model Qwen2.5-VL-7B-Instruct [--mode cot] [--work-dir outputs]
    python medscout_vlmeval.py --score outputs/MODEL/MODEL_MedScoutBench.xlsx [--mode direct]

Importing this file also registers the dataset class with VLMEvalKit (datasets `MedScoutBench`
and `MedScoutBench_CoT`), for scripts of your own. Setting: PROFILE.
"""

PROFILE = "{profile}"  # official: the authors' released reward code; paper: the paper's formulas
{bootstrap}
from medscout_data.integrations import vlmeval as _medscout

TSV = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "{tsv}")

try:
    MedScoutBench = _medscout.dataset_class(TSV, PROFILE)
    _medscout.register(MedScoutBench)
except ImportError:  # VLMEvalKit not installed: --score still works
    MedScoutBench = None

if __name__ == "__main__":
    _medscout.main(TSV, PROFILE)
'''


@dataclass
class VlmevalExport:
    """What the TSV export wrote."""

    tsv: Path
    wrapper: Path
    items: int = 0
    cells: dict[str, int] = field(default_factory=dict)
    report: RunReport = field(default_factory=lambda: RunReport("export"))

    @property
    def has_mimic(self) -> bool:
        return any(name.startswith("xray/") and n for name, n in self.cells.items())


def image_cell(blobs: list[bytes]) -> str:
    """The TSV `image` cell: base64 of one PNG, or a JSON list of them."""
    encoded = [base64.b64encode(data).decode("ascii") for data in blobs]
    return encoded[0] if len(encoded) == 1 else json.dumps(encoded)


def tsv_row(index: int, row: dict, blobs: list[bytes]) -> list[str]:
    return [
        str(index),
        image_cell(blobs),
        row["question"],
        row["answer"],
        row["id"],
        row["modality"],
        row["task"],
        row["variant"] or "",
        row["target"],
        row["question_cot"],
    ]


def _write_cell(cell: Cell, writer: Any, seen: set[str], result: VlmevalExport, bar: tqdm) -> int:
    """Write one cell's rows to the TSV; returns how many were written."""

    def write(row: dict[str, Any]) -> None:
        if row["id"] in seen:
            raise BadItem("duplicate-id", f"duplicate item id {row['id']} (the first is kept)")
        writer.writerow(tsv_row(result.items, row, png_bytes(row)))
        seen.add(row["id"])
        result.items += 1

    return write_cell_rows(cell, READ_COLUMNS, result.report, bar, write)


def export_vlmeval(
    layout: Layout,
    out: Path,
    modalities: tuple[str, ...] = MODALITIES,
    tasks: tuple[str, ...] = TASKS,
    profile: str = "official",
    progress: bool = True,
    force: bool = False,
) -> VlmevalExport:
    """Write the bench of `layout` as `out/MedScoutBench.tsv` + wrapper (see the module docstring);
    `force` deletes files in the way that medscout-data did not write (owned.py)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; use one of {', '.join(PROFILES)}")
    out = Path(out)
    report = RunReport("export", info={"split": "bench", "format": "vlmeval"})
    cells = split_cells(layout, "bench", modalities, tasks, report)
    total = sum(count_rows(path, report) for cell in cells for path in cell.files)
    result = VlmevalExport(out / TSV_NAME, out / "medscout_vlmeval.py", report=report)
    with OwnedFolder(out, "export vlmeval", force) as folder:
        _write_files(folder, layout, cells, profile, total, progress, result)
    log.info(report.summary())
    return result


def _write_files(
    folder: OwnedFolder,
    layout: Layout,
    cells: list[Cell],
    profile: str,
    total: int,
    progress: bool,
    result: VlmevalExport,
) -> None:
    """The wrapper, the scorer copy, the TSV (renamed in when whole) and the report, in `folder`."""
    report = result.report
    write_vendored(folder, VLMEVAL_RUNTIME)
    wrapper = WRAPPER.format(profile=profile, bootstrap=BOOTSTRAP, tsv=TSV_NAME)
    write_bytes_atomic(wrapper.encode("utf-8"), folder.claim(result.wrapper.name))
    bar = tqdm(total=total, desc="export vlmeval", unit="item", disable=not progress)
    try:
        with atomic_writer(folder.claim(TSV_NAME)) as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            writer.writerow(TSV_COLUMNS)
            seen: set[str] = set()
            for cell in cells:
                result.cells[cell.name] = _write_cell(cell, writer, seen, result, bar)
    finally:
        bar.close()
    report.count("items", result.items)
    report.info.update({"shards": str(layout.root), "tsv": str(result.tsv), "cells": result.cells})
    report.info["split_manifest"] = manifest_summary(layout)
    if result.has_mimic:
        report.info["licence_note"] = MIMIC_NOTE
    report.write(folder.claim_report("_reports/vlmeval"))
