"""The body at ingest: stored non-air backgrounds, crop to the body, thin patients, slab budgets, sizes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from test_ingest_volumes import ingest, skips_by_path, torso_phantom, write_volume

from medscout_data.sources.volumes import select_slabs


def skull_stripped_head(nz: int = 12, size: int = 96) -> np.ndarray:
    """A head CT whose background is stored as 0 HU (not air): brain, ventricles, and a stray blob."""
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[0:size, 0:size]
    head = ((yy - 44) / 34) ** 2 + ((xx - 44) / 28) ** 2 <= 1
    ventricle = ((yy - 44) / 8) ** 2 + ((xx - 44) / 4) ** 2 <= 1
    volume = np.zeros((nz, size, size), np.int16)
    for k in range(nz):
        brain = 32 + rng.normal(0, 3, (size, size))
        brain[ventricle] = 8
        volume[k][head] = np.round(brain[head]).astype(np.int16)
    volume[:, 84:90, 84:90] = 60  # a small object apart from the head
    return volume


def test_a_constant_non_air_background_is_not_body(tmp_path: Path) -> None:
    write_volume(tmp_path / "src" / "s0000" / "ct.nii.gz", skull_stripped_head(), spacing=(1.0, 1.0, 3.0))
    report, catalogue, cache = ingest(tmp_path / "src", tmp_path / "out", crop_to_body=False)
    assert report.counts["used"] == 1 and catalogue.height == 12
    yy, xx = np.mgrid[0:96, 0:96]
    head = ((yy - 44) / 34) ** 2 + ((xx - 44) / 28) ** 2 <= 1
    for row in catalogue.iter_rows(named=True):
        mask = cache.mask(row)
        assert not mask.all(), "the mask differs from the whole frame"
        assert (mask == head).mean() > 0.98  # the head, ventricles filled, and nothing else
        assert not mask[84:90, 84:90].any(), "only the largest component"
    _, cropped, cache = ingest(tmp_path / "src", tmp_path / "cropped")
    row = cropped.row(0, named=True)
    assert row["height"] < 80 and row["width"] < 66  # 69 x 57 px head, 5% margin
    image = cache.image(row)
    assert image.shape == (row["height"], row["width"])
    assert (row["crop_y"], row["crop_x"]) == (10 - 3, 16 - 3)


def test_a_slice_whose_body_is_the_whole_frame_is_dropped(tmp_path: Path) -> None:
    volume = np.full((6, 40, 40), 40, np.int16)  # tissue everywhere: no background to tell the body by
    volume += np.arange(40, dtype=np.int16)[None, None, :]
    write_volume(tmp_path / "src" / "s0000" / "ct.nii.gz", volume)
    report, catalogue, _ = ingest(tmp_path / "src", tmp_path / "out")
    assert catalogue.height == 0
    assert report.counts["slices_dropped_no_background"] == 6
    message = next(s.message for s in report.skips if s.reason == "no-usable-slices")
    assert "whole frame" in message


def thin_patient(nz: int = 8) -> np.ndarray:
    """A slim body in a large field of view (about 0.2 of the frame), a table under it, apart."""
    yy, xx = np.mgrid[0:128, 0:128]
    body = ((yy - 56) / 22) ** 2 + ((xx - 64) / 38) ** 2 <= 1
    volume = np.full((nz, 128, 128), -1000, np.int16)
    volume[:, body] = 40
    volume[:, 90:96, 10:118] = 300  # the table
    return volume


def test_thin_patient_is_kept_cropped_to_the_body_without_the_table(tmp_path: Path) -> None:
    write_volume(tmp_path / "src" / "s0000" / "ct.nii.gz", thin_patient())
    report, _, _ = ingest(tmp_path / "src", tmp_path / "frame", crop_to_body=False, min_body_fraction=0.3)
    assert skips_by_path(report) == {"meta.csv": "missing-meta", "s0000/ct.nii.gz": "no-usable-slices"}
    report, catalogue, cache = ingest(tmp_path / "src", tmp_path / "body", min_body_fraction=0.3)
    assert catalogue.height == 8 and report.counts["slices_kept"] == 8
    row = catalogue.row(0, named=True)
    assert row["body_fraction"] > 0.55  # measured in the body's own box
    assert row["crop_y"] + row["height"] < 90, "the table is outside the crop"
    assert (row["width"], row["height"]) == (77 + 2 * 4, 45 + 2 * 4)  # margin: 5% of the longer side
    mask = cache.mask(row)
    assert mask.mean() == pytest.approx(row["body_fraction"])
    summary = json.loads((tmp_path / "body" / "catalogue" / "ct" / "report.json").read_text())
    assert summary["slices_per_subject"]["s0000"] == {
        "kept": 8,
        "usable": 8,
        "dropped_low_body": 0,
        "dropped_no_background": 0,
        "left_out_by_budget": 0,
    }
    assert summary["slices_kept_summary"].startswith("slices kept per subject: min 8, median 8, max 8")


def test_select_slabs_keeps_references_in_reach() -> None:
    positions = [1.5 * k for k in range(300)]
    assert select_slabs(positions, 0, 6.0) == list(range(300))
    assert select_slabs(positions[:10], 12, 6.0) == list(range(10))
    chosen = select_slabs(positions, 30, 6.0)
    assert len(chosen) == 30 == len(set(chosen)) and chosen == sorted(chosen)
    kept = [positions[i] for i in chosen]
    for z in kept:
        assert any(4.0 <= abs(z - other) <= 12.0 for other in kept), z
    assert kept[0] < 30 and kept[-1] > 420, "slabs spread along the whole volume"
    thick = [5.0 * k for k in range(40)]
    chosen = select_slabs(thick, 9, 6.0)
    assert len(chosen) == 9
    assert all(any(abs(thick[i] - thick[j]) == 5.0 for j in chosen) for i in chosen)


def test_max_images_shares_slices_out_per_volume_and_reports_what_was_left(tmp_path: Path) -> None:
    for subject in ("s0000", "s0001"):
        write_volume(tmp_path / "src" / subject / "ct.nii.gz", torso_phantom(nz=40), spacing=(1.0, 1.0, 1.5))
    # one phantom under both subjects: the same images by design, so duplicates stay
    report, catalogue, _ = ingest(tmp_path / "src", tmp_path / "out", max_images=18, drop_duplicates=False)
    counts = catalogue.group_by("source_id").len().sort("source_id")["len"].to_list()
    assert counts == [9, 9]
    per_subject = report.info["slices_per_subject"]
    assert per_subject["s0000"]["kept"] == 9 and per_subject["s0000"]["left_out_by_budget"] == 29
    zs = sorted(catalogue.filter(pl.col("source_id") == "s0000")["z_mm"])
    assert all(any(4.0 <= abs(a - b) <= 12.0 for b in zs) for a in zs)


def test_volume_below_the_minimum_size_is_skipped_with_a_reason(tmp_path: Path) -> None:
    tiny = np.full((5, 5, 5), -1000, np.int16)
    tiny[:, 1:4, 1:4] = 40
    write_volume(tmp_path / "src" / "s0000" / "ct.nii.gz", tiny)
    write_volume(tmp_path / "src" / "s0001" / "ct.nii.gz", torso_phantom())
    report, catalogue, _ = ingest(tmp_path / "src", tmp_path / "out", min_image_size=16)
    assert skips_by_path(report)["s0000/ct.nii.gz"] == "too-small"
    assert "below ingest.min_image_size 16" in next(
        s.message for s in report.skips if s.reason == "too-small"
    )
    assert set(catalogue["source_id"]) == {"s0001"} and min(catalogue["height"]) >= 16


def test_one_extreme_voxel_does_not_lose_an_mri(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    phantom = torso_phantom()
    volume = (np.where(phantom > -500, 300.0, 5.0) + rng.normal(0, 8, phantom.shape)).astype(np.float32)
    volume[5, 20, 20] = 1e9
    write_volume(tmp_path / "src" / "s0000" / "mri.nii.gz", volume)
    report, catalogue, cache = ingest(tmp_path / "src", tmp_path / "out", modality="mri")
    assert report.counts["used"] == 1 and catalogue.height >= 8
    row = catalogue.filter(pl.col("slice_index") == 4).row(0, named=True)
    image, mask = cache.image(row), cache.mask(row)
    assert 0.5 < mask.mean() < 0.95 and image[mask].mean() > 150


def test_ingest_recipe_settings_are_checked(tmp_path: Path) -> None:
    from medscout_data.recipe import RecipeError, load_recipe

    head = 'name = "t"\nseed = 1\n[pool]\nitems_per_cell = 10\nbench_per_cell = 2\n'
    cases = {
        'plane = "oblique"': "ingest.plane must be one of auto, axial, coronal, sagittal",
        "max_images = 100\nslab_step_mm = 20.0": "slab_step_mm must lie within anomaly.ref_distance_mm",
        "min_image_size = 0": "min_image_size must be in",
        "body_crop_margin = -0.1": "body_crop_margin must be in",
        "crop_to_body = 1": "crop_to_body must be bool",
    }
    for text, message in cases.items():
        path = tmp_path / "r.toml"
        path.write_text(head + "[ingest]\n" + text + "\n")
        with pytest.raises(RecipeError, match=message):
            load_recipe(path)
    path.write_text(head + "[ingest]\nmax_images = 0\nslab_step_mm = 20.0\n")
    assert load_recipe(path).ingest.slab_step_mm == 20.0  # no budget: slabs unused
    assert load_recipe("med-scout-bench").ingest.max_images == 30000
