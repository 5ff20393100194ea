"""`medscout-data audit`: what shortcut probes and a text-only prior score on the bench."""

from __future__ import annotations

import click

from medscout_data.cli.options import force_option, quiet_option


@click.command(short_help="Shortcut audit: non-learning probes per cell, next to chance.")
@click.option(
    "--bench",
    default="shards",
    show_default=True,
    help="Shards root (its bench/ side, checked against manifest.json), a staged Hub repo folder, "
    "a bench folder, or a Hub repo id.",
)
@click.option(
    "--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write the figures here."
)
@force_option
@quiet_option
def audit(bench: str, json_out: str | None, force: bool, quiet: bool) -> None:
    """Score non-learning shortcut probes on every modality x task cell of a bench.

    \b
    chance      expected accuracy of a uniformly drawn well-formed answer
    prior       text-only prior: the best constant answer per cell
    sharpness   scale: tier from each crop's high-frequency power (threshold)
    noise       scale: tier from each crop's pixel-noise level (threshold)
    seams       jigsaw: seam continuity; anomaly: the most seam-like cell
    centroid    jigsaw: the body's bright mass nearest the centre
    intensity   anomaly: the cell with the most consistent brightness step
    classical   the `classical` baseline (the no-learning ceiling)

    Accuracy is the Dense Geometric Reward's (official profile) x 100. The
    thresholds and the prior are learnt on one half of each cell and scored
    on the other. AUC (0.5 = no information) is given for the tier probes.
    A probe far above chance marks a cue that answers without looking at the
    geometry. `push-bench` puts this table in the dataset card.
    """
    from contextlib import ExitStack

    from medscout_data.errors import StageError
    from medscout_data.evaluation.audit import format_audit
    from medscout_data.evaluation.classical import audit
    from medscout_data.owned import owned_file
    from medscout_data.report import RunReport
    from medscout_data.shards import write_json_atomic

    report = RunReport("audit")
    with ExitStack() as outputs:  # --json: checked (owned.py) before the audit runs, written at the end
        try:
            target = (
                outputs.enter_context(owned_file(json_out, "audit --json", force, "--json"))
                if json_out
                else None
            )
            result = audit(bench, progress=not quiet, report=report)
        except StageError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(format_audit(result))
        for skip in report.skips:
            click.echo(f"skipped {skip.message}", err=True)
        if target is not None:
            figures = result.as_dict()
            figures["skipped"] = [
                {"where": s.path, "reason": s.reason, "message": s.message} for s in report.skips
            ]
            write_json_atomic(figures, target)
            click.echo(f"figures: {target}")
