"""Slicing planes: each plane's display convention for every stored orientation, and when auto switches."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import SimpleITK as sitk
from test_ingest_volumes import all_orientation_codes

from medscout_data.cache import ImageCache
from medscout_data.layout import Layout
from medscout_data.recipe import IngestConfig, load_recipe
from medscout_data.sources import run_ingest
from medscout_data.sources.planes import DISPLAY_CODES, NORMAL_AXIS, choose_plane, plane_view, to_canonical


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_each_plane_matches_its_display_code_for_all_48_orientations(plane: str) -> None:
    """Slice k of the plane view is slice k of `DICOMOrient(image, code)`: rows, columns and position."""
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.integers(-1000, 1000, (5, 6, 7)).astype(np.int16))
    image.SetSpacing((0.7, 0.9, 2.5))
    image.SetOrigin((-10.0, 20.0, -30.0))
    codes = all_orientation_codes()
    assert len(codes) == 48
    for code in codes:
        stored = sitk.DICOMOrient(image, code)
        canon = to_canonical(
            sitk.GetArrayViewFromImage(stored), stored.GetSpacing(), stored.GetOrigin(), stored.GetDirection()
        )
        view = plane_view(canon, plane)
        reference = sitk.DICOMOrient(stored, DISPLAY_CODES[plane])
        assert np.array_equal(view.array, sitk.GetArrayFromImage(reference)), code
        ref_spacing = reference.GetSpacing()  # (columns, rows, slices)
        assert (view.column_mm, view.row_mm, view.normal_mm) == pytest.approx(ref_spacing), code
        n = view.array.shape[0]
        axis = NORMAL_AXIS[plane]
        positions = [reference.TransformIndexToPhysicalPoint((0, 0, k))[axis] for k in range(n)]
        assert [view.position_mm(k) for k in range(n)] == pytest.approx(positions), code


def test_auto_plane_follows_the_acquisition_when_axial_would_stretch() -> None:
    auto = IngestConfig()
    assert choose_plane((0.8, 0.8, 0.8), auto) == "axial"
    assert choose_plane((0.7, 0.7, 5.0), auto) == "axial"  # thick axial slices: axial is the acquisition
    assert choose_plane((5.0, 0.7, 0.7), auto) == "sagittal"  # thick sagittal slices
    assert choose_plane((0.7, 5.0, 0.7), auto) == "coronal"
    assert choose_plane((1.0, 1.9, 1.0), auto) == "axial"  # within the factor of 2
    assert choose_plane((1.0, 2.1, 1.0), auto) == "coronal"
    assert choose_plane((5.0, 0.7, 0.7), dataclasses.replace(auto, plane="axial")) == "axial"
    assert choose_plane((0.8, 0.8, 0.8), dataclasses.replace(auto, plane="coronal")) == "coronal"


def sagittal_head(nx: int = 10, ny: int = 64, nz: int = 64) -> np.ndarray:
    """Canonical LPS (z, y, x) HU of a body block with an anterior-superior marker; few, thick x slices."""
    volume = np.full((nz, ny, nx), -1000, np.int16)
    zz, yy = np.mgrid[0:nz, 0:ny]
    body = ((zz - 32) / 26) ** 2 + ((yy - 32) / 24) ** 2 <= 1
    volume[body] = 40
    volume[44:50, 12:18, :] = 1000  # superior (high z) and anterior (low y)
    return volume


def test_thick_sagittal_volume_is_sliced_sagittally_in_display_orientation(tmp_path: Path) -> None:
    array = sagittal_head()
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((5.0, 0.7, 0.7))
    image.SetOrigin((-25.0, -20.0, -10.0))
    path = tmp_path / "src" / "s0000" / "ct.nii.gz"
    path.parent.mkdir(parents=True)
    sitk.WriteImage(sitk.DICOMOrient(image, "RAI"), str(path))
    recipe = load_recipe("sample")
    config = IngestConfig(min_body_fraction=0.2, max_size=256, crop_to_body=False)
    layout = Layout.at(tmp_path / "out")
    report = run_ingest(
        layout, dataclasses.replace(recipe, ingest=config), "ct", tmp_path / "src", progress=False
    )
    catalogue = pl.read_parquet(layout.catalogue("ct"))
    assert set(catalogue["plane"]) == {"sagittal"} and report.counts["used"] == 1
    assert catalogue["slice_spacing_mm"][0] == pytest.approx(5.0)
    assert catalogue["pixel_spacing_mm"][0] == pytest.approx(0.7)
    assert catalogue["image_id"][0].startswith("s0000:sagittal:")
    xs = sorted(catalogue["z_mm"])  # the patient-left coordinate of each slice, 5 mm apart
    assert np.diff(xs) == pytest.approx(5.0)
    row = catalogue.row(0, named=True)
    slice_ = ImageCache(layout.cache_dir("ct")).image(row)
    assert slice_.shape == (64, 64)
    bright = np.argwhere(slice_ == 255)
    assert bright[:, 0].max() < 32 and bright[:, 1].max() < 32  # superior at the top, anterior on the left
