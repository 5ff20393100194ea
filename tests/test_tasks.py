"""Task geometry: property tests over image sizes and seeds."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from validityfixture import structured_image

from medscout_data.recipe import ScaleConfig, load_recipe
from medscout_data.tasks import prompts
from medscout_data.tasks.geometry import (
    TaskRejected,
    box_fraction,
    box_to_grid,
    cell_box,
    cell_difference,
    crop_shape,
    fit_to_grid,
    make_scale,
    non_identity_permutations,
    paste_cell,
    reassemble,
    sample_crop_box,
    shuffle_tiles,
)
from medscout_data.tasks.items import anomaly_item, jigsaw_item, scale_item

RECIPE = load_recipe("sample")
sizes = st.integers(min_value=24, max_value=400)
seeds = st.integers(min_value=0, max_value=2**32 - 1)


def _image(height: int, width: int, seed: int) -> np.ndarray:
    """A structured test image: a smooth random field (anatomy-like blobs) plus pixel noise."""
    return structured_image(height, width, seed)


def _noise(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)


@settings(max_examples=200, deadline=None)
@given(height=sizes, width=sizes, seed=seeds, level=st.sampled_from([0.20, 0.0625]))
def test_crop_area_aspect_centre_and_inside(height: int, width: int, seed: int, level: float) -> None:
    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = sample_crop_box(height, width, level, (0.2, 0.8), rng)
    w, h = x1 - x0, y1 - y0
    # Area within a pixel of rounding on each side.
    assert abs(w - width * math.sqrt(level)) <= 0.5 and abs(h - height * math.sqrt(level)) <= 0.5
    assert (w - 1) * (h - 1) <= level * width * height <= (w + 1) * (h + 1)
    assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    # The centre is the drawn one, unless clamping was needed to stay inside.
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    assert 0.2 * width - 1 <= cx <= 0.8 * width + 1 or x0 == 0 or x1 == width
    assert 0.2 * height - 1 <= cy <= 0.8 * height + 1 or y0 == 0 or y1 == height


@settings(max_examples=60, deadline=None)
@given(height=sizes, width=sizes, seed=seeds)
def test_scale_crops_one_size_mostly_anatomy_and_boxes_match(height: int, width: int, seed: int) -> None:
    image = _image(height, width, seed)
    mask = np.zeros((height, width), bool)
    mask[height // 8 : height - height // 8, width // 8 : width - width // 8] = True
    config = RECIPE.scale
    too_small = (
        config.crop_size / max(crop_shape(height, width, min(config.level_areas))) > config.max_enlargement
    )
    try:
        content = scale_item(image, mask, np.random.default_rng(seed), RECIPE, "ct", "box")
    except TaskRejected as exc:
        # Images below the enlargement cap are skipped, and say so; tiny ones can fail the anatomy rule.
        assert not too_small or "too small" in str(exc)
        return
    assert not too_small
    crops = content.images[1:]
    assert len(crops) == config.n_crops
    assert len({c.shape for c in crops}) == 1
    assert max(crops[0].shape) == config.crop_size
    boxes = [tuple(b) for b in json.loads(json.dumps(content.provenance["crops_px"]))]
    for box, level in zip(boxes, content.target["levels"], strict=True):
        assert box_fraction(mask, box) >= config.min_anatomy_fraction
        expected = crop_shape(height, width, config.level_areas[level - 1])
        assert (box[3] - box[1], box[2] - box[0]) == expected
    assert content.answer == prompts.box_answer([box_to_grid(b, height, width) for b in boxes])
    for unit, box in zip(content.target["boxes"], boxes, strict=True):
        assert np.allclose(unit, [box[0] / width, box[1] / height, box[2] / width, box[3] / height])


def test_scale_crop_pixels_come_from_the_box() -> None:
    image = _image(200, 160, 1)
    for resampling in ("direct", "matched"):
        config = ScaleConfig(
            crop_size=400, min_anatomy_fraction=0.0, max_enlargement=10.0, resampling=resampling
        )
        result = make_scale(image, np.ones_like(image, bool), np.random.default_rng(0), config)
        for crop, (x0, y0, x1, y1) in zip(result.crops, result.boxes, strict=True):
            import cv2

            back = cv2.resize(crop, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
            assert np.abs(back.astype(int) - image[y0:y1, x0:x1]).mean() < 12


def test_scale_rejects_images_without_anatomy() -> None:
    image = _noise(400, 400, 2)
    try:
        make_scale(image, np.zeros_like(image, bool), np.random.default_rng(0), ScaleConfig())
    except TaskRejected as exc:
        assert "anatomy" in str(exc)
    else:
        raise AssertionError("an image with no anatomy must be rejected")


def test_levels_are_both_used_and_tier_answer_lists_them() -> None:
    levels = Counter()
    image = _image(128, 128, 3)
    for seed in range(200):
        content = scale_item(
            image, np.ones_like(image, bool), np.random.default_rng(seed), RECIPE, "mri", "tier"
        )
        levels.update(content.target["levels"])
        assert content.answer == ", ".join(f"Label {v}" for v in content.target["levels"])
    assert set(levels) == {1, 2} and abs(levels[1] - levels[2]) < 0.15 * 600


def test_there_are_23_non_identity_permutations() -> None:
    perms = non_identity_permutations(4)
    assert len(perms) == 23 == len(set(perms))
    assert (0, 1, 2, 3) not in perms


@settings(max_examples=150, deadline=None)
@given(height=sizes, width=sizes, seed=seeds, perm=st.sampled_from(non_identity_permutations(4)))
def test_jigsaw_answer_reassembles_the_original_exactly(height: int, width: int, seed: int, perm) -> None:
    image = _image(height, width, seed)
    try:
        content = jigsaw_item(image, perm, RECIPE, "ct")
    except TaskRejected as exc:
        assert any(why in str(exc) for why in ("featureless", "look alike", "another arrangement"))
        return
    shuffled = content.images[0]
    answer = tuple(int(k) for k in content.answer.split())
    assert answer == perm
    assert np.array_equal(reassemble(shuffled, answer, 2), fit_to_grid(image, 2))
    # The tile at shuffled position p is the original tile perm[p].
    h, w = shuffled.shape[0] // 2, shuffled.shape[1] // 2
    fitted = fit_to_grid(image, 2)
    for p, k in enumerate(perm):
        r, c = divmod(p, 2)
        orow, ocol = divmod(k, 2)
        assert np.array_equal(
            shuffled[r * h : (r + 1) * h, c * w : (c + 1) * w],
            fitted[orow * h : (orow + 1) * h, ocol * w : (ocol + 1) * w],
        )


def test_shuffle_refuses_non_permutations() -> None:
    try:
        shuffle_tiles(_image(8, 8, 0), (0, 0, 1, 2), 2)
    except ValueError:
        return
    raise AssertionError("a repeated index is not a permutation")


@settings(max_examples=150, deadline=None)
@given(height=sizes, width=sizes, seed=seeds, cell=st.sampled_from([5, 6, 9, 10]))
def test_anomaly_changes_only_its_cell(height: int, width: int, seed: int, cell: int) -> None:
    image = _image(height, width, seed)
    reference = _image(height + 7, width + 3, seed + 1)
    try:
        content = anomaly_item(image, reference, cell, RECIPE, "xray")
    except TaskRejected as exc:  # a featureless cell or an invisible paste: named, never an item
        assert "featureless" in str(exc) or "not visible" in str(exc)
        return
    tampered = content.images[0]
    fitted = fit_to_grid(image, 4)
    assert tampered.shape == fitted.shape
    x0, y0, x1, y1 = cell_box(*fitted.shape, cell, 4)
    outside = np.ones(fitted.shape, bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(tampered[outside], fitted[outside])
    assert content.answer == str(cell)
    assert content.target == {"grid": 4, "cell": cell, "row": cell // 4, "col": cell % 4}


def test_paste_cell_copies_the_reference_cell() -> None:
    image = np.zeros((64, 64), np.uint8)
    reference = np.full((64, 64), 200, np.uint8)
    tampered = paste_cell(image, reference, 9, 4)
    assert tampered[32:48, 16:32].min() == 200 and tampered.sum() == 200 * 16 * 16


def test_cell_difference_sees_structure_not_noise() -> None:
    rng = np.random.default_rng(0)
    base = np.full((128, 128), 100.0)
    noisy_a = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
    noisy_b = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
    box = cell_box(128, 128, 5, 4)
    assert cell_difference(noisy_a, noisy_b, box) < 3  # noise alone is not visible
    structured = noisy_b.copy()
    structured[32:48, 32:64] = 180
    assert cell_difference(noisy_a, structured, box) > 20
