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
@click.option(
    "--rank",
    type=click.IntRange(min=0),
    default=None,
    help="This process's rank in a job array (default: $SLURM_ARRAY_TASK_ID - $SLURM_ARRAY_TASK_MIN).",
)
@click.option(
    "--world-size",
    type=click.IntRange(min=1),
    default=None,
    help="Ranks in the job array (default: $SLURM_ARRAY_TASK_COUNT). Each makes its share of the shards.",
)
@click.option(
    "--merge",
    is_flag=True,
    help="After all ranks: check every rank finished, replace rejected items, write the pool record.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Make nothing: print per cell what the recipe asks, what the sources can give, disk and time.",
)
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
    rank: int | None,
    world_size: int | None,
    merge: bool,
    dry_run: bool,
    quiet: bool,
) -> None:
    """Turn the catalogue of a modality into items exactly as DESIGN.md defines
    them and write them to OUT/pool/<modality>/<task>-NNNNN.parquet.

    Runs ingest (and, for X-ray anomaly, the reference index) first when their
    outputs are missing. With no --root it builds the embedded sample. A rerun
    reuses finished shards, so a killed build resumes where it stopped. Items
    that cannot be made are replaced from other images of the same side until
    every cell is full; a cell the sources cannot fill is reported per side.

    \b
    On a cluster (examples/slurm/build.sbatch): ingest first, then
      medscout-data build --modality ct ... --rank R --world-size N   # each array task
      medscout-data build --modality ct ... --merge                   # once, after all ranks
    """
    from medscout_data.errors import StageError
    from medscout_data.layout import Layout
    from medscout_data.ranks import Rank
    from medscout_data.recipe import RecipeError, load_recipe
    from medscout_data.stages.build import BuildOptions, build_modality

    if root and len(modalities) > 1:
        raise click.UsageError("--root names one modality's source; build one --modality at a time with it")
    try:
        config = load_recipe(recipe).with_seed(seed)
        if merge and (rank is not None or world_size is not None):
            raise click.UsageError("--merge runs once, after the ranks: give it no --rank / --world-size")
        # the merge is one process even when submitted from inside an array task (its SLURM_ARRAY_* ignored)
        ranks = Rank() if merge else Rank.resolve(rank, world_size)
    except (RecipeError, StageError) as exc:
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
            command=_command(
                modality,
                ranks.single,
                root=root,
                recipe=recipe,
                out=out,
                workers=workers,
                limit=limit,
                task=tasks,
                seed=seed,
                model=model,
            ),
            rank=ranks,
            merge=merge,
        )
        try:
            if dry_run:
                from medscout_data.stages.build.estimate import estimate_modality, format_estimate

                click.echo(format_estimate(estimate_modality(layout, config, options)))
                continue
            report = build_modality(layout, config, options)
        except StageError as exc:
            click.echo(f"build {modality}: {exc}", err=True)
            failed = True
            continue
        if not ranks.single:
            click.echo(f"{report.stage}: {report.info['items']} items in {report.seconds:.1f} s (rank done)")
            continue
        click.echo(_summary(report.as_dict(), layout.pool_dir(modality), layout.build_report_dir(modality)))
        failed |= bool(report.info.get("shortfall"))
        # a bench side that cannot be balanced fails `validate` later: say so now, as for a short cell
        failed |= any("bench" in sides for sides in report.info.get("balance_short", {}).values())
    sys.exit(1 if failed else 0)


def _command(modality: str, single: bool, **options: object) -> str:
    """The command that completes this build (recorded in pool.json): this one, for one modality."""
    args = ["medscout-data", "build", "--modality", modality]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        values = value if isinstance(value, tuple) else (value,)
        args.extend(part for v in values if v is not None for part in (flag, str(v)))
    if not single:
        args.append("--merge")
    return shlex.join(args)


def _summary(report: dict, folder: Path, reports: Path) -> str:
    counts = report["counts"]
    items = ", ".join(f"{k.removeprefix('items_')} {v}" for k, v in counts.items() if k.startswith("items_"))
    lines = [
        f"{report['stage']}: {report['items']} items ({items}) in {report['seconds']:.1f} s "
        f"(making items: {report['make_seconds']:.1f} s, {report['items_per_second']} items/s) -> {folder}",
        f"  shards written {counts.get('shards_written', 0)}, reused {counts.get('shards_reused', 0)}; "
        f"items made from a fallback image {counts.get('fallback_images', 0)}",
    ]
    if counts.get("replaced_items"):
        lines.append(f"  items replaced from other images of their side: {counts['replaced_items']}")
    shared = {t: n for t, n in report.get("items_sharing_source_image", {}).items() if n}
    if shared:
        lines.append(f"  items sharing a source image with another item of their cell: {shared}")
    for task, sides in report.get("shortfall", {}).items():
        for side, short in sides.items():
            reasons = "; ".join(f"{r} ({n})" for r, n in list(short["reasons"].items())[:2])
            lines.append(
                f"  SHORT {task} {side} side: {short['made']} of {short['planned']} items "
                f"({reasons}); to fill it: {short['advice']}"
            )
    for task, sides in report.get("balance_short", {}).items():
        for side, shorts in sides.items():
            for short in shorts:
                reasons = "; ".join(f"{r} ({n})" for r, n in list(short["reasons"].items())[:2])
                lines.append(
                    f"  UNBALANCED {task} {side} side: {short['choice']} made {short['made']} times, an even "
                    f"share needs {short['needed']} ({reasons or 'its attempts went to other choices'}); "
                    f"to fill it: {short['advice']}"
                )
    rejected = {t: r for t, r in report.get("rejected_attempts", {}).items() if r}
    if rejected:
        lines.append(f"  attempts rejected (and replaced), by rule: {rejected}")
    if report["skipped_by_reason"]:
        lines.append(f"  items not made: {report['skipped_by_reason']} (see {reports}/errors.parquet)")
    if report.get("duplicate_images"):
        lines.append(
            f"  duplicate images dropped at ingest (one kept of each): {report['duplicate_images']} "
            "(both ids in the ingest report's errors.parquet)"
        )
    if report.get("ingest_skipped_by_reason"):
        lines.append(f"  sources skipped at ingest: {report['ingest_skipped_by_reason']}")
    return "\n".join(lines)
