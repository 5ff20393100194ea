"""score with several predictions files: side-by-side table, baseline columns, JSON and a PNG chart."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from benchfixture import make_shards
from click.testing import CliRunner
from PIL import Image

from medscout_data.cli import cli
from medscout_data.evaluation.baselines import BaselineOptions, run_baseline


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shards(tmp_path_factory.mktemp("shards"), modalities=("ct", "mri"), per_cell=4)


def write(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_score_side_by_side_with_baselines_json_and_plot(shards: Path, tmp_path: Path) -> None:
    rows = [
        r for p in sorted((shards / "bench").glob("*/*/test-*.parquet")) for r in pq.read_table(p).to_pylist()
    ]
    good = write(
        tmp_path / "qwen" / "predictions.jsonl",
        [{"id": r["id"], "response": r["answer"], "model": "qwen-vl"} for r in rows],
    )
    half = [{"id": r["id"], "response": r["answer"] if r["task"] != "anomaly" else "0"} for r in rows]
    weak = write(tmp_path / "weak.jsonl", half)
    random = tmp_path / "random.jsonl"
    run_baseline(shards, random, BaselineOptions("random", progress=False))
    out_json, out_png = tmp_path / "cmp.json", tmp_path / "cells.png"
    result = CliRunner().invoke(
        cli,
        ["score", "--bench", str(shards), "--predictions", str(good), "--predictions", f"weak-model={weak}",
         "--baseline", f"random={random}", "--json", str(out_json), "--plot", str(out_png)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if line.startswith("cell"))
    assert header.split() == ["cell", "qwen-vl", "weak-model", "|", "random"]  # label from the model field
    avg = next(line for line in result.output.splitlines() if line.startswith("Med-Scout-Bench Avg"))
    figures = json.loads(out_json.read_text())["columns"]
    assert [c["label"] for c in figures] == ["qwen-vl", "weak-model", "random"]
    assert [c["baseline"] for c in figures] == [False, False, True]
    assert figures[0]["overall"]["accuracy"] == 1.0 > figures[1]["overall"]["accuracy"]
    assert f"{100 * figures[1]['overall']['accuracy']:.1f}" in avg and "100.0" in avg
    ct_anomaly = next(line for line in result.output.splitlines() if line.startswith("ct/anomaly "))
    assert ct_anomaly.split()[1] == "100.0" and float(ct_anomaly.split()[2]) < 100.0
    with Image.open(out_png) as image:
        assert image.format == "PNG" and image.width > 400 and image.height > 200
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16) or []
    assert len(colours) > 8  # bars in several colours, not a blank canvas


def test_score_refuses_a_predictions_path_that_does_not_exist(shards: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["score", "--bench", str(shards), "--predictions", "m=nowhere.jsonl"])
    assert result.exit_code != 0 and "m=nowhere.jsonl: no such file" in result.output
