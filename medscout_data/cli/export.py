"""`medscout-data export` (training JSONL + PNG files) and `medscout-data preview` (HTML + contact sheets)."""

from __future__ import annotations

from pathlib import Path

import click

from medscout_data import MODALITIES, TASKS
from medscout_data.cli.options import (
    force_option,
    modalities_filter,
    quiet_option,
    shards_option,
    tasks_filter,
)
from medscout_data.cli.score import mode_option, profile_option

FORMATS = ("swift", "jsonl", "trl", "verl", "easyr1", "lmms-eval", "vlmeval")
TRAINER_FORMATS = ("trl", "verl", "easyr1")
MODES = ("direct", "cot")
PROFILES = ("official", "paper")
EXPORT_SPLITS = ("train", "bench")
PREVIEW_SPLITS = ("bench", "train", "pool")

out_dir = click.option("--out", "out", type=click.Path(file_okay=False), required=True, help="Output folder.")


@click.command(
    short_help="Files for ms-swift, TRL, verl, EasyR1 (GRPO data + rewards), lmms-eval, VLMEvalKit, or JSONL."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="swift",
    show_default=True,
    help="swift: ms-swift GRPO rows + plugin.py; jsonl: id, question, answer, images; "
    "trl / verl / easyr1: Parquet in the trainer's layout + its reward file; "
    "lmms-eval: a task folder; vlmeval: a VLMEvalKit TSV + dataset class.",
)
@click.option(
    "--split",
    type=click.Choice(EXPORT_SPLITS),
    default=None,
    help="Which side of the split (required, except for lmms-eval and vlmeval: the bench).",
)
@shards_option
@click.option(
    "--bench",
    default=None,
    help="lmms-eval only: the bench to read (shards root, staged repo folder or Hub ORG/NAME). "
    "Default: SHARDS.",
)
@click.option(
    "--mode",
    type=click.Choice(MODES),
    default="direct",
    show_default=True,
    help="Which question: Direct, or CoT (<think>...</think><answer>...</answer>). "
    "lmms-eval and vlmeval carry both.",
)
@click.option(
    "--profile",
    type=click.Choice(PROFILES),
    default="official",
    show_default=True,
    help="Reward profile written into the plugin / task / wrapper settings.",
)
@out_dir
@click.option(
    "--absolute-paths",
    is_flag=True,
    help="Absolute image paths in the JSONL (default: relative to the JSONL's folder, so it can move).",
)
@modalities_filter
@tasks_filter
@force_option
@quiet_option
def export(
    fmt: str,
    split: str | None,
    shards: str,
    bench: str | None,
    mode: str,
    profile: str,
    out: str,
    absolute_paths: bool,
    modalities: tuple[str, ...],
    tasks: tuple[str, ...],
    force: bool,
    quiet: bool,
) -> None:
    """Write SHARDS/<split> for the tools researchers use, in OUT. Images are the
    shards' PNG bytes (no re-encode). The split is checked against
    SHARDS/manifest.json first: damaged or changed shards are refused.

    \b
    --format swift      OUT/<split>-<mode>-swift.jsonl, OUT/images/<modality>/<task>/<id>-<k>.png,
                        OUT/system-<mode>.txt, OUT/plugin.py (reward ORMs for --external_plugins)
    --format jsonl      OUT/<split>-<mode>-generic.jsonl + OUT/images/
    --format trl        OUT/data/<train|test>-*.parquet (datasets.load_dataset(OUT)), OUT/rewards.py
                        (REWARD_FUNCS for GRPOTrainer), OUT/train_grpo.py (the paper's settings)
    --format verl       OUT/<train|test>.parquet in verl's layout, OUT/reward.py (compute_score)
    --format easyr1     OUT/<train|test>.parquet with problem/answer/images, OUT/reward.py (batch)
    --format lmms-eval  OUT/med_scout_bench*.yaml, OUT/utils.py: lmms-eval --include_path OUT
                        --tasks med_scout_bench (the bench stays where it is)
    --format vlmeval    OUT/MedScoutBench.tsv, OUT/medscout_vlmeval.py

    Image paths in the JSONL are relative to OUT unless --absolute-paths:
    ms-swift opens relative paths under $ROOT_IMAGE_DIR, so the printed
    command sets ROOT_IMAGE_DIR=OUT. The plugin, task and wrapper carry a copy
    of the scorer (OUT/_medscout/): the training or evaluation box needs no
    medscout-data. The JSONL or TSV is renamed into place only when complete.

    OUT/.medscout-written.json records what each export wrote there. Doing an
    export again replaces its own earlier files whole (a --modality ct rerun
    leaves no X-ray image behind); a file it did not write is never replaced
    (the run stops naming it, or --force deletes it) and no link is followed.
    """
    from medscout_data.errors import StageError
    from medscout_data.layout import Layout

    if fmt in ("lmms-eval", "vlmeval"):
        if split == "train":
            raise click.UsageError(f"--format {fmt} exports the bench; drop --split train")
    elif split is None:
        raise click.UsageError(f"--format {fmt} needs --split train or --split bench")
    if absolute_paths and fmt not in ("swift", "jsonl"):
        raise click.UsageError(f"--absolute-paths is for --format swift/jsonl; {fmt} keeps PNGs in Parquet")
    if bench is not None and fmt != "lmms-eval":
        raise click.UsageError("--bench is for --format lmms-eval; other formats read --shards")
    if fmt == "lmms-eval" and (modalities or tasks):
        raise click.UsageError("--format lmms-eval exports the whole bench; drop --modality/--task")
    try:
        if fmt == "lmms-eval":
            _lmms_eval(bench or shards, Path(out), profile, force)
        elif fmt == "vlmeval":
            _vlmeval(Layout.at(shards), Path(out), modalities, tasks, profile, quiet, force)
        elif fmt in TRAINER_FORMATS:
            settings = dict(format=fmt, split=split, mode=mode, profile=profile, force=force)
            _trainer(Layout.at(shards), Path(out), settings, modalities, tasks, quiet)
        else:
            settings = dict(
                split=split,
                format=fmt,
                mode=mode,
                profile=profile,
                absolute_paths=absolute_paths,
                force=force,
            )
            _jsonl(Layout.at(shards), Path(out), settings, modalities, tasks, quiet)
    except StageError as exc:
        raise click.ClickException(str(exc)) from exc


def _jsonl(layout, out: Path, settings: dict, modalities, tasks, quiet: bool) -> None:
    from medscout_data.integrations.export import ExportOptions, export_split

    options = ExportOptions(
        **settings, modalities=modalities or MODALITIES, tasks=tasks or TASKS, progress=not quiet
    )
    result = export_split(layout, out, options)
    click.echo(f"export: {result.items} items, {result.images} images -> {result.jsonl}")
    _cell_counts(result.cells)
    if result.system is not None:
        click.echo(f"system prompt: in every row's messages (also in {result.system}; no --system needed)")
    if result.plugin is not None:
        click.echo(f"reward plugin: {result.plugin}")
        _train_with(result.command)
    _closing(result.report, out, result.has_mimic)


def _trainer(layout, out: Path, settings: dict, modalities, tasks, quiet: bool) -> None:
    from medscout_data.integrations.trainers import TrainerExportOptions, export_trainer

    options = TrainerExportOptions(
        **settings, modalities=modalities or MODALITIES, tasks=tasks or TASKS, progress=not quiet
    )
    result = export_trainer(layout, out, options)
    click.echo(f"export: {result.items} items, {result.images} images -> {out} ({len(result.data)} file(s))")
    _cell_counts(result.cells)
    click.echo(f"reward: {result.reward}")
    _train_with(result.command)
    _closing(result.report, out, result.has_mimic)


def _lmms_eval(bench: str, out: Path, profile: str, force: bool) -> None:
    from medscout_data.integrations.lmms_export import GROUP, export_lmms_eval

    result = export_lmms_eval(bench, out, profile, force)
    data = result.bench
    where = data.repo_id or f"{len(data.files)} shard(s), {len(data.cells)} cell(s)"
    click.echo(f"lmms-eval task folder: {out} ({where})")
    click.echo(f"run: lmms-eval --include_path {out} --tasks {GROUP} --model ... --log_samples")


def _vlmeval(layout, out: Path, modalities, tasks, profile: str, quiet: bool, force: bool) -> None:
    from medscout_data.integrations.vlmeval_export import export_vlmeval

    result = export_vlmeval(layout, out, modalities or MODALITIES, tasks or TASKS, profile, not quiet, force)
    click.echo(f"export: {result.items} items -> {result.tsv}")
    _cell_counts(result.cells)
    click.echo(f"run: python {result.wrapper} --model NAME [--mode cot]")
    _closing(result.report, out, result.has_mimic)


def _cell_counts(cells: dict[str, int]) -> None:
    for cell, count in cells.items():
        click.echo(f"  {cell:<14} {count:>7}")


def _train_with(command: str) -> None:
    """The printed training command, with the note on where the authors' script differs."""
    from medscout_data.integrations.grpo_settings import RELEASED_SCRIPT_NOTE

    click.echo(f"train with (MODEL = yours; the paper's GRPO settings):\n  {command}")
    click.echo(f"note: {RELEASED_SCRIPT_NOTE}")


def _closing(report, out: Path, has_mimic: bool) -> None:
    """What was skipped, and the licence note when MIMIC-CXR-derived images were written."""
    from medscout_data.integrations.export import MIMIC_NOTE

    if report.skips:
        click.echo(f"skipped {len(report.skips)} item(s): {report.skipped_by_reason()} (see {out}/_reports/)")
    if has_mimic:
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
@click.option(
    "--predictions",
    multiple=True,
    help="A predictions file (what `evaluate` writes, or any file `score` reads), as PATH or LABEL=PATH; "
    "repeatable. Shows each cell's --per-cell worst items with every file's answer drawn beside the truth.",
)
@mode_option
@profile_option
@force_option
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
    predictions: tuple[str, ...],
    mode: str,
    profile: str,
    force: bool,
    quiet: bool,
) -> None:
    """Draw --per-cell items of every modality x task of SHARDS/<split> (or the
    build pool) with their truth: OUT/index.html (self-contained, images as
    data URIs) and OUT/sheets/<modality>-<task>.png contact sheets.

    With --predictions, OUT/index.html shows why a model fails instead: every
    item is scored (Dense Geometric Reward, --mode, --profile) and each cell's
    --per-cell worst items are drawn worst first, each file's answer over the
    truth (its boxes beside the true ones, its tiers, the jigsaw reassembled in
    its order, the anomaly cell it chose) with its rewards; a selector shows one
    cell at a time.

    A rerun replaces the earlier preview whole; files preview did not write are
    never replaced (--force deletes them, naming each).
    """
    from medscout_data.errors import StageError
    from medscout_data.integrations.preview import PreviewOptions, write_preview
    from medscout_data.layout import Layout

    if predictions:
        from medscout_data.cli.score import _labelled
        from medscout_data.integrations.failures import FailureOptions

        failures = FailureOptions(
            tuple(_labelled(predictions, "--predictions")), split, per_cell, size, mode, profile,
            modalities or MODALITIES, tasks or TASKS, progress=not quiet, force=force,
        )  # fmt: skip
        return _preview_failures(shards, out, failures)

    options = PreviewOptions(
        split=split,
        per_cell=per_cell,
        seed=seed,
        size=size,
        modalities=modalities or MODALITIES,
        tasks=tasks or TASKS,
        progress=not quiet,
        force=force,
    )
    try:
        result = write_preview(Layout.at(shards), Path(out), options)
    except StageError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"preview: {result.shown} items -> {result.page}; {len(result.sheets)} contact sheets")
    if result.report.skips:
        reasons = result.report.skipped_by_reason()
        click.echo(f"skipped {len(result.report.skips)} item(s): {reasons} (listed on the page)")


def _preview_failures(shards: str, out: str, options) -> None:
    """`preview --predictions`: each cell's worst items with every file's answer (failures.py)."""
    from medscout_data.errors import StageError
    from medscout_data.integrations.failures import write_failures
    from medscout_data.layout import Layout

    try:
        result = write_failures(Layout.at(shards), Path(out), options)
    except StageError as exc:
        raise click.ClickException(str(exc)) from exc
    labels = ", ".join(run.label for run in result.runs)
    click.echo(f"preview: the {result.shown} worst items of {labels} -> {result.page}")
    if result.report.skips:
        reasons = result.report.skipped_by_reason()
        click.echo(f"skipped {len(result.report.skips)} item(s) or line(s): {reasons} (listed on the page)")
