"""Ingest: decode each source once into a catalogue of usable 8-bit 2-D images and their cache.

    run_ingest(layout, recipe, modality, root=None, source=None, workers=1, rank=None) -> RunReport
    merge_ranks(layout, recipe, modality, root=None, source=None, world_size=None) -> RunReport
    ensure_catalogue(layout, recipe, modality, root=None, source=None, workers=1) -> Path
    IngestError: ingest cannot run (root missing, source kind unknown); the message says what to do

Sources: TotalSegmentator CT/MRI (`totalseg`), MIMIC-CXR-JPG (`mimic-cxr-jpg`)
and MIMIC-CXR DICOM (`mimic-cxr`), detected from the tree when not given.
Outputs: `layout.catalogue(modality)` (CATALOGUE_SCHEMA), the image cache
under `layout.cache_dir(modality)` (see cache.py), and errors.parquet +
report.json beside the catalogue. Bad inputs are recorded with a reason code
and the run goes on; reruns reuse every finished unit whose inputs are unchanged.
Modules: detect (which layout), nifti + planes + volumes (CT/MRI), xray + dicom
(MIMIC-CXR), masks, base (units and parts), runner (pool, ranks, locks, catalogue).
"""

from medscout_data.sources.base import SOURCE_KINDS, IngestError
from medscout_data.sources.detect import detect_source
from medscout_data.sources.runner import (
    catalogue_info,
    ensure_catalogue,
    merge_ranks,
    resolve_source,
    run_ingest,
)

__all__ = [
    "SOURCE_KINDS",
    "IngestError",
    "catalogue_info",
    "detect_source",
    "ensure_catalogue",
    "merge_ranks",
    "resolve_source",
    "run_ingest",
]
