"""`medscout-data index`: X-ray embeddings and subject-disjoint FAISS neighbours (anomaly references)."""

from __future__ import annotations

from pathlib import Path

import click

from medscout_data.cli.options import out_option, recipe_option, root_option, workers_option


@click.command(short_help="X-ray: image embeddings + FAISS nearest neighbours (anomaly references).")
@click.option(
    "--modality",
    type=click.Choice(["xray"]),
    default="xray",
    show_default=True,
    help="Only X-ray has an index (CT/MRI references are slices of the same volume).",
)
@root_option
@recipe_option
@click.option(
    "--model",
    default=None,
    help="pixels | hf-hub:ORG/NAME | local-dir:PATH | ARCH/TAG (open_clip). Default: the recipe's "
    "index.model (BiomedCLIP in med-scout-bench, pixels in sample).",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where to embed (fp16 autocast on CUDA); cpu also keeps FAISS on the CPU.",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=None, help="Images per batch (recipe default)."
)
@click.option("--k", type=click.IntRange(min=1), default=None, help="Neighbours per image (recipe default).")
@click.option(
    "--search",
    type=click.Choice(["exact", "ivf", "hnsw"]),
    default=None,
    help="FAISS index: exact inner product, or approximate ivf / hnsw for CPU runs at MIMIC-CXR scale "
    "(recipe default).",
)
@out_option
@workers_option
def index(
    modality: str,
    root: str | None,
    recipe: str,
    model: str | None,
    device: str,
    batch_size: int | None,
    k: int | None,
    search: str | None,
    out: str,
    workers: int,
) -> None:
    """Embed every catalogued X-ray and find, for each, its nearest neighbours by cosine similarity.

    A neighbour is never the image itself, an image of the same subject, or an
    image on the other side of the bench/train subject plan. Embeddings are
    cached per model, so a rerun embeds only new images. Runs ingest first if
    the catalogue is missing. Writes OUT/index/xray/<model>/neighbours.parquet.
    """
    from medscout_data.errors import StageError
    from medscout_data.layout import Layout
    from medscout_data.recipe import RecipeError, load_recipe
    from medscout_data.stages.index import ensure_neighbours, neighbours_metadata
    from medscout_data.stages.plan import PlanError

    try:
        path = ensure_neighbours(
            Layout.at(out),
            load_recipe(recipe),
            modality,
            model=model,
            device=device,
            batch_size=batch_size,
            k=k,
            root=Path(root) if root else None,
            workers=workers,
            search=search,
        )
    except (StageError, RecipeError, PlanError) as exc:
        raise click.ClickException(str(exc)) from exc
    meta = neighbours_metadata(path)
    click.echo(f"neighbours: {path}")
    click.echo(
        f"model {meta['model']} (dim {meta['embedding_dim']}), search {meta['search']}, k {meta['k']}; "
        f"report: {path.parent / 'report.json'}"
    )
