"""Ingest of CT and MRI volumes: orientation, square pixels, windows, body masks, slices, bad files."""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from medscout_data.cache import ImageCache
from medscout_data.cli import cli
from medscout_data.layout import Layout
from medscout_data.recipe import IngestConfig, Window, load_recipe
from medscout_data.sources import run_ingest
from medscout_data.sources.volumes import SliceGrid, read_canonical, slice_grid, to_canonical, window_to_uint8

RIGHT_ANTERIOR = (slice(12, 17), slice(12, 17))  # (y, x) in canonical LPS: small y anterior, small x right
LEFT_POSTERIOR = (slice(30, 35), slice(40, 45))


def recipe_with(**ingest):
    """The sample recipe with some `ingest` settings replaced (tests use their own thresholds)."""
    recipe = load_recipe("sample")
    config = dataclasses.replace(IngestConfig(min_body_fraction=0.2, max_size=256), **ingest)
    return dataclasses.replace(recipe, ingest=config)


def torso_phantom(nz: int = 12, ny: int = 48, nx: int = 56) -> np.ndarray:
    """Canonical LPS (z, y, x) HU: body ellipse, lung inside, couch below, markers; end slices air."""
    yy, xx = np.mgrid[0:ny, 0:nx]
    body = ((yy - 22) / 15) ** 2 + ((xx - 28) / 24) ** 2 <= 1
    lung = ((yy - 22) / 5) ** 2 + ((xx - 36) / 6) ** 2 <= 1
    volume = np.full((nz, ny, nx), -1000, np.int16)
    volume[:, body] = 40
    volume[:, lung] = -850
    volume[:, 42:44, 4:52] = 150  # the couch, separated from the body by air
    volume[2:4][(slice(None), *RIGHT_ANTERIOR)] = 1000
    volume[8:10][(slice(None), *LEFT_POSTERIOR)] = 1000
    volume[0] = volume[-1] = -1000  # air-only slices: dropped
    return volume


def write_volume(
    path: Path,
    array: np.ndarray,
    spacing: tuple[float, float, float] = (1.0, 1.0, 2.0),
    orientation: str = "LPS",
) -> None:
    """Write a canonical LPS array stored in another orientation (same patient, same physical space)."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((-20.0, -30.0, -100.0))
    image = sitk.DICOMOrient(image, orientation)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)


def write_meta(root: Path, ids: list[str]) -> None:
    lines = ["image_id;age;split"] + [f"{i};50;{'train' if n % 2 else 'test'}" for n, i in enumerate(ids)]
    (root / "meta.csv").write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")


def ingest(root: Path, out: Path, modality: str = "ct", **ingest_settings):
    recipe = recipe_with(**ingest_settings)
    layout = Layout.at(out)
    report = run_ingest(layout, recipe, modality, root=root, progress=False)
    catalogue = pl.read_parquet(layout.catalogue(modality))
    return report, catalogue, ImageCache(layout.cache_dir(modality))


def skips_by_path(report) -> dict[str, str]:
    return {s.path: s.reason for s in report.skips}


# ------------------------------------------------------------ orientation


def all_orientation_codes() -> list[str]:
    letters = [("L", "R"), ("P", "A"), ("S", "I")]
    codes = set()
    for order in itertools.permutations(range(3)):
        for choice in itertools.product((0, 1), repeat=3):
            codes.add("".join(letters[axis][choice[axis]] for axis in order))
    return sorted(codes)


def test_canonical_view_matches_dicomorient_for_all_48_orientations() -> None:
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
        reference = sitk.DICOMOrient(stored, "LPS")
        assert np.array_equal(canon.array, sitk.GetArrayFromImage(reference)), code
        assert np.allclose(canon.spacing, reference.GetSpacing()), code
        z_ref = [reference.TransformIndexToPhysicalPoint((0, 0, k))[2] for k in range(5)]
        assert np.allclose([canon.z_mm(k) for k in range(5)], z_ref), code


def test_marker_on_patients_right_anterior_is_top_left_in_every_orientation(tmp_path: Path) -> None:
    phantom = torso_phantom()
    orientations = ["LPS", "RAS", "LAS", "RPI", "AIL", "SRA"]
    ids = [f"s{i:04d}" for i in range(len(orientations))]
    for subject, orientation in zip(ids, orientations, strict=True):
        write_volume(tmp_path / "src" / subject / "ct.nii.gz", phantom, orientation=orientation)
    write_meta(tmp_path / "src", ids)
    # one phantom under every orientation: the same images by design, so duplicates stay
    report, catalogue, cache = ingest(tmp_path / "src", tmp_path / "out", drop_duplicates=False)
    assert report.counts["used"] == len(ids) and not report.skips
    rows = {(r["source_id"], r["slice_index"]): r for r in catalogue.iter_rows(named=True)}
    reference = {k: cache.image(rows[("s0000", k)]) for k in (2, 9)}
    for subject in ids:
        upper = cache.image(rows[(subject, 2)])  # inferior marker slice: right-anterior block
        assert np.array_equal(upper, reference[2]), subject
        bright = np.argwhere(upper == 255)
        height, width = upper.shape
        assert bright[:, 0].max() < height / 2 and bright[:, 1].max() < width / 2, subject  # top-left
        lower = cache.image(rows[(subject, 9)])  # superior marker slice: left-posterior block
        bright = np.argwhere(lower == 255)
        assert bright[:, 0].min() > height / 2 and bright[:, 1].min() > width / 2, subject  # bottom-right
        assert rows[(subject, 9)]["z_mm"] - rows[(subject, 2)]["z_mm"] == pytest.approx(14.0), subject


def test_sample_segmentations_land_radiologically_in_every_stored_orientation(
    sample_sources: dict[str, Path],
) -> None:
    """The sample stores LPS, RAS, LAS, RPI volumes: the heart is always anterior-left, the liver right."""
    root = sample_sources["totalseg-ct"]
    for folder in sorted(root.glob("s*")):
        heart = read_canonical(folder / "segmentations" / "heart.nii.gz").array
        liver = read_canonical(folder / "segmentations" / "liver.nii.gz").array
        _, ny, nx = heart.shape
        heart_z, heart_y, heart_x = np.argwhere(heart).mean(axis=0)
        assert heart_y < ny / 2 and heart_x > nx / 2, folder.name  # top, image right = patient left
        assert np.argwhere(liver)[:, 2].mean() < nx / 2, folder.name  # image left = patient right
        assert heart_z > np.argwhere(liver)[:, 0].mean(), folder.name  # heart above the liver


# ------------------------------------------------------------- geometry


def test_slice_grid_makes_square_pixels_and_caps_the_longest_side() -> None:
    assert slice_grid(100, 200, 2.0, 1.0, 512) == SliceGrid(200, 200, 1.0)
    grid = slice_grid(100, 200, 2.0, 1.0, 64)
    assert (grid.height, grid.width) == (64, 64)
    assert grid.pixel_mm == pytest.approx(200 / 64)


def test_anisotropic_volume_comes_out_with_square_pixels(tmp_path: Path) -> None:
    ny, nx = 60, 120  # 60 mm x 60 mm at 1.0 mm rows and 0.5 mm columns
    yy, xx = np.mgrid[0:ny, 0:nx]
    disc = ((yy + 0.5) * 1.0 - 30) ** 2 + ((xx + 0.5) * 0.5 - 30) ** 2 <= 20**2
    volume = np.where(disc, 40, -1000).astype(np.int16)[None].repeat(4, axis=0)
    write_volume(tmp_path / "src" / "s0000" / "ct.nii.gz", volume, spacing=(0.5, 1.0, 3.0), orientation="RAS")
    _, catalogue, cache = ingest(
        tmp_path / "src", tmp_path / "out", min_body_fraction=0.1, crop_to_body=False
    )
    row = catalogue.row(0, named=True)
    assert (row["height"], row["width"]) == (120, 120)
    assert row["pixel_spacing_mm"] == pytest.approx(0.5)
    assert row["slice_spacing_mm"] == pytest.approx(3.0)
    rows, cols = np.nonzero(cache.mask(row))
    assert abs((rows.max() - rows.min()) - (cols.max() - cols.min())) <= 2  # a disc, not an ellipse
    _, small, _ = ingest(
        tmp_path / "src", tmp_path / "out-small", min_body_fraction=0.1, max_size=48, crop_to_body=False
    )
    assert (small["height"][0], small["width"][0]) == (48, 48)
    assert small["pixel_spacing_mm"][0] == pytest.approx(60 / 48)


# ------------------------------------------------------------- rendering


def test_window_maps_level_and_edges() -> None:
    hu = np.array([-1000, -160, -60, 40, 140, 240, 3000], np.float32)
    out = window_to_uint8(hu, Window("soft-tissue", 400.0, 40.0))
    assert out.tolist() == [0, 0, 64, 128, 191, 255, 255]
    assert window_to_uint8(np.array([-1350.0, 150.0], np.float32), Window("lung", 1500, -600)).tolist() == [
        0,
        255,
    ]


def test_body_mask_fills_the_lung_and_leaves_out_the_couch(tmp_path: Path) -> None:
    write_volume(tmp_path / "src" / "s0000" / "ct.nii.gz", torso_phantom())
    report, catalogue, cache = ingest(tmp_path / "src", tmp_path / "out", crop_to_body=False)
    assert sorted(catalogue["slice_index"].to_list()) == list(range(1, 11))  # air-only ends dropped
    assert report.counts["slices_dropped_low_body"] == 2
    row = catalogue.row(3, named=True)
    mask = cache.mask(row)
    assert mask[22, 36], "lung inside the body counts as body"
    assert not mask[42:44, 4:52].any(), "the couch is not body"
    assert not mask[0].any() and not mask[:, 0].any()
    yy, xx = np.mgrid[0:48, 0:56]
    body = ((yy - 22) / 15) ** 2 + ((xx - 28) / 24) ** 2 <= 1
    assert row["body_fraction"] == pytest.approx(body.mean(), abs=0.02)


def test_several_windows_give_one_cache_file_and_one_row_each(tmp_path: Path) -> None:
    write_volume(tmp_path / "src" / "s0000" / "ct.nii.gz", torso_phantom())
    windows = (Window("soft-tissue", 400.0, 40.0), Window("lung", 1500.0, -600.0))
    _, catalogue, cache = ingest(tmp_path / "src", tmp_path / "out", ct_windows=windows, crop_to_body=False)
    assert catalogue.height == 2 * 10
    assert catalogue["image_id"].n_unique() == catalogue.height
    assert set(catalogue["window"]) == {"soft-tissue", "lung"}
    by_window = {w: catalogue.filter(pl.col("window") == w) for w in ("soft-tissue", "lung")}
    assert by_window["lung"]["cache_file"][0] != by_window["soft-tissue"]["cache_file"][0]
    assert by_window["lung"]["mask_file"][0] == by_window["soft-tissue"]["mask_file"][0]
    soft = cache.image(by_window["soft-tissue"].row(0, named=True))
    lung = cache.image(by_window["lung"].row(0, named=True))
    assert soft[22, 36] == 0 and lung[22, 36] > 0  # lung parenchyma only shows in the lung window
    assert by_window["lung"]["image_id"][0] == "s0000:lung:0001"


def test_mri_is_scaled_by_percentiles_inside_the_body(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    phantom = torso_phantom()
    signal = np.where(phantom > -500, 300.0, 5.0) + rng.normal(0, 8, phantom.shape)
    volume = np.clip(signal, 0, None).astype(np.int16)
    write_volume(tmp_path / "src" / "s0000" / "mri.nii.gz", volume, orientation="RAS")
    report, catalogue, cache = ingest(tmp_path / "src", tmp_path / "out", modality="mri", crop_to_body=False)
    assert report.counts["used"] == 1
    assert set(catalogue["window"]) == {""}
    assert catalogue["image_id"][0] == f"s0000:{catalogue['slice_index'][0]:04d}"
    row = catalogue.row(4, named=True)
    image, mask = cache.image(row), cache.mask(row)
    assert 0.3 < mask.mean() < 0.5
    inside = image[mask]
    assert np.percentile(inside, 99.5) >= 250 and np.percentile(inside, 0.5) <= 10
    assert image[~mask].mean() < 40 < 200 < inside.mean()


# ------------------------------------------------------------ provenance


def test_meta_csv_gives_split_and_provenance(sample_sources: dict[str, Path], tmp_path: Path) -> None:
    _, catalogue, _ = ingest(sample_sources["totalseg-ct"], tmp_path / "out", min_body_fraction=0.1)
    row = catalogue.filter(pl.col("source_id") == "s0003").row(0, named=True)
    assert row["official_split"] == "val"  # the sample's meta.csv: index 3 -> val
    meta = json.loads(row["meta"])
    assert meta["institute"] == "synthetic" and meta["image_id"] == "s0003"
    assert row["subject_id"] == "s0003" and row["path"] == "s0003/ct.nii.gz"
    assert row["modality"] == "ct" and row["source_kind"] == "totalseg" and row["plane"] == "axial"


def test_missing_meta_csv_is_recorded_and_folders_give_subjects(tmp_path: Path) -> None:
    for subject in ("s0000", "s0001"):
        write_volume(tmp_path / "src" / subject / "ct.nii.gz", torso_phantom())
    # one phantom under both subjects: the same images by design, so duplicates stay
    report, catalogue, _ = ingest(tmp_path / "src", tmp_path / "out", drop_duplicates=False)
    assert skips_by_path(report) == {"meta.csv": "missing-meta"}
    assert sorted(catalogue["subject_id"].unique()) == ["s0000", "s0001"]
    assert set(catalogue["official_split"]) == {""}


# ------------------------------------------------------------ bad input


def write_bad_tree(root: Path) -> None:
    """One good subject and one of each kind of bad input."""
    good = torso_phantom()
    write_volume(root / "s0000" / "ct.nii.gz", good)
    write_volume(root / "s0001" / "ct.nii.gz", good)
    data = (root / "s0001" / "ct.nii.gz").read_bytes()
    (root / "s0001" / "ct.nii.gz").write_bytes(data[: len(data) // 2])
    (root / "s0002").mkdir()
    (root / "s0002" / "ct.nii.gz").write_bytes(b"this is not a NIfTI file" * 20)
    (root / "s0003").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(good[5]), str(root / "s0003" / "ct.nii.gz"))
    (root / "s0004").mkdir()
    four_d = sitk.JoinSeries([sitk.GetImageFromArray(good)] * 3)
    sitk.WriteImage(four_d, str(root / "s0004" / "ct.nii.gz"))
    write_volume(root / "s0005" / "ct.nii.gz", np.full(good.shape, 40, np.int16))
    with_nan = good.astype(np.float32)
    with_nan[4, 10, 10] = np.nan
    write_volume(root / "s0006" / "ct.nii.gz", with_nan)
    (root / "s0007" / "segmentations").mkdir(parents=True)
    write_volume(root / "s0009" / "ct.nii.gz", np.full(good.shape, -1000, np.int16) + (good > 900))
    write_meta(root, [f"s{i:04d}" for i in range(10)])


def test_every_bad_volume_is_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    write_bad_tree(tmp_path / "src")
    report, catalogue, _ = ingest(tmp_path / "src", tmp_path / "out")
    assert skips_by_path(report) == {
        "s0001/ct.nii.gz": "truncated",
        "s0002/ct.nii.gz": "unreadable",
        "s0003/ct.nii.gz": "not-3d",
        "s0004/ct.nii.gz": "not-3d",
        "s0005/ct.nii.gz": "constant-volume",
        "s0006/ct.nii.gz": "nan-voxels",
        "s0007": "missing-volume",
        "s0008": "missing-volume",
        "s0009/ct.nii.gz": "no-usable-slices",
    }
    assert set(catalogue["source_id"]) == {"s0000"}
    assert catalogue.height == 10
    messages = {s.path: s.message for s in report.skips}
    assert messages["s0001/ct.nii.gz"].startswith("s0001/ct.nii.gz: ")
    assert "3-D" in messages["s0004/ct.nii.gz"]
    assert not any(str(tmp_path) in m for m in messages.values()), "messages hold relative paths only"
    errors = pl.read_parquet(tmp_path / "out" / "catalogue" / "ct" / "errors.parquet")
    assert errors.height == len(report.skips) and set(errors["reason"]) >= {"truncated", "nan-voxels"}


def test_4d_volume_with_one_time_point_is_used(tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(torso_phantom())
    sitk.WriteImage(sitk.JoinSeries([image]), str(tmp_path / "ct.nii.gz"))
    (tmp_path / "src" / "s0000").mkdir(parents=True)
    shutil.move(tmp_path / "ct.nii.gz", tmp_path / "src" / "s0000" / "ct.nii.gz")
    report, catalogue, _ = ingest(tmp_path / "src", tmp_path / "out")
    assert report.counts["used"] == 1 and catalogue.height == 10


def test_cli_exit_code_says_whether_anything_usable_came_out(tmp_path: Path) -> None:
    write_bad_tree(tmp_path / "src")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        (Path(__file__).parent.parent / "recipes" / "sample.toml")
        .read_text()
        .replace("min_body_fraction = 0.3", "min_body_fraction = 0.2")
    )
    args = ["ingest", "--modality", "ct", "--recipe", str(recipe), "--quiet"]
    result = CliRunner().invoke(cli, [*args, "--root", str(tmp_path / "src"), "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert "used=1" in result.output and "truncated: 1" in result.output and "errors.parquet" in result.output
    shutil.rmtree(tmp_path / "src" / "s0000")
    result = CliRunner().invoke(cli, [*args, "--root", str(tmp_path / "src"), "--out", str(tmp_path / "b")])
    assert result.exit_code == 1
    assert "nothing usable" in result.output


def test_fill_holes_matches_scipy_on_random_masks() -> None:
    from scipy import ndimage

    from medscout_data.sources.masks import fill_holes

    rng = np.random.default_rng(0)
    for _ in range(40):
        mask = rng.random((30, 41)) < rng.uniform(0.3, 0.8)
        assert np.array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))
