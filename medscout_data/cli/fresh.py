"""`medscout-data fresh-bench`."""

from __future__ import annotations

import shlex
import sys

import click

from medscout_data.cli.options import modalities_filter, quiet_option, shards_option, workers_option


@click.command(short_help="A new bench from the same bench-side subjects and recipe, another item seed.")
@shards_option
@click.option("--seed", type=int, required=True, help="The fresh bench's item seed (not the original's).")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    required=True,
    help="New folder for the fresh bench (pool/, plan/, bench/, manifest.json, fresh.json).",
)
@modalities_filter
@workers_option
@quiet_option
def fresh_bench(
    shards: str, seed: int, out: str, modalities: tuple[str, ...], workers: int, quiet: bool
) -> None:
    """Make a second bench from SHARDS (a split root with its catalogues, image caches and
    reference index, as `build` left them): the same bench-side subjects, recipe, counts and
    balance per cell, items drawn under --seed, none sharing an image with the original bench
    (checked by sha256 of every image). A contamination check: a model that scores far lower
    on the fresh bench than on the published one has seen the published items.

    OUT is a shards root like any other: `evaluate --bench OUT`, `score --bench OUT`,
    `audit --bench OUT`, `validate --shards OUT`. Same SHARDS and seed, same bytes.

    \b
    medscout-data fresh-bench --shards shards --seed 1001 --out fresh-1001
    medscout-data evaluate --bench fresh-1001 --base-url http://localhost:8000/v1 \\
        --model my-vlm --out runs/my-vlm-fresh
    """
    from pathlib import Path

    from medscout_data.errors import StageError
    from medscout_data.stages.fresh import FreshOptions
    from medscout_data.stages.fresh import fresh_bench as make_fresh_bench

    options = FreshOptions(
        Path(shards), seed, Path(out), modalities, workers, progress=not quiet,
        command=shlex.join(["medscout-data", *sys.argv[1:]]),
    )  # fmt: skip
    try:
        record = make_fresh_bench(options)
    except StageError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"fresh bench (seed {seed}) of {shards} (seed {record['original']['seed']}):")
    for cell, count in record["cells"].items():
        click.echo(f"  {cell:<14} bench {count:>5}")
    click.echo(
        f"{record['images_checked']} images checked by sha256: none shared with the original bench\n"
        f"manifest: {Path(out) / 'manifest.json'}"
    )
