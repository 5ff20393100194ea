"""Issue 21: the scale crops of an item share noise statistics (correlated noise included), the
anatomy is not touched, and a learned probe on artefact features cannot tell the levels."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest
from validityfixture import ct_noise_texture

from medscout_data.evaluation import artefacts
from medscout_data.evaluation.artefacts import (
    ProbeUnavailable,
    artefact_features,
    halves,
    learned_probe,
)
from medscout_data.recipe import load_recipe
from medscout_data.tasks.content import TaskRejected
from medscout_data.tasks.geometry import crop_shape
from medscout_data.tasks.items import scale_item
from medscout_data.tasks.resampling import Resampling, matched_chain, resample_crop

PAPER = load_recipe("med-scout-bench")


def _noise_field(seed: int, kernel: str, size: int = 512, sd: float = 8.0) -> np.ndarray:
    """Pure correlated noise around grey 128 (every pixel is noise): `ramp` or `smooth` kernel."""
    rng = np.random.default_rng(seed)
    radius = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :])
    if kernel == "ramp":
        shape = radius * np.where(radius < 0.5, 0.5 + 0.5 * np.cos(np.pi * radius / 0.5), 0.0)
    else:
        shape = np.exp(-((radius / 0.12) ** 2))
    noise = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(size, size))) * np.sqrt(shape)))
    return np.clip(np.rint(128 + noise / noise.std() * sd), 0, 255).astype(np.uint8)


def _level_crops(image: np.ndarray, seed: int, grain: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(Level-1, Level-2) crop of the image's centre through the paper's matched chain."""
    effective = crop_shape(512, 512, 0.0625)
    shapes = [crop_shape(512, 512, a) for a in (0.20, 0.0625)]
    chain = matched_chain(image, effective, (224, 224), 1.2, shapes, match_noise=grain)
    rng = np.random.default_rng(seed)
    out = []
    for h, w in shapes:
        y0, x0 = (512 - h) // 2, (512 - w) // 2
        out.append(resample_crop(image[y0 : y0 + h, x0 : x0 + w], chain, rng)[0])
    return out[0], out[1]


@pytest.mark.parametrize("kernel", ["ramp", "smooth"])
def test_correlated_noise_looks_the_same_at_both_levels(kernel) -> None:
    """On pure correlated noise, the artefact features of Level-1 and Level-2 crops agree within a
    few percent after the chain (within 10%); without the grain the Level-1 crop's noise is far weaker."""
    names = artefacts.ARTEFACT_FEATURES
    watched = [names.index(n) for n in ("noise", "nps_band1", "nps_band2", "laplacian_std")]
    for grain, tolerance in ((True, 0.10), (False, None)):
        level1, level2 = [], []
        for seed in range(6):
            a, b = _level_crops(_noise_field(seed, kernel), seed, grain)
            level1.append(artefact_features(a))
            level2.append(artefact_features(b))
        ratio = np.mean(level1, axis=0)[watched] / np.mean(level2, axis=0)[watched]
        if tolerance is not None:
            assert np.all(np.abs(ratio - 1) < tolerance), dict(
                zip(np.array(names)[watched], ratio, strict=True)
            )
        else:
            assert np.max(np.abs(ratio - 1)) > 0.15  # the Level-1 crop's noise is visibly different


@pytest.mark.parametrize("kernel", ["ramp", "smooth"])
def test_grain_leaves_the_anatomy_alone(kernel) -> None:
    """What the grain changes is zero-mean noise independent of the image: the crop's mean
    brightness stays within a fraction of a grey level, the change does not follow the anatomy
    (no correlation with the crop without grain) and it is no larger than the image's noise."""
    image = ct_noise_texture(512, 3, kernel, organs=True)
    for seed in range(3):
        with_grain = _level_crops(image, seed, grain=True)
        without = _level_crops(image, seed, grain=False)
        for a, b in zip(with_grain, without, strict=True):
            difference = a.astype(float) - b.astype(float)
            assert abs(difference.mean()) < 0.5
            assert abs(np.corrcoef(difference.ravel(), b.ravel().astype(float))[0, 1]) < 0.1
            assert difference.std() < 12 * 255 / 400  # the texture's noise: 12 HU in a 400 HU window


def test_chain_is_deterministic_and_its_randomness_is_the_items_generator() -> None:
    image = ct_noise_texture(512, 1, "ramp")
    first, again, other = (_level_crops(image, seed) for seed in (7, 7, 8))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], other[0])  # the Level-1 crop's grain comes from the generator
    noise = _noise_field(1, "ramp")  # pure noise: the Level-1 crop lost some by averaging
    chain = matched_chain(noise, (128, 128), (224, 224), 1.2, [(229, 229), (128, 128)])
    assert chain.grain[(229, 229)].sd > 2 * chain.grain[(128, 128)].sd


def test_no_grain_where_nothing_can_be_read() -> None:
    """An image with no flat unsaturated patch (all clipped) gets no grain, not invented noise."""
    image = np.zeros((512, 512), np.uint8)
    chain = matched_chain(image, (128, 128), (224, 224), 1.2, [(229, 229), (128, 128)])
    assert chain.grain == {} and chain.noise == 0.0
    crop, grain = resample_crop(image[:229, :229], chain, np.random.default_rng(0))
    assert grain == 0.0 and crop.max() == 0


def _probe_auc(images: list[np.ndarray], resampling: str, items: int = 72, grain: bool = True) -> float:
    scale = dataclasses.replace(PAPER.scale, resampling=resampling, match_noise=grain)
    recipe = dataclasses.replace(PAPER, scale=scale)
    features, levels, groups = [], [], []
    for n in range(items):
        image = images[n % len(images)]
        try:
            content = scale_item(
                image, np.ones(image.shape, bool), np.random.default_rng(n), recipe, "ct", "tier"
            )
        except TaskRejected:
            continue
        features += [artefact_features(c) for c in content.images[1:]]
        levels += content.target["levels"]
        groups += [str(n % len(images))] * len(content.target["levels"])
    auc, _ = learned_probe(np.array(features), levels, groups)
    return auc


@pytest.mark.parametrize("kernel", ["ramp", "smooth"])
def test_learned_probe_cannot_tell_the_level_on_correlated_noise_texture(kernel) -> None:
    """Paper sizes (512 px slices, 224 px crops), CT-like texture with correlated noise: the
    artefact probe is near chance after the matched chain and perfect after a naive resize."""
    images = [ct_noise_texture(512, seed, kernel) for seed in range(16)]
    assert _probe_auc(images, "matched", items=96) <= 0.65
    if kernel == "ramp":
        assert _probe_auc(images, "direct", items=48) >= 0.9


def test_artefact_probe_cannot_read_organ_borders_but_reads_real_artefacts() -> None:
    """On organs with no noise at all there is no artefact to read: a probe that tells the levels
    there reads content (a Level-1 crop shows more borders). Borders are masked out, so it stays
    near chance (0.76 when borders leaked into the flattest patches), and it still reads a naive
    resize and the chain without grain on the same organs with correlated noise."""
    clean = [ct_noise_texture(512, seed, "ramp", 0.0, organs=True) for seed in range(24)]
    assert _probe_auc(clean, "matched", items=96) <= 0.70
    assert _probe_auc(clean, "direct", items=48) >= 0.9
    noisy = [ct_noise_texture(512, seed, "ramp", organs=True) for seed in range(16)]
    assert _probe_auc(noisy, "matched", items=72, grain=False) >= 0.9


def test_flat_pixels_leave_borders_out_alike_at_any_noise() -> None:
    """A sharp border is masked with its neighbourhood; the pixel noise of CT does not make a
    border (the mask is nearly the same with and without it)."""
    clean = ct_noise_texture(512, 1, "ramp", 0.0, organs=True).astype(np.float32)
    noisy = ct_noise_texture(512, 1, "ramp", organs=True).astype(np.float32)
    step = np.full((64, 64), 100, np.float32)
    step[:, 32:] = 160
    flat, _ = artefacts.flat_pixels(step)
    assert not flat[:, 26:38].any() and flat[:, :20].all()
    a, b = artefacts.flat_pixels(clean)[0], artefacts.flat_pixels(noisy)[0]
    assert a.mean() > 0.3 and (a == b).mean() > 0.9


def test_learned_probe_reads_a_real_cue_and_splits_by_image() -> None:
    rng = np.random.default_rng(0)
    levels = rng.integers(1, 3, 400)
    groups = [f"img{k // 3}" for k in range(400)]
    informative = np.column_stack([levels + rng.normal(0, 0.3, 400), rng.normal(size=400)])
    auc, probability = learned_probe(informative, levels, groups)
    assert auc > 0.95 and probability.shape == (400,)
    auc, _ = learned_probe(rng.normal(size=(400, 2)), levels, groups)
    assert 0.35 < auc < 0.65
    side = halves(groups)
    assert all(len({side[i] for i, g in enumerate(groups) if g == name}) == 1 for name in set(groups))
    assert learned_probe(informative, [1] * 400, groups)[0] is None  # one level: nothing to learn


def test_without_scikit_learn_the_probe_says_how_to_install_it(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.ensemble", None)
    with pytest.raises(ProbeUnavailable, match=r"medscout-data\[audit\]"):
        learned_probe(np.zeros((4, 2)), [1, 2, 1, 2], ["a", "b", "a", "b"])


def test_direct_chain_untouched() -> None:
    """The `direct` chain (the paper's crop-and-resize) adds no grain."""
    image = ct_noise_texture(512, 2, "ramp")
    crop, grain = resample_crop(image[:229, :229], Resampling("direct", (128, 128), (224, 224)), None)
    assert grain == 0.0 and crop.shape == (224, 224)
