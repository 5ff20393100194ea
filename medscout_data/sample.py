"""Procedural sample sources in the real on-disk layouts. SYNTHETIC, not patient data.

`write_samples` writes four trees under one folder:

    totalseg-ct/   sXXXX/ct.nii.gz, sXXXX/segmentations/*.nii.gz, meta.csv (';', BOM)
    totalseg-mri/  sXXXX/mri.nii.gz, sXXXX/segmentations/*.nii.gz, meta.csv
    mimic-cxr-jpg/ files/pXX/pSUBJECT/sSTUDY/<dicom_id>.jpg, mimic-cxr-2.0.0-{metadata,split}.csv.gz
    mimic-cxr/     files/pXX/pSUBJECT/sSTUDY/<dicom_id>.dcm, cxr-record-list.csv.gz, cxr-study-list.csv.gz

The anatomy is a labelled phantom (body, fat, muscle, lungs, heart, liver,
spleen, kidneys, aorta, spine, ribs, bowel gas, small 3-D blobs; see
`sample_phantom.py`) defined in millimetres, so it is structured at any size
(up to realistic 512x512x300) and changes along z within a few millimetres. Volumes are stored in several
orientations and some with anisotropic in-plane spacing, as real ones are.
Everything is a pure function of (seed, subject): same seed, identical files.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from medscout_data.sample_phantom import (  # noqa: F401  (public names, importable from here)
    AORTA,
    CT_HU,
    HEART,
    KIDNEY,
    LIVER,
    LUNG,
    MR_T1,
    SPLEEN,
    Torso,
    VolumeGeometry,
    _ellipse,
    _geometry,
    _torso,
    ct_intensities,
    mri_intensities,
    phantom_volume,
)
from medscout_data.seeding import rng_for

log = logging.getLogger(__name__)

SOURCES = ("totalseg-ct", "totalseg-mri", "mimic-cxr-jpg", "mimic-cxr")
SYNTHETIC_NOTE = (
    "SYNTHETIC SAMPLE: procedural phantoms written by `medscout-data sample`. "
    "Not patient data; anatomy is schematic. Layouts mimic TotalSegmentator and MIMIC-CXR."
)
ANATOMY_STEP = 2  # radiograph anatomy is drawn at half resolution and enlarged; noise is full resolution
# Orientations the volumes are stored in (SimpleITK DICOMOrient codes), cycled over subjects.
STORED_ORIENTATIONS = ("LPS", "RAS", "LAS", "RPI")

SEGMENTATIONS = {
    "lung_left": (LUNG, +1),
    "lung_right": (LUNG, -1),
    "heart": (HEART, 0),
    "liver": (LIVER, 0),
    "spleen": (SPLEEN, 0),
    "kidney_left": (KIDNEY, +1),
    "kidney_right": (KIDNEY, -1),
    "aorta": (AORTA, 0),
}


def _to_image(array: np.ndarray, geometry: VolumeGeometry, orientation: str):
    """A SimpleITK image of a canonical LPS array, stored in `orientation`."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(geometry.spacing)
    image.SetOrigin((-200.0, -200.0, -500.0))
    image.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
    return sitk.DICOMOrient(image, orientation)


def _write_nifti(image, path: Path) -> None:
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)


def _totalseg_subject(
    out: Path, modality: str, index: int, size: int, slices: int, seed: int
) -> dict[str, str]:
    """Write one subject's volume and segmentations; returns its meta.csv row."""
    image_id = f"s{index:04d}"
    rng = rng_for(seed, "sample", modality, image_id)
    geometry = _geometry(index, size, slices, rng)
    torso = _torso(rng, geometry.shape[0] * geometry.spacing[2])
    labels, offsets = phantom_volume(torso, geometry)
    make = ct_intensities if modality == "ct" else mri_intensities
    orientation = STORED_ORIENTATIONS[index % len(STORED_ORIENTATIONS)]
    volume_name = "ct.nii.gz" if modality == "ct" else "mri.nii.gz"
    _write_nifti(_to_image(make(labels, offsets, rng), geometry, orientation), out / image_id / volume_name)
    _, _, nx = geometry.shape
    left = (np.arange(nx) >= nx // 2)[None, None, :]  # LPS: columns run toward patient's left
    for name, (label, side) in SEGMENTATIONS.items():
        mask = labels == label
        if side:
            mask &= left if side > 0 else ~left
        seg = _to_image(mask.astype(np.uint8), geometry, orientation)
        _write_nifti(seg, out / image_id / "segmentations" / f"{name}.nii.gz")
    return {
        "image_id": image_id,
        "age": str(int(rng.integers(25, 85))),
        "gender": str(rng.choice(["m", "f"])),
        "institute": "synthetic",
        "study_type": "ct thorax-abdomen" if modality == "ct" else "mri t1 abdomen",
        "split": ["train", "train", "train", "val", "test"][index % 5],
        "note": "synthetic phantom",
    }


def write_totalseg(
    out: Path, modality: str, subjects: int, size: int, slices: int, seed: int, workers: int = 1
) -> None:
    """A TotalSegmentator-layout tree of CT (HU) or MRI phantoms, one subject per task."""
    out.mkdir(parents=True, exist_ok=True)
    tasks = [(_totalseg_subject, (out, modality, index, size, slices, seed)) for index in range(subjects)]
    rows = _run_tasks(tasks, workers, f"sample {modality}", "volume")
    _write_meta_csv(out / "meta.csv", rows)
    (out / "README.txt").write_text(SYNTHETIC_NOTE + "\n", encoding="utf-8")


def _call(task: tuple[Callable[..., Any], tuple]) -> Any:
    function, args = task
    return function(*args)


def _run_tasks(
    tasks: list[tuple[Callable[..., Any], tuple]], workers: int, desc: str, unit: str
) -> list[Any]:
    """Results of `tasks` in order, in a pool of `workers` processes that die with this one."""
    bar = tqdm(total=len(tasks), desc=desc, unit=unit, leave=False)
    if workers <= 1:
        results = []
        for task in tasks:
            results.append(_call(task))
            bar.update()
    else:
        from medscout_data.workers import process_pool

        with process_pool(workers) as pool:
            results = []
            for result in pool.map(_call, tasks, chunksize=max(1, len(tasks) // (8 * workers))):
                results.append(result)
                bar.update()
    bar.close()
    return results


def _write_meta_csv(path: Path, rows: list[dict[str, str]]) -> None:
    """meta.csv as TotalSegmentator ships it: ';'-separated, UTF-8 with BOM."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), delimiter=";", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text("\ufeff" + buffer.getvalue(), encoding="utf-8")


def _write_csv_gz(path: Path, rows: list[dict[str, object]], fieldnames: list[str]) -> None:
    """A gzipped CSV with a fixed header time, so equal rows give equal bytes."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as handle:
        handle.write(buffer.getvalue().encode("utf-8"))


@dataclass(frozen=True)
class ChestParams:
    """One subject's chest shape for the radiograph phantom."""

    lung_width: float
    lung_height: float
    heart_size: float
    rib_spacing: float
    body_width: float


def _chest_params(rng: np.random.Generator) -> ChestParams:
    return ChestParams(
        lung_width=rng.uniform(0.28, 0.36),
        lung_height=rng.uniform(0.52, 0.64),
        heart_size=rng.uniform(0.85, 1.2),
        rib_spacing=rng.uniform(0.075, 0.095),
        body_width=rng.uniform(0.82, 0.95),
    )


def chest_radiograph(
    params: ChestParams, view: str, height: int, width: int, rng: np.random.Generator
) -> np.ndarray:
    """A chest radiograph phantom in [0, 1], brighter = more attenuation (as displayed).

    Frontal views show the patient's left on the image's right; lateral views a
    single lung field with the spine behind and the heart in front.
    """
    import cv2

    full_height, full_width = height, width
    height, width = max(2, height // ANATOMY_STEP), max(2, width // ANATOMY_STEP)  # anatomy is smooth
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    shift_x, shift_y = rng.uniform(-0.03, 0.03, 2)
    u = (xx / width - 0.5 - shift_x) * 2  # -1..1, image left to right
    v = (yy / height - 0.45 - shift_y) * 2  # -1..1 top to bottom, centred on the thorax
    mu = np.zeros((height, width), np.float32)
    body = np.abs(u) < params.body_width * (1 - 0.15 * np.clip(-v - 0.6, 0, 1))
    mu[body] = 0.7
    texture = _smooth_field(rng, height, width, cells=24) * 0.12
    if view in ("PA", "AP"):
        for side in (-1, 1):
            lung = _ellipse(u, v, side * 0.42, -0.1, params.lung_width, params.lung_height)
            mu[lung] += texture[lung] - 0.45
        heart = _ellipse(u, v, 0.12, 0.2, 0.26 * params.heart_size, 0.22 * params.heart_size)
        mu[heart | (np.abs(u) < 0.1)] += 0.45
        mu[np.abs(u) < 0.06] += 0.25  # spine
        for k in range(11):
            arc = -0.7 + k * params.rib_spacing * 2 + 0.12 * (u**2)
            ribs = (np.abs(v - arc) < 0.018) & (np.abs(u) > 0.08) & (np.abs(u) < params.body_width * 0.95)
            mu[ribs] += 0.3
        for side in (-1, 1):
            clavicle = np.abs(v - (-0.78 + 0.25 * side * u)) < 0.025
            mu[clavicle & (side * u > 0.05) & (side * u < 0.6)] += 0.4
        mu[v > params.lung_height - 0.1 + 0.1 * np.cos(u * 3)] += 0.5  # diaphragm and abdomen
        if view == "AP":
            line = np.abs(u - (0.05 + 0.3 * (v + 1) ** 2)) < 0.008
            mu[line & (v < 0.3)] += 0.8  # a line or tube, common on AP films
    else:
        lung = _ellipse(u, v, -0.05, -0.1, params.lung_width * 1.9, params.lung_height)
        mu[lung] += texture[lung] - 0.4
        mu[_ellipse(u, v, -0.3, 0.25, 0.3 * params.heart_size, 0.25)] += 0.4
        mu[(u > 0.45) & (u < 0.6)] += 0.45  # spine, posterior
        mu[v > params.lung_height - 0.05 + 0.15 * u] += 0.5
    gain = rng.uniform(1.2, 1.6)
    mu = cv2.resize(mu, (full_width, full_height), interpolation=cv2.INTER_LINEAR)
    image = 1.0 - np.exp(np.float32(-gain) * np.clip(mu, 0, None))
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(0.015)
    return np.clip(image / np.float32(1.0 - np.exp(-gain * 2.0)), 0.0, 1.0)


def _smooth_field(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency random texture in about [-1, 1] (vessel markings, overlying tissue)."""
    import cv2

    coarse = rng.normal(0.0, 1.0, (cells, max(2, round(cells * width / height)))).astype(np.float32)
    return np.clip(cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC), -2, 2) / 2


@dataclass(frozen=True)
class Radiograph:
    """One sample X-ray: ids, view and pixels in [0, 1]."""

    subject_id: str
    study_id: str
    dicom_id: str
    view: str
    pixels: np.ndarray

    @property
    def folder(self) -> Path:
        return Path("files") / f"p{self.subject_id[:2]}" / f"p{self.subject_id}" / f"s{self.study_id}"


def subject_radiographs(index: int, size: int, seed: int) -> list[Radiograph]:
    """One subject's sample X-rays: 1-3 studies, a frontal view each, some with a lateral."""
    height, width = round(size * 1.2), size
    subject_id = str(10000000 + 1379 * index + 17)
    rng = rng_for(seed, "sample", "xray", subject_id)
    params = _chest_params(rng)
    out = []
    for study in range(int(rng.integers(1, 4))):
        study_id = str(50000000 + 7919 * index + 101 * study)
        views = [str(rng.choice(["PA", "AP"]))] + (["LATERAL"] if rng.random() < 0.5 else [])
        for view in views:
            dicom_id = "-".join(f"{int(v):08x}" for v in rng.integers(0, 2**32, 5))
            pixels = chest_radiograph(params, view, height, width, rng)
            out.append(Radiograph(subject_id, study_id, dicom_id, view, pixels))
    return out


def radiographs(subjects: int, size: int, seed: int) -> list[Radiograph]:
    """Every sample X-ray of `subjects` subjects, in memory (small samples and test fixtures)."""
    return [image for index in range(subjects) for image in subject_radiographs(index, size, seed)]


@dataclass(frozen=True)
class XrayRows:
    """One subject's rows of the MIMIC index CSVs."""

    metadata: list[dict[str, object]]
    split: list[dict[str, object]]
    records: list[dict[str, object]]
    studies: dict[str, dict[str, object]]


def _xray_subject(out: Path, sources: tuple[str, ...], index: int, size: int, seed: int) -> XrayRows:
    """Write one subject's X-rays into the requested trees (JPG and/or DICOM); returns its index rows."""
    from PIL import Image

    rows = XrayRows([], [], [], {})
    for number, item in enumerate(subject_radiographs(index, size, seed)):
        turn = index + number  # varies the split and the DICOM photometry over images
        if "mimic-cxr-jpg" in sources:
            path = out / "mimic-cxr-jpg" / item.folder / f"{item.dicom_id}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.round(item.pixels * 255).astype(np.uint8)).save(path, quality=92)
            rows.metadata.append(_metadata_row(item, 21800101 + index % 20000 + 7 * number))
            split = ["train", "train", "train", "validate", "test"][turn % 5]
            rows.split.append(
                {
                    "dicom_id": item.dicom_id,
                    "study_id": item.study_id,
                    "subject_id": item.subject_id,
                    "split": split,
                }
            )
        if "mimic-cxr" in sources:
            relative = item.folder / f"{item.dicom_id}.dcm"
            (out / "mimic-cxr" / relative).parent.mkdir(parents=True, exist_ok=True)
            _write_dicom(out / "mimic-cxr" / relative, item, monochrome1=turn % 3 == 1, seed=seed)
            record = {"subject_id": item.subject_id, "study_id": item.study_id, "dicom_id": item.dicom_id}
            rows.records.append(record | {"path": str(relative)})
            rows.studies[item.study_id] = {
                "subject_id": item.subject_id,
                "study_id": item.study_id,
                "path": str(item.folder),
            }
    return rows


def _metadata_row(item: Radiograph, date: int) -> dict[str, object]:
    rows_px, columns = item.pixels.shape
    meaning = {"PA": "postero-anterior", "AP": "antero-posterior"}.get(item.view, "lateral")
    return {
        "dicom_id": item.dicom_id,
        "subject_id": item.subject_id,
        "study_id": item.study_id,
        "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
        "ViewPosition": item.view,
        "Rows": rows_px,
        "Columns": columns,
        "StudyDate": date,
        "StudyTime": "120000.000",
        "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
        "ViewCodeSequence_CodeMeaning": meaning,
        "PatientOrientationCodeSequence_CodeMeaning": "Erect",
    }


def write_xray_sources(
    out: Path, sources: tuple[str, ...], subjects: int, size: int, seed: int, workers: int = 1
) -> None:
    """The MIMIC-CXR-JPG and/or MIMIC-CXR (DICOM) trees under `out`, with their index CSVs.

    Each subject is written by one task (in a pool with `workers`), images
    streamed to disk, so memory stays flat at any number of subjects.
    """
    tasks = [(_xray_subject, (out, sources, index, size, seed)) for index in range(subjects)]
    results: list[XrayRows] = _run_tasks(tasks, workers, "sample x-ray", "subject")
    if "mimic-cxr-jpg" in sources:
        metadata = [row for r in results for row in r.metadata]
        split = [row for r in results for row in r.split]
        folder = out / "mimic-cxr-jpg"
        _write_csv_gz(folder / "mimic-cxr-2.0.0-metadata.csv.gz", metadata, list(metadata[0]))
        _write_csv_gz(folder / "mimic-cxr-2.0.0-split.csv.gz", split, list(split[0]))
        (folder / "README.txt").write_text(SYNTHETIC_NOTE + "\n", encoding="utf-8")
    if "mimic-cxr" in sources:
        folder = out / "mimic-cxr"
        records = [row for r in results for row in r.records]
        studies = [study for r in results for study in r.studies.values()]
        _write_csv_gz(
            folder / "cxr-record-list.csv.gz", records, ["subject_id", "study_id", "dicom_id", "path"]
        )
        _write_csv_gz(folder / "cxr-study-list.csv.gz", studies, ["subject_id", "study_id", "path"])
        (folder / "README.txt").write_text(SYNTHETIC_NOTE + "\n", encoding="utf-8")


def _write_dicom(path: Path, item: Radiograph, monochrome1: bool, seed: int) -> None:
    """One uncompressed DICOM radiograph with modality and VOI LUT tags."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    stored = np.round(item.pixels * 3000 + 400).astype(np.uint16)  # 12-bit detector values
    if monochrome1:
        stored = (4095 - stored).astype(np.uint16)
    sop_uid = generate_uid(entropy_srcs=[str(seed), item.dicom_id])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray, for presentation
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[str(seed), item.study_id])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(seed), item.study_id, item.view])
    ds.PatientID = item.subject_id
    ds.PatientName = "SYNTHETIC^PHANTOM"
    ds.StudyID = item.study_id
    ds.StudyDate = "21800101"
    ds.Modality = "DX"
    ds.ViewPosition = item.view
    ds.ImageComments = "synthetic phantom, not patient data"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    # The VOI window applies to stored values: MONOCHROME1 stores 4095 - v, so its centre mirrors.
    ds.WindowCenter, ds.WindowWidth = ("2195" if monochrome1 else "1900"), "3200"
    ds.PixelSpacing = ["0.139", "0.139"]
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_samples(
    out: Path,
    subjects: int = 10,
    size: int = 128,
    slices: int = 40,
    seed: int = 0,
    sources: tuple[str, ...] = SOURCES,
    workers: int = 1,
) -> dict[str, Path]:
    """Write the requested sample trees under `out`; returns source name -> folder.

    The same files for any `workers`: every subject is a pure function of (seed, subject).
    """
    out = Path(out)
    written = {}
    if "totalseg-ct" in sources:
        write_totalseg(out / "totalseg-ct", "ct", subjects, size, slices, seed, workers)
    if "totalseg-mri" in sources:
        write_totalseg(out / "totalseg-mri", "mri", subjects, size, slices, seed, workers)
    xray = tuple(name for name in ("mimic-cxr-jpg", "mimic-cxr") if name in sources)
    if xray:
        write_xray_sources(out, xray, subjects, size, seed, workers)
    for name in sources:
        written[name] = out / name
    (out / "README.txt").write_text(SYNTHETIC_NOTE + "\n", encoding="utf-8")
    return written


def ensure_sample_source(folder: Path, source: str, subjects: int, size: int, slices: int, seed: int) -> Path:
    """The sample tree `source` in `folder`, written first if missing or made with other settings.

    Written under a temporary name and renamed, so a killed run never leaves a
    half-written sample that looks complete.
    """
    import json
    import shutil

    folder = Path(folder)
    settings = {"source": source, "subjects": subjects, "size": size, "slices": slices, "seed": seed}
    marker = folder / ".sample.json"
    if marker.exists() and json.loads(marker.read_text()) == settings:
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("writing sample source %s to %s", source, folder)
    write_samples(tmp, subjects, size, slices, seed, sources=(source,))
    (tmp / source / ".sample.json").write_text(json.dumps(settings))
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    (tmp / source).rename(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    return folder


def sample_root_for(layout, recipe, modality: str) -> Path:
    """The embedded sample source of `modality` under the output root, written on first use."""
    from medscout_data.layout import SAMPLE_SOURCES

    settings = recipe.sample
    return ensure_sample_source(
        layout.sample_source(modality),
        SAMPLE_SOURCES[modality],
        settings.subjects,
        settings.size,
        settings.slices,
        settings.seed,
    )
