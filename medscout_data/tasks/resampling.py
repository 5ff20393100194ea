"""How a scale crop reaches the common crop size, so its level cannot be read off its blur.

The naive chain resizes every crop straight to the common size: a Level-2
crop (6.25% of the image) is enlarged about 1.75x, a Level-1 crop (20%)
hardly at all, so Level-2 crops are blurrier and show the pixel noise
magnified, and a sharpness or noise probe tells the levels apart without
looking at the anatomy (issue 17).

The `matched` chain gives every crop of an item the same effective
resolution before the common size:

1. each crop is low-passed with a Gaussian of `blur` pixels of the
   *effective grid* (the native size of the smallest level's crop), i.e.
   `blur x r` native pixels for a crop `r` times larger, and resampled to
   that grid (Lanczos, after the low-pass). Every crop then has the same
   transfer function in effective pixels: scale-free content looks alike
   at every level.
2. with `match_noise`, the noise the larger crops lost by averaging is put
   back as grain with the spectrum of the smallest crop's noise (white noise
   through the same Gaussian), predicted from the image's own noise level,
   only on unsaturated pixels; anatomy is not touched.
3. the effective-grid image is enlarged to the common size (bicubic), the
   same step for every crop.

Pure functions: the grain is drawn from the item's generator.
"""

from __future__ import annotations

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
    scale_y, scale_x = crop.shape[0] / eff_h, crop.shape[1] / eff_w
    values = cv2.GaussianBlur(
        crop.astype(np.float32), (0, 0), chain.blur * scale_x, sigmaY=chain.blur * scale_y
    )
    if values.shape != (eff_h, eff_w):
        values = cv2.resize(values, (eff_w, eff_h), interpolation=cv2.INTER_LANCZOS4)
    grain = grain_sd(chain.noise, chain.blur, scale_y, scale_x)
    if grain > 0:
        values = values + grain * _grain(rng, (eff_h, eff_w), chain.blur) * _unsaturated(values)
    shown = cv2.resize(values, (out_w, out_h), interpolation=cv2.INTER_CUBIC)
    return np.clip(np.rint(shown), 0, 255).astype(np.uint8), grain


def grain_sd(noise: float, blur: float, scale_y: float, scale_x: float) -> float:
    """Grain (grey levels) that brings a crop `scale` times the effective grid to the noise the
    smallest crop keeps: sqrt(target^2 - kept^2), white noise assumed."""
    if noise <= 0:
        return 0.0
    target = noise * blur_noise_gain(blur) ** 2
    kept = noise * blur_noise_gain(blur * scale_y) * blur_noise_gain(blur * scale_x)
    return math.sqrt(max(target * target - kept * kept, 0.0))


def blur_noise_gain(sigma: float) -> float:
    """Standard deviation of unit white noise after a 1-D Gaussian blur of `sigma` pixels, as
    `cv2.GaussianBlur` applies it to float images (the exact discrete kernel; 1 without blur)."""
    if sigma <= 0:
        return 1.0
    size = round(sigma * 8 + 1) | 1  # OpenCV's kernel size for float images
    kernel = cv2.getGaussianKernel(size, sigma, cv2.CV_64F)
    return float(math.sqrt((kernel**2).sum()))


def _grain(rng: np.random.Generator, shape: tuple[int, int], blur: float) -> np.ndarray:
    """Unit-variance noise with the spectrum of white noise through the effective Gaussian."""
    white = rng.standard_normal(shape, dtype=np.float32)
    return cv2.GaussianBlur(white, (0, 0), blur) / blur_noise_gain(blur) ** 2


def _unsaturated(values: np.ndarray) -> np.ndarray:
    """1 where a pixel can carry noise, 0 where the window clipped it (air at 0, bone at 255)."""
    return ((values > 0.5) & (values < 254.5)).astype(np.float32)
