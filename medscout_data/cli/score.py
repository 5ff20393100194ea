"""`medscout-data score` and `medscout-data baseline`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from medscout_data.cli.options import force_option, quiet_option

bench_option = click.option(
    "--bench",
    default="shards",
    show_default=True,
    help="Shards root (its bench/ side), a staged Hub repo folder, a bench folder, or a Hub repo id.",
)


profile_option = click.option(
    "--profile",
    type=click.Choice(["official", "paper"]),
    default="official",
    show_default=True,
    help="official: the authors' released reward code; paper: the paper's formulas.",
)
mode_option = click.option(
    "--mode",
    type=click.Choice(["direct", "cot"]),
    default="direct",
    show_default=True,
    help="direct: the answer only; cot: <think>...</think><answer>...</answer>, with the CoT reward (+0.5).",
)


def extraction_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """--extract and the judge's endpoint, shared by `score` and `evaluate`."""
    for option in reversed(
        [
            click.option(
                "--extract",
                type=click.Choice(["strict", "lenient", "judge"]),
                default="strict",
                show_default=True,
                help="How a response becomes the answer accuracy scores: strict (the authors' reward code), "
                "lenient (documented rules for common phrasings), judge (an LLM rewrites it; cached).",
            ),
            click.option("--judge-base-url", default=None, help="Judge server, e.g. http://host:8001/v1."),
            click.option("--judge-model", default=None, help="Judge model name on that server."),
            click.option(
                "--judge-api-key-env",
                default="OPENAI_API_KEY",
                show_default=True,
                help="Environment variable holding the judge's API key (never printed or written).",
            ),
            click.option(
                "--judge-concurrency",
                type=click.IntRange(min=1),
                default=16,
                show_default=True,
                help="Judge requests at once.",
            ),
            click.option(
                "--judge-allow-remote-mimic",
                is_flag=True,
                help="Let the judge's server be outside loopback and private networks for MIMIC-CXR-derived "
                "(X-ray) items: only for a deployment that meets PhysioNet's responsible-use policy for "
                "credentialed data (no retention, no training use, no human review).",
            ),
        ]
    ):
        function = option(function)
    return function


def judge_endpoint(
    base_url: str | None, model: str | None, key_env: str, concurrency: int, extract: str
) -> Any:
    """The judge's Endpoint (None unless --extract judge); a usage error when it is incomplete."""
    from medscout_data.evaluation.chat import Endpoint

    if extract != "judge":
        return None
    if not base_url or not model:
        raise click.UsageError("--extract judge needs --judge-base-url and --judge-model")
    try:
        return Endpoint(base_url, model, key_env, concurrency=concurrency, flag="--judge-")
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


def _labelled(values: tuple[str, ...], option: str) -> list[tuple[str, Path]]:
    """`PATH` or `LABEL=PATH` values as (label or "", path); a usage error for a missing file."""
    out = []
    for value in values:
        label, _, rest = value.partition("=")
        if Path(value).is_file():
            out.append(("", Path(value)))
        elif rest and Path(rest).is_file():
            out.append((label, Path(rest)))
        else:
            raise click.BadParameter(f"{value}: no such file (give PATH or LABEL=PATH)", param_hint=option)
    return out


def _label(given: str, path: Path, models: list[str]) -> str:
    if given:
        return given
    if len(models) == 1:
        return models[0]
    return path.parent.name if path.stem == "predictions" and path.parent.name else path.stem


@click.command(short_help="Dense Geometric Reward of model answers on the bench.")
@click.option(
    "--predictions",
    multiple=True,
    required=True,
    help="JSONL: `id` + `response` per line (evaluate, baseline), or ms-swift `swift infer` results. "
    "Repeat to compare models side by side; LABEL=PATH names the column.",
)
@click.option(
    "--baseline",
    "baselines",
    multiple=True,
    help="Baseline predictions (from `medscout-data baseline`) shown as extra columns; LABEL=PATH.",
)
@bench_option
@profile_option
@mode_option
@extraction_options
@click.option(
    "--judge-cache",
    type=click.Path(dir_okay=False),
    default=None,
    help="Judgement cache. Default: judged.jsonl beside each predictions file.",
)
@click.option(
    "--metric",
    type=click.Choice(["accuracy", "format", "cot", "total"]),
    default="accuracy",
    show_default=True,
    help="The figure of the side-by-side table and the plot.",
)
@click.option(
    "--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write the figures here."
)
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="A per-cell bar chart (PNG).")
@force_option
@quiet_option
def score(
    predictions: tuple[str, ...],
    baselines: tuple[str, ...],
    bench: str,
    profile: str,
    mode: str,
    extract: str,
    judge_base_url: str | None,
    judge_model: str | None,
    judge_api_key_env: str,
    judge_concurrency: int,
    judge_allow_remote_mimic: bool,
    judge_cache: str | None,
    metric: str,
    json_out: str | None,
    plot: str | None,
    force: bool,
    quiet: bool,
) -> None:
    """Score model answers against Med-Scout-Bench with the Dense Geometric Reward.

    One predictions file: mean accuracy, format, CoT and total reward (x100)
    per modality x task and scale variant, and the Med-Scout-Bench Avg (mean
    accuracy x 100). Several (and --baseline files): one column per file.
    Items without a prediction score 0 and are listed; predictions for ids not
    in the bench are an error. ms-swift results without an `id` column are
    matched by their exported image paths. A local bench is checked (sha256
    against its manifest) before use; images are never decoded.

    \b
    medscout-data score --predictions runs/qwen/predictions.jsonl --bench shards
    medscout-data score --predictions qwen=runs/qwen/predictions.jsonl --predictions \\
        intern=runs/intern/predictions.jsonl --baseline random=random.jsonl --plot cells.png
    """
    from contextlib import ExitStack

    from medscout_data.errors import StageError
    from medscout_data.evaluation.chat import redactor_for
    from medscout_data.evaluation.compare import Column
    from medscout_data.evaluation.evaluate import JUDGED, make_extractor
    from medscout_data.evaluation.score import resolve_bench, score_file, scores_document
    from medscout_data.owned import owned_file
    from medscout_data.report import RunReport

    judge = judge_endpoint(judge_base_url, judge_model, judge_api_key_env, judge_concurrency, extract)
    files = [(False, *pair) for pair in _labelled(predictions, "--predictions")]
    files += [(True, *pair) for pair in _labelled(baselines, "--baseline")]
    columns, documents = [], []
    with ExitStack() as outputs:  # --json / --plot: checked (owned.py) before any scoring, written at the end
        try:
            json_path = (
                outputs.enter_context(owned_file(json_out, "score --json", force, "--json"))
                if json_out
                else None
            )
            plot_path = (
                outputs.enter_context(owned_file(plot, "score --plot", force, "--plot")) if plot else None
            )
            source = resolve_bench(bench)
            for is_baseline, given, path in files:
                report = RunReport("score")
                cache = Path(judge_cache) if judge_cache else path.parent / JUDGED
                if extract == "judge":  # appended to: only a cache of ours, never through a link
                    option = "--judge-cache"
                    cache = outputs.enter_context(owned_file(cache, "score --judge-cache", force, option))
                extractor = make_extractor(
                    extract, judge, cache, source, mode, redactor_for(*[judge] if judge else []), not quiet,
                    judge_allow_remote_mimic,
                )  # fmt: skip
                result = score_file(path, source, profile, mode, report, extractor)
                label = _label(given, path, report.info.get("models", []))
                extraction = extractor.describe() if extractor is not None else {"method": "strict"}
                documents.append(
                    {
                        "label": label,
                        "baseline": is_baseline,
                        **scores_document(result, report, source, path, extraction),
                    }
                )
                columns.append(Column(label, result, is_baseline))
                for skip in report.skips:
                    click.echo(f"skipped {skip.message}", err=True)
                if report.dropped:
                    more = ", ".join(f"{r}: {n}" for r, n in sorted(report.dropped.items()))
                    lines = sum(report.dropped.values())
                    click.echo(f"skipped {lines} more lines of {path} ({more})", err=True)
        except StageError as exc:
            raise click.ClickException(str(exc)) from exc
        _show_scores(columns, documents, source, metric, json_path, plot_path)


def _show_scores(
    columns, documents, source, metric: str, json_path: Path | None, plot_path: Path | None
) -> None:
    """The table, then the figures file and the plot when asked for."""
    from medscout_data.evaluation.compare import format_columns, plot_columns
    from medscout_data.evaluation.score import format_table
    from medscout_data.shards import write_json_atomic

    if len(columns) == 1:
        click.echo(format_table(columns[0].result))
    else:
        click.echo(format_columns(columns, metric))
    method = documents[0]["extraction"]["method"]
    click.echo(f"extraction: {method}; bench checked by {source.integrity or 'nothing'}")
    if json_path is not None:
        write_json_atomic(documents[0] if len(documents) == 1 else {"columns": documents}, json_path)
        click.echo(f"figures: {json_path}")
    if plot_path is not None:
        click.echo(f"plot: {plot_columns(columns, plot_path, metric)}")


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
@force_option
@quiet_option
def baseline(name: str, bench: str, out: str, seed: int, force: bool, quiet: bool) -> None:
    """Write baseline predictions (`id`, `response` per line) for every bench item.

    \b
    random     an answer in the right format per item, from (seed, item id)
    prior      one constant answer per modality x task (x variant), learnt
               from the train side (<shards>/train); without one, from the
               bench's own truths: an ORACLE prior, and said so
    classical  per modality x task x variant, the strongest of the audit's
               solvers (template matching, crop sharpness / noise, seams,
               centroid, intensity step, prior) on the train side; without
               one, template matching and seams; decodes every image
    """
    from medscout_data.errors import StageError
    from medscout_data.evaluation.baselines import BaselineOptions
    from medscout_data.evaluation.classical import run_classical

    try:
        report = run_classical(bench, out, BaselineOptions(name, seed, progress=not quiet, force=force))
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
