"""The declared record schemas: items (the published rows) and the catalogue.

Declared once, never inferred from data. The item schema carries the
`huggingface` metadata that makes `datasets` decode `images` as a list of PIL
images straight from a Parquet file, with no dataset card.

The metadata uses only feature types that every supported `datasets` release
reads (3.x writes and reads `Sequence`; 4.x and later write `List` but still
read `Sequence` as a list): `images` is `Sequence(Image())`, never `List`,
which datasets 3.x rejects (`Feature type 'List' not found`).
"""

from __future__ import annotations

import json

import pyarrow as pa

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

ITEM_FIELDS: list[tuple[str, pa.DataType, dict]] = [
    ("id", pa.string(), {"dtype": "string", "_type": "Value"}),
    ("modality", pa.string(), {"dtype": "string", "_type": "Value"}),
    ("task", pa.string(), {"dtype": "string", "_type": "Value"}),
    ("variant", pa.string(), {"dtype": "string", "_type": "Value"}),
    ("images", pa.list_(IMAGE_TYPE), {"feature": {"_type": "Image"}, "_type": "Sequence"}),
    ("question", pa.string(), {"dtype": "string", "_type": "Value"}),
    ("question_cot", pa.string(), {"dtype": "string", "_type": "Value"}),
    ("answer", pa.string(), {"dtype": "string", "_type": "Value"}),
    ("target", pa.string(), {"dtype": "string", "_type": "Value"}),
    ("subject_id", pa.string(), {"dtype": "string", "_type": "Value"}),
    ("source_id", pa.string(), {"dtype": "string", "_type": "Value"}),
    ("source", pa.string(), {"dtype": "string", "_type": "Value"}),
    ("reference_subject_id", pa.string(), {"dtype": "string", "_type": "Value"}),
    ("seed", pa.int64(), {"dtype": "int64", "_type": "Value"}),
]

# Feature `_type`s that datasets 3.0 (the oldest release setup.cfg admits) knows; metadata outside
# this set breaks `load_dataset` there. Checked by tests on every schema the project writes.
DATASETS3_FEATURE_TYPES = frozenset(
    {"Value", "ClassLabel", "Translation", "TranslationVariableLanguages", "LargeList", "Sequence"}
    | {"Array2D", "Array3D", "Array4D", "Array5D", "Audio", "Image"}
)

ITEM_COLUMNS = [name for name, _, _ in ITEM_FIELDS]
METADATA_COLUMNS = [name for name in ITEM_COLUMNS if name != "images"]


def hf_features() -> dict:
    """The `datasets` Features of an item row, as JSON."""
    return {name: feature for name, _, feature in ITEM_FIELDS}


ITEM_SCHEMA = pa.schema(
    [(name, dtype) for name, dtype, _ in ITEM_FIELDS],
    metadata={"huggingface": json.dumps({"info": {"features": hf_features()}})},
)

CATALOGUE_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),  # unique within a modality
        ("modality", pa.string()),
        ("source_kind", pa.string()),  # totalseg | mimic-cxr-jpg | mimic-cxr
        ("subject_id", pa.string()),
        ("source_id", pa.string()),  # volume id or dicom_id
        ("study_id", pa.string()),
        ("path", pa.string()),  # source file, relative to the source root
        ("plane", pa.string()),  # axial, coronal or sagittal for volumes (sources/planes.py); empty for X-ray
        ("slice_index", pa.int32()),  # along the plane's normal in the canonical volume; -1 for X-ray
        ("z_mm", pa.float64()),  # slice position along the slicing normal (LPS mm); NaN for X-ray
        ("pixel_spacing_mm", pa.float64()),  # square pixels of the rendered image
        ("slice_spacing_mm", pa.float64()),  # between consecutive slices along the normal
        ("window", pa.string()),  # CT window name, empty otherwise
        ("view", pa.string()),  # X-ray ViewPosition, empty for volumes
        ("official_split", pa.string()),
        ("body_fraction", pa.float32()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("cache_file", pa.string()),  # image stack (cache.py), relative to cache/<modality>
        ("mask_file", pa.string()),  # body mask stack, same indexing
        ("cache_index", pa.int32()),
        ("crop_x", pa.int32()),  # the image's left column in the full resampled slice (body crop)
        ("crop_y", pa.int32()),  # its top row there; 0 for X-ray
        ("meta", pa.string()),  # JSON: the source's own metadata columns
        ("view_source", pa.string()),  # X-ray: the field that gave `view` (sources/releases.py)
        ("source_release", pa.string()),  # TotalSegmentator v1/v2, MIMIC-CXR-JPG 2.0.0/2.1.0
        ("pixel_sha256", pa.string()),  # the decoded 8-bit image (shape + pixels): ingest drops duplicates
    ]
)

ERROR_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("reason", pa.string()),
        ("message", pa.string()),
    ]
)
