"""The console script: help, version, and every stage listed."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from medscout_data import __version__
from medscout_data.cli import COMMANDS, cli


def test_version_matches_package() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_help_lists_every_stage_and_registered_command() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for stage in ("ingest", "index", "build", "split", "push-bench", "score", "export", "preview"):
        assert stage in result.output
    for name in COMMANDS:
        sub = CliRunner().invoke(cli, [name, "--help"])
        assert sub.exit_code == 0, sub.output
        assert "Usage:" in sub.output


def test_console_script_runs_as_module() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from medscout_data.cli import main; main()", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    assert __version__ in result.stdout
