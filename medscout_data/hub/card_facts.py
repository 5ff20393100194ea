"""The facts of a staged repo's dataset card, and its YAML front matter built from them.

`CardFacts` gathers what the card says (staged files, row counts, the split's
manifest, the recipe, the audit); `card_metadata` turns them into the front
matter the Hub and `datasets.load_dataset` read: one config per modality
and per task besides `default`, each with its `data_files` per split, and
`dataset_info` written by `datasets`' own `DatasetInfosDict`, so its shape
is the one `datasets` parses back. The card's prose is `card.py`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medscout_data import MODALITIES, TASKS
from medscout_data.recipe import Recipe

SPLITS = ("test", "train")  # file prefix == split name: test-*.parquet is the bench
MODALITY_TITLES = {"ct": "CT", "mri": "MRI", "xray": "chest X-ray"}


PHYSIONET_LICENSE = "physionet-credentialed-health-data-license-1.5.0"
PHYSIONET_LICENSE_LINK = (
    "https://physionet.org/about/licenses/physionet-credentialed-health-data-license-150/"
)


SIZE_CATEGORIES = [
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
]


@dataclass(frozen=True)
class StagedFile:
    """One data file of the staged repo and what it holds."""

    path: str  # in the repo: data/<modality>/<task>/<split>-NNNNN-of-MMMMM.parquet
    source: Path  # the split shard it was linked or copied from
    split: str  # test (the bench) or train
    modality: str
    task: str
    rows: int
    size: int  # bytes on disk
    arrow_bytes: int  # uncompressed bytes (Parquet metadata): dataset_info's num_bytes
    sha256: str
    restricted_rows: int  # MIMIC-CXR-derived (or unknown-provenance) rows
    datasets: tuple[str, ...]  # the source datasets of its rows


@dataclass(frozen=True)
class CardFacts:
    """Everything the card says, gathered by the stager."""

    repo_id: str
    files: tuple[StagedFile, ...]
    features: dict  # `datasets` Features JSON of the shards (their `huggingface` metadata)
    manifest: dict
    manifest_sha256: str
    recipe: Recipe | None  # the recipe the pool was built with, when its plan is at hand
    with_train: bool
    audit: dict | None = None  # `evaluation.audit.AuditResult.as_dict()` of the staged bench

    @property
    def includes_mimic(self) -> bool:
        return any(f.restricted_rows for f in self.files)

    @property
    def modalities(self) -> list[str]:
        return [m for m in MODALITIES if any(f.modality == m for f in self.files)]

    @property
    def tasks(self) -> list[str]:
        return [t for t in TASKS if any(f.task == t for f in self.files)]

    @property
    def splits(self) -> list[str]:
        return [s for s in SPLITS if any(f.split == s for f in self.files)]

    def rows(self, split: str) -> int:
        return sum(f.rows for f in self.files if f.split == split)


def config_patterns(facts: CardFacts) -> dict[str, dict[str, str]]:
    """config name -> split -> glob (relative to the repo root) of its data files."""
    selectors = {"default": ("*", "*")}
    selectors.update({m: (m, "*") for m in facts.modalities})
    selectors.update({t: ("*", t) for t in facts.tasks})
    return {
        name: {split: f"data/{modality}/{task}/{split}-*.parquet" for split in facts.splits}
        for name, (modality, task) in selectors.items()
    }


def config_files(facts: CardFacts, name: str, split: str) -> list[StagedFile]:
    """The staged files a config's split holds (what its glob must match)."""
    return [f for f in facts.files if f.split == split and name in ("default", f.modality, f.task)]


def license_fields(facts: CardFacts) -> dict[str, str]:
    """CC BY 4.0 for TotalSegmentator-only content; `other` (PhysioNet terms) with MIMIC-derived items."""
    if facts.includes_mimic:
        return {"license": "other", "license_name": PHYSIONET_LICENSE, "license_link": PHYSIONET_LICENSE_LINK}
    return {"license": "cc-by-4.0"}


def size_category(rows: int) -> str:
    for limit, name in SIZE_CATEGORIES:
        if rows < limit:
            return name
    return "n>10M"


def pretty_name(facts: CardFacts) -> str:
    name = "Med-Scout-Bench"
    if facts.modalities != list(MODALITIES):
        name += " (" + ", ".join(MODALITY_TITLES[m] for m in facts.modalities) + ")"
    recipe = facts.manifest["recipe"]["name"]
    return name if recipe == "med-scout-bench" else f"{name}, recipe {recipe}"


def card_metadata(facts: CardFacts) -> dict[str, Any]:
    """The YAML front matter, as a dict."""
    from huggingface_hub import DatasetCardData

    data = DatasetCardData(
        pretty_name=pretty_name(facts),
        language=["en"],
        task_categories=["visual-question-answering"],
        size_categories=[size_category(sum(f.rows for f in facts.files))],
        tags=["medical", "radiology", "geometric-perception", "benchmark", *facts.modalities],
        configs=[
            {
                "config_name": name,
                "data_files": [{"split": split, "path": pattern} for split, pattern in splits.items()],
                **({"default": True} if name == "default" else {}),
            }
            for name, splits in config_patterns(facts).items()
        ],
        **license_fields(facts),
    )
    _dataset_infos(facts).to_dataset_card_data(data)
    return data.to_dict()


def _dataset_infos(facts: CardFacts):
    """`datasets.DatasetInfosDict`: features and row counts of every config."""
    try:
        import datasets
        from datasets.info import DatasetInfosDict
    except ImportError as exc:  # a declared dependency; a broken install should say so
        raise ImportError("writing the dataset card needs `datasets`: pip install datasets") from exc
    features = datasets.Features.from_dict(facts.features)
    infos = {}
    for name in config_patterns(facts):
        splits = datasets.SplitDict()
        for split in facts.splits:
            files = config_files(facts, name, split)
            splits.add(
                datasets.SplitInfo(
                    name=split,
                    num_bytes=sum(f.arrow_bytes for f in files),
                    num_examples=sum(f.rows for f in files),
                )
            )
        infos[name] = datasets.DatasetInfo(
            features=features,
            splits=splits,
            download_size=sum(f.size for split in facts.splits for f in config_files(facts, name, split)),
            dataset_size=sum(s.num_bytes for s in splits.values()),
        )
    return DatasetInfosDict(infos)


def features_of_metadata(raw: str, where: str) -> dict:
    """The Features JSON in a shard's `huggingface` schema metadata."""
    try:
        return json.loads(raw)["info"]["features"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{where}: unreadable `huggingface` metadata ({exc})") from exc
