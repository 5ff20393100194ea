"""The labelled phantom of the CT and MRI samples: anatomy in millimetres, tissue labels, intensities.

Defined in millimetres, so it is structured at any size (up to realistic
512x512x300) and changes along z within a few millimetres; a pure function of
(seed, subject). SYNTHETIC, not patient data. `sample.py` writes it in the
TotalSegmentator layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Tissue labels of the phantom and their intensities.
AIR, FAT, SOFT, LUNG, HEART, LIVER, SPLEEN, KIDNEY, AORTA, CORTEX, MARROW, GAS, FLUID, COUCH, STOMACH = range(
    15
)
CT_HU = np.array([-1000, -90, 40, -850, 45, 60, 50, 35, 180, 900, 250, -950, 15, 200, 30], np.float32)
MR_T1 = np.array([0, 900, 350, 30, 400, 500, 380, 420, 100, 50, 700, 10, 150, 0, 250], np.float32)


@dataclass(frozen=True)
class Torso:
    """One subject's body shape (mm) and small 3-D blobs (x, y, z, radius, contrast)."""

    half_width: float
    half_depth: float
    lung_scale: float
    liver_scale: float
    heart_scale: float
    rib_period: float
    blobs: np.ndarray


def _torso(rng: np.random.Generator, length_mm: float) -> Torso:
    half_width = rng.uniform(145, 172)
    half_depth = rng.uniform(105, 125)
    n_blobs = int(rng.integers(60, 90))
    blobs = np.column_stack(
        [
            rng.uniform(-0.8, 0.8, n_blobs) * half_width,
            rng.uniform(-0.8, 0.8, n_blobs) * half_depth,
            rng.uniform(0, length_mm, n_blobs),
            rng.uniform(3, 10, n_blobs),
            rng.choice([-1.0, 1.0], n_blobs) * rng.uniform(0.4, 1.0, n_blobs),
        ]
    ).astype(np.float32)
    return Torso(
        half_width=half_width,
        half_depth=half_depth,
        lung_scale=rng.uniform(0.85, 1.1),
        liver_scale=rng.uniform(0.85, 1.15),
        heart_scale=rng.uniform(0.85, 1.15),
        rib_period=rng.uniform(22, 30),
        blobs=blobs,
    )


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    if rx <= 0 or ry <= 0:
        return np.zeros(x.shape, bool)
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def _ramp(t: float, start: float, full: float, end: float, stop: float) -> float:
    """0 before `start`, rising to 1 at `full`, 1 until `end`, 0 after `stop`."""
    if t <= start or t >= stop:
        return 0.0
    if t < full:
        return (t - start) / (full - start)
    if t > end:
        return (stop - t) / (stop - end)
    return 1.0


def _axial_labels(torso: Torso, t: float, z_mm: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Tissue labels of one axial slice. x: mm toward patient's left, y: mm toward posterior.

    `t` in [0, 1] runs from the pelvis (0) to the upper chest (1).
    """
    a = torso.half_width * (0.92 + 0.08 * np.sin(np.pi * t))
    b = torso.half_depth * (0.95 + 0.05 * np.cos(2 * np.pi * t))
    labels = np.full(x.shape, AIR, np.uint8)
    labels[(y > b + 22) & (y < b + 32) & (np.abs(x) < a * 1.25)] = COUCH
    labels[_ellipse(x, y, 0, 0, a, b)] = FAT
    labels[_ellipse(x, y, 0, 0, a - 14, b - 12)] = SOFT

    lung = _ramp(t, 0.5, 0.68, 1.0, 1.01) * torso.lung_scale
    for side in (-1, 1):
        labels[_ellipse(x, y, side * a * 0.45, -b * 0.05, a * 0.36 * lung, b * 0.62 * lung)] = LUNG
    heart = _ramp(t, 0.58, 0.68, 0.82, 0.92) * torso.heart_scale
    labels[_ellipse(x, y, 22, -b * 0.28, 58 * heart, 46 * heart)] = HEART
    liver = _ramp(t, 0.22, 0.32, 0.55, 0.66) * torso.liver_scale
    labels[_ellipse(x, y, -a * 0.38, -b * 0.02, a * 0.48 * liver, b * 0.58 * liver)] = LIVER
    spleen = _ramp(t, 0.38, 0.45, 0.55, 0.64)
    labels[_ellipse(x, y, a * 0.58, b * 0.22, 34 * spleen, 42 * spleen)] = SPLEEN
    stomach = _ramp(t, 0.42, 0.48, 0.55, 0.62)
    labels[_ellipse(x, y, a * 0.28, -b * 0.38, 48 * stomach, 32 * stomach)] = STOMACH
    labels[_ellipse(x, y, a * 0.28, -b * 0.5, 30 * stomach, 12 * stomach)] = GAS
    kidney = _ramp(t, 0.2, 0.27, 0.38, 0.46)
    for side in (-1, 1):
        labels[_ellipse(x, y, side * a * 0.36, b * 0.38, 27 * kidney, 36 * kidney)] = KIDNEY
        labels[_ellipse(x, y, side * a * 0.33, b * 0.38, 9 * kidney, 14 * kidney)] = FLUID
    bowel = _ramp(t, -0.01, 0.0, 0.3, 0.45)
    for k in range(7):
        angle = k * 0.9 + z_mm / 40.0
        cx, cy = np.cos(angle) * a * 0.35, -b * 0.25 + np.sin(angle) * b * 0.25
        labels[_ellipse(x, y, cx, cy, 16 * bowel, 11 * bowel)] = GAS if k % 2 else FLUID

    pelvis = _ramp(t, -0.01, 0.0, 0.12, 0.22)
    for side in (-1, 1):
        labels[_ellipse(x, y, side * a * 0.6, b * 0.15, 32 * pelvis, 50 * pelvis)] = CORTEX
        labels[_ellipse(x, y, side * a * 0.6, b * 0.15, 24 * pelvis, 40 * pelvis)] = MARROW
    ribs = _ramp(t, 0.48, 0.55, 1.0, 1.01)
    if ribs > 0:
        phase = np.sin(2 * np.pi * z_mm / torso.rib_period)
        for k in range(12):
            angle = np.pi * (k + 0.5 + 0.3 * phase) / 12 * 2
            if np.cos(angle + z_mm / 15.0) > -0.2:
                rx, ry = np.cos(angle) * (a - 20), np.sin(angle) * (b - 18)
                labels[_ellipse(x, y, rx, ry, 7 * ribs, 5 * ribs)] = CORTEX

    disc = (z_mm % 32.0) < 6.0
    labels[_ellipse(x, y, 0, b * 0.48, 19, 17)] = CORTEX
    labels[_ellipse(x, y, 0, b * 0.48, 15, 13)] = FLUID if disc else MARROW
    labels[_ellipse(x, y, 0, b * 0.48 + 24, 8, 7)] = FLUID
    labels[_ellipse(x, y, 0, b * 0.48 + 38, 6, 10)] = CORTEX
    labels[_ellipse(x, y, 16, b * 0.2, 12, 12)] = AORTA
    return labels


def _blob_offsets(torso: Torso, z_mm: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Contrast (-1..1) of the 3-D blobs cut by the plane at z_mm."""
    offsets = np.zeros(x.shape, np.float32)
    near = torso.blobs[np.abs(torso.blobs[:, 2] - z_mm) < torso.blobs[:, 3]]
    for bx, by, bz, radius, contrast in near:
        r = float(np.sqrt(radius**2 - (z_mm - bz) ** 2))
        offsets[_ellipse(x, y, float(bx), float(by), r, r)] += contrast
    return offsets


@dataclass(frozen=True)
class VolumeGeometry:
    """Voxel grid of one phantom volume, canonical LPS (z, y, x) array order."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]  # (x, y, z) mm, SimpleITK order


def _geometry(subject_index: int, size: int, slices: int, rng: np.random.Generator) -> VolumeGeometry:
    sx = 360.0 / size
    sy = sx * (1.25 if subject_index % 3 == 2 else 1.0)  # some subjects: anisotropic in-plane
    sz = float(rng.choice([1.5, 2.0, 2.5]))
    return VolumeGeometry(shape=(slices, round(360.0 / sy), size), spacing=(sx, sy, sz))


def phantom_volume(torso: Torso, geometry: VolumeGeometry) -> tuple[np.ndarray, np.ndarray]:
    """(labels, blob offsets) arrays of shape (z, y, x), canonical LPS."""
    nz, ny, nx = geometry.shape
    sx, sy, sz = geometry.spacing
    x = (np.arange(nx, dtype=np.float32) + 0.5) * sx - nx * sx / 2
    y = (np.arange(ny, dtype=np.float32) + 0.5) * sy - ny * sy / 2
    xx, yy = np.meshgrid(x, y)
    labels = np.empty(geometry.shape, np.uint8)
    offsets = np.empty(geometry.shape, np.float32)
    for k in range(nz):
        z_mm = k * sz
        labels[k] = _axial_labels(torso, k / max(nz - 1, 1), z_mm, xx, yy)
        offsets[k] = _blob_offsets(torso, z_mm, xx, yy)
    return labels, offsets


def ct_intensities(labels: np.ndarray, offsets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Hounsfield units (int16) with blob contrast and scanner noise."""
    hu = CT_HU[labels] + 70.0 * offsets * (labels != AIR)
    hu += rng.normal(0.0, 12.0, labels.shape).astype(np.float32)
    return np.clip(hu, -1024, 3071).astype(np.int16)


def mri_intensities(labels: np.ndarray, offsets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """T1-like arbitrary units (int16) with a smooth bias field and Rician noise."""
    _nz, ny, nx = labels.shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    bias = 1.0 + 0.2 * np.sin(xx / nx * np.pi + rng.uniform(0, np.pi)) * np.cos(yy / ny * np.pi)
    signal = (MR_T1[labels] + 160.0 * offsets * (labels != AIR)) * bias[None]
    noise_a = rng.normal(0.0, 18.0, labels.shape).astype(np.float32)
    noise_b = rng.normal(0.0, 18.0, labels.shape).astype(np.float32)
    magnitude = np.sqrt((np.maximum(signal, 0) + noise_a) ** 2 + noise_b**2)
    return np.clip(magnitude, 0, 32000).astype(np.int16)
