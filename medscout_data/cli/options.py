"""Options shared by several commands, declared once."""

from __future__ import annotations

import click

from medscout_data import MODALITIES, TASKS

modality_option = click.option(
    "--modality", type=click.Choice(MODALITIES), required=True, help="Which modality to process."
)
root_option = click.option(
    "--root",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Source dataset root. Omitted: the embedded sample (generated under OUT/sample).",
)
recipe_option = click.option(
    "--recipe", default="sample", show_default=True, help="Recipe name in recipes/ or a TOML path."
)
out_option = click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False),
    default="shards",
    show_default=True,
    help="Output root shared by all stages.",
)
workers_option = click.option(
    "--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Worker processes."
)
shards_option = click.option(
    "--shards",
    type=click.Path(file_okay=False),
    default="shards",
    show_default=True,
    help="Output root holding pool/, the split (train/, bench/) and manifest.json.",
)
modalities_filter = click.option(
    "--modality",
    "modalities",
    type=click.Choice(MODALITIES),
    multiple=True,
    help="Only these modalities (repeatable). Default: all there are.",
)
tasks_filter = click.option(
    "--task",
    "tasks",
    type=click.Choice(TASKS),
    multiple=True,
    help="Only these tasks (repeatable). Default: all.",
)
quiet_option = click.option("--quiet", is_flag=True, help="No progress bars.")
force_option = click.option(
    "--force",
    is_flag=True,
    help="Delete files in the way of the output that medscout-data did not write (each is named); "
    "without it such a file stops the run.",
)
