"""Ingest of chest X-rays: the DICOM display pipeline, JPG/DICOM agreement, views, chunks, bad files."""

from __future__ import annotations

import dataclasses
import gzip
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import (
    MPEG2MPML,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    generate_uid,
)

from medscout_data.cache import ImageCache, stack_entries
from medscout_data.layout import Layout
from medscout_data.recipe import IngestConfig, load_recipe
from medscout_data.sources import run_ingest
from medscout_data.sources.dicom import apply_window, render_dicom


def recipe_with(**ingest):
    recipe = load_recipe("sample")
    return dataclasses.replace(recipe, ingest=dataclasses.replace(IngestConfig(max_size=256), **ingest))


def ingest(root: Path, out: Path, **ingest_settings):
    layout = Layout.at(out)
    report = run_ingest(layout, recipe_with(**ingest_settings), "xray", root=root, progress=False)
    return report, pl.read_parquet(layout.catalogue("xray")), ImageCache(layout.cache_dir("xray"))


def read_csv_gz(path: Path) -> pl.DataFrame:
    with gzip.open(path, "rb") as handle:
        return pl.read_csv(handle.read(), infer_schema=False)


def make_dataset(stored: np.ndarray, **tags) -> Dataset:
    """A single-frame grayscale DX dataset, uncompressed, with the given tags set."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["test", str(stored.sum())])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.ViewPosition, ds.PatientID = "DX", "PA", "10000017"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = stored.astype(np.uint16).tobytes()
    return ds


# ---------------------------------------------------- the display pipeline


def test_linear_window_follows_the_standard() -> None:
    values = np.array([-5.0, 0.0, 2047.5, 4095.0, 5000.0], np.float32)
    assert apply_window(values, 2048, 4096).tolist() == pytest.approx([0, 0, 0.5, 1, 1])
    assert apply_window(values, 2048, 4096, "LINEAR_EXACT")[2] == pytest.approx(0.5 - 0.5 / 4096)
    assert apply_window(np.array([2048.0], np.float32), 2048, 100, "SIGMOID")[0] == pytest.approx(0.5)


def test_modality_lut_then_window() -> None:
    stored = np.array([[512, 1024, 1536, 100]])
    ds = make_dataset(
        stored,
        RescaleSlope="2",
        RescaleIntercept="-1024",
        WindowCenter="1024",
        WindowWidth="2048",
        VOILUTFunction="LINEAR_EXACT",
    )
    assert render_dicom(ds).tolist() == [[0, 128, 255, 0]]  # 0, 1024, 2048, -824 after rescale


def test_bits_above_bits_stored_are_ignored() -> None:
    values = np.linspace(0, 4095, 64).astype(np.uint16).reshape(8, 8)
    clean = make_dataset(values, WindowCenter="2048", WindowWidth="4096")
    noisy = make_dataset(values | 0xF000, WindowCenter="2048", WindowWidth="4096")  # overlay bits set
    assert np.array_equal(render_dicom(clean), render_dicom(noisy))
    assert render_dicom(clean).max() == 255 and render_dicom(clean).min() == 0


def test_monochrome1_is_inverted() -> None:
    values = np.arange(0, 4096, 64).reshape(8, 8)
    plain = render_dicom(make_dataset(values, WindowCenter="2048", WindowWidth="4096")).astype(int)
    inverted = render_dicom(
        make_dataset(values, WindowCenter="2048", WindowWidth="4096", PhotometricInterpretation="MONOCHROME1")
    ).astype(int)
    assert np.abs(inverted - (255 - plain)).max() <= 1
    assert plain[0, 0] == 0 and inverted[0, 0] == 255


def test_voi_lut_sequence_wins_and_no_window_uses_the_image_range() -> None:
    values = np.arange(0, 4096, 64).reshape(8, 8)
    ds = make_dataset(values, WindowCenter="0", WindowWidth="10")
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "US", (4095 - np.arange(4096)).tolist())  # a LUT that inverts
    ds.VOILUTSequence = [item]
    expected = np.rint((4095 - values) / 65535 * 255)
    assert np.abs(render_dicom(ds) - expected).max() <= 1
    plain = render_dicom(make_dataset(values + 100))
    assert plain.min() == 0 and plain.max() == 255


# ------------------------------------------------------ sample sources


def test_jpg_and_dicom_of_the_same_radiograph_render_alike(sample_sources: dict[str, Path], tmp_path) -> None:
    _, jpg, jpg_cache = ingest(sample_sources["mimic-cxr-jpg"], tmp_path / "jpg")
    _, dcm, dcm_cache = ingest(sample_sources["mimic-cxr"], tmp_path / "dcm")
    assert sorted(jpg["image_id"]) == sorted(dcm["image_id"])
    pairs = jpg.join(dcm, on="image_id", suffix="_dcm")
    photometric = set()
    for row in pairs.iter_rows(named=True):
        a = jpg_cache.image(row).astype(float)
        b = dcm_cache.image({k.removesuffix("_dcm"): v for k, v in row.items() if k.endswith("_dcm")}).astype(
            float
        )
        assert a.shape == b.shape
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98, row["image_id"]
        # same window on both: only JPEG loss and rounding differ
        assert np.abs(a - b).mean() < 6, row["image_id"]
        photometric.add(
            pydicom.dcmread(sample_sources["mimic-cxr"] / row["path_dcm"]).PhotometricInterpretation
        )
        assert row["subject_id"] == row["subject_id_dcm"] and row["view"] == row["view_dcm"]
    assert photometric == {"MONOCHROME1", "MONOCHROME2"}


def test_frontal_views_kept_laterals_recorded(sample_sources: dict[str, Path], tmp_path: Path) -> None:
    root = sample_sources["mimic-cxr-jpg"]
    metadata = read_csv_gz(root / "mimic-cxr-2.0.0-metadata.csv.gz")
    laterals = metadata.filter(pl.col("ViewPosition") == "LATERAL").height
    report, catalogue, _ = ingest(root, tmp_path / "frontal")
    assert set(catalogue["view"]) == {"PA", "AP"} or set(catalogue["view"]) <= {"PA", "AP"}
    assert catalogue.height == metadata.height - laterals
    assert report.skipped_by_reason() == {"view-filtered": laterals}
    report, catalogue, _ = ingest(root, tmp_path / "lateral", xray_views=("LATERAL",))
    assert set(catalogue["view"]) == {"LATERAL"} and catalogue.height == laterals


def test_catalogue_rows_carry_metadata_and_split(sample_sources: dict[str, Path], tmp_path: Path) -> None:
    root = sample_sources["mimic-cxr-jpg"]
    _, catalogue, _ = ingest(root, tmp_path / "out")
    metadata = read_csv_gz(root / "mimic-cxr-2.0.0-metadata.csv.gz")
    split = read_csv_gz(root / "mimic-cxr-2.0.0-split.csv.gz")
    row = catalogue.row(0, named=True)
    truth = metadata.filter(pl.col("dicom_id") == row["image_id"]).row(0, named=True)
    assert row["subject_id"] == truth["subject_id"] and row["study_id"] == truth["study_id"]
    assert row["official_split"] == split.filter(pl.col("dicom_id") == row["image_id"])["split"][0]
    folder = f"files/p{truth['subject_id'][:2]}/p{truth['subject_id']}/s{truth['study_id']}"
    assert row["path"] == f"{folder}/{row['image_id']}.jpg"
    assert '"ViewPosition"' in row["meta"]
    assert (row["slice_index"], row["plane"], row["window"]) == (-1, "", "")
    assert np.isnan(row["z_mm"]) and np.isnan(row["pixel_spacing_mm"])


def test_chunks_are_stacks_and_images_are_shrunk(sample_sources: dict[str, Path], tmp_path) -> None:
    report, catalogue, cache = ingest(
        sample_sources["mimic-cxr"], tmp_path / "out", max_size=64, xray_chunk_images=4
    )
    assert set(zip(catalogue["height"], catalogue["width"], strict=True)) == {(64, 53)}  # 77 x 64 -> 64 x 53
    assert catalogue["pixel_spacing_mm"][0] == pytest.approx(0.139 * 64 / 53)
    files = sorted(set(catalogue["cache_file"]))
    assert len(files) == report.counts["units_run"] >= 3
    for name in files:
        rows = catalogue.filter(pl.col("cache_file") == name)
        assert stack_entries(tmp_path / "out" / "cache" / "xray" / name) == rows.height
        assert sorted(rows["cache_index"]) == list(range(rows.height))
        assert set(rows["mask_file"]) == {name.replace(".stack", ".mask.stack")}
    row = catalogue.row(0, named=True)
    image, mask = cache.image(row), cache.mask(row)
    assert image.shape == mask.shape == (64, 53) and image.dtype == np.uint8 and mask.dtype == bool


def test_xray_mask_leaves_out_the_dark_background(sample_sources: dict[str, Path], tmp_path: Path) -> None:
    _, catalogue, cache = ingest(sample_sources["mimic-cxr-jpg"], tmp_path / "out")
    for row in catalogue.iter_rows(named=True):
        image, mask = cache.image(row), cache.mask(row)
        assert 0.6 < mask.mean() < 0.99 and row["body_fraction"] == pytest.approx(mask.mean())
        assert mask[image.shape[0] // 2, image.shape[1] // 2]
        assert image[~mask].mean() < image[mask].mean() / 3


# -------------------------------------------------------------- bad input


def frontal_files(root: Path, suffix: str) -> list[Path]:
    metadata = read_csv_gz(root / "mimic-cxr-2.0.0-metadata.csv.gz") if suffix == ".jpg" else None
    files = sorted((root / "files").rglob(f"*{suffix}"))
    if metadata is not None:
        frontal = set(metadata.filter(pl.col("ViewPosition") != "LATERAL")["dicom_id"])
        return [f for f in files if f.stem in frontal]
    return [f for f in files if pydicom.dcmread(f, stop_before_pixels=True).ViewPosition != "LATERAL"]


def test_bad_jpgs_are_recorded_and_the_run_goes_on(sample_sources: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "src"
    shutil.copytree(sample_sources["mimic-cxr-jpg"], root)
    frontal = frontal_files(root, ".jpg")
    data = frontal[0].read_bytes()
    frontal[0].write_bytes(data[: len(data) // 2])
    shutil.copy(frontal[1], frontal[1].with_name("00000000-not-in-metadata.jpg"))
    report, catalogue, _ = ingest(root, tmp_path / "out")
    relative = {p: p.relative_to(root).as_posix() for p in (frontal[0], frontal[1])}
    reasons = {s.path: s.reason for s in report.skips if s.reason != "view-filtered"}
    assert reasons == {
        relative[frontal[0]]: "unreadable",
        relative[frontal[1]].replace(frontal[1].name, "00000000-not-in-metadata.jpg"): "no-view",
    }
    assert catalogue.height == len(frontal) - 1


def test_missing_jpg_metadata_is_recorded_and_nothing_is_usable(sample_sources, tmp_path: Path) -> None:
    root = tmp_path / "src"
    shutil.copytree(sample_sources["mimic-cxr-jpg"], root)
    (root / "mimic-cxr-2.0.0-metadata.csv.gz").unlink()
    report, catalogue, _ = ingest(root, tmp_path / "out")
    by_reason = report.skipped_by_reason()
    assert by_reason == {"missing-metadata": 1, "no-view": report.counts["found"]}
    assert catalogue.height == 0


def undecodable_syntax():
    """A compressed transfer syntax no installed plugin decodes (MPEG-2 never has one)."""
    for uid in (JPEGLSLossless, JPEGLSNearLossless, HTJ2KLossless, MPEG2MPML):
        try:
            if not get_decoder(uid).is_available:
                return uid
        except NotImplementedError:
            return uid
    raise AssertionError("unreachable: pydicom has no MPEG-2 decoder")


def rewrite_compressed(path: Path, syntax) -> None:
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([b"\xff\xd8 not really compressed pixels \xff\xd9" * 8])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)


def test_bad_dicoms_are_recorded_and_the_run_goes_on(sample_sources: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "src"
    shutil.copytree(sample_sources["mimic-cxr"], root)
    frontal = frontal_files(root, ".dcm")
    no_pixels = pydicom.dcmread(frontal[0])
    del no_pixels.PixelData
    no_pixels.save_as(frontal[0], enforce_file_format=True)
    data = frontal[1].read_bytes()
    frontal[1].write_bytes(data[: len(data) - 3000])
    syntax = undecodable_syntax()
    rewrite_compressed(frontal[2], syntax)
    rewrite_compressed(frontal[3], JPEGBaseline8Bit)
    frontal[4].write_bytes(b"not a DICOM file at all" * 40)
    report, catalogue, _ = ingest(root, tmp_path / "out")
    rel = [f.relative_to(root).as_posix() for f in frontal]
    baseline_available = get_decoder(JPEGBaseline8Bit).is_available
    reasons = {s.path: s.reason for s in report.skips if s.reason != "view-filtered"}
    assert reasons == {
        rel[0]: "no-pixel-data",
        rel[1]: "corrupt-pixel-data",
        rel[2]: "unsupported-transfer-syntax",
        rel[3]: "corrupt-pixel-data" if baseline_available else "unsupported-transfer-syntax",
        rel[4]: "unreadable",
    }
    message = next(s.message for s in report.skips if s.path == rel[2])
    assert message.startswith(rel[2]) and syntax in message
    assert ("pip install" in message) or ("no decoder" in message)
    assert catalogue.height == len(frontal) - 5


def test_missing_record_list_falls_back_to_folder_ids(
    sample_sources: dict[str, Path], tmp_path: Path
) -> None:
    root = tmp_path / "src"
    shutil.copytree(sample_sources["mimic-cxr"], root)
    (root / "cxr-record-list.csv.gz").unlink()
    report, catalogue, _ = ingest(root, tmp_path / "out")
    assert report.skipped_by_reason()["missing-metadata"] == 1
    assert catalogue.height == len(frontal_files(root, ".dcm"))
    for row in catalogue.iter_rows(named=True):
        assert row["path"].split("/")[2] == f"p{row['subject_id']}"
        assert row["path"].split("/")[3] == f"s{row['study_id']}"
