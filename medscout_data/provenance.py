"""Where an item's pixels come from, read off its `source` JSON and modality.

MIMIC-CXR (JPG or DICOM) is PhysioNet credentialed data: items derived from it
may not be published (hub/) nor sent to a hosted model API (evaluation/egress.py).
Every X-ray item counts as MIMIC-derived, whatever its `source` says: the
pipeline's only X-ray sources are the MIMIC-CXR layouts, and the sample bench's
synthetic radiographs are built through the same code as real ones, so nothing
in the item itself tells a phantom from a patient.
"""

from __future__ import annotations

import json


def source_dataset(source: str | None) -> str | None:
    """The `dataset` named in an item's `source` JSON with its `release` when known
    (`totalseg v2`), or None when absent or unreadable."""
    try:
        info = json.loads(source or "")
        value, release = info.get("dataset"), info.get("release")
    except (ValueError, AttributeError):
        return None
    if not isinstance(value, str) or not value:
        return None
    return f"{value} {release}" if isinstance(release, str) and release else value


def is_mimic_derived(modality: str, source: str | None) -> bool:
    """Whether an item carries MIMIC-CXR pixels: an X-ray item, or a source dataset named `mimic*`."""
    dataset = source_dataset(source) or ""
    return modality == "xray" or dataset.lower().startswith("mimic")
