"""`medscout-data split` and `medscout-data validate`."""

from __future__ import annotations

import shlex
import sys

import click

from medscout_data.cli.options import quiet_option, shards_option, workers_option


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
@click.option(
    "--force",
    is_flag=True,
    help="Delete files under SHARDS/bench and SHARDS/train that split did not write (default: refuse).",
)
@quiet_option
def split(
    shards: str, seed: int | None, bench_per_cell: int | None, recipe: str | None, force: bool, quiet: bool
) -> None:
    """Turn SHARDS/pool into SHARDS/train and SHARDS/bench.

    Only a whole pool is split: every modality's pool.json must say its build
    finished, with every planned shard present; otherwise nothing is written
    and the message names what is missing and the build command that completes
    it. The split unit is the subject: the seeded subject partition made before
    building decides each item's side. The bench gets exactly --bench-per-cell
    items per modality x task, balanced inside each cell; train gets every
    train-side item. Same seed, same split, byte for byte.

    The new split is written beside the old one and swapped in; on a full disk
    the previous split stays as it was. Files under bench/ and train/ that split
    did not write are never deleted without --force. One split per SHARDS at a
    time (a second run is refused).
    """
    from medscout_data.errors import StageError
    from medscout_data.layout import Layout
    from medscout_data.stages.split import SplitOptions, run_split

    layout = Layout.at(shards)
    options = SplitOptions(
        seed=seed,
        bench_per_cell=bench_per_cell,
        recipe=recipe,
        progress=not quiet,
        force=force,
        command=shlex.join(["medscout-data", *sys.argv[1:]]),
    )
    try:
        outcome = run_split(layout, options)
    except StageError as exc:
        raise click.ClickException(str(exc)) from exc
    manifest = outcome.manifest
    totals = manifest["totals"]
    click.echo(
        f"split (seed {manifest['seed']}, recipe {manifest['recipe']['name']}): pool {totals['pool']}, "
        f"train {totals['train']}, bench {totals['bench']}, dropped {totals['dropped']} "
        f"({totals['dropped'] / max(totals['pool'], 1):.2%})"
    )
    for cell, counts in manifest["cells"].items():
        train, bench, dropped = counts["train"], counts["bench"], counts["dropped"]
        click.echo(f"  {cell:<14} train {train:>6}  bench {bench:>5}  dropped {dropped}")
    for note in manifest.get("warnings", []):
        click.echo(f"  note: {note}")
    if outcome.replaced:
        click.echo(f"replaced the previous split ({outcome.replaced} file(s) split had written)")
    for name in outcome.removed_foreign:
        click.echo(f"  removed (--force): {name}")
    click.echo(f"manifest: {layout.manifest()}")


@click.command(short_help="Check a split: pool, plans, counts, balance, hashes, answers, duplicates.")
@shards_option
@click.option(
    "--deep",
    is_flag=True,
    help="Also decode every image (not a sample of each shard) and check scale crops share one size.",
)
@workers_option
@quiet_option
def validate(shards: str, deep: bool, workers: int, quiet: bool) -> None:
    """Check the split under SHARDS against its manifest, its subject plans and
    its pool record, from the files alone; nothing is written, so a read-only
    split validates. Exits 1 naming every problem.

    \b
    Always checked: every shard present with its size, sha256 and row count,
    no unlisted shard; the pool it came from complete (and, if still in pool/,
    whole and the same); seed and subject-list hashes equal the plans'; no
    subject on both sides (anomaly references included); exact, balanced bench
    cells; every answer recomputed from its target; every image a PNG.
    Duplicates: every item's image bytes are hashed and items with identical
    images reported (an error on the bench or across sides, a warning inside
    train). This costs little, since the PNG check reads every image anyway
    (README: Performance), so it always runs. --workers processes share the
    image pass (one shard each at a time); the findings are the same for any
    number.
    """
    from medscout_data.layout import Layout
    from medscout_data.stages.validate import validate_report

    result = validate_report(Layout.at(shards), deep=deep, progress=not quiet, workers=workers)
    for problem in result.problems:
        click.echo(f"INVALID {problem}", err=True)
    for warning in result.warnings:
        click.echo(f"WARNING {warning}", err=True)
    if result.problems:
        click.echo(f"{len(result.problems)} problem(s) found", err=True)
        sys.exit(1)
    counts = result.counts
    click.echo(
        f"split is valid: {counts['shards']} shards, {counts['items']} items, {counts['images']} images "
        f"checked{' (every image decoded)' if deep else ''}; "
        f"{len(result.warnings)} warning(s)"
    )
