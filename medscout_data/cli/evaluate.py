"""`medscout-data evaluate`."""

from __future__ import annotations

import click

from medscout_data.cli.options import modalities_filter, quiet_option, tasks_filter
from medscout_data.cli.score import (
    bench_option,
    extraction_options,
    judge_endpoint,
    mode_option,
    profile_option,
)


@click.command(short_help="Ask a model (any OpenAI-compatible server) every bench item, then score it.")
@bench_option
@click.option(
    "--base-url",
    required=True,
    help="The server's OpenAI-compatible base URL, e.g. http://localhost:8000/v1.",
)
@click.option("--model", required=True, help="Model name as the server knows it.")
@mode_option
@click.option(
    "--concurrency", type=click.IntRange(min=1), default=16, show_default=True, help="Requests at once."
)
@click.option(
    "--max-tokens", type=click.IntRange(min=1), default=None, help="Completion token limit (server default)."
)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="Only the first N items of each cell."
)
@modalities_filter
@tasks_filter
@profile_option
@extraction_options
@click.option(
    "--api-key-env",
    default="OPENAI_API_KEY",
    show_default=True,
    help="Environment variable holding the API key (never printed, logged or written; unset: no key).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=300.0,
    show_default=True,
    help="Seconds per request.",
)
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    default=4,
    show_default=True,
    help="Retries on 429, 5xx and timeouts (backoff, honours Retry-After).",
)
@click.option(
    "--allow-remote-mimic",
    is_flag=True,
    help="Send MIMIC-CXR-derived (X-ray) items to a server outside loopback and private networks: only "
    "for a deployment that meets PhysioNet's responsible-use policy for credentialed data (no retention, "
    "no training use, no human review). Without it such a run is refused before any request.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="eval",
    show_default=True,
    help="Run folder: predictions.jsonl (resumable), scores.json, run.json, judged.jsonl.",
)
@quiet_option
def evaluate(
    bench: str,
    base_url: str,
    model: str,
    mode: str,
    concurrency: int,
    max_tokens: int | None,
    temperature: float,
    limit: int | None,
    modalities: tuple[str, ...],
    tasks: tuple[str, ...],
    profile: str,
    extract: str,
    judge_base_url: str | None,
    judge_model: str | None,
    judge_api_key_env: str,
    judge_concurrency: int,
    judge_allow_remote_mimic: bool,
    api_key_env: str,
    timeout: float,
    retries: int,
    allow_remote_mimic: bool,
    out: str,
    quiet: bool,
) -> None:
    """Ask a model every bench item over an OpenAI-compatible chat-completions server
    (vLLM, SGLang, LMDeploy, TGI or a hosted API), then score its answers.

    Each request carries the mode's system prompt (the one `export` writes), every
    image of the item in prompt order as a PNG data URL of the shard's own bytes,
    and the question. Answers are appended to OUT/predictions.jsonl as they come:
    kill the run at any time and rerun the same command to finish it; only the
    items not answered yet (failed ones included) are sent. At the end the items
    are scored (OUT/scores.json, the table below).

    \b
    vllm serve Qwen/Qwen2.5-VL-7B-Instruct --port 8000 &
    medscout-data evaluate --bench shards --base-url http://localhost:8000/v1 \\
        --model Qwen/Qwen2.5-VL-7B-Instruct --mode cot --concurrency 64 --out runs/qwen-cot
    """
    from pathlib import Path

    from medscout_data.errors import StageError
    from medscout_data.evaluation.chat import Endpoint
    from medscout_data.evaluation.evaluate import EvaluateOptions
    from medscout_data.evaluation.evaluate import evaluate as run_evaluate
    from medscout_data.evaluation.score import format_table

    judge = judge_endpoint(judge_base_url, judge_model, judge_api_key_env, judge_concurrency, extract)
    try:
        endpoint = Endpoint(base_url, model, api_key_env, timeout, retries, concurrency)
        options = EvaluateOptions(
            bench, Path(out), endpoint, mode, max_tokens, temperature, limit,
            modalities or EvaluateOptions.modalities, tasks or EvaluateOptions.tasks,
            profile, extract, judge, progress=not quiet, allow_remote_mimic=allow_remote_mimic,
            judge_allow_remote_mimic=judge_allow_remote_mimic,
        )  # fmt: skip
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        outcome = run_evaluate(options, command=f"medscout-data evaluate --model {model} --out {out}")
    except StageError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(format_table(outcome.result))
    click.echo(
        f"extraction: {outcome.document['extraction']['method']}; sent {outcome.sent} requests this run"
    )
    if outcome.failed:
        click.echo(
            f"{outcome.failed} requests failed (errors in {out}/predictions.jsonl); "
            "rerun the same command to retry them",
            err=True,
        )
    click.echo(f"predictions: {out}/predictions.jsonl\nscores: {out}/scores.json")
