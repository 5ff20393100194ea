"""`classical` is the strongest of the audit's solvers per cell, learnt on the train side, never on
the bench (issue 21, deliverable 7)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from benchfixture import bench_rows, write_manifest, write_side

from medscout_data.evaluation.baselines import BaselineOptions
from medscout_data.evaluation.classical import audit, run_classical
from medscout_data.evaluation.score import Truth, accuracy_reward
from medscout_data.recipe import load_recipe
from medscout_data.tasks.geometry import non_identity_permutations
from medscout_data.tasks.items import ItemKey, jigsaw_item, to_row

SIZE = 96


def wrapped_head(seed: int) -> np.ndarray:
    """A bright round head in the middle of a texture that is seamless only when the quadrants are
    turned inside out (a ramp shifted by half the image): seam continuity assembles that wrong
    arrangement, as it assembles the 180-degree turn of a real symmetric head, while the body
    centroid puts the head in the middle, which is right."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)

    def ramp(v: np.ndarray) -> np.ndarray:
        return ((v + SIZE / 2) % SIZE) / SIZE

    head = np.hypot(xx - SIZE / 2 + 0.5, yy - SIZE / 2 + 0.5) < SIZE * 0.35
    image = 30 + 120 * (ramp(xx) + ramp(yy)) / 2 + 60 * head + rng.normal(0, 2, head.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _jigsaw_rows(count: int, seed: int) -> list[dict]:
    recipe = load_recipe("sample")
    recipe = replace(recipe, jigsaw=replace(recipe.jigsaw, min_solution_margin=-1.0))  # as built before
    permutations = non_identity_permutations(4)
    rows = []
    for n in range(count):
        content = jigsaw_item(wrapped_head(seed + n), permutations[(seed + n) % 23], recipe, "ct")
        key = ItemKey(f"ct-jigsaw-{n:04d}", "ct", "jigsaw", "", f"s{seed + n}", f"s{seed + n}", "", n)
        rows.append(to_row(content, key, {"dataset": "test"}, recipe.png))
    return rows


def _write(root: Path, bench: list[dict], train: list[dict]) -> Path:
    write_side(root / "bench", "test", {"ct": {"jigsaw": bench}})
    write_side(root / "train", "train", {"ct": {"jigsaw": train}})
    write_manifest(root)
    return root


def _accuracy(predictions: Path, bench: list[dict]) -> float:
    answers = {
        json.loads(line)["id"]: json.loads(line)["response"] for line in predictions.read_text().splitlines()
    }
    return float(np.mean([accuracy_reward(answers[row["id"]], Truth.from_item(row)) for row in bench]))


def test_classical_takes_the_centroid_where_seams_assemble_the_wrong_arrangement(tmp_path: Path) -> None:
    bench = _jigsaw_rows(8, seed=0)
    root = _write(tmp_path / "shards", bench, _jigsaw_rows(8, seed=100))
    report = run_classical(root, tmp_path / "classical.jsonl", BaselineOptions("classical", progress=False))
    choice = report.info["classical_choice"]["ct/jigsaw"]
    assert report.info["classical_from"] == "train"
    assert choice["solver"] == "centroid" and choice["train_accuracy"]["seams"] < 0.5
    assert _accuracy(tmp_path / "classical.jsonl", bench) == 1.0
    # the audit's classical row is the same solver, and no probe beats it
    probes = audit(root, progress=False).cells["ct/jigsaw"].probes
    assert probes["seams"].accuracy < 0.5
    assert probes["classical"].accuracy == 1.0
    assert all(probes["classical"].accuracy >= p.accuracy for p in probes.values())


def test_classical_learns_on_the_train_side_never_on_the_bench(tmp_path: Path) -> None:
    """Train items where seams are right, bench items where only the centroid is: classical keeps
    what the train side taught it (seams) and does not peek at the bench."""
    bench = _jigsaw_rows(6, seed=0)
    phantom = bench_rows(("ct",), per_cell=6, seed=1)["ct"]["jigsaw"]
    root = _write(tmp_path / "shards", bench, phantom)
    report = run_classical(root, tmp_path / "classical.jsonl", BaselineOptions("classical", progress=False))
    assert report.info["classical_choice"]["ct/jigsaw"]["solver"] == "seams"
    assert _accuracy(tmp_path / "classical.jsonl", bench) < 0.5
