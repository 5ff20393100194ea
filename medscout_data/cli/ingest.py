"""`medscout-data ingest`: decode a source once into the catalogue of usable 2-D images."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from medscout_data.cli.options import (
    modality_option,
    out_option,
    quiet_option,
    recipe_option,
    root_option,
    workers_option,
)

# Kept in step with medscout_data.sources.SOURCE_KINDS (a test checks), so --help needs no heavy import.
SOURCE_CHOICES = ("totalseg", "mimic-cxr-jpg", "mimic-cxr")
MIMIC_NOTE = (
    "note: MIMIC-CXR is PhysioNet credentialed data; its terms forbid public redistribution, "
    "so items built from it must not be pushed to a public repository."
)


@click.command(short_help="Decode sources once into a catalogue of usable 2-D images.")
@modality_option
@root_option
@click.option(
    "--source",
    type=click.Choice(SOURCE_CHOICES),
    default=None,
    help="Source layout. Omitted: detected from the tree under --root.",
)
@recipe_option
@out_option
@workers_option
@click.option(
    "--rank",
    type=click.IntRange(min=0),
    default=None,
    help="This process's rank in a job array (default: from SLURM_ARRAY_TASK_ID). Needs --world-size.",
)
@click.option(
    "--world-size",
    type=click.IntRange(min=1),
    default=None,
    help="Ranks in the job array (default: SLURM_ARRAY_TASK_COUNT). Each does every N-th unit.",
)
@click.option(
    "--merge",
    is_flag=True,
    help="Check that every rank finished (naming any that did not) and write the catalogue.",
)
@quiet_option
def ingest(
    modality: str,
    root: str | None,
    source: str | None,
    recipe: str,
    out: str,
    workers: int,
    rank: int | None,
    world_size: int | None,
    merge: bool,
    quiet: bool,
) -> None:
    """Decode every usable 2-D image of a source once: CT/MRI slices in
    radiological display (axial, or the acquisition plane when axial slices
    would be stretched; square pixels; cropped to the body; CT windows or MRI
    percentiles; mostly-anatomy slices only), or frontal chest X-rays
    (MIMIC-CXR JPG or DICOM). Writes OUT/catalogue/<modality>/catalogue.parquet,
    the compressed image cache OUT/cache/<modality>/, and errors.parquet +
    report.json listing every skipped input with its reason.

    A rerun reuses every finished volume or chunk whose inputs are unchanged,
    so a killed run resumes; the result is byte-identical for any --workers.
    On a cluster, run ranks 0..N-1 with --rank R --world-size N (or as a Slurm
    array), then once with --merge (examples/slurm/ingest.sbatch). Exit code 0
    when anything usable came out, 1 when nothing did.
    """
    from medscout_data.errors import StageError
    from medscout_data.layout import Layout
    from medscout_data.ranks import Rank
    from medscout_data.recipe import RecipeError, load_recipe
    from medscout_data.sources import merge_ranks, run_ingest

    try:
        config = load_recipe(recipe)
    except RecipeError as exc:
        raise click.ClickException(str(exc)) from exc
    layout = Layout.at(out)
    command = f"medscout-data ingest --modality {modality} --out {out}" + (f" --root {root}" if root else "")
    source_root = Path(root) if root else None
    try:
        if merge:
            report = merge_ranks(
                layout, config, modality, source_root, source, world_size, not quiet, command=command
            )
        else:
            ranks = Rank.resolve(rank, world_size)
            report = run_ingest(
                layout, config, modality, source_root, source, workers, not quiet, ranks, command
            )
    except StageError as exc:
        raise click.ClickException(f"ingest {modality}: {exc}") from exc
    click.echo(report.summary())
    folder = layout.catalogue_dir(modality)
    if "marker" in report.info:
        click.echo(
            f"{report.stage} done (marker {report.info['marker']}); run `ingest --merge` after all ranks"
        )
        return
    click.echo(f"catalogue: {layout.catalogue(modality)}")
    if "slices_kept_summary" in report.info:
        click.echo(report.info["slices_kept_summary"])
    release = report.info.get("source_release") or {}
    if release:
        click.echo(f"source release: {release.get('release') or 'unknown'} ({release.get('evidence')})")
    if report.counts.get("duplicate_images"):
        click.echo(
            f"duplicate images dropped (one kept of each, both ids in errors.parquet): "
            f"{report.counts['duplicate_images']}"
        )
    if report.skips:
        click.echo(f"skipped inputs and reasons: {folder / 'errors.parquet'}")
    if root and report.info.get("source_kind", "").startswith("mimic"):
        click.echo(MIMIC_NOTE)
    if not report.counts.get("images"):
        click.echo(
            f"ingest {modality}: nothing usable came out of {report.info.get('source_root')}", err=True
        )
    sys.exit(0 if report.counts.get("images") else 1)
