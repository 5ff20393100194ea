"""The real tools' interpreters, from `.ci/tools-test` (see toolrun.py for running them)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def tool_python(variable: str) -> str:
    """The interpreter of one tool environment; a clear failure (not a skip) when it is not set up."""
    python = os.environ.get(variable)
    if not python or not Path(python).is_file():
        pytest.fail(
            f"${variable} does not name a tool interpreter; run the tool tests with `bash .ci/tools-test`"
        )
    return python


@pytest.fixture(scope="session")
def swift4_python() -> str:
    return tool_python("MEDSCOUT_SWIFT4_PYTHON")


@pytest.fixture(scope="session")
def swift3_python() -> str:
    return tool_python("MEDSCOUT_SWIFT3_PYTHON")
