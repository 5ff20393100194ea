"""`medscout-data build`: catalogue images -> proxy VQA items in Parquet shards."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from medscout_data import MODALITIES, TASKS
from medscout_data.cli.options import (
    out_option,
    quiet_option,
    recipe_option,
    root_option,
    workers_option,
)


@click.command(short_help="Make scale / jigsaw / anomaly items into pool shards.")
@click.option(
    "--modality",
    "modalities",
    type=click.Choice(MODALITIES),
    multiple=True,
    required=True,
    help="Modality to build (repeatable: --modality ct --modality mri).",
)
@root_option
@recipe_option
@out_option
@workers_option
@click.option(
    "--limit", type=click.IntRange(min=2), default=None, help="At most N items per task (quick runs)."
)
@click.option(
    "--task",
    "tasks",
    type=click.Choice(TASKS),
    multiple=True,
    help="Only these tasks (repeatable). Default: all.",
)
@click.option(
    "--seed", type=int, default=None, help="Override the recipe's seed (must match an existing plan)."
)
@click.option("--model", default=None, help="X-ray reference embedder spec (default: the recipe's).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@quiet_option
def build(
    modalities: tuple[str, ...],
    root: str | None,
    recipe: str,
    out: str,
    workers: int,
    limit: int | None,
    tasks: tuple[str, ...],
    seed: int | None,
    model: str | None,
    device: str,
    quiet: bool,
) -> None:
    """Turn the catalogue of a modality into items exactly as DESIGN.md defines
    them and write them to OUT/pool/<modality>/<task>-NNNNN.parquet.

    Runs ingest (and, for X-ray anomaly, the reference index) first when their
    outputs are missing. With no --root it builds the embedded sample. A rerun
    reuses finished shards, so a killed build resumes where it stopped.
    """
    from medscout_data.errors import StageError
    from medscout_data.layout import Layout
    from medscout_data.recipe import RecipeError, load_recipe
    from medscout_data.stages.build import BuildOptions, build_modality

    if root and len(modalities) > 1:
        raise click.UsageError("--root names one modality's source; build one --modality at a time with it")
    try:
        config = load_recipe(recipe).with_seed(seed)
    except RecipeError as exc:
        raise click.ClickException(str(exc)) from exc
    layout = Layout.at(out)
    failed = False
    for modality in modalities:
        options = BuildOptions(
            modality=modality,
            root=Path(root) if root else None,
            tasks=tasks or TASKS,
            workers=workers,
            limit=limit,
            model=model,
            device=device,
            progress=not quiet,
            command=shlex.join(["medscout-data", *sys.argv[1:]]),
        )
        try:
            report = build_modality(layout, config, options)
        except StageError as exc:
            click.echo(f"build {modality}: {exc}", err=True)
            failed = True
            continue
        click.echo(_summary(report.as_dict(), layout.pool_dir(modality), layout.build_report_dir(modality)))
    sys.exit(1 if failed else 0)


def _summary(report: dict, folder: Path, reports: Path) -> str:
    counts = report["counts"]
    items = ", ".join(f"{k.removeprefix('items_')} {v}" for k, v in counts.items() if k.startswith("items_"))
    lines = [
        f"{report['stage']}: {report['items']} items ({items}) in {report['seconds']:.1f} s "
        f"(making items: {report['make_seconds']:.1f} s, {report['items_per_second']} items/s) -> {folder}",
        f"  shards written {counts.get('shards_written', 0)}, reused {counts.get('shards_reused', 0)}; "
        f"items made from a fallback image {counts.get('fallback_images', 0)}",
    ]
    if report["skipped_by_reason"]:
        lines.append(f"  items rejected: {report['skipped_by_reason']} (see {reports}/errors.parquet)")
    if report.get("ingest_skipped_by_reason"):
        lines.append(f"  sources skipped at ingest: {report['ingest_skipped_by_reason']}")
    return "\n".join(lines)
