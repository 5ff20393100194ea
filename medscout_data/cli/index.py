"""`medscout-data index`: X-ray embeddings and subject-disjoint FAISS neighbours (anomaly references)."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from medscout_data.cli.options import out_option, recipe_option, root_option


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
@click.option(
    "--rank",
    type=click.IntRange(min=0),
    default=None,
    help="This rank of a job array (0-based; default $SLURM_ARRAY_TASK_ID - $SLURM_ARRAY_TASK_MIN): embed "
    "only its share of the catalogue's blocks and leave a completion marker. Needs --world-size.",
)
@click.option(
    "--world-size",
    type=click.IntRange(min=1),
    default=None,
    help="Ranks in the job array (default $SLURM_ARRAY_TASK_COUNT). With --merge: which ranks to merge "
    "(default: the ones found).",
)
@click.option(
    "--merge",
    is_flag=True,
    help="After every rank finished: check their markers (naming missing ranks), merge their embeddings "
    "and search once. A plain `index` or `build` does this too when it finds rank outputs.",
)
@out_option
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Threads preparing images for the model (and ingest's worker processes when it runs first).",
)
def index(
    modality: str,
    root: str | None,
    recipe: str,
    model: str | None,
    device: str,
    batch_size: int | None,
    k: int | None,
    search: str | None,
    rank: int | None,
    world_size: int | None,
    merge: bool,
    out: str,
    workers: int,
) -> None:
    """Embed every catalogued X-ray and find, for each, its nearest neighbours by cosine similarity.

    A neighbour is never the image itself, an image of the same subject, or an
    image on the other side of the bench/train subject plan. Embeddings are
    cached per model, so a rerun embeds only new images. Runs ingest first if
    the catalogue is missing. Writes OUT/index/xray/<model>/neighbours.parquet.

    \b
    On a cluster, one rank per GPU (examples/slurm/index.sbatch):
      medscout-data index --rank R --world-size N ...   (each rank; never runs ingest)
      medscout-data index --merge ...                   (once all are done: FAISS search)
    Ranks and the merge must use the same --recipe, --model and --batch-size;
    the neighbours equal a single process's, byte for byte on the CPU.
    """
    from medscout_data.errors import StageError
    from medscout_data.layout import Layout
    from medscout_data.ranks import Rank
    from medscout_data.recipe import RecipeError, load_recipe
    from medscout_data.stages.index import (
        IndexOptions,
        embed_rank,
        ensure_neighbours,
        index_catalogue,
        neighbours_metadata,
    )
    from medscout_data.stages.plan import PlanError

    layout = Layout.at(out)
    try:
        loaded = load_recipe(recipe)
        if merge and rank is not None:
            raise click.UsageError("--merge takes no --rank: it merges the ranks that ran")
        options = IndexOptions.from_recipe(loaded, model, device, batch_size, k, search, workers)
        if merge:
            path = index_catalogue(layout, loaded, modality, options, merge=True, world_size=world_size)
        else:
            place = Rank.resolve(rank, world_size)
            if not place.single:
                marker = embed_rank(layout, modality, options, place)
                click.echo(f"{place}: done; marker {marker}")
                words = ["medscout-data", "index", "--merge", "--out", out, "--recipe", recipe]
                words += ["--model", options.model, "--batch-size", str(options.batch_size)]
                click.echo(f"when every rank is done: {shlex.join(words)}")
                return
            path = ensure_neighbours(
                layout,
                loaded,
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
