"""The `medscout-data` command line: one sub-command per stage.

Command modules import only Click at load time; each command imports its
stage (and torch, faiss, datasets) when it runs, so `--help` stays fast.
"""

from __future__ import annotations

import importlib
import logging

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


@click.group(
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
