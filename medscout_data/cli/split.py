"""`medscout-data split` and `medscout-data validate`."""

from __future__ import annotations

import sys

import click

from medscout_data.cli.options import quiet_option, shards_option


@click.command(short_help="Subject-disjoint train / bench shards with a manifest.")
@shards_option
@click.option(
    "--seed", type=int, default=None, help="Must equal the seed the pool was built with (default: it)."
)
@click.option(
    "--bench-per-cell",
    type=click.IntRange(min=1),
    default=None,
    help="Bench items per modality x task (default: the recipe's; 1,200 in the paper's).",
)
@click.option("--recipe", default=None, help="Recipe (default: the one the pool was built with).")
@quiet_option
def split(shards: str, seed: int | None, bench_per_cell: int | None, recipe: str | None, quiet: bool) -> None:
    """Turn SHARDS/pool into SHARDS/train and SHARDS/bench.

    The split unit is the subject: the seeded subject partition made before
    building decides each item's side. The bench gets exactly --bench-per-cell
    items per modality x task, balanced inside each cell; train gets every
    train-side item. Same seed, same split, byte for byte.
    """
    from medscout_data.errors import StageError
    from medscout_data.layout import Layout
    from medscout_data.stages.split import SplitOptions, split_pool

    layout = Layout.at(shards)
    options = SplitOptions(seed=seed, bench_per_cell=bench_per_cell, recipe=recipe, progress=not quiet)
    try:
        manifest = split_pool(layout, options)
    except StageError as exc:
        raise click.ClickException(str(exc)) from exc
    totals = manifest["totals"]
    click.echo(
        f"split (seed {manifest['seed']}, recipe {manifest['recipe']['name']}): pool {totals['pool']}, "
        f"train {totals['train']}, bench {totals['bench']}, dropped {totals['dropped']} "
        f"({totals['dropped'] / max(totals['pool'], 1):.2%})"
    )
    for cell, counts in manifest["cells"].items():
        train, bench, dropped = counts["train"], counts["bench"], counts["dropped"]
        click.echo(f"  {cell:<14} train {train:>6}  bench {bench:>5}  dropped {dropped}")
    click.echo(f"manifest: {layout.manifest()}")


@click.command(short_help="Check a split: disjointness, counts, balance, hashes.")
@shards_option
@click.option("--deep", is_flag=True, help="Decode every image, not only a sample of each shard.")
@quiet_option
def validate(shards: str, deep: bool, quiet: bool) -> None:
    """Check the split under SHARDS against its manifest: every shard present
    with its sha256 and decodable, no subject on both sides (anomaly references
    included), exact and balanced bench cells. Exits 1 naming every problem.
    """
    from medscout_data.layout import Layout
    from medscout_data.stages.validate import validate_split

    problems = validate_split(Layout.at(shards), deep=deep, progress=not quiet)
    for problem in problems:
        click.echo(f"INVALID {problem}", err=True)
    if problems:
        click.echo(f"{len(problems)} problem(s) found", err=True)
        sys.exit(1)
    click.echo("split is valid")
