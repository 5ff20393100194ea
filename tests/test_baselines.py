"""Baselines: seeded random answers, the best constant answer, and classical solvers that
beat random on phantom items."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from benchfixture import make_shards, make_staged_repo, volume_slices, write_manifest
from click.testing import CliRunner

from medscout_data.cli import cli
from medscout_data.evaluation.baselines import (
    META_COLUMNS,
    AnswerShape,
    BaselineOptions,
    answer_shape,
    constant_answer,
    interior_cells,
    iter_hub_rows,
    iter_rows,
    run_baseline,
    solve_anomaly,
    solve_jigsaw,
    solve_scale,
)
from medscout_data.evaluation.score import Truth, resolve_bench, score_file
from medscout_data.recipe import load_recipe
from medscout_data.seeding import rng_for
from medscout_data.tasks.geometry import non_identity_permutations, shuffle_tiles
from medscout_data.tasks.items import anomaly_item, scale_item

RECIPE = load_recipe("sample")


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All three modalities, 8 items per cell, and a train side."""
    return make_shards(
        tmp_path_factory.mktemp("shards"), modalities=("ct", "mri", "xray"), per_cell=8, train_per_cell=6
    )


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _bench_rows(root: Path) -> list[dict]:
    columns = ["id", "modality", "task", "variant", "target"]
    return [r for p in resolve_bench(root).files for r in pq.read_table(p, columns=columns).to_pylist()]


# ---------------------------------------------------------------- solvers


def test_jigsaw_solver_recovers_every_permutation_of_a_phantom_slice() -> None:
    image = volume_slices("ct", 0, 0)[12]
    solved = [solve_jigsaw(shuffle_tiles(image, p, 2), 2) == p for p in non_identity_permutations(4)]
    assert all(solved), f"{solved.count(False)} of 23 permutations missed"


def test_anomaly_solver_finds_the_pasted_cell() -> None:
    yy, xx = np.mgrid[0:128, 0:128].astype(np.float32)
    image = (128 + 60 * np.sin(xx / 9) * np.cos(yy / 13)).astype(np.uint8)
    reference = (128 + 60 * np.sin(xx / 7 + 1) * np.cos(yy / 11 + 2)).astype(np.uint8)
    for cell in RECIPE.anomaly.cells:
        tampered = anomaly_item(image, reference, cell, RECIPE, "ct").images[0]
        assert solve_anomaly(tampered, 4, RECIPE.anomaly.cells) == cell


def test_anomaly_solver_on_phantom_slices_mostly_right() -> None:
    image, reference = volume_slices("ct", 0, 0)[12], volume_slices("ct", 1, 0)[14]
    found = [
        solve_anomaly(anomaly_item(image, reference, cell, RECIPE, "ct").images[0], 4, RECIPE.anomaly.cells)
        == cell
        for cell in RECIPE.anomaly.cells
    ]
    assert sum(found) >= 3, found


def test_template_matching_recovers_levels_and_boxes() -> None:
    image = volume_slices("mri", 2, 0)[10]
    content = scale_item(image, image > 10, rng_for(0, "scale-test"), RECIPE, "mri", "box")
    found = solve_scale(content.images[0], content.images[1:], RECIPE.scale.level_areas)
    assert [level for level, _ in found] == content.target["levels"]
    for (_, box), truth in zip(found, content.target["boxes_1000"], strict=True):
        assert np.abs(np.array(box) - np.array(truth)).max() <= 10


def test_answer_shape_is_read_from_the_question(shards: Path) -> None:
    rows = [r for _, r in iter_rows(resolve_bench(shards), META_COLUMNS)]
    scale = next(r for r in rows if r["task"] == "scale")
    shape = answer_shape("scale", scale["variant"], scale["question"], Truth.from_item(scale))
    assert shape.level_areas == pytest.approx(RECIPE.scale.level_areas) and shape.size == 3
    anomaly = next(r for r in rows if r["task"] == "anomaly")
    assert (
        answer_shape("anomaly", "", anomaly["question"], Truth.from_item(anomaly)).cells
        == RECIPE.anomaly.cells
    )
    assert answer_shape("anomaly", "", "", Truth("anomaly", cell=0, grid=5)).cells == interior_cells(5)
    assert interior_cells(4) == (5, 6, 9, 10)


# ---------------------------------------------------------------- prior


def test_constant_answer_is_the_best_constant() -> None:
    tiers = [("Label 1", "Label 2"), ("Label 1", "Label 2"), ("Label 2", "Label 2")]
    assert constant_answer([Truth("tier", labels=t) for t in tiers]) == "Label 1, Label 2"
    boxes = [((0, 0, 100, 100),), ((10, 20, 110, 130),)]
    assert constant_answer([Truth("box", boxes=b) for b in boxes]) == "(5, 10, 105, 115)"
    perms = [(1, 0, 3, 2), (0, 1, 3, 2)]  # a tie: the smallest wins, so reruns agree
    assert constant_answer([Truth("jigsaw", permutation=p, grid=2) for p in perms]) == "0 1 3 2"
    assert constant_answer([Truth("anomaly", cell=c, grid=4) for c in (9, 9, 5)]) == "9"


def test_prior_comes_from_the_train_side(shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "prior.jsonl"
    report = run_baseline(shards, out, BaselineOptions("prior", progress=False))
    assert report.info["prior_from"] == "train"
    answers = {line["id"]: line["response"] for line in _lines(out)}
    rows = _bench_rows(shards)
    assert set(answers) == {r["id"] for r in rows}
    for modality in ("ct", "mri", "xray"):
        cell_answers = {
            answers[r["id"]] for r in rows if r["modality"] == modality and r["task"] == "anomaly"
        }
        train = pq.read_table(
            shards / "train" / modality / "anomaly" / "train-00000-of-00001.parquet"
        ).to_pylist()
        counts = Counter(json.loads(r["target"])["cell"] for r in train)
        best = min(counts, key=lambda c: (-counts[c], c))
        assert cell_answers == {str(best)}


def test_prior_without_train_side_is_flagged_as_oracle(tmp_path: Path) -> None:
    staged = make_staged_repo(tmp_path / "repo", modalities=("ct",), per_cell=3)
    out = tmp_path / "prior.jsonl"
    report = run_baseline(staged, out, BaselineOptions("prior", progress=False))
    assert report.info["prior_from"] == "bench-oracle"
    result = CliRunner().invoke(
        cli, ["baseline", "--name", "prior", "--bench", str(staged), "--out", str(out), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert "ORACLE" in result.output


# ---------------------------------------------------------------- random and classical vs random


def test_random_baseline_is_seeded_and_well_formed(shards: Path, tmp_path: Path) -> None:
    paths = [tmp_path / f"r{i}.jsonl" for i in range(3)]
    for path, seed in zip(paths, (1, 1, 2), strict=True):
        run_baseline(shards, path, BaselineOptions("random", seed=seed, progress=False))
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()
    for profile in ("official", "paper"):
        assert score_file(paths[0], shards, profile).overall.means()["format"] == 0.5


def test_classical_beats_random_on_phantom_items(shards: Path, tmp_path: Path) -> None:
    means = {}
    for name in ("random", "classical"):
        out = tmp_path / f"{name}.jsonl"
        report = run_baseline(shards, out, BaselineOptions(name, seed=0, progress=False))
        assert not report.skips
        result = score_file(out, shards)
        for task in ("scale", "jigsaw", "anomaly"):
            cells = [result.cells[f"{m}/{task}"] for m in ("ct", "mri", "xray")]
            means[name, task] = sum(c.accuracy for c in cells) / sum(c.count for c in cells)
    for task in ("scale", "jigsaw", "anomaly"):
        assert means["classical", task] > means["random", task] + 0.25, means


def test_undecodable_image_is_recorded_and_the_item_left_missing(shards: Path, tmp_path: Path) -> None:
    bench = tmp_path / "bench"
    for path in resolve_bench(shards).files:
        target = bench / path.relative_to(shards / "bench")
        target.parent.mkdir(parents=True, exist_ok=True)
        table = pq.read_table(path)
        if "xray/anomaly" in str(path):
            images = table.column("images").to_pylist()
            images[1] = [{"bytes": b"not a png", "path": None}]
            table = table.set_column(table.schema.get_field_index("images"), "images", [images])
        pq.write_table(table, target)
    write_manifest(tmp_path)  # a split whose manifest vouches for the bad image: the decoder meets it
    out = tmp_path / "classical.jsonl"
    report = run_baseline(tmp_path, out, BaselineOptions("classical", progress=False))
    assert [s.reason for s in report.skips] == ["ImageDecodeError"]
    assert "xray-anomaly-0001" in report.skips[0].message
    assert score_file(out, tmp_path).missing_ids == ["xray-anomaly-0001"]


def test_hub_rows_match_local_rows(tmp_path: Path) -> None:
    staged = make_staged_repo(tmp_path / "repo", modalities=("ct",), per_cell=2)
    columns = [*META_COLUMNS, "images"]
    local = {r["id"]: r for _, r in iter_rows(resolve_bench(staged), columns)}
    hub = {r["id"]: r for _, r in iter_hub_rows(str(staged), columns, cache_dir=str(tmp_path / "hf-cache"))}
    assert local.keys() == hub.keys()
    for key, row in local.items():
        assert [i["bytes"] for i in hub[key]["images"]] == [i["bytes"] for i in row["images"]]
        assert hub[key]["target"] == row["target"]


def test_cli_baseline_writes_one_line_per_item(shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "random.jsonl"
    args = [
        "baseline",
        "--name",
        "random",
        "--bench",
        str(shards),
        "--out",
        str(out),
        "--seed",
        "3",
        "--quiet",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    lines = _lines(out)
    assert len(lines) == 3 * 3 * 8 and all(set(line) == {"id", "response"} for line in lines)
    assert isinstance(AnswerShape("anomaly", 1, 4, (5,)).cells, tuple)
