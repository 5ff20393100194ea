"""`medscout-data score` and `medscout-data baseline`."""

from __future__ import annotations

import click

from medscout_data.cli.options import quiet_option

bench_option = click.option(
    "--bench",
    default="shards",
    show_default=True,
    help="Shards root (its bench/ side), a staged Hub repo folder, a bench folder, or a Hub repo id.",
)


@click.command(short_help="Dense Geometric Reward of model answers on the bench.")
@click.option(
    "--predictions",
    type=click.Path(exists=True, dir_okay=False),
    required=True,
    help="JSONL: `id` + `response` per line, or ms-swift `swift infer` results carrying `id`.",
)
@bench_option
@click.option(
    "--profile",
    type=click.Choice(["official", "paper"]),
    default="official",
    show_default=True,
    help="official: the authors' released reward code; paper: the paper's formulas.",
)
@click.option(
    "--mode",
    type=click.Choice(["direct", "cot"]),
    default="direct",
    show_default=True,
    help="cot adds 0.5 for a <think>...</think><answer>...</answer> response.",
)
@click.option(
    "--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write the figures here."
)
def score(predictions: str, bench: str, profile: str, mode: str, json_out: str | None) -> None:
    """Score model answers against Med-Scout-Bench with the Dense Geometric Reward.

    Prints mean accuracy, format, CoT and total reward (x100) per modality x
    task and scale variant, and the Med-Scout-Bench Avg (mean accuracy x 100).
    Items without a prediction score 0 and are listed; predictions for ids
    not in the bench are an error. Only metadata columns are read: images
    are never decoded.
    """
    from pathlib import Path

    from medscout_data.errors import StageError
    from medscout_data.evaluation.score import format_table, score_file
    from medscout_data.report import RunReport
    from medscout_data.shards import write_json_atomic

    report = RunReport("score")
    try:
        result = score_file(predictions, bench, profile, mode, report)
    except StageError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(format_table(result))
    for skip in report.skips:
        click.echo(f"skipped {skip.message}", err=True)
    if json_out:
        figures = result.as_dict()
        figures.update(
            bench=str(bench),
            predictions=str(predictions),
            skipped=[{"where": s.path, "reason": s.reason, "message": s.message} for s in report.skips],
        )
        write_json_atomic(figures, Path(json_out))
        click.echo(f"figures: {json_out}")


@click.command(short_help="Random / prior / classical-vision predictions.")
@click.option(
    "--name",
    type=click.Choice(["random", "prior", "classical"]),
    required=True,
    help="random: right format, seeded; prior: best constant answer; classical: OpenCV solvers.",
)
@bench_option
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Predictions JSONL to write.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random baseline.")
@quiet_option
def baseline(name: str, bench: str, out: str, seed: int, quiet: bool) -> None:
    """Write baseline predictions (`id`, `response` per line) for every bench item.

    \b
    random     an answer in the right format per item, from (seed, item id)
    prior      one constant answer per modality x task (x variant), learnt
               from the train side (<shards>/train); without one, from the
               bench's own truths: an ORACLE prior, and said so
    classical  template matching (scale), seam continuity (jigsaw), seam
               detection (anomaly); decodes every image
    """
    from medscout_data.errors import StageError
    from medscout_data.evaluation.baselines import BaselineOptions, run_baseline

    try:
        report = run_baseline(bench, out, BaselineOptions(name, seed, progress=not quiet))
    except StageError as exc:
        raise click.ClickException(str(exc)) from exc
    for skip in report.skips:
        click.echo(f"skipped {skip.message}", err=True)
    origin = report.info.get("prior_from")
    if origin == "train":
        click.echo("prior learnt from the train side")
    elif origin:
        click.echo("ORACLE prior: no train side found, so it was computed from the bench's own answers")
    click.echo(f"{report.summary()}\npredictions: {out}")
