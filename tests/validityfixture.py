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


def ct_noise_texture(
    size: int, seed: int, kernel: str = "ramp", noise_hu: float = 12.0, organs: bool = False
) -> np.ndarray:
    """A CT-like slice in Hounsfield units, windowed (W400/L40) to 8 bits as ingest renders it: a
    scale-free tissue texture (1/f^2, 70 HU around 40 HU), or with `organs` regions of uniform
    attenuation (fat -100, muscle 50, liver 65, bone 500 HU) with smooth borders and a faint
    parenchymal texture (1/f^2, 8 HU); plus correlated noise. The scale-free texture looks alike
    at every scale, so only artefacts can tell a Level-2 crop; organs do not (a Level-2 crop is
    more often inside one organ), so there content tells the level too.

    The noise is white noise filtered by a reconstruction kernel before the window: `ramp`
    (filtered back-projection, ramp x Hann: a noise power spectrum peaking at mid frequencies,
    no power at 0) or `smooth` (a soft kernel: power falling off from low frequencies, grains
    of 2-3 pixels). The pixel noise is then not white, unlike the grain of `power_law_texture`.
    """
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[None, :]
    radius = np.hypot(fy, fx)
    safe = np.where(radius > 0, radius, 1.0)

    def field(beta: float) -> np.ndarray:
        spectrum = (rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size))) / safe ** (beta / 2)
        values = np.real(np.fft.ifft2(spectrum))
        return (values - values.mean()) / values.std()

    if organs:
        regions = cv2.GaussianBlur(field(4.0), (0, 0), 1.0)
        hu = np.select([regions < -1.0, regions < 0.3, regions < 1.6], [-100.0, 50.0, 65.0], 500.0)
        hu = cv2.GaussianBlur(hu, (0, 0), 1.2) + 8 * field(2.0)
    else:
        hu = 70 * field(2.0) + 40
    if kernel == "ramp":
        shape = radius * np.where(radius < 0.5, 0.5 + 0.5 * np.cos(np.pi * radius / 0.5), 0.0)
    elif kernel == "smooth":
        shape = np.exp(-((radius / 0.12) ** 2))
    else:
        raise ValueError(f"unknown kernel {kernel!r}")
    noise = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(size, size))) * np.sqrt(shape)))
    hu += noise / noise.std() * noise_hu
    grey = (hu - (40 - 200)) / 400 * 255
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)
