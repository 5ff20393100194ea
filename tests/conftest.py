"""Shared fixtures: small sample sources made once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def sample_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """All four sample trees, small: 6 subjects, 64 px, 24 slices."""
    from medscout_data.sample import write_samples

    root = tmp_path_factory.mktemp("sample")
    return write_samples(root, subjects=6, size=64, slices=24, seed=3)
