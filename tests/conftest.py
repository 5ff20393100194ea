"""Shared fixtures: small sample sources made once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# tests/tools drive ms-swift, lmms-eval and datasets 3.x in their own environments; they run from
# `.ci/tools-test`, which builds those and sets MEDSCOUT_TOOL_TESTS=1. The main suite needs none of them.
collect_ignore = [] if os.environ.get("MEDSCOUT_TOOL_TESTS") == "1" else ["tools"]
# tests/slurm drive a real one-node Slurm that `.ci/slurm-up` starts (as root); `.ci/tools-test` runs
# them after it, with MEDSCOUT_SLURM_TESTS=1.
if os.environ.get("MEDSCOUT_SLURM_TESTS") != "1":
    collect_ignore.append("slurm")


@pytest.fixture(scope="session")
def sample_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """All four sample trees, small: 6 subjects, 64 px, 24 slices."""
    from medscout_data.sample import write_samples

    root = tmp_path_factory.mktemp("sample")
    return write_samples(root, subjects=6, size=64, slices=24, seed=3)


TEST_RECIPE = """
# Tiny recipe for the tests: the paper's geometry, few items, small images.
name = "test"
seed = 11

[pool]
items_per_cell = 24
bench_per_cell = 6
shard_max_items = 8
row_group_items = 4

[sample]
subjects = 6
size = 64
slices = 24
seed = 3

[ingest]
max_size = 64
min_body_fraction = 0.25
xray_chunk_images = 8

[scale]
crop_size = 32

[anomaly]
min_cell_difference = 6.0

[index]
model = "pixels"
k = 4
"""


@pytest.fixture(scope="session")
def test_recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of the tiny test recipe (TOML)."""
    path = tmp_path_factory.mktemp("recipe") / "test.toml"
    path.write_text(TEST_RECIPE, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def built_pool(tmp_path_factory: pytest.TempPathFactory, test_recipe: Path) -> Path:
    """An output root with the pool of all three modalities built from the embedded sample."""
    from medscout_data.layout import Layout
    from medscout_data.recipe import load_recipe
    from medscout_data.stages.build import BuildOptions, build_modality

    root = tmp_path_factory.mktemp("shards")
    recipe = load_recipe(test_recipe)
    for modality in ("ct", "mri", "xray"):
        build_modality(Layout.at(root), recipe, BuildOptions(modality=modality, progress=False))
    return root


@pytest.fixture(scope="session")
def split_shards(tmp_path_factory: pytest.TempPathFactory, built_pool: Path) -> Path:
    """An output root holding a finished split (train/, bench/, manifest.json) of all three modalities.

    Read-only for tests: copy it before changing anything.
    """
    import shutil

    from medscout_data.layout import Layout
    from medscout_data.stages.split import SplitOptions, split_pool

    root = tmp_path_factory.mktemp("split")
    for folder in ("pool", "plan"):
        shutil.copytree(built_pool / folder, root / folder)
    split_pool(Layout.at(root), SplitOptions(progress=False))
    return root
