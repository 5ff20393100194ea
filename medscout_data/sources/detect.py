"""Which source layout a root holds (TotalSegmentator, MIMIC-CXR-JPG, MIMIC-CXR DICOM).

Detection looks at the index files first and then at most a handful of
directory entries, so it is instant on a tree of hundreds of thousands of
files. It never guesses between two plausible kinds: it asks for `--source`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from medscout_data.sources.base import SOURCE_KINDS, IngestError

VOLUME_NAMES = {"ct": ("ct.nii.gz", "ct.nii"), "mri": ("mri.nii.gz", "mri.nii")}
JPG_METADATA = "mimic-cxr-2.0.0-metadata.csv.gz"
SPLIT_CSV = "mimic-cxr-2.0.0-split.csv.gz"
RECORD_LIST = "cxr-record-list.csv.gz"
TOTALSEG_META = "meta.csv"
INDEX_FILES = {
    "totalseg": (TOTALSEG_META, ".sample.json"),
    "mimic-cxr-jpg": (JPG_METADATA, SPLIT_CSV, ".sample.json"),
    "mimic-cxr": (RECORD_LIST, SPLIT_CSV, ".sample.json"),
}
KINDS_OF = {"ct": ("totalseg",), "mri": ("totalseg",), "xray": ("mimic-cxr-jpg", "mimic-cxr")}
SUFFIXES = {"mimic-cxr-jpg": (".jpg", ".jpeg"), "mimic-cxr": (".dcm",)}
LAYOUT_HELP = {
    "totalseg": "<root>/sXXXX/{ct,mri}.nii.gz with <root>/meta.csv",
    "mimic-cxr-jpg": f"<root>/files/pXX/pSUBJECT/sSTUDY/<dicom_id>.jpg with <root>/{JPG_METADATA}",
    "mimic-cxr": f"<root>/files/pXX/pSUBJECT/sSTUDY/<dicom_id>.dcm with <root>/{RECORD_LIST}",
}


def detect_source(root: Path, modality: str) -> str:
    """The source kind under `root` for `modality`; an `IngestError` saying what to pass otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise IngestError(f"source root {root} is not a folder; pass --root with the dataset's top folder")
    found = [kind for kind in KINDS_OF[modality] if _looks_like(root, kind, modality)]
    if len(found) == 1:
        return found[0]
    expected = "; ".join(f"{k}: {LAYOUT_HELP[k]}" for k in KINDS_OF[modality])
    if not found:
        raise IngestError(
            f"{root}: no {modality} source layout found (expected {expected}); "
            "point --root at the dataset's top folder, or pass --source"
        )
    raise IngestError(f"{root}: holds both {' and '.join(found)}; pass --source to choose one")


def check_source(kind: str, modality: str) -> None:
    """Refuse a `--source` that cannot hold this modality."""
    if kind not in SOURCE_KINDS:
        raise IngestError(f"unknown source kind {kind!r}; known: {', '.join(SOURCE_KINDS)}")
    if kind not in KINDS_OF[modality]:
        raise IngestError(
            f"--source {kind} cannot hold {modality} images; use one of {', '.join(KINDS_OF[modality])}"
        )


def _looks_like(root: Path, kind: str, modality: str) -> bool:
    if kind == "totalseg":
        if (root / TOTALSEG_META).is_file():
            return True
        return any(volume_file(root / name, modality) for name in _first_dirs(root, 50))
    index = JPG_METADATA if kind == "mimic-cxr-jpg" else RECORD_LIST
    return (root / index).is_file() or first_file(image_folder(root), SUFFIXES[kind]) is not None


def _first_dirs(root: Path, limit: int) -> list[str]:
    names = []
    with os.scandir(root) as entries:
        for entry in entries:
            if not entry.name.startswith(".") and _is_dir(entry):
                names.append(entry.name)
                if len(names) >= limit:
                    break
    return names


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a symlink loop: not a subject folder (ingest records it)
        return False


def volume_file(folder: Path, modality: str) -> Path | None:
    """The subject folder's CT or MRI volume (`.nii.gz` preferred), if any."""
    for name in VOLUME_NAMES[modality]:
        if (folder / name).is_file():
            return folder / name
    return None


def image_folder(root: Path) -> Path:
    """Where MIMIC images live: `<root>/files` when present, else the root itself."""
    return root / "files" if (root / "files").is_dir() else root


def first_file(folder: Path, suffixes: tuple[str, ...]) -> Path | None:
    """Any one file with one of `suffixes` under `folder`, stopping at the first."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            if name.lower().endswith(suffixes):
                return Path(dirpath) / name
    return None


def source_fingerprint(root: Path, kind: str) -> str:
    """Cheap digest of a root's index files and top folder (size, mtime): changes when the source does.

    Lets `ensure_catalogue` tell that a source was rewritten (a regenerated
    sample, a new meta.csv, subjects added) without listing every file.
    """
    digest = hashlib.sha256(kind.encode())
    for path in (root, *(root / name for name in INDEX_FILES[kind])):
        try:
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
        except OSError:
            digest.update(f"{path.name}:missing;".encode())
    return digest.hexdigest()
