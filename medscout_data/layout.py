"""Where each stage reads and writes under the output root (`shards/`).

sample/<source>/                    procedural sample sources (no --root)
catalogue/<modality>/               ingest: catalogue.parquet, errors.parquet, report.json, parts/
cache/<modality>/                   ingest: rendered 8-bit images and body masks (.stack, see cache.py)
plan/<modality>.json                seeded subject partition (bench / train)
index/<modality>/<model-slug>/      index: embeddings, neighbours.parquet, index.json
pool/<modality>/<task>-NNNNN.parquet  build: the item pool; pool.json: what build planned and made
train/<modality>/<task>/train-*.parquet, bench/<modality>/<task>/test-*.parquet  split
manifest.json                       split: seed, recipe, counts, hashes
bench/.medscout-split.json, train/.medscout-split.json   split: the files split wrote on that side
<stage>/.medscout-stage.json        push-bench: the staged repo folder's record (files and sha256)

The names of records that several stages read live here, not in the stage
that writes them, so a reader never imports a writer (no import circle).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "manifest.json"  # split writes it; validate, score, export, push read it
SIDE_RECORD = ".medscout-split.json"  # in bench/ and train/: the files split wrote there
STAGE_RECORD = ".medscout-stage.json"  # push-bench: says a folder is a stage we may replace; never uploaded

SAMPLE_SOURCES = {
    "ct": "totalseg-ct",
    "mri": "totalseg-mri",
    "xray": "mimic-cxr-jpg",
}


@dataclass(frozen=True)
class Layout:
    """Paths of every stage's outputs under one root."""

    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike[str]) -> Layout:
        return cls(Path(root))

    def sample_root(self) -> Path:
        return self.root / "sample"

    def sample_source(self, modality: str) -> Path:
        return self.sample_root() / SAMPLE_SOURCES[modality]

    def catalogue_dir(self, modality: str) -> Path:
        return self.root / "catalogue" / modality

    def catalogue(self, modality: str) -> Path:
        return self.catalogue_dir(modality) / "catalogue.parquet"

    def cache_dir(self, modality: str) -> Path:
        return self.root / "cache" / modality

    def plan(self, modality: str) -> Path:
        return self.root / "plan" / f"{modality}.json"

    def index_dir(self, modality: str, model: str) -> Path:
        return self.root / "index" / modality / model_slug(model)

    def pool_dir(self, modality: str) -> Path:
        return self.root / "pool" / modality

    def pool_record(self, modality: str) -> Path:
        return self.pool_dir(modality) / "pool.json"

    def build_report_dir(self, modality: str) -> Path:
        return self.root / "reports" / "build" / modality

    def split_dir(self, side: str) -> Path:
        return self.root / side

    def manifest(self) -> Path:
        return self.root / MANIFEST


def model_slug(spec: str) -> str:
    """A folder name for a model spec (`hf-hub:org/name` -> `hf-hub-org-name`)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", spec).strip("-") or "model"
