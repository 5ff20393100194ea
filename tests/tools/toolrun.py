"""Running one driver script in a tool environment, as a clean subprocess."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

DRIVERS = Path(__file__).parent / "drivers"
TOOL_TIMEOUT_S = 600


def run_driver(python: str, driver: str, request: dict, workdir: Path, env: dict | None = None) -> dict:
    """Run `drivers/<driver>` in a tool environment with no path to this checkout (so the exported
    files must bring their own scorer), offline, caches under `workdir`; its last stdout line as JSON."""
    workdir.mkdir(parents=True, exist_ok=True)
    request_file = workdir / f"{driver}.request.json"
    request_file.write_text(json.dumps(request), encoding="utf-8")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    clean.update(
        {
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "HF_HOME": str(workdir / "hf"),
            "MODELSCOPE_CACHE": str(workdir / "modelscope"),
            **(env or {}),
        }
    )
    process = subprocess.run(
        [python, str(DRIVERS / driver), str(request_file)],
        cwd=workdir,
        env=clean,
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
    )
    assert process.returncode == 0, f"{driver} failed:\n{process.stderr[-4000:]}"
    return json.loads(process.stdout.strip().splitlines()[-1])
