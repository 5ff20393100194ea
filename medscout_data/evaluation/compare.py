"""Several prediction files side by side: one column per model (and per baseline), as a table
and as a per-cell bar chart (matplotlib, Agg: no display needed)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medscout_data import MODALITIES, TASKS
from medscout_data.evaluation.score import COMPONENTS, ScoreResult, cell_keys
from medscout_data.shards import write_bytes_atomic

NAMES = {"ct": "CT", "mri": "MRI", "xray": "X-ray"}
AVG = "Med-Scout-Bench Avg"


@dataclass(frozen=True)
class Column:
    """One scored predictions file, under its label."""

    label: str
    result: ScoreResult
    baseline: bool = False


def row_keys(columns: Sequence[Column]) -> list[str]:
    """Table rows: every modality x task (and scale variant) any column has, in pipeline order."""
    present = {key for column in columns for key in column.result.cells}
    ordered = [
        key
        for modality in MODALITIES
        for task in TASKS
        for key in cell_keys(modality, task, "tier") + cell_keys(modality, task, "box")[1:]
    ]
    return [key for key in dict.fromkeys(ordered) if key in present]


def figure(column: Column, key: str, metric: str) -> float | None:
    """The column's figure (x100) for a row, None when it has no such cell."""
    if key == AVG:
        return 100 * float(column.result.overall.means()[metric])
    cell = column.result.cells.get(key)
    return None if cell is None else 100 * float(cell.means()[metric])


def format_columns(columns: Sequence[Column], metric: str = "accuracy") -> str:
    """A plain-text table, one column per file (baselines after a `|`), figures x100."""
    if metric not in COMPONENTS:
        raise ValueError(f"unknown metric {metric!r}; use one of {', '.join(COMPONENTS)}")
    ordered = [c for c in columns if not c.baseline] + [c for c in columns if c.baseline]
    widths = [max(8, len(c.label) + 2) for c in ordered]
    first_baseline = next((i for i, c in enumerate(ordered) if c.baseline), None)

    def line(name: str, cells: Sequence[str]) -> str:
        parts = [f"{text:>{width}}" for text, width in zip(cells, widths, strict=True)]
        if first_baseline:
            parts.insert(first_baseline, " |")
        return f"{name:<24}" + "".join(parts)

    profile, mode = ordered[0].result.profile, ordered[0].result.mode
    lines = [f"{metric} x100, profile {profile}, mode {mode}", line("cell", [c.label for c in ordered])]
    for key in [*row_keys(ordered), AVG]:
        values = [figure(c, key, metric) for c in ordered]
        lines.append(line(key, ["-" if v is None else f"{v:.1f}" for v in values]))
    return "\n".join(lines)


def plot_columns(columns: Sequence[Column], path: Path, metric: str = "accuracy", title: str = "") -> Path:
    """A grouped bar chart per modality x task cell and the Avg, one bar per column, as PNG."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise RuntimeError("--plot needs matplotlib: pip install matplotlib") from exc
    keys = [key for key in row_keys(columns) if key.count("/") == 1] + [AVG]
    labels = [_cell_label(key) for key in keys]
    fig = Figure(figsize=(max(6.0, 0.8 * len(keys) + 1.5), 3.8), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.add_subplot()
    width = 0.8 / max(1, len(columns))
    for index, column in enumerate(columns):
        values = [figure(column, key, metric) or 0.0 for key in keys]
        offsets = [k + (index - (len(columns) - 1) / 2) * width for k in range(len(keys))]
        axes.bar(offsets, values, width, label=column.label, hatch="//" if column.baseline else None)
    axes.set_xticks(range(len(keys)), labels, rotation=35, ha="right", fontsize=8)
    axes.set_ylabel(f"{metric} x100")
    if metric == "accuracy":  # room above 100 for the legend
        axes.set_ylim(0, 118)
        axes.set_yticks(range(0, 101, 20))
    axes.set_title(title or f"Med-Scout-Bench, {metric} per cell", fontsize=10)
    axes.legend(fontsize=8, ncols=min(6, len(columns)), loc="upper center", frameon=False)
    axes.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    write_bytes_atomic(buffer.getvalue(), path)  # renamed in, never written through a link
    return path


def _cell_label(key: str) -> str:
    if key == AVG:
        return "Avg"
    modality, task = key.split("/")[:2]
    return f"{NAMES.get(modality, modality)} {task}"
