"""Which release of a source dataset a root holds, and which field decided an X-ray's view.

Releases (recorded in every item's `source` and in the dataset card):

- TotalSegmentator v1 or v2: v2 (`Totalsegmentator_dataset_v201`) adds
  columns to `meta.csv` (scanner, kVp, pathology), more subjects (1,228
  against v1's 1,204, ids past s1428) and new classes (`skull`,
  `spinal_cord`, `kidney_cyst_left`, ...) under `segmentations/`.
- MIMIC-CXR-JPG 2.0.0 or 2.1.0: 2.1.0 adds `IMAGE_FILENAMES` and
  `mimic-cxr-2.1.0-test-set-labeled.csv`; every other file keeps its
  2.0.0 name, so those two files are what tells them apart.

Views: about 15,800 MIMIC-CXR images have an empty `ViewPosition`; the
JPG metadata's `ViewCodeSequence_CodeMeaning` ("postero-anterior",
"antero-posterior", "lateral", ...) then decides, else a
`PerformedProcedureStepDescription` that names one view only ("CHEST
(PORTABLE AP)"; "CHEST (PA AND LAT)" names two and decides nothing). DICOM
files fall back on their `ViewCodeSequence` the same way.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

V1_META_COLUMNS = {"image_id", "age", "gender", "institute", "study_type", "split"}
V2_META_COLUMNS = {"manufacturer", "scanner_model", "kvp", "pathology", "pathology_location"}
SAMPLE_MARKER = ".sample.json"  # written by `medscout-data sample`: the synthetic sample, no release
V1_SUBJECTS = 1204
V1_LAST_ID = 1428  # s1428: the highest subject id of v1
V2_CLASSES = ("skull", "spinal_cord", "thyroid_gland", "kidney_cyst_left", "sternum", "costal_cartilages")
JPG_21_FILES = ("IMAGE_FILENAMES", "mimic-cxr-2.1.0-test-set-labeled.csv")

# ViewCodeSequence code meanings (lower case) -> the ViewPosition vocabulary
CODE_MEANINGS = {
    "postero-anterior": "PA",
    "posterior-anterior": "PA",
    "antero-posterior": "AP",
    "anterior-posterior": "AP",
    "lateral": "LATERAL",
    "left lateral": "LL",
    "right lateral": "RL",
    "latero-medial": "LATERAL",
    "left anterior oblique": "LAO",
    "right anterior oblique": "RAO",
}
_DESCRIPTION_VIEWS = (("PA", r"\bPA\b"), ("AP", r"\bAP\b"), ("LATERAL", r"\bLAT(ERAL)?\b"))


# ---------------------------------------------------------------- views


def view_from_code_meaning(meaning: str) -> str:
    """A ViewCodeSequence code meaning as a ViewPosition value ('' when unknown)."""
    text = " ".join((meaning or "").strip().lower().split())
    return CODE_MEANINGS.get(text, "")


def view_from_description(description: str) -> str:
    """The view a procedure description names, when it names exactly one ('' otherwise)."""
    text = (description or "").upper()
    named = [view for view, pattern in _DESCRIPTION_VIEWS if re.search(pattern, text)]
    return named[0] if len(named) == 1 else ""


def view_of_row(row: Mapping[str, Any]) -> tuple[str, str]:
    """(view, the field that decided it) for a MIMIC-CXR-JPG metadata row; ('', '') when none does."""
    position = str(row.get("ViewPosition") or "").strip().upper()
    if position:
        return position, "ViewPosition"
    meaning = view_from_code_meaning(str(row.get("ViewCodeSequence_CodeMeaning") or ""))
    if meaning:
        return meaning, "ViewCodeSequence_CodeMeaning"
    described = view_from_description(str(row.get("PerformedProcedureStepDescription") or ""))
    if described:
        return described, "PerformedProcedureStepDescription"
    return "", ""


def view_of_dataset(ds: Any) -> tuple[str, str]:
    """(view, the field that decided it) for a DICOM dataset: ViewPosition, else ViewCodeSequence."""
    position = str(ds.get("ViewPosition", "") or "").strip().upper()
    if position:
        return position, "ViewPosition"
    for item in ds.get("ViewCodeSequence", None) or ():
        meaning = view_from_code_meaning(str(item.get("CodeMeaning", "") or ""))
        if meaning:
            return meaning, "ViewCodeSequence"
    return "", ""


# ---------------------------------------------------------------- releases


def totalseg_release(root: Path, subjects: Iterable[str]) -> tuple[str, str]:
    """('v1' | 'v2' | '', the evidence) for a TotalSegmentator root and its subject ids."""
    subjects = sorted(subjects)
    evidence = []
    columns = _meta_columns(root / "meta.csv")
    extra = sorted(columns & V2_META_COLUMNS)
    if extra:
        evidence.append(f"meta.csv has v2 column(s) {', '.join(extra)}")
    numbers = [int(m.group(1)) for s in subjects if (m := re.fullmatch(r"s(\d+)", s))]
    if len(subjects) > V1_SUBJECTS:
        evidence.append(f"{len(subjects)} subjects (v1 has {V1_SUBJECTS})")
    if numbers and max(numbers) > V1_LAST_ID:
        evidence.append(f"subject s{max(numbers):04d} is past v1's last (s{V1_LAST_ID})")
    classes = _v2_classes(root, subjects[:3])
    if classes:
        evidence.append(f"segmentations of v2 class(es) {', '.join(classes)}")
    if evidence:
        return "v2", "; ".join(evidence)
    if columns >= V1_META_COLUMNS:
        return "v1", "meta.csv has no v2 column, and the subjects and classes fit v1"
    return "", "no meta.csv: the release cannot be told"


def mimic_jpg_release(root: Path) -> tuple[str, str]:
    """('2.1.0' | '2.0.0', the evidence) for a MIMIC-CXR-JPG root."""
    found = [name for name in JPG_21_FILES if (root / name).exists()]
    if found:
        return "2.1.0", f"{', '.join(found)} (added in 2.1.0)"
    return "2.0.0", f"neither {' nor '.join(JPG_21_FILES)} (2.1.0 adds them)"


def source_release(root: Path, kind: str, keys: Iterable[str]) -> tuple[str, str]:
    """The release of a source root, and why ('' when it cannot be told)."""
    if (root / SAMPLE_MARKER).is_file():
        return "sample", "the synthetic sample (medscout-data sample)"
    if kind == "totalseg":
        return totalseg_release(root, keys)
    if kind == "mimic-cxr-jpg":
        return mimic_jpg_release(root)
    return "", "the DICOM release is not told apart"


def _meta_columns(path: Path) -> set[str]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            header = next(csv.reader(handle, delimiter=";"), [])
    except (OSError, UnicodeDecodeError):
        return set()
    return {column.strip() for column in header if column.strip()}


def _v2_classes(root: Path, subjects: list[str]) -> list[str]:
    found = set()
    for subject in subjects:
        folder = root / subject / "segmentations"
        found.update(c for c in V2_CLASSES if (folder / f"{c}.nii.gz").exists())
    return sorted(found)
