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
@quiet_option
def ingest(
    modality: str, root: str | None, source: str | None, recipe: str, out: str, workers: int, quiet: bool
) -> None:
    """Decode every usable 2-D image of a source once: CT/MRI axial slices in
    radiological convention (square pixels, CT windows or MRI percentiles,
    mostly-anatomy slices only), or frontal chest X-rays (MIMIC-CXR JPG or
    DICOM). Writes OUT/catalogue/<modality>/catalogue.parquet, the image cache
    OUT/cache/<modality>/, and errors.parquet + report.json listing every
    skipped input with its reason.

    A rerun reuses every finished volume or chunk whose inputs are unchanged,
    so a killed run resumes. Exit code 0 when anything usable came out, 1 when
    nothing did.
    """
    from medscout_data.errors import StageError
    from medscout_data.layout import Layout
    from medscout_data.recipe import RecipeError, load_recipe
    from medscout_data.sources import run_ingest

    try:
        config = load_recipe(recipe)
    except RecipeError as exc:
        raise click.ClickException(str(exc)) from exc
    layout = Layout.at(out)
    try:
        report = run_ingest(
            layout, config, modality, Path(root) if root else None, source, workers, progress=not quiet
        )
    except StageError as exc:
        raise click.ClickException(f"ingest {modality}: {exc}") from exc
    click.echo(report.summary())
    folder = layout.catalogue_dir(modality)
    click.echo(f"catalogue: {layout.catalogue(modality)}")
    if report.skips:
        click.echo(f"skipped inputs and reasons: {folder / 'errors.parquet'}")
    if root and report.info.get("source_kind", "").startswith("mimic"):
        click.echo(MIMIC_NOTE)
    if not report.counts.get("images"):
        click.echo(
            f"ingest {modality}: nothing usable came out of {report.info.get('source_root')}", err=True
        )
    sys.exit(0 if report.counts.get("images") else 1)
