"""Learned tier probes: can a classifier tell a Level-2 crop from a Level-1 crop by its statistics?

A single feature with a threshold (audit's `sharpness`, `noise`) misses cues
that only show in combination. These probes train a gradient-boosting
classifier on a crop's own statistics and report its AUC on held-out crops:

- `artefacts`: what the resampling leaves, nothing about the anatomy, read on
  flat tissue only (`flat_pixels`: away from the borders found at a coarse
  scale, so a Level-1 crop's extra organ borders are not read as noise): the
  pixel-noise level, the noise power spectrum in four radial bands (in the
  flat patches, each less its best-fit plane), statistics of the Laplacian,
  and the compressed PNG size per pixel of the flat patches' noise residual.
- `content`: what the crop shows: its grey-level histogram, the spread of its
  block means, its coarse gradients and its low-frequency power. A Level-2
  crop shows the anatomy 1.8x larger, so this probe is expected to tell the
  levels apart: that is the task, not a shortcut.

The classifier is trained on the crops of half of the source images and tested
on the other half, and the other way round (the mean of the two AUCs), so it
never sees a test image's pixels. scikit-learn is an optional extra
(`pip install 'medscout-data[audit]'`).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import cv2
import numpy as np

from medscout_data.tasks.content import block_means

PATCH = 16  # pixels: the patches the noise spectrum is read in
COARSE_SIGMA = 3.0  # pixels: the smoothing borders are found at (noise averages out, borders stay)
BORDER_GRADIENT = 3.0  # grey levels per pixel of the smoothed crop: steeper is a border
BORDER_RADIUS = 6  # pixels: what lies this close to a border is not read
MIN_PATCHES = 12  # ... the noise spectrum is read in at least this many patches (the least steep ones)
BANDS = (0.0, 0.125, 0.25, 0.375, 0.5001)  # cycles per pixel: the noise spectrum's radial bands
ARTEFACT_FEATURES = (
    "noise",
    "nps_band1",
    "nps_band2",
    "nps_band3",
    "nps_band4",
    "nps_log_total",
    "laplacian_std",
    "laplacian_mad",
    "laplacian_kurtosis",
    "png_bits_per_pixel",
)
CONTENT_FEATURES = (
    "mean",
    "std",
    "p10",
    "p50",
    "p90",
    "saturated",
    "block_spread",
    "coarse_gradient",
    "low_frequency_share",
)
_NOISE_MASK = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)  # Immerkaer (1996)
INSTALL_HINT = "the learned probes need scikit-learn: pip install 'medscout-data[audit]'"


class ProbeUnavailable(RuntimeError):
    """scikit-learn is not installed."""


def artefact_features(crop: np.ndarray) -> np.ndarray:
    """The crop's artefact statistics, in ARTEFACT_FEATURES order, read on flat tissue only.

    Every statistic is taken away from borders (`flat_pixels`): a Level-1 crop shows more organ
    borders per pixel than a Level-2 crop, and a border read as noise tells the level by content.
    """
    values = crop.astype(np.float32)
    flat, gradient = flat_pixels(values)
    patches = _flat_patches(values, flat, gradient)
    nps = _noise_spectrum(patches)
    total = float(nps.sum())
    shares = nps / total if total > 0 else nps
    inner = flat[1:-1, 1:-1]
    laplacian = cv2.Laplacian(values, cv2.CV_32F)[1:-1, 1:-1][inner]
    immerkaer = np.abs(cv2.filter2D(values, -1, _NOISE_MASK))[1:-1, 1:-1][inner]
    noise = float(immerkaer.mean()) * np.sqrt(np.pi / 2) / 6 if immerkaer.size else 0.0
    centred = laplacian - laplacian.mean() if laplacian.size else np.zeros(1, np.float32)
    spread = float(centred.std())
    kurtosis = float((centred**4).mean() / spread**4) if spread > 0 else 0.0
    mad = float(np.abs(centred).mean())
    return np.array([noise, *shares, np.log1p(total), spread, mad, kurtosis, _png_bits(patches)], np.float64)


def flat_pixels(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flat, coarse gradient): flat are the unsaturated pixels at least BORDER_RADIUS px from any
    border, where the gradient of the image smoothed at COARSE_SIGMA (which pixel noise hardly
    moves) exceeds BORDER_GRADIENT grey levels per pixel. An absolute threshold, so a border
    counts alike in a crop of either level."""
    smooth = cv2.GaussianBlur(values, (0, 0), COARSE_SIGMA)
    gradient = np.hypot(cv2.Sobel(smooth, cv2.CV_32F, 1, 0), cv2.Sobel(smooth, cv2.CV_32F, 0, 1)) / 8
    saturated = (values <= 0.5) | (values >= 254.5)
    near = ((gradient > BORDER_GRADIENT) | saturated).astype(np.uint8)
    size = 2 * BORDER_RADIUS + 1
    near = cv2.dilate(near, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))
    return near == 0, gradient


def _flat_patches(values: np.ndarray, flat: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """The PATCH x PATCH patches (a regular grid) whose every pixel is flat, topped up to MIN_PATCHES
    with the unsaturated patches of least coarse gradient (a textured crop may have no flat patch),
    each less its best-fit plane (the tissue's shading, not noise): float64 (n, PATCH, PATCH)."""
    height, width = (s - s % PATCH for s in values.shape)
    if height == 0 or width == 0:
        return np.zeros((0, PATCH, PATCH))

    def cut(image: np.ndarray) -> np.ndarray:
        grid = (height // PATCH, PATCH, width // PATCH, PATCH)
        return image[:height, :width].reshape(grid).swapaxes(1, 2).reshape(-1, PATCH * PATCH)

    patches = cut(values)
    keep = cut(flat).all(axis=1)
    if keep.sum() < MIN_PATCHES:
        unsaturated = ((patches > 0.5) & (patches < 254.5)).all(axis=1)
        steepest = np.where(unsaturated, cut(gradient).max(axis=1), np.inf)
        order = np.argsort(steepest, kind="stable")[:MIN_PATCHES]
        keep[order[np.isfinite(steepest[order])]] = True
    chosen = patches[keep].astype(np.float64)
    basis = _plane_basis()
    return (chosen - (chosen @ basis) @ basis.T).reshape(-1, PATCH, PATCH)


def _png_bits(patches: np.ndarray) -> float:
    """Compressed PNG size per pixel of the flat patches' noise (each less its plane, centred on
    grey 128, stacked): how compressible the noise is, with no border or shading in it."""
    if len(patches) == 0:
        return 0.0
    stacked = np.clip(np.rint(patches.reshape(-1, PATCH) + 128), 0, 255).astype(np.uint8)
    return len(cv2.imencode(".png", stacked)[1]) * 8 / stacked.size


def content_features(crop: np.ndarray) -> np.ndarray:
    """What the crop shows, in CONTENT_FEATURES order."""
    values = crop.astype(np.float32)
    p10, p50, p90 = np.percentile(values, (10, 50, 90))
    saturated = float(((crop == 0) | (crop == 255)).mean())
    small = cv2.resize(values, (values.shape[1] // 4, values.shape[0] // 4), interpolation=cv2.INTER_AREA)
    gradient = float(np.hypot(*np.gradient(small)).mean())
    power = np.abs(np.fft.rfft2(values - values.mean())) ** 2
    radius = np.hypot(np.fft.fftfreq(values.shape[0])[:, None], np.fft.rfftfreq(values.shape[1])[None, :])
    low = float(power[(radius > 0) & (radius < 0.05)].sum() / max(power.sum(), 1e-9))
    spread = float(block_means(crop).std())
    return np.array(
        [values.mean(), values.std(), p10, p50, p90, saturated, spread, gradient, low], np.float64
    )


def _noise_spectrum(patches: np.ndarray) -> np.ndarray:
    """Mean power per radial band of the flat patches' noise (zeros when there is none)."""
    if len(patches) == 0:
        return np.zeros(len(BANDS) - 1)
    power = (np.abs(np.fft.rfft2(patches)) ** 2).mean(axis=0) / PATCH**2
    radius = np.hypot(np.fft.fftfreq(PATCH)[:, None], np.fft.rfftfreq(PATCH)[None, :])
    return np.array([power[(radius > lo) & (radius <= hi)].mean() for lo, hi in itertools.pairwise(BANDS)])


@functools.lru_cache(maxsize=1)
def _plane_basis() -> np.ndarray:
    """Orthonormal basis (PATCH^2 x 3) of the constant and the two ramps over a patch."""
    yy, xx = np.mgrid[0:PATCH, 0:PATCH].astype(np.float64)
    basis, _ = np.linalg.qr(np.stack([np.ones(PATCH * PATCH), yy.ravel(), xx.ravel()], axis=1))
    return basis


def halves(groups: Sequence[str]) -> np.ndarray:
    """0 / 1 per crop: alternate source images in sorted order, so no image is on both sides."""
    order = {group: rank % 2 for rank, group in enumerate(sorted(set(groups)))}
    return np.array([order[g] for g in groups])


def learned_probe(
    features: np.ndarray, levels: Sequence[int], groups: Sequence[str]
) -> tuple[float | None, np.ndarray]:
    """(mean held-out AUC of the two halves, each crop's held-out level-2 probability).

    AUC 0.5: the features say nothing about the level; None when a half lacks a level.
    """
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.metrics import roc_auc_score
    except ImportError as exc:
        raise ProbeUnavailable(INSTALL_HINT) from exc
    x = np.asarray(features, np.float64)
    y = np.asarray(levels) == 2
    side = halves(groups)
    probability = np.full(len(y), 0.5)
    aucs = []
    for test in (0, 1):
        train, held = side != test, side == test
        if len(set(y[train])) < 2 or len(set(y[held])) < 2:
            return None, probability
        model = HistGradientBoostingClassifier(
            max_iter=150,
            learning_rate=0.05,
            max_leaf_nodes=15,
            min_samples_leaf=5,
            early_stopping=False,
            random_state=0,
        )
        model.fit(x[train], y[train])
        probability[held] = model.predict_proba(x[held])[:, 1]
        aucs.append(roc_auc_score(y[held], probability[held]))
    return float(np.mean(aucs)), probability
