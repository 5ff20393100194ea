"""`medscout-data sample`: every layout, files that open, deterministic for a seed."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from click.testing import CliRunner
from PIL import Image

from medscout_data.cli import cli
from medscout_data.sample import write_samples


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_totalseg_layouts_open_with_simpleitk(sample_sources: dict[str, Path]) -> None:
    for source, volume_name in (("totalseg-ct", "ct.nii.gz"), ("totalseg-mri", "mri.nii.gz")):
        root = sample_sources[source]
        subjects = sorted(p.name for p in root.glob("s*") if p.is_dir())
        assert subjects == [f"s{i:04d}" for i in range(6)]
        directions = set()
        for subject in subjects:
            image = sitk.ReadImage(str(root / subject / volume_name))
            assert image.GetDimension() == 3
            directions.add(image.GetDirection())
            array = sitk.GetArrayViewFromImage(image)
            assert array.std() > 0
            segs = sorted(p.name for p in (root / subject / "segmentations").glob("*.nii.gz"))
            assert "liver.nii.gz" in segs and "lung_left.nii.gz" in segs
        assert len(directions) >= 3, "volumes must be stored in several orientations"


def test_ct_is_in_hounsfield_units_with_structure(sample_sources: dict[str, Path]) -> None:
    image = sitk.ReadImage(str(sample_sources["totalseg-ct"] / "s0000" / "ct.nii.gz"))
    hu = sitk.GetArrayFromImage(image)
    assert hu.min() <= -950  # air
    assert hu.max() >= 700  # bone
    body = (hu > -500).mean()
    assert 0.2 < body < 0.8


def test_some_volumes_have_anisotropic_in_plane_spacing(sample_sources: dict[str, Path]) -> None:
    ratios = []
    for path in sorted(sample_sources["totalseg-ct"].glob("s*/ct.nii.gz")):
        image = sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS")
        sx, sy, _ = image.GetSpacing()
        ratios.append(round(sy / sx, 3))
    assert 1.0 in ratios and any(r != 1.0 for r in ratios)


def test_meta_csv_is_semicolon_separated_with_bom(sample_sources: dict[str, Path]) -> None:
    raw = (sample_sources["totalseg-ct"] / "meta.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig")), delimiter=";"))
    assert [r["image_id"] for r in rows] == [f"s{i:04d}" for i in range(6)]
    assert {r["split"] for r in rows} <= {"train", "val", "test"}
    assert all("synthetic" in r["note"] for r in rows)


def _read_csv_gz(path: Path) -> list[dict[str, str]]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_mimic_jpg_layout_and_metadata(sample_sources: dict[str, Path]) -> None:
    root = sample_sources["mimic-cxr-jpg"]
    meta = _read_csv_gz(root / "mimic-cxr-2.0.0-metadata.csv.gz")
    split = _read_csv_gz(root / "mimic-cxr-2.0.0-split.csv.gz")
    assert {r["dicom_id"] for r in meta} == {r["dicom_id"] for r in split}
    views = {r["ViewPosition"] for r in meta}
    assert "LATERAL" in views and views & {"PA", "AP"}
    per_subject: dict[str, int] = {}
    for row in meta:
        path = root / "files" / f"p{row['subject_id'][:2]}" / f"p{row['subject_id']}"
        path = path / f"s{row['study_id']}" / f"{row['dicom_id']}.jpg"
        with Image.open(path) as image:
            assert image.mode == "L"
            assert image.size == (int(row["Columns"]), int(row["Rows"]))
        per_subject[row["subject_id"]] = per_subject.get(row["subject_id"], 0) + 1
    assert max(per_subject.values()) > 1, "several images per subject"


def test_mimic_dicom_layout_window_tags_and_monochrome1(sample_sources: dict[str, Path]) -> None:
    root = sample_sources["mimic-cxr"]
    records = _read_csv_gz(root / "cxr-record-list.csv.gz")
    photometric = set()
    for record in records:
        ds = pydicom.dcmread(root / record["path"])
        assert ds.PatientID == record["subject_id"]
        assert float(ds.WindowWidth) > 0 and ds.BitsStored == 12
        assert ds.pixel_array.shape == (ds.Rows, ds.Columns)
        assert ds.pixel_array.max() < 4096
        photometric.add(ds.PhotometricInterpretation)
    assert photometric == {"MONOCHROME1", "MONOCHROME2"}


def test_dicom_and_jpg_show_the_same_radiograph(sample_sources: dict[str, Path]) -> None:
    record = _read_csv_gz(sample_sources["mimic-cxr"] / "cxr-record-list.csv.gz")[1]
    ds = pydicom.dcmread(sample_sources["mimic-cxr"] / record["path"])
    pixels = ds.pixel_array.astype(np.float32)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        pixels = 4095 - pixels
    jpg_path = sample_sources["mimic-cxr-jpg"] / Path(record["path"]).with_suffix(".jpg")
    jpg = np.asarray(Image.open(jpg_path), np.float32)
    assert np.corrcoef(pixels.ravel(), jpg.ravel())[0, 1] > 0.98


def test_same_seed_identical_files_other_seed_differs(tmp_path: Path) -> None:
    a = write_samples(tmp_path / "a", subjects=2, size=32, slices=6, seed=5)
    b = write_samples(tmp_path / "b", subjects=2, size=32, slices=6, seed=5)
    c = write_samples(tmp_path / "c", subjects=2, size=32, slices=6, seed=6)
    for name in a:
        assert _tree_digest(a[name]) == _tree_digest(b[name]), name
        digest_a, digest_c = _tree_digest(a[name]), _tree_digest(c[name])
        assert digest_a.keys() != digest_c.keys() or digest_a != digest_c, name


def test_cli_writes_chosen_sources_labelled_synthetic(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "sample",
            "--out",
            str(tmp_path),
            "--subjects",
            "2",
            "--size",
            "32",
            "--slices",
            "6",
            "--source",
            "totalseg-ct",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "totalseg-ct" / "s0001" / "ct.nii.gz").exists()
    assert not (tmp_path / "totalseg-mri").exists()
    assert "SYNTHETIC" in (tmp_path / "README.txt").read_text()


def test_any_worker_count_writes_identical_files(tmp_path: Path) -> None:
    one = write_samples(tmp_path / "one", subjects=5, size=32, slices=6, seed=2, workers=1)
    two = write_samples(tmp_path / "two", subjects=5, size=32, slices=6, seed=2, workers=2)
    for name in one:
        assert _tree_digest(one[name]) == _tree_digest(two[name]), name


def test_xray_sample_scales_with_subjects_studies_and_views(tmp_path: Path) -> None:
    """About two frontal images per subject (1-3 studies), laterals on some studies, ids that stay valid."""
    written = write_samples(tmp_path, subjects=300, size=32, slices=4, seed=0, sources=("mimic-cxr-jpg",))
    meta = _read_csv_gz(written["mimic-cxr-jpg"] / "mimic-cxr-2.0.0-metadata.csv.gz")
    frontal = [r for r in meta if r["ViewPosition"] in ("PA", "AP")]
    subjects = {r["subject_id"] for r in meta}
    assert len(subjects) == 300 and 1.7 < len(frontal) / len(subjects) < 2.3
    studies = {(r["subject_id"], r["study_id"]) for r in meta}
    assert len(studies) == len(frontal), "one frontal view per study"
    assert len({r["dicom_id"] for r in meta}) == len(meta)
    assert all(len(r["subject_id"]) == len(r["study_id"]) == 8 for r in meta)
    assert len(list((written["mimic-cxr-jpg"] / "files").rglob("*.jpg"))) == len(meta)
