"""Options shared by several commands, declared once."""

from __future__ import annotations

import click

from medscout_data import MODALITIES

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
