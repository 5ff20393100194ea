"""Bench validity (issue 17): content checks, the resampling chain, the enlargement cap, the
matched paste, and the shortcut probes on synthetic items whose answer is known to be readable
(they must find it) or not (they must not)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from validityfixture import flat_background_head, power_law_texture, structured_image

from medscout_data.evaluation.audit import (
    high_frequency_share,
    separability,
    solve_anomaly_intensity,
)
from medscout_data.evaluation.baselines import solve_anomaly, solve_jigsaw, solve_jigsaw_centroid
from medscout_data.recipe import ScaleConfig, load_recipe
from medscout_data.tasks.content import (
    TaskRejected,
    check_tiles,
    edge_neighbours,
    noise_level,
    structure,
)
from medscout_data.tasks.geometry import (
    cell_box,
    crop_shape,
    fit_to_grid,
    make_scale,
    non_identity_permutations,
    paste_cell,
    shuffle_tiles,
    tiles,
)
from medscout_data.tasks.items import anomaly_difference, anomaly_item, jigsaw_item, scale_item
from medscout_data.tasks.resampling import Resampling, matched_chain, resample_crop

RECIPE = load_recipe("sample")
PAPER = load_recipe("med-scout-bench")
seeds = st.integers(min_value=0, max_value=2**32 - 1)


def _flat(height: int, width: int, seed: int, level: float = 102.0, noise: float = 6.0) -> np.ndarray:
    values = np.random.default_rng(seed).normal(level, noise, (height, width))
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _with_scale(recipe, **changes):
    return dataclasses.replace(recipe, scale=dataclasses.replace(recipe.scale, **changes))


# ---------------------------------------------------------------- content measures


@settings(max_examples=60, deadline=None)
@given(height=st.integers(16, 300), width=st.integers(16, 300), seed=seeds, noise=st.floats(0, 8))
def test_a_flat_noisy_square_has_no_structure_and_anatomy_has(height, width, seed, noise) -> None:
    assert structure(_flat(height, width, seed, noise=noise)) < 3.0
    # anatomy from 32 px on, the smallest patch a shipped recipe checks (the sample's 4x4 anomaly
    # cells of 128 px images); a 16 px patch of the phantom can hold a single organ (structure ~4)
    if min(height, width) >= 32:
        assert structure(structured_image(height, width, seed)) > 5.0


def test_noise_level_reads_the_pixel_noise_not_the_anatomy() -> None:
    for sigma in (2.0, 6.0, 12.0):
        flat = _flat(256, 256, 1, level=120, noise=sigma)
        assert noise_level(flat) == pytest.approx(sigma, rel=0.12)
        noisy_anatomy = structured_image(256, 256, 2, noise=sigma)
        assert noise_level(noisy_anatomy) == pytest.approx(sigma, rel=0.25)
    clipped = np.zeros((64, 64), np.uint8)  # air clipped to 0 carries no noise
    assert noise_level(clipped) == 0.0


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(48, 320),
    seed=seeds,
    flat=st.integers(0, 3),
    perm=st.sampled_from(non_identity_permutations(4)),
)
def test_jigsaw_rejects_a_featureless_tile_and_names_it(size, seed, flat, perm) -> None:
    image = structured_image(size, size + 7, seed)
    jigsaw_item(image, perm, RECIPE, "ct")  # every tile structured: accepted
    fitted = fit_to_grid(image, 2).copy()
    tile = tiles(fitted, 2)[flat]
    tile[...] = _flat(*tile.shape, seed)
    with pytest.raises(TaskRejected, match=rf"tile {flat} is featureless"):
        jigsaw_item(fitted, perm, RECIPE, "ct")


def test_jigsaw_rejects_tiles_that_look_alike() -> None:
    tile = structured_image(40, 50, 3)
    image = np.block([[tile, tile], [tile, tile]])
    with pytest.raises(TaskRejected, match="tiles 0 and 1 look alike"):
        jigsaw_item(image, (1, 0, 3, 2), RECIPE, "ct")
    pieces = [structured_image(40, 50, s) for s in range(4)]
    check_tiles(pieces, 3.0, 3.0)  # four different tiles pass


@settings(max_examples=25, deadline=None)
@given(seed=seeds)
def test_scale_crops_of_a_flat_background_head_all_carry_structure(seed) -> None:
    """A 0 HU background passes a -500 HU body mask everywhere; the content check still keeps
    every crop on the head, or rejects the item saying why."""
    image, mask = flat_background_head(256, seed)
    recipe = _with_scale(PAPER, crop_size=112)
    try:
        content = scale_item(image, mask, np.random.default_rng(seed), recipe, "ct", "box")
    except TaskRejected as exc:
        assert "featureless" in str(exc)
        return
    for x0, y0, x1, y1 in content.provenance["crops_px"]:
        assert structure(image[y0:y1, x0:x1]) >= recipe.scale.min_structure


def test_without_the_check_the_same_head_makes_flat_crops() -> None:
    """The check is what keeps the crops above: with the threshold at 0 flat squares come out."""
    recipe = _with_scale(PAPER, crop_size=112, min_structure=0.0, min_match_iou=0.0)
    flat_crops = 0
    for seed in range(40):
        image, mask = flat_background_head(256, seed)
        content = scale_item(image, mask, np.random.default_rng(seed), recipe, "ct", "box")
        flat_crops += sum(
            structure(image[y0:y1, x0:x1]) < 3 for x0, y0, x1, y1 in content.provenance["crops_px"]
        )
    assert flat_crops >= 8


def test_anomaly_rejects_a_featureless_neighbourhood_and_names_it() -> None:
    image = structured_image(128, 128, 5)
    reference = structured_image(128, 128, 6)
    anomaly_item(image, reference, 5, RECIPE, "ct")

    def flattened(cells: list[int]) -> np.ndarray:
        out = image.copy()
        for k in cells:
            x0, y0, x1, y1 = cell_box(128, 128, k, 4)
            out[y0:y1, x0:x1] = _flat(y1 - y0, x1 - x0, k)
        return out

    anomaly_item(flattened([1, 4]), reference, 5, RECIPE, "ct")  # air above and beside: still fair
    with pytest.raises(TaskRejected, match=r"cell 5's neighbourhood is featureless: neighbour cells 1, 4, 6"):
        anomaly_item(flattened([1, 4, 6]), reference, 5, RECIPE, "ct")
    with pytest.raises(TaskRejected, match=r"^cell 5 is featureless"):
        anomaly_item(flattened([5]), reference, 5, RECIPE, "ct")
    assert sorted(edge_neighbours(5, 4)) == [1, 4, 6, 9] and sorted(edge_neighbours(0, 4)) == [1, 4]


# ---------------------------------------------------------------- enlargement cap


@settings(max_examples=80, deadline=None)
@given(height=st.integers(24, 700), width=st.integers(24, 700), cap=st.floats(1.0, 6.0), seed=seeds)
def test_images_below_the_enlargement_cap_are_skipped_with_a_reason(height, width, cap, seed) -> None:
    config = ScaleConfig(crop_size=224, max_enlargement=cap, resampling="matched", min_anatomy_fraction=0.0)
    smallest = crop_shape(height, width, min(config.level_areas))
    image = structured_image(height, width, seed)
    too_small = 224 / max(smallest) > cap
    try:
        make_scale(image, np.ones(image.shape, bool), np.random.default_rng(seed), config)
    except TaskRejected as exc:
        assert too_small == ("too small" in str(exc)), str(exc)
        if too_small:
            assert f"{width}x{height}" in str(exc) and "max_enlargement" in str(exc)
        return
    assert not too_small


# ---------------------------------------------------------------- the resampling chain


@settings(max_examples=30, deadline=None)
@given(height=st.integers(96, 520), width=st.integers(96, 520), seed=seeds)
def test_every_crop_of_an_item_goes_through_the_smallest_levels_native_grid(height, width, seed) -> None:
    config = ScaleConfig(crop_size=96, resampling="matched", min_anatomy_fraction=0.0, max_enlargement=10)
    image = structured_image(height, width, seed)
    result = make_scale(image, np.ones(image.shape, bool), np.random.default_rng(seed), config)
    assert result.chain.effective == crop_shape(height, width, 0.0625)
    assert len({c.shape for c in result.crops}) == 1 and max(result.crops[0].shape) == 96
    again = make_scale(image, np.ones(image.shape, bool), np.random.default_rng(seed), config)
    assert all(np.array_equal(a, b) for a, b in zip(result.crops, again.crops, strict=True))


def _crop_pair(
    image: np.ndarray, mode: str, grain: bool = False, out: int = 224, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(Level-1 crop, Level-2 crop) of one image, both at the centre, through one chain."""
    height, width = image.shape
    effective = crop_shape(height, width, 0.0625)
    if grain:
        shapes = [crop_shape(height, width, area) for area in (0.20, 0.0625)]
        chain = matched_chain(image, effective, (out, out), 1.2, shapes)
    else:
        chain = Resampling(mode, effective, (out, out), 1.2)
    rng = np.random.default_rng(seed)
    out = []
    for area in (0.20, 0.0625):
        h, w = crop_shape(height, width, area)
        y0, x0 = (height - h) // 2, (width - w) // 2
        out.append(resample_crop(image[y0 : y0 + h, x0 : x0 + w], chain, rng)[0])
    return out[0], out[1]


@settings(max_examples=5, deadline=None)
@given(seed=seeds)
def test_both_levels_reach_the_same_effective_resolution(seed) -> None:
    """On white noise (content at every frequency up to the pixel grid) a Level-1 and a Level-2
    crop have the same spectrum after the matched chain (with its grain), and very different
    ones after a direct resize: the level is no longer in the blur. Averaged over 6 images, as
    one crop's spectrum is itself noisy."""
    shares: dict[str, list] = {"matched": [], "direct": []}
    for k in range(6):
        white = np.random.default_rng([seed, k]).normal(128, 20, (448, 448)).clip(0, 255).astype(np.uint8)
        for mode in shares:
            level1, level2 = _crop_pair(white, mode, grain=mode == "matched")
            shares[mode].append(
                [[high_frequency_share(c, cutoff) for cutoff in (0.05, 0.1, 0.15)] for c in (level1, level2)]
            )
    matched, direct = np.mean(shares["matched"], axis=0), np.mean(shares["direct"], axis=0)
    assert matched[0] == pytest.approx(matched[1], rel=0.2)  # 0.1-0.3 cycles per effective pixel
    assert direct[0][2] > 1.3 * direct[1][2]


@settings(max_examples=10, deadline=None)
@given(seed=seeds)
def test_grain_gives_every_level_the_same_noise(seed) -> None:
    """On a flat image every pixel is noise: after the chain both levels show the same noise
    (standard deviation), without the grain the larger crop is visibly smoother."""
    flat = _flat(448, 448, seed, level=120, noise=10.0)
    level1, level2 = _crop_pair(flat, "matched", grain=True)
    assert level1.std() == pytest.approx(level2.std(), rel=0.15)
    level1, level2 = _crop_pair(flat, "matched")
    assert level1.std() < 0.7 * level2.std()


def test_grain_stays_off_clipped_pixels() -> None:
    image = _flat(448, 448, 1, level=120, noise=10.0)
    image[:, :224] = 0  # air, clipped by the window
    level1, _ = _crop_pair(image, "matched", grain=True)
    assert level1[:, :30].max() == 0


# ---------------------------------------------------------------- probes: readable / not readable


def _tier_auc(mode: str, textures: list[np.ndarray], feature) -> float:
    values, levels = [], []
    recipe = _with_scale(PAPER, crop_size=112, resampling=mode)
    for seed, texture in enumerate(textures):
        content = scale_item(
            texture, np.ones(texture.shape, bool), np.random.default_rng(seed), recipe, "ct", "tier"
        )
        values += [feature(c) for c in content.images[1:]]
        levels += content.target["levels"]
    return separability(values, levels)


@pytest.fixture(scope="module")
def textures() -> list[np.ndarray]:
    return [power_law_texture(256, seed, beta=2.0, noise=6.0) for seed in range(16)]


def test_tier_probes_read_the_level_off_a_naive_resize(textures) -> None:
    assert _tier_auc("direct", textures, high_frequency_share) >= 0.9
    assert _tier_auc("direct", textures, noise_level) >= 0.9


def test_tier_probes_cannot_read_the_level_after_the_matched_chain(textures) -> None:
    assert _tier_auc("matched", textures, high_frequency_share) <= 0.7
    assert _tier_auc("matched", textures, noise_level) <= 0.7


def test_seam_solver_finds_a_continuous_image_and_not_white_noise() -> None:
    perms = non_identity_permutations(4)
    rng = np.random.default_rng(0)
    smooth_hits = noise_hits = 0
    for seed in range(23):
        truth = perms[seed]
        smooth_hits += solve_jigsaw(shuffle_tiles(structured_image(96, 96, seed), truth, 2), 2) == truth
        white = rng.integers(0, 256, (96, 96), dtype=np.uint8)
        noise_hits += solve_jigsaw(shuffle_tiles(white, truth, 2), 2) == truth
    assert smooth_hits == 23
    assert noise_hits <= 6  # chance is 1 in 23: nothing to follow across a seam


def _body(size: int, seed: int) -> np.ndarray:
    """A bright body in the middle of a dark frame, with texture."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    body = ((xx - 0.5) / 0.38) ** 2 + ((yy - 0.5) / 0.33) ** 2 < 1
    return np.where(body, structured_image(size, size, seed), 0).astype(np.uint8)


def test_centroid_probe_finds_a_central_body_and_not_a_uniform_texture() -> None:
    perms = non_identity_permutations(4)
    body_hits = texture_hits = 0
    for seed in range(23):
        body_hits += solve_jigsaw_centroid(shuffle_tiles(_body(96, seed), perms[seed], 2), 2) == perms[seed]
        texture = power_law_texture(96, seed)
        texture_hits += solve_jigsaw_centroid(shuffle_tiles(texture, perms[seed], 2), 2) == perms[seed]
    assert body_hits == 23 and texture_hits <= 8


def test_anomaly_probes_find_a_paste_and_only_a_paste() -> None:
    cells = (5, 6, 9, 10)
    seam_hits = intensity_hits = untouched_hits = 0
    for seed in range(20):
        image = structured_image(128, 128, seed)
        cell = cells[seed % 4]
        brighter = np.clip(image.astype(int) + 40, 0, 255).astype(np.uint8)  # the same anatomy, brighter
        tampered = paste_cell(image, brighter, cell, 4)
        intensity_hits += solve_anomaly_intensity(tampered, 4, cells) == cell
        seam_hits += (
            solve_anomaly(paste_cell(image, structured_image(128, 128, seed + 99), cell, 4), 4, cells) == cell
        )
        untouched_hits += solve_anomaly(image, 4, cells) == cell
    assert seam_hits >= 18 and intensity_hits == 20
    assert untouched_hits <= 10  # no paste: the probe can only guess


def test_matched_paste_removes_a_pure_intensity_jump() -> None:
    """A block that differs from the original only by brightness is invisible once matched: the
    difference drops below the threshold and the item is rejected instead of made."""
    image = structured_image(128, 128, 7)
    brighter = np.clip(image.astype(int) + 40, 0, 255).astype(np.uint8)
    assert anomaly_difference(image, brighter, 9, 4) >= 30
    assert anomaly_difference(image, brighter, 9, 4, paste="matched") < 1
    matched = dataclasses.replace(RECIPE, anomaly=dataclasses.replace(RECIPE.anomaly, paste="matched"))
    with pytest.raises(TaskRejected, match="matched paste of cell 9 is not visible"):
        anomaly_item(image, brighter, 9, matched, "xray")
    other = structured_image(128, 128, 8)
    content = anomaly_item(image, other, 9, matched, "xray")  # other anatomy stays visible
    x0, y0, x1, y1 = cell_box(128, 128, 9, 4)
    block, original = content.images[0][y0:y1, x0:x1], image[y0:y1, x0:x1]
    assert abs(float(block.mean()) - float(original.mean())) < 1.0
    assert abs(float(block.std()) - float(original.std())) < 1.0
    assert content.provenance["paste"] == "matched"


# ---------------------------------------------------------------- recipe settings


@pytest.mark.parametrize(
    ("table", "line", "message"),
    [
        ("scale", 'resampling = "bicubic"', "scale.resampling must be direct or matched"),
        ("scale", "resample_blur = 0.1", r"scale.resample_blur must be in \[0.3, 4.0\], got 0.1"),
        ("scale", "max_enlargement = 0.5", r"scale.max_enlargement must be in \[1.0, 100.0\], got 0.5"),
        ("jigsaw", "min_tile_difference = -1.0", r"jigsaw.min_tile_difference must be in \[0.0, 255.0\]"),
        ("anomaly", 'paste = "soft"', "anomaly.paste must be hard or matched"),
        ("scale", "match_noise = 1", "scale.match_noise must be bool"),
    ],
)
def test_validity_settings_are_checked(tmp_path, table: str, line: str, message: str) -> None:
    from medscout_data.recipe import RecipeError

    path = tmp_path / "r.toml"
    path.write_text(
        f'name = "t"\nseed = 1\n[pool]\nitems_per_cell = 10\nbench_per_cell = 2\n[{table}]\n{line}\n'
    )
    with pytest.raises(RecipeError, match=message):
        load_recipe(path)


def test_both_shipped_recipes_turn_the_chain_on() -> None:
    for name in ("sample", "med-scout-bench"):
        recipe = load_recipe(name)
        assert recipe.scale.resampling == "matched" and recipe.scale.match_noise
        assert recipe.anomaly.paste == "hard"
    assert ScaleConfig().resampling == "direct"  # a recipe without the key keeps the paper's resize
