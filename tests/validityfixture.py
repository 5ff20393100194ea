"""Synthetic images for the validity tests: structure, texture and degenerate content on demand.

- `structured_image`: a smooth random field (anatomy-like blobs at several
  scales) plus pixel noise; every patch larger than a few pixels carries
  structure.
- `power_law_texture`: a 1/f^beta random texture (beta = 2 is the scale-free
  spectrum of natural images) plus white pixel noise: what a resampling
  chain must treat alike at every scale.
- `flat_background_head`: a CT rendered with its background stored as 0 HU
  (a skull-stripped head): the background is a flat grey that a -500 HU body
  mask keeps, and the head a small structured ellipse in the middle.
"""

from __future__ import annotations

import cv2
import numpy as np


def structured_image(height: int, width: int, seed: int, noise: float = 6.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = np.zeros((height, width), np.float32)
    for cells, weight in ((4, 1.0), (9, 0.6), (17, 0.35)):
        coarse = rng.normal(0, 1, (cells, cells)).astype(np.float32)
        field += weight * cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    field = (field - field.mean()) / (field.std() + 1e-6) * 40 + 128
    field += rng.normal(0, noise, field.shape).astype(np.float32)
    return np.clip(np.rint(field), 0, 255).astype(np.uint8)


def power_law_texture(size: int, seed: int, beta: float = 2.0, noise: float = 6.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[None, :]
    radius = np.hypot(fy, fx)
    radius[0, 0] = 1.0
    spectrum = (rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size))) / radius ** (beta / 2)
    field = np.real(np.fft.ifft2(spectrum))
    field = (field - field.mean()) / field.std() * 30 + 128 + rng.normal(0, noise, field.shape)
    return np.clip(np.rint(field), 0, 255).astype(np.uint8)


def flat_background_head(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(image, the -500 HU body mask, which is the whole frame)."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size), 102.0, np.float32)  # 0 HU in a W400/L40 window
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    head = ((xx - 0.5) / 0.16) ** 2 + ((yy - 0.5) / 0.2) ** 2 < 1
    inside = structured_image(size, size, seed + 1).astype(np.float32)
    image[head] = inside[head]
    image += rng.normal(0, 6.0, image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), np.ones((size, size), bool)
