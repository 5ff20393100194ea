"""The `medscout-data` command line: one sub-command per stage.

Command modules import only Click at load time; each command imports its
stage (and torch, faiss, datasets) when it runs, so `--help` stays fast.
"""

from __future__ import annotations

import errno
import importlib
import logging
import traceback
from typing import Any

import click

from medscout_data import __version__

# name -> "module:attribute", in pipeline order.
COMMANDS = {
    "sample": "medscout_data.cli.sample:sample",
    "ingest": "medscout_data.cli.ingest:ingest",
    "index": "medscout_data.cli.index:index",
    "build": "medscout_data.cli.build:build",
    "split": "medscout_data.cli.split:split",
    "validate": "medscout_data.cli.split:validate",
    "fresh-bench": "medscout_data.cli.fresh:fresh_bench",
    "push-bench": "medscout_data.cli.push:push_bench",
    "evaluate": "medscout_data.cli.evaluate:evaluate",
    "score": "medscout_data.cli.score:score",
    "baseline": "medscout_data.cli.score:baseline",
    "audit": "medscout_data.cli.audit:audit",
    "export": "medscout_data.cli.export:export",
    "preview": "medscout_data.cli.export:preview",
}


class OneLineErrors(click.Group):
    """The one place where a failure becomes one line on stderr and exit status 1, for every
    command: a stage's own error (StageError, RecipeError) as its message; an OSError (a
    read-only folder, a full disk, a missing file) as the file and the system's reason; anything
    else as its type and message, with the traceback only under -vv."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # every command's last word, see the docstring
            if ctx.params.get("verbose", 0) >= 2:
                traceback.print_exc()
            raise click.ClickException(one_line(exc)) from None


def one_line(exc: BaseException) -> str:
    """The message of a failure, on one line."""
    from medscout_data.errors import StageError
    from medscout_data.recipe import RecipeError

    if isinstance(exc, StageError | RecipeError):
        text = str(exc)
    elif isinstance(exc, OSError):
        where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        reason = exc.strerror or str(exc) or type(exc).__name__
        hint = "; free space or choose another folder" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        hint = hint or ("; choose a folder you can write" if exc.errno in (errno.EROFS, errno.EACCES) else "")
        text = f"{where}: {reason}{hint}" if where else f"{reason}{hint}"
    elif isinstance(exc, RecursionError):
        text = "input nested too deeply to read (RecursionError); rerun with -vv to see where"
    else:
        text = f"unexpected {type(exc).__name__}: {exc}; rerun with -vv for the traceback, and report it"
    return " ".join(text.split())


@click.group(
    cls=OneLineErrors,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    help="""Regenerate, publish and score Med-Scout-Bench.

\b
Stages, in order:
  sample      write procedural sample sources (CT, MRI, X-ray JPG and DICOM)
  ingest      decode sources once into a catalogue of usable 2-D images
  index       X-ray: image embeddings + FAISS nearest neighbours (anomaly refs)
  build       make scale / jigsaw / anomaly items into Parquet shards
  split       subject-disjoint train / bench shards with a manifest
  validate    check a split: disjointness, counts, balance, hashes
  fresh-bench a second bench: same subjects and recipe, another item seed
  push-bench  stage the bench as a Hub dataset repo and upload it
  evaluate    ask a model (OpenAI-compatible server) every bench item, score it
  score       Dense Geometric Reward of model answers on the bench
  baseline    random / prior / classical-vision predictions
  audit       shortcut probes (sharpness, noise, seams, centroid, prior) per cell
  export      ms-swift GRPO or generic JSONL for training
  preview     HTML page and contact sheets of items

With no --root, every stage runs on the embedded sample (generated on demand).
""",
)
@click.version_option(__version__, prog_name="medscout-data")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


for _name, _target in COMMANDS.items():
    _module, _attribute = _target.split(":")
    cli.add_command(getattr(importlib.import_module(_module), _attribute), _name)


def main() -> None:
    cli()
