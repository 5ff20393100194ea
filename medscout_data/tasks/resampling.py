"""How a scale crop reaches the common crop size, so its level cannot be read off its blur or grain.

The naive chain resizes every crop straight to the common size: a Level-2
crop (6.25% of the image) is enlarged about 1.75x, a Level-1 crop (20%)
hardly at all, so Level-2 crops are blurrier and show the pixel noise
magnified, and a sharpness or noise probe tells the levels apart without
looking at the anatomy (issue 17).

The `matched` chain gives every crop of an item the same effective
resolution and the same noise power spectrum before the common size:

1. each crop is brought to the *effective grid* (the native size of the
   smallest level's crop) by area averaging, then low-passed there with a
   Gaussian, so that its total blur (the average's box plus the Gaussian)
   is `blur` effective pixels for every crop: scale-free content looks
   alike at every level.
2. with `match_noise`, every crop ends with one noise power spectrum on
   the effective grid (issue 21). Real CT noise is correlated (the
   reconstruction kernel shapes it), so white grain at the right level does
   not look like the noise a Level-2 crop keeps, and a learned probe tells
   the levels apart. Instead, the whole image is taken through each level's
   chain (area average, Gaussian) and the noise spectrum it then shows is
   measured, by one estimator for every level, in the flattest unsaturated
   patches (`flat_patch_spectrum`). The target is the upper envelope of the
   levels' spectra, frequency by frequency; each crop receives Gaussian
   grain with the spectrum it lacks (target - its own, never negative: no
   crop would need noise taken away), drawn from the item's generator and
   added only on unsaturated pixels. Measured, not modelled: the image's own
   noise, correlated or not, and any texture go through the real filters,
   and a scale-free texture (which looks alike at every level) asks for no
   grain. Where the smallest crop, which averaged nothing away, would need
   more grain than the largest and than the image has noise (Immerkaer's
   white-equivalent level), the flattest patches showed anatomy, not noise
   (a radiograph has few flat ones), and the noise is taken as white at the
   image's own level instead (issue 17's model). The anatomy is not
   touched: the grain is zero-mean and independent of it.
3. the effective-grid image is enlarged to the common size (bicubic), the
   same step for every crop.

Pure functions; the only randomness is the item's generator.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy.ndimage import uniform_filter

from medscout_data.imaging import resize
from medscout_data.tasks.content import noise_level

RESAMPLINGS = ("direct", "matched")
NPS_PATCHES = (32, 16)  # effective-grid pixels: patch sizes the noise spectra are read in (16: small images)
NPS_MIN_PATCHES = 4  # the fewest flat, unsaturated patches a noise spectrum is read from
NPS_REGION = 448  # native pixels: the noise spectra are read in the image's central window of this size
NOISE_WINDOW = 128  # the image's white-equivalent noise level is read in its central window


@dataclass(frozen=True)
class Grain:
    """The grain one crop shape receives: an amplitude filter on the effective grid (rfft2
    layout) and the grain's standard deviation in grey levels."""

    filter: np.ndarray = field(compare=False)
    sd: float


@dataclass(frozen=True)
class Resampling:
    """One item's chain: the effective grid every crop goes through, the common size, and the
    grain each native crop shape receives (no entry: no grain)."""

    mode: str  # direct | matched
    effective: tuple[int, int]  # (height, width) of the smallest level's native crop
    out: tuple[int, int]  # (height, width) of every crop as shown
    blur: float = 1.0  # Gaussian sigma in effective-grid pixels
    noise: float = 0.0  # standard deviation of the target noise on the effective grid (provenance)
    grain: Mapping[tuple[int, int], Grain] = field(default_factory=dict, compare=False)


def matched_chain(
    image: np.ndarray,
    effective: tuple[int, int],
    out: tuple[int, int],
    blur: float,
    shapes: Sequence[tuple[int, int]],
    match_noise: bool = True,
) -> Resampling:
    """The `matched` chain of an image whose crops have the native `shapes` (one per level)."""
    if not match_noise:
        return Resampling("matched", effective, out, blur)
    unique = sorted({(int(h), int(w)) for h, w in shapes})
    grain, target = _measured_grain(image, unique, effective, blur)
    by_area = sorted(unique, key=lambda s: s[0] * s[1])
    level = noise_level(_centre(image, NOISE_WINDOW))
    if grain is not None and grain[by_area[0]].sd > max(grain[by_area[-1]].sd, level):
        # The smallest crop, which averaged nothing away, would need more grain than the largest
        # and than the image has noise: the flattest patches showed anatomy, not noise (a
        # radiograph has few flat ones). Fall back on white noise at the image's own level.
        white = _white_spectra(_centre(image, NPS_REGION).shape, tuple(unique), effective, blur)
        if white is None:
            return Resampling("matched", effective, out, blur)
        spectra = {s: spectrum * level * level for s, spectrum in white[0].items()}
        target_spectrum = np.maximum.reduce(list(spectra.values()))
        grain = grain_for(spectra, target_spectrum, 2 / white[1])
        target = math.sqrt(float(target_spectrum.mean()))
    if grain is None or target <= 0:
        return Resampling("matched", effective, out, blur)
    return Resampling("matched", effective, out, blur, target, grain)


def _measured_grain(
    image: np.ndarray, shapes: Sequence[tuple[int, int]], effective: tuple[int, int], blur: float
) -> tuple[dict[tuple[int, int], Grain] | None, float]:
    """(grain per crop shape, standard deviation of the target noise); None when too few flat
    unsaturated patches can be read at any patch size."""
    for patch in NPS_PATCHES:
        spectra = {s: level_spectrum(image, s, effective, blur, patch) for s in shapes}
        if all(spectrum is not None for spectrum in spectra.values()):
            target = np.maximum.reduce(list(spectra.values()))
            return grain_for(spectra, target, 2 / patch), math.sqrt(float(target.mean()))
    return None, 0.0


@functools.lru_cache(maxsize=32)
def _white_spectra(
    region: tuple[int, int], shapes: tuple[tuple[int, int], ...], effective: tuple[int, int], blur: float
) -> tuple[dict[tuple[int, int], np.ndarray], int] | None:
    """(each level's measured spectrum of unit white noise, the patch size), None when the image
    is too small to read one; unit white noise (a fixed-seed field: the same on every
    machine), measured like an image's, so the fallback goes through the same estimator."""
    field = np.random.default_rng(0).normal(128.0, 16.0, region)
    noise = np.clip(np.rint(field), 1, 254).astype(np.uint8)
    for patch in NPS_PATCHES:
        spectra = {s: level_spectrum(noise, s, effective, blur, patch) for s in shapes}
        if all(spectrum is not None for spectrum in spectra.values()):
            return {s: spectrum / 256.0 for s, spectrum in spectra.items()}, patch
    return None


def _centre(image: np.ndarray, window: int) -> np.ndarray:
    height, width = image.shape
    h, w = min(window, height), min(window, width)
    y0, x0 = (height - h) // 2, (width - w) // 2
    return image[y0 : y0 + h, x0 : x0 + w]


def resample_crop(crop: np.ndarray, chain: Resampling, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """(the crop at the common size, standard deviation of the grain added in grey levels)."""
    out_h, out_w = chain.out
    if chain.mode == "direct":
        return resize(crop, out_w, out_h), 0.0
    eff_h, eff_w = chain.effective
    shrunk = crop.shape != (eff_h, eff_w)
    small = cv2.resize(crop, (eff_w, eff_h), interpolation=cv2.INTER_AREA) if shrunk else crop
    kernel = gaussian_kernel(effective_sigma(chain.blur, shrunk))
    grain = chain.grain.get((crop.shape[0], crop.shape[1]))
    if grain is not None and grain.sd > 0:
        values = cv2.sepFilter2D(small, cv2.CV_32F, kernel, kernel)
        white = rng.standard_normal((eff_h, eff_w), dtype=np.float32)
        added = np.fft.irfft2(np.fft.rfft2(white) * grain.filter, s=(eff_h, eff_w)).astype(np.float32)
        added[(small == 0) | (small == 255)] = 0.0  # clipped by the window: no noise to match
        values += added
        np.clip(values, 0.0, 255.0, out=values)
        values += 0.5
        blurred = values.astype(np.uint8)
    else:
        blurred = cv2.sepFilter2D(small, cv2.CV_8U, kernel, kernel)  # rounds and saturates
    return cv2.resize(blurred, (out_w, out_h), interpolation=cv2.INTER_CUBIC), grain.sd if grain else 0.0


def effective_sigma(blur: float, shrunk: bool) -> float:
    """The Gaussian applied on the effective grid: `blur`, less the area average's own spread for
    a crop that was shrunk to it, so every crop's total blur is `blur` effective pixels."""
    return math.sqrt(max(blur * blur - 1.0 / 12.0, 0.09)) if shrunk else blur


# ---------------------------------------------------------------- the noise power spectrum


def level_spectrum(
    image: np.ndarray, shape: tuple[int, int], effective: tuple[int, int], blur: float, patch: int = 32
) -> np.ndarray | None:
    """The noise spectrum a crop of native `shape` shows on the effective grid, measured: the
    image's central NPS_REGION taken through that crop's area average (the same factors), its
    `flat_patch_spectrum`, times the power gain of the crop's Gaussian. Measured rather than
    modelled, so the image's own noise, correlated or not, and any scale-free texture are taken
    through the real filters; the same estimator reads every level. None: too few flat patches."""
    image = _centre(image, NPS_REGION)
    height, width = image.shape
    shrunk = tuple(shape) != tuple(effective)
    values = image.astype(np.float32)
    saturated = ((image == 0) | (image == 255)).view(np.uint8) * np.uint8(255)
    if shrunk:
        size = (
            max(1, round(width * effective[1] / shape[1])),
            max(1, round(height * effective[0] / shape[0])),
        )
        values = cv2.resize(values, size, interpolation=cv2.INTER_AREA)
        saturated = cv2.resize(saturated, size, interpolation=cv2.INTER_AREA)
    spectrum = flat_patch_spectrum(values, saturated > 0, patch)
    if spectrum is None:
        return None
    # the Gaussian is linear and shift-invariant: its power gain, applied to the measured spectrum
    return _to_grid(spectrum, effective) * gaussian_power(effective_sigma(blur, shrunk), *effective)


def flat_patch_spectrum(values: np.ndarray, saturated: np.ndarray, patch: int = 32) -> np.ndarray | None:
    """Noise power spectrum (patch x patch, `np.fft.fft2` layout, mean = variance) read in the
    half of the unsaturated patch x patch patches whose 4 x 4 block
    means vary least (flat tissue: noise rather than edges), each with its best-fit plane
    removed and a Hann window, smoothed over neighbouring frequencies. None with fewer
    than NPS_MIN_PATCHES patches."""
    rows, cols = values.shape[0] // patch, values.shape[1] // patch
    if rows == 0 or cols == 0:
        return None
    height, width = rows * patch, cols * patch
    values = values[:height, :width]
    means = cv2.resize(values, (cols * 4, rows * 4), interpolation=cv2.INTER_AREA)
    coarse = means.reshape(rows, 4, cols, 4).std(axis=(1, 3)).ravel()
    hit = saturated[:height, :width].reshape(rows, patch, cols, patch).any(axis=(1, 3))
    usable = np.flatnonzero(~hit.ravel())
    if len(usable) < NPS_MIN_PATCHES:
        return None
    keep = max(len(usable) // 2, NPS_MIN_PATCHES)  # one share for every level: alike selections
    chosen = usable[np.argsort(coarse[usable], kind="stable")[:keep]]
    tiles = values.reshape(rows, patch, cols, patch).swapaxes(1, 2).reshape(-1, patch, patch)
    patches = np.ascontiguousarray(tiles[chosen])
    design, window = _plane_basis(patch)
    flat = patches.reshape(len(patches), -1)
    fit = cv2.gemm(cv2.gemm(flat, design, 1.0, None, 0.0, flags=cv2.GEMM_2_T), design, 1.0, None, 0.0)
    windowed = (flat - fit).reshape(-1, patch, patch) * window  # the best-fit plane removed
    half = np.abs(np.fft.rfft2(windowed)) ** 2
    power = np.empty((patch, patch), np.float64)  # the fft2 layout, from the rfft2 half by symmetry
    power[:, : patch // 2 + 1] = half.mean(axis=0)
    mirror = np.arange(patch // 2 + 1, patch)
    power[:, mirror] = power[(-np.arange(patch)) % patch][:, patch - mirror]
    power /= float((window**2).sum())
    return uniform_filter(power, size=3, mode="wrap")


def _to_grid(spectrum: np.ndarray, effective: tuple[int, int]) -> np.ndarray:
    """A patch-grid spectrum interpolated (linearly, periodically) onto the effective grid."""
    rows = _interpolation(effective[0], spectrum.shape[0])
    cols = _interpolation(effective[1], spectrum.shape[1])
    return cv2.gemm(cv2.gemm(rows, spectrum, 1.0, None, 0.0), cols, 1.0, None, 0.0, flags=cv2.GEMM_2_T)


@functools.lru_cache(maxsize=64)
def _interpolation(size: int, grid: int) -> np.ndarray:
    """(size x grid) matrix: linear periodic interpolation from `grid` frequencies to `size`."""
    position = np.mod(np.fft.fftfreq(size) * grid, grid)
    low = np.floor(position).astype(int) % grid
    frac = position - np.floor(position)
    matrix = np.zeros((size, grid))
    matrix[np.arange(size), low] += 1 - frac
    matrix[np.arange(size), (low + 1) % grid] += frac
    matrix.setflags(write=False)
    return matrix


@functools.lru_cache(maxsize=8)
def _plane_basis(patch: int) -> tuple[np.ndarray, np.ndarray]:
    """(orthonormal basis of the constant and the two ramps over a patch, 3 x patch^2; 2-D Hann)."""
    yy, xx = np.mgrid[0:patch, 0:patch].astype(np.float64)
    basis, _ = np.linalg.qr(np.stack([np.ones(patch * patch), yy.ravel(), xx.ravel()], axis=1))
    hann = np.hanning(patch + 2)[1:-1]
    return basis.T.astype(np.float32), np.outer(hann, hann).astype(np.float32)


def grain_for(
    kept: Mapping[tuple[int, int], np.ndarray], target: np.ndarray, low: float = 0.0
) -> dict[tuple[int, int], Grain]:
    """Per native crop shape, the grain that brings its kept noise spectrum to `target` (the upper
    envelope of every shape's, so no crop would need noise taken away). Below `low` cycles per
    pixel (two bins of the patch spectrum: the Hann window's main lobe and the removed plane,
    where low-frequency anatomy leaks in) the lack is the ring above's, tapered linearly to 0;
    the grain's mean is 0."""
    radius = _radius(*target.shape)
    half = target.shape[1] // 2 + 1
    out = {}
    for s, spectrum in kept.items():
        lack = np.maximum(target - spectrum, 0.0)
        inside, ring = radius < low, (radius >= low) & (radius < 1.5 * low)
        if inside.any() and ring.any():  # below the patch spectrum's resolution: tapered to 0
            lack[inside] = lack[ring].mean() * radius[inside] / low
        lack[0, 0] = 0.0  # zero-mean grain: the crop's mean brightness is the anatomy's
        out[s] = Grain(np.sqrt(lack[:, :half]).astype(np.float32), math.sqrt(float(lack.mean())))
    return out


@functools.lru_cache(maxsize=64)
def _radius(height: int, width: int) -> np.ndarray:
    """Radial frequency (cycles per pixel) at every fft2 frequency of a grid."""
    radius = np.hypot(np.fft.fftfreq(height)[:, None], np.fft.fftfreq(width)[None, :])
    radius.setflags(write=False)
    return radius


@functools.lru_cache(maxsize=64)
def gaussian_power(sigma: float, height: int, width: int) -> np.ndarray:
    """Power gain of the separable `gaussian_kernel(sigma)` at every fft2 frequency of a grid."""

    def axis(count: int) -> np.ndarray:
        kernel = gaussian_kernel(sigma).ravel().astype(np.float64)
        taps = np.arange(kernel.size) - kernel.size // 2
        f = np.fft.fftfreq(count)
        return (kernel[None, :] * np.cos(2 * np.pi * f[:, None] * taps[None, :])).sum(axis=1) ** 2

    gain = np.outer(axis(height), axis(width))
    gain.setflags(write=False)
    return gain


@functools.lru_cache(maxsize=256)
def gaussian_kernel(sigma: float) -> np.ndarray:
    """The 1-D Gaussian kernel used everywhere here (OpenCV's, with its size for float images)."""
    size = round(sigma * 8 + 1) | 1
    return cv2.getGaussianKernel(size, sigma, cv2.CV_32F)
