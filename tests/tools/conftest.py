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


@pytest.fixture(scope="session")
def verl_python() -> str:
    return tool_python("MEDSCOUT_VERL_PYTHON")


@pytest.fixture(scope="session")
def tiny_qwen(swift4_python: str, split_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Qwen2.5-VL folder (drivers/tiny_qwen.py), its tokenizer trained on the
    split's questions and answers: built here, nothing downloaded."""
    from splitfixture import side_rows
    from toolrun import run_driver

    from medscout_data.tasks.messages import system_prompt

    rows = side_rows(split_shards)
    texts = [row[key] for row in rows.values() for key in ("question", "question_cot")]
    texts += [system_prompt(mode) for mode in ("direct", "cot")]
    work = tmp_path_factory.mktemp("tiny-qwen")
    got = run_driver(swift4_python, "tiny_qwen.py", {"out": str(work / "model"), "texts": texts}, work)
    assert "model.safetensors" in got["files"]
    return Path(got["model"])
