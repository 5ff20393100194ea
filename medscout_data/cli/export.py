"""`medscout-data export` (training JSONL + PNG files) and `medscout-data preview` (HTML + contact sheets)."""

from __future__ import annotations

from pathlib import Path

import click

from medscout_data import MODALITIES, TASKS
from medscout_data.cli.options import modalities_filter, quiet_option, shards_option, tasks_filter

FORMATS = ("swift", "jsonl")
MODES = ("direct", "cot")
EXPORT_SPLITS = ("train", "bench")
PREVIEW_SPLITS = ("bench", "train", "pool")

out_dir = click.option("--out", "out", type=click.Path(file_okay=False), required=True, help="Output folder.")


@click.command(short_help="ms-swift GRPO or generic JSONL (+ PNG files) for training.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="swift",
    show_default=True,
    help="swift: ms-swift GRPO rows (messages, images, solution); jsonl: id, question, answer, images.",
)
@click.option("--split", type=click.Choice(EXPORT_SPLITS), required=True, help="Which side of the split.")
@shards_option
@click.option(
    "--mode",
    type=click.Choice(MODES),
    default="direct",
    show_default=True,
    help="Which question: Direct, or CoT (<think>...</think><answer>...</answer>).",
)
@out_dir
@click.option(
    "--absolute-paths",
    is_flag=True,
    help="Absolute image paths in the JSONL (default: relative to the JSONL's folder, so it can move).",
)
@modalities_filter
@tasks_filter
@quiet_option
def export(
    fmt: str,
    split: str,
    shards: str,
    mode: str,
    out: str,
    absolute_paths: bool,
    modalities: tuple[str, ...],
    tasks: tuple[str, ...],
    quiet: bool,
) -> None:
    """Write the items of SHARDS/<split> as JSONL in OUT, their images as the
    shards' PNG bytes (no re-encode) under OUT/images/<modality>/<task>/.

    \b
    OUT/<split>-<mode>-swift.jsonl     (--format swift) + OUT/system-<mode>.txt
    OUT/<split>-<mode>-generic.jsonl   (--format jsonl)
    OUT/_reports/<split>-<mode>-<swift|generic>/  report.json, errors.parquet

    Image paths are relative to OUT unless --absolute-paths: ms-swift opens
    relative paths from the working directory or under $ROOT_IMAGE_DIR, so
    train from OUT or set ROOT_IMAGE_DIR=OUT. The JSONL is renamed into place
    only when every image is written.
    """
    from medscout_data.errors import StageError
    from medscout_data.integrations.export import ExportOptions, export_split
    from medscout_data.layout import Layout

    options = ExportOptions(
        split=split,
        format=fmt,
        mode=mode,
        absolute_paths=absolute_paths,
        modalities=modalities or MODALITIES,
        tasks=tasks or TASKS,
        progress=not quiet,
    )
    try:
        result = export_split(Layout.at(shards), Path(out), options)
    except StageError as exc:
        raise click.ClickException(str(exc)) from exc
    report = result.report
    click.echo(f"export: {result.items} items, {result.images} images -> {result.jsonl}")
    for cell, count in result.cells.items():
        click.echo(f"  {cell:<14} {count:>7}")
    if result.system is not None:
        click.echo(f"system prompt: {result.system} (pass it to ms-swift as --system)")
    if report.skips:
        click.echo(f"skipped {len(report.skips)} item(s): {report.skipped_by_reason()} (see {out}/_reports/)")
    if result.has_mimic:
        from medscout_data.integrations.export import MIMIC_NOTE

        click.echo(f"note: {MIMIC_NOTE}", err=True)


@click.command(short_help="HTML page and contact sheets of items, truth drawn on.")
@shards_option
@click.option("--split", type=click.Choice(PREVIEW_SPLITS), default="bench", show_default=True)
@click.option(
    "--per-cell", type=click.IntRange(min=1), default=4, show_default=True, help="Items per modality x task."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the choice of items.")
@click.option(
    "--size",
    type=click.IntRange(min=64),
    default=384,
    show_default=True,
    help="Longest side of the drawn images, px.",
)
@out_dir
@modalities_filter
@tasks_filter
@quiet_option
def preview(
    shards: str,
    split: str,
    per_cell: int,
    seed: int,
    size: int,
    out: str,
    modalities: tuple[str, ...],
    tasks: tuple[str, ...],
    quiet: bool,
) -> None:
    """Draw --per-cell items of every modality x task of SHARDS/<split> (or the
    build pool) with their truth: OUT/index.html (self-contained, images as
    data URIs) and OUT/sheets/<modality>-<task>.png contact sheets.
    """
    from medscout_data.errors import StageError
    from medscout_data.integrations.preview import PreviewOptions, write_preview
    from medscout_data.layout import Layout

    options = PreviewOptions(
        split=split,
        per_cell=per_cell,
        seed=seed,
        size=size,
        modalities=modalities or MODALITIES,
        tasks=tasks or TASKS,
        progress=not quiet,
    )
    try:
        result = write_preview(Layout.at(shards), Path(out), options)
    except StageError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"preview: {result.shown} items -> {result.page}; {len(result.sheets)} contact sheets")
    if result.report.skips:
        reasons = result.report.skipped_by_reason()
        click.echo(f"skipped {len(result.report.skips)} item(s): {reasons} (listed on the page)")
