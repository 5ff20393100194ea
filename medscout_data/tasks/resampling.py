"""How a scale crop reaches the common crop size, so its level cannot be read off its blur.

The naive chain resizes every crop straight to the common size: a Level-2
crop (6.25% of the image) is enlarged about 1.75x, a Level-1 crop (20%)
hardly at all, so Level-2 crops are blurrier and show the pixel noise
magnified, and a sharpness or noise probe tells the levels apart without
looking at the anatomy (issue 17).

The `matched` chain gives every crop of an item the same effective
resolution before the common size:

1. each crop is brought to the *effective grid* (the native size of the
   smallest level's crop) by area averaging, then low-passed there with a
   Gaussian, so that its total blur (the average's box plus the Gaussian)
   is `blur` effective pixels for every crop. Every crop then has about the
   same transfer function in effective pixels: scale-free content looks
   alike at every level. (Blurring at the native size before resampling is
   a little more exact and three times slower; bench_validity.py measured
   no difference in the probes.)
2. with `match_noise`, the noise the larger crops lost by averaging is put
   back as grain with the spectrum of the smallest crop's noise (white noise
   through the same Gaussian), predicted from the image's own noise level,
   only on unsaturated pixels; anatomy is not touched.
3. the effective-grid image is enlarged to the common size (bicubic), the
   same step for every crop.

Pure functions: the grain is drawn from the item's generator.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

from medscout_data.imaging import resize

RESAMPLINGS = ("direct", "matched")


@dataclass(frozen=True)
class Resampling:
    """One item's chain: the effective grid every crop goes through, the common size, and the grain."""

    mode: str  # direct | matched
    effective: tuple[int, int]  # (height, width) of the smallest level's native crop
    out: tuple[int, int]  # (height, width) of every crop as shown
    blur: float = 1.0  # Gaussian sigma in effective-grid pixels
    noise: float = 0.0  # the image's pixel noise (grey levels); 0: no grain is added


def resample_crop(crop: np.ndarray, chain: Resampling, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """(the crop at the common size, standard deviation of the grain added in grey levels)."""
    out_h, out_w = chain.out
    if chain.mode == "direct":
        return resize(crop, out_w, out_h), 0.0
    eff_h, eff_w = chain.effective
    shrunk = crop.shape != (eff_h, eff_w)
    small = cv2.resize(crop, (eff_w, eff_h), interpolation=cv2.INTER_AREA) if shrunk else crop
    kernel = gaussian_kernel(effective_sigma(chain.blur, shrunk))
    grain = grain_sd(chain.noise, chain.blur, crop.shape, chain.effective)
    if grain > 0:
        values = cv2.sepFilter2D(small, cv2.CV_32F, kernel, kernel)
        added = grain * _grain(rng, (eff_h, eff_w), chain.blur)
        added[(small == 0) | (small == 255)] = 0.0  # clipped by the window: no noise to match
        values += added
        np.clip(values, 0.0, 255.0, out=values)
        values += 0.5
        blurred = values.astype(np.uint8)
    else:
        blurred = cv2.sepFilter2D(small, cv2.CV_8U, kernel, kernel)  # rounds and saturates
    return cv2.resize(blurred, (out_w, out_h), interpolation=cv2.INTER_CUBIC), grain


def effective_sigma(blur: float, shrunk: bool) -> float:
    """The Gaussian applied on the effective grid: `blur`, less the area average's own spread for
    a crop that was shrunk to it, so every crop's total blur is `blur` effective pixels."""
    return math.sqrt(max(blur * blur - 1.0 / 12.0, 0.09)) if shrunk else blur


def grain_sd(noise: float, blur: float, shape: tuple[int, ...], effective: tuple[int, int]) -> float:
    """Grain (grey levels) that brings a crop of `shape` to the noise the smallest crop keeps:
    sqrt(target^2 - kept^2) for white pixel noise of standard deviation `noise`."""
    if noise <= 0 or tuple(shape) == tuple(effective):
        return 0.0
    target = blur_noise_gain(blur) ** 2
    kept = kept_noise_gain((shape[0], shape[1]), effective, blur)
    return noise * math.sqrt(max(target * target - kept * kept, 0.0))


@functools.lru_cache(maxsize=1024)
def kept_noise_gain(shape: tuple[int, int], effective: tuple[int, int], blur: float) -> float:
    """Standard deviation of unit white noise after this chain's area average from `shape` to
    `effective` and its Gaussian, measured on fixed-seed noise (so the same on every machine).

    Measured rather than modelled: an area average over a non-integer factor keeps more noise
    than 1 / factor, by an amount that depends on the two sizes. One value per pair of sizes,
    and the sizes repeat (one per image size), so the cache makes it free.
    """
    kernel = gaussian_kernel(effective_sigma(blur, True))
    rng = np.random.default_rng(0)
    variances = []
    for _ in range(max(1, 4096 // (effective[0] * effective[1]) + 1)):
        white = rng.standard_normal(shape, dtype=np.float32)
        small = cv2.resize(white, (effective[1], effective[0]), interpolation=cv2.INTER_AREA)
        variances.append(float(cv2.sepFilter2D(small, -1, kernel, kernel).var()))
    return math.sqrt(float(np.mean(variances)))


@functools.lru_cache(maxsize=256)
def gaussian_kernel(sigma: float) -> np.ndarray:
    """The 1-D Gaussian kernel used everywhere here (OpenCV's, with its size for float images)."""
    size = round(sigma * 8 + 1) | 1
    return cv2.getGaussianKernel(size, sigma, cv2.CV_32F)


@functools.lru_cache(maxsize=256)
def blur_noise_gain(sigma: float) -> float:
    """Standard deviation of unit white noise after the 1-D `gaussian_kernel(sigma)` (1 without blur)."""
    if sigma <= 0:
        return 1.0
    return float(math.sqrt((gaussian_kernel(sigma).astype(np.float64) ** 2).sum()))


def _grain(rng: np.random.Generator, shape: tuple[int, int], blur: float) -> np.ndarray:
    """Unit-variance noise with the spectrum of white noise through the effective Gaussian.

    White noise from the generator's raw bits read as uniform bytes (far cheaper to draw than
    normal deviates); after the Gaussian, which sums dozens of them per pixel, it is Gaussian to
    the eye and to any probe, with the same spectrum.
    """
    count = shape[0] * shape[1]
    raw = rng.bit_generator.random_raw(count // 8 + 1).view(np.int8)[:count]
    white = raw.astype(np.float32).reshape(shape)
    white *= 1.0 / (_INT8_SD * blur_noise_gain(blur) ** 2)
    kernel = gaussian_kernel(blur)
    return cv2.sepFilter2D(white, -1, kernel, kernel)


_INT8_SD = math.sqrt((256**2 - 1) / 12)  # standard deviation of a uniform random int8
