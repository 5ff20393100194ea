"""`preview --predictions`: each item drawn with the model's answer beside the truth, worst first.

For a researcher asking why a model fails. Every item of the split (or of the
chosen modalities and tasks) is scored from one or more prediction files (what
`evaluate` writes, or anything `score` reads) with the Dense Geometric Reward;
per modality x task cell the `per_cell` items with the lowest mean total over
the files are drawn, worst first:

- the item's truth, as `preview` draws it (preview.py);
- per prediction file, its answer on the same pixels:
  - scale box: its boxes (thin, with `k'`) on the full image over the true ones
    (thick, with `k`), the same colour per crop;
  - scale tier: the true boxes labelled with the true tier and the model's;
  - jigsaw: the shuffled image reassembled in the model's order (anatomy whole
    again only when the order is right), or why it cannot be;
  - anomaly: the grid with the model's cell in red and the true one in green;
- its reward components (accuracy, format, CoT, total) and its raw response.

One self-contained page (`OUT/index.html`, images as data URIs) with a cell
selector that shows one cell at a time; items that cannot be drawn are listed.
"""

from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw
from tqdm import tqdm

from medscout_data import MODALITIES, TASKS
from medscout_data.evaluation.predictions import read_predictions
from medscout_data.evaluation.score import Reward, Truth, extract_answer, parse_boxes, parse_ints, reward
from medscout_data.integrations.export import MIMIC_NOTE, BadItem, Cell, count_rows, split_cells
from medscout_data.integrations.preview import (
    HIGHLIGHT,
    PALETTE,
    STYLE,
    Figure,
    ItemView,
    data_uri,
    decode,
    draw_grid,
    draw_label,
    fit,
    item_view,
    line_width,
    read_rows,
    text_size,
)
from medscout_data.layout import Layout
from medscout_data.owned import OwnedFolder
from medscout_data.report import RunReport
from medscout_data.shards import write_bytes_atomic
from medscout_data.tasks.geometry import fit_to_grid, reassemble

log = logging.getLogger(__name__)

TRUTH_COLOUR = (40, 200, 70)
SCORE_COLUMNS = ["id", "task", "variant", "target"]


@dataclass(frozen=True)
class FailureOptions:
    """Which predictions, which items, how many per cell and how big."""

    predictions: tuple[tuple[str, Path], ...]  # (label or "", file)
    split: str = "bench"
    per_cell: int = 4
    size: int = 384
    mode: str = "direct"
    profile: str = "official"
    modalities: tuple[str, ...] = MODALITIES
    tasks: tuple[str, ...] = TASKS
    progress: bool = True
    force: bool = False  # delete files in the way that medscout-data did not write (owned.py)


@dataclass(frozen=True)
class Run:
    """One prediction file: its label and responses by item id."""

    label: str
    path: Path
    responses: dict[str, str]


@dataclass
class Scored:
    """One item's place in its cell and each run's reward (None: no answer)."""

    id: str
    number: int  # row number over the cell's shards
    rewards: list[Reward | None]

    @property
    def mean_total(self) -> float:
        return sum(r.total if r else 0.0 for r in self.rewards) / max(len(self.rewards), 1)


@dataclass
class FailureCell:
    """A cell's worst items, drawn."""

    cell: Cell
    total: int
    items: list[tuple[ItemView, Scored, list[list[Figure]]]] = field(default_factory=list)


@dataclass
class FailureResult:
    page: Path
    shown: int
    runs: list[Run]
    report: RunReport


# ---------------------------------------------------------------- the model's answer, drawn (pure)


def _boxes(image: Image.Image, truth: Sequence[Sequence[float]], model: Sequence[Sequence[float]], size: int):
    """The full image with the true boxes (thick, `k`) and the model's (thin, `k'`), colour per crop."""
    canvas = fit(image, size).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    width, height = canvas.size
    for boxes, thick, mark in ((truth, line_width(size) + 1, ""), (model, 1, "'")):
        for k, box in enumerate(boxes):
            colour = PALETTE[k % len(PALETTE)]
            x0, y0 = box[0] * width, box[1] * height
            x1, y1 = max(x0, box[2] * width - 1), max(y0, box[3] * height - 1)
            draw.rectangle([x0, y0, x1, y1], outline=colour, width=thick)
            corner = (x0 + 1, y0 + 1) if not mark else (x1 - text_size(size) * 2, y1 - text_size(size) * 2)
            draw_label(canvas, corner, f"{k + 1}{mark}", colour, text_size(size))
    return canvas


def answer_figures(
    images: Sequence[Image.Image], row: dict[str, Any], response: str | None, label: str, size: int
) -> list[Figure]:
    """The run's answer drawn on the item's own pixels (see the module docstring)."""
    if response is None:
        return [Figure(f"{label}: no answer", fit(images[0], size // 2))]
    answer = extract_answer(response)
    target = json.loads(row["target"])
    task, variant = row["task"], row.get("variant") or ""
    if task == "scale" and variant == "box":
        model = [tuple(v / 1000 for v in box) for box in parse_boxes(answer)]
        title = f"{label}: {len(model)} box(es) (thin, k') over the truth (thick)"
        return [Figure(title, _boxes(images[0], target["boxes"], model, size))]
    if task == "scale":
        said = [int(v) for v in _labels(answer)]
        canvas = _boxes(images[0], target["boxes"], [], size)
        for k, (box, level) in enumerate(zip(target["boxes"], target["levels"], strict=True)):
            guess = f"L{said[k]}" if k < len(said) else "-"
            xy = (box[0] * canvas.width + 1, box[1] * canvas.height + text_size(size) * 2)
            colour = TRUTH_COLOUR if k < len(said) and said[k] == level else HIGHLIGHT
            draw_label(canvas, xy, f"true L{level}, said {guess}", colour, text_size(size))
        return [Figure(f"{label}: tiers {answer!r}", canvas)]
    grid = int(target["grid"])
    if task == "jigsaw":
        shuffled = fit_to_grid(np.asarray(images[0]), grid)
        order = parse_ints(answer)
        if sorted(order) != list(range(grid * grid)):
            return [
                Figure(f"{label}: {answer!r} is not an order of {grid * grid} tiles", fit(images[0], size))
            ]
        rebuilt = Image.fromarray(reassemble(shuffled, tuple(order), grid))
        tiles = [str(k) for k in range(grid * grid)]
        return [Figure(f"{label}: reassembled in its order {order}", draw_grid(rebuilt, grid, tiles, size))]
    cell, labels = int(target["cell"]), [str(k) for k in range(grid * grid)]
    values = parse_ints(answer)
    said = values[0] if values and 0 <= values[0] < grid * grid else None
    canvas = draw_grid(images[0], grid, labels, size, highlight=said)
    width, height = canvas.size
    row_, col = divmod(cell, grid)
    box = [
        col * width / grid,
        row_ * height / grid,
        (col + 1) * width / grid - 1,
        (row_ + 1) * height / grid - 1,
    ]
    ImageDraw.Draw(canvas).rectangle(box, outline=TRUTH_COLOUR, width=line_width(size))
    chose = f"cell {said}" if said is not None else f"no cell in {answer!r}"
    return [Figure(f"{label}: {chose} (red); truth {cell} (green)", canvas)]


def _labels(answer: str) -> list[str]:
    """The tier digits of every `Label 1|2`, in order (as the reward reads them)."""
    return re.findall(r"Label ([12])", answer)


# ---------------------------------------------------------------- scoring and choosing


def load_runs(predictions: Sequence[tuple[str, Path]], report: RunReport) -> list[Run]:
    """Each file's responses; its label is the one given, else the model it names, else its folder
    (`#2`, `#3` ... added when two files would share one)."""
    runs = []
    for given, path in predictions:
        file_report = RunReport("preview")
        responses = read_predictions(path, file_report)
        for skip in file_report.skips:
            report.skips.append(skip)
        models = file_report.info.get("models") or []
        label = given or (models[0] if len(models) == 1 else "") or path.parent.name or path.stem
        taken, base, n = {run.label for run in runs}, label, 1
        while label in taken:
            n += 1
            label = f"{base}#{n}"
        runs.append(Run(label, Path(path), responses))
    return runs


def score_cell(cell: Cell, runs: Sequence[Run], options: FailureOptions, report: RunReport) -> list[Scored]:
    """Every item of the cell with each run's reward, worst mean total first (then by id)."""
    scored, number = [], 0
    for path in cell.files:
        try:
            table = pq.read_table(path, columns=SCORE_COLUMNS)
        except (pa.ArrowException, OSError) as exc:
            report.skip(str(path), "unreadable-shard", f"{path}: not a readable Parquet shard ({exc})")
            number += count_rows(path, report)
            continue
        for row in table.to_pylist():
            try:
                truth = Truth.from_item(row)
            except (ValueError, KeyError, TypeError) as exc:
                report.skip(f"{cell.name}:{row['id']}", "bad-target", f"{row['id']}: unusable target ({exc})")
                number += 1
                continue
            rewards = [_reward(run.responses.get(row["id"]), truth, options) for run in runs]
            scored.append(Scored(row["id"], number, rewards))
            number += 1
    return sorted(scored, key=lambda s: (s.mean_total, s.id))


def _reward(response: str | None, truth: Truth, options: FailureOptions) -> Reward | None:
    return None if response is None else reward(response, truth, options.profile, options.mode)


def write_failures(layout: Layout, out: Path, options: FailureOptions) -> FailureResult:
    """Score every item, draw each cell's worst `per_cell` with every run's answer: `out/index.html`."""
    out = Path(out)
    report = RunReport(
        "preview", info={"split": options.split, "predictions": [str(p) for _, p in options.predictions]}
    )
    runs = load_runs(options.predictions, report)
    cells = split_cells(layout, options.split, options.modalities, options.tasks, report)
    # the same writer as `preview`: a rerun of either replaces the earlier page whole (owned.py)
    with OwnedFolder(out, "preview", options.force) as folder:
        page = folder.claim("index.html")  # refused before the scoring when a file of the user's is there
        views = []
        bar = tqdm(total=len(cells), desc="preview predictions", unit="cell", disable=not options.progress)
        for cell in cells:
            views.append(_cell(cell, runs, options, report))
            bar.update(1)
        bar.close()
        shown = sum(len(v.items) for v in views)
        report.count("items_shown", shown)
        write_bytes_atomic(render(views, runs, layout, options, report).encode("utf-8"), page)
        report.write(folder.claim_report("_report"))
    return FailureResult(page, shown, runs, report)


def _cell(cell: Cell, runs: Sequence[Run], options: FailureOptions, report: RunReport) -> FailureCell:
    scored = score_cell(cell, runs, options, report)
    worst = scored[: options.per_cell]
    by_number = {s.number: s for s in worst}
    sizes = [count_rows(path, report) for path in cell.files]
    rows = {}
    for row in read_rows(cell.files, sizes, sorted(by_number), report):
        rows[row["id"]] = row
    view = FailureCell(cell, len(scored))
    for item in worst:
        row = rows.get(item.id)
        if row is None:
            continue
        try:
            truth = item_view(row, options.size)
            images = [decode(image["bytes"], f"image {k}") for k, image in enumerate(row["images"])]
            answers = [
                answer_figures(images, row, run.responses.get(item.id), run.label, options.size)
                for run in runs
            ]
        except (BadItem, ValueError, KeyError, TypeError) as exc:
            where = f"{cell.name}:{item.id}"
            report.skip(where, getattr(exc, "reason", "bad-item"), f"{where}: {exc}")
            continue
        view.items.append((truth, item, answers))
    return view


# ---------------------------------------------------------------- the page


REWARD_STYLE = (
    "table.rewards { border-collapse: collapse; font-size: .85em; margin: .4em 0; }\n"
    "table.rewards td, table.rewards th { border: 1px solid #ddd; padding: .15em .5em; text-align: right; }"
)
FILTER = """<script>
function showCell(name) {
  for (const s of document.querySelectorAll('section.cell')) { s.hidden = name !== '' && s.id !== name; }
}
</script>"""


def render(
    views: Sequence[FailureCell],
    runs: Sequence[Run],
    layout: Layout,
    options: FailureOptions,
    report: RunReport,
) -> str:
    """The page: header, the runs, a cell selector, one section per cell, worst item first."""
    e = html.escape
    shown = sum(len(v.items) for v in views)
    runs_list = "".join(
        f"<li><b>{e(r.label)}</b>: <code>{e(str(r.path))}</code> ({len(r.responses)} answers)</li>"
        for r in runs
    )
    options_html = "".join(
        f'<option value="{_anchor(v.cell)}">{e(v.cell.name)} ({len(v.items)} of {v.total})</option>'
        for v in views
    )
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Med-Scout: why the model fails ({e(options.split)})</title><style>{STYLE}",
        REWARD_STYLE,
        f"</style>{FILTER}</head><body>",
        f"<h1>Answers drawn over the truth: {e(options.split)} of <code>{e(str(layout.root))}</code></h1>",
        f"<p>{shown} items shown: per cell the {options.per_cell} with the lowest mean total reward over the "
        f"prediction files (a missing answer counts 0), worst first; mode {e(options.mode)}, profile "
        f"{e(options.profile)}.</p>",
        f"<ul>{runs_list}</ul>",
        '<p><label>cell: <select onchange="showCell(this.value)"><option value="">all</option>'
        f"{options_html}</select></label></p>",
    ]
    if any(v.cell.modality == "xray" and v.items for v in views):
        parts.append(f'<p class="note">{e(MIMIC_NOTE)} This page embeds them.</p>')
    for view in views:
        parts.append(f'<section class="cell" id="{_anchor(view.cell)}"><h2>{e(view.cell.name)}</h2>')
        parts.extend(_item(truth, scored, answers, runs) for truth, scored, answers in view.items)
        parts.append("</section>")
    if report.skips:
        rows = "".join(f"<li>{e(s.message)}</li>" for s in report.skips)
        parts.append(
            f'<section><h2>Skipped ({len(report.skips)})</h2><ul class="skipped">{rows}</ul></section>'
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _anchor(cell: Cell) -> str:
    return f"{cell.modality}-{cell.task}"


def _figure(figure: Figure) -> str:
    e = html.escape
    return (
        f'<figure><img src="{data_uri(figure.image)}" width="{figure.image.width}" '
        f'height="{figure.image.height}" alt="{e(figure.title)}">'
        f"<figcaption>{e(figure.title)}</figcaption></figure>"
    )


def _item(truth: ItemView, scored: Scored, answers: list[list[Figure]], runs: Sequence[Run]) -> str:
    e = html.escape
    row = truth.row
    head = "<tr><th></th><th>accuracy</th><th>format</th><th>cot</th><th>total</th></tr>"
    lines = []
    for run, value in zip(runs, scored.rewards, strict=True):
        cells = (
            "".join(f"<td>{v:.3f}</td>" for v in (value.accuracy, value.format, value.cot, value.total))
            if value
            else '<td colspan="4">no answer</td>'
        )
        lines.append(f"<tr><th>{e(run.label)}</th>{cells}</tr>")
    responses = "".join(
        f"<details><summary>{e(run.label)}: response</summary>"
        f"<pre>{e(run.responses.get(scored.id) or '')}</pre></details>"
        for run in runs
    )
    figures = "".join(_figure(f) for f in truth.figures) + "".join(
        _figure(f) for group in answers for f in group
    )
    return (
        f'<article class="item" id="{e(scored.id)}">'
        f"<h3>{e(scored.id)} ({e(row.get('variant') or row['task'])}): "
        f"mean total {scored.mean_total:.3f}</h3>"
        f'<div class="figures">{figures}</div>'
        f'<table class="rewards">{head}{"".join(lines)}</table>'
        f"<p>truth: <code>{e(str(row.get('answer')))}</code></p>{responses}"
        f"<details><summary>question</summary><pre>{e(str(row.get('question')))}</pre></details>"
        "</article>"
    )
