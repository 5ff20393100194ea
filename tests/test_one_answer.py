"""One answer per item: a scale crop's best match is its own box; no other jigsaw arrangement fits
as well as the truth (issue 21, deliverable 2)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from medscout_data.imaging import decode_gray
from medscout_data.layout import Layout
from medscout_data.recipe import load_recipe, resolve_recipe_path
from medscout_data.stages.build import BuildOptions, build_modality
from medscout_data.tasks.geometry import TaskRejected, fit_to_grid, shuffle_tiles, tiles
from medscout_data.tasks.items import check_best_match, jigsaw_item
from medscout_data.tasks.solvers import arrangement_costs, best_match, box_iou, solution_margin
from tests.buildsupport import recipe_variant


def _cyclic_image(size: int = 96) -> np.ndarray:
    """A texture periodic across x (sin of one full period) on a vertical ramp: swapping the left
    and right halves gives an image exactly as seamless as the truth."""
    x = np.arange(size, dtype=np.float64)
    y = np.arange(size, dtype=np.float64)[:, None]
    image = 128 + 60 * np.sin(2 * np.pi * x / size) + 50 * (y / size - 0.5)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def test_jigsaw_with_an_arrangement_as_plausible_as_the_truth_is_rejected() -> None:
    image = _cyclic_image()
    recipe = load_recipe("sample")
    pieces = tiles(fit_to_grid(image, 2), 2)
    assert solution_margin(pieces, 2) <= 0.01  # the left-right swap fits as well as the truth
    with pytest.raises(TaskRejected, match=r"jigsaw.min_solution_margin 0.05"):
        jigsaw_item(image, (2, 3, 0, 1), recipe, "ct")
    # the solver cannot tell the truth from the swap: both cost the same, up to rounding
    shuffled = tiles(fit_to_grid(shuffle_tiles(image, (2, 3, 0, 1), 2), 2), 2)
    candidates = np.array([(2, 3, 0, 1), (3, 2, 1, 0)], np.int64)
    truth, swap = arrangement_costs([p.astype(np.float32) for p in shuffled], 2, candidates)
    assert abs(truth - swap) <= 0.01
    # with the check off (negative margin) the same item is made: the check is what rejects it
    off = replace(recipe, jigsaw=replace(recipe.jigsaw, min_solution_margin=-1.0))
    assert jigsaw_item(image, (2, 3, 0, 1), off, "ct").answer == "2 3 0 1"


def test_jigsaw_of_a_distinct_image_keeps_its_margin() -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:96]
    image = 100 + 80 * np.exp(-((xx - 40) ** 2 + (yy - 55) ** 2) / 400.0) + rng.normal(0, 2, (96, 96))
    image = np.clip(image, 0, 255).astype(np.uint8)
    assert solution_margin(tiles(fit_to_grid(image, 2), 2), 2) > 0.05
    assert jigsaw_item(image, (1, 0, 3, 2), load_recipe("sample"), "ct").answer == "1 0 3 2"


def test_best_match_finds_the_crop_and_rejects_a_crop_that_matches_elsewhere() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (120, 160)).astype(np.uint8)
    box = (30, 20, 94, 68)
    crop = image[20:68, 30:94]
    assert box_iou(best_match(image, crop, box), box) == 1.0
    # a crop whose pixels are those of another place: its best match is there, not its box
    other = (90, 60, 154, 108)
    fake = image[60:108, 90:154]
    assert box_iou(best_match(image, fake, box), other) > 0.9
    with pytest.raises(TaskRejected, match=r"crop 1 matches another place .*scale.min_match_iou 0.5"):
        check_best_match(image, [fake], [box], 0.5)
    check_best_match(image, [crop], [box], 0.5)
    check_best_match(image, [fake], [box], 0.0)  # 0 turns it off


def _scale_rows(root: Path) -> dict[str, dict]:
    rows = {}
    for path in sorted((root / "pool" / "ct").glob("scale-*.parquet")):
        rows.update({row["id"]: row for row in pq.read_table(path).to_pylist()})
    return rows


def _match_ious(row: dict) -> list[float]:
    images = [decode_gray(image["bytes"]) for image in row["images"]]
    boxes = json.loads(row["source"])["crops_px"]
    return [
        box_iou(best_match(images[0], c, tuple(b)), tuple(b)) for c, b in zip(images[1:], boxes, strict=True)
    ]


def test_sample_ct_scale_000006_is_replaced_by_an_item_with_one_answer(tmp_path: Path) -> None:
    """The sample recipe's ct-scale-000006: without the check its first crop correlates 0.75 with its
    own box and 0.83 elsewhere; with it, the item comes from its next attempt and every crop's
    best match is its box."""
    off = recipe_variant(tmp_path, resolve_recipe_path("sample"), "min_match_iou = 0")
    for name, recipe_path in (("off", off), ("on", resolve_recipe_path("sample"))):
        build_modality(
            Layout.at(tmp_path / name),
            load_recipe(recipe_path),
            BuildOptions(modality="ct", tasks=("scale",), progress=False),
        )
    before = _scale_rows(tmp_path / "off")["ct-scale-000006"]
    assert min(_match_ious(before)) < 0.5
    assert json.loads(before["source"])["attempt"] == 0
    after_rows = _scale_rows(tmp_path / "on")
    after = after_rows["ct-scale-000006"]
    assert json.loads(after["source"])["attempt"] >= 1
    assert all(min(_match_ious(row)) >= 0.5 for row in after_rows.values())
    report = json.loads((tmp_path / "on" / "reports" / "build" / "ct" / "report.json").read_text())
    assert report["rejected_attempts"]["scale"]["scale.min_match_iou"] >= 1
