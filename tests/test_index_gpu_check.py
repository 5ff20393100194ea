"""benchmarks/gpu_check.py, the script prepared for a GPU machine, runs here on its CPU fallback.

With the tiny open_clip config instead of BiomedCLIP's tower, so it takes
seconds; the GPU figures themselves come from one run on a GPU machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "assets" / "tiny-clip" / "open_clip_config.json"


def test_gpu_check_falls_back_to_the_cpu_and_reports_checked_figures(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    args = ["--device", "cpu", "--tower-config", str(TINY), "--images", "24", "--unique", "10"]
    args += ["--batch-size", "8", "--vectors", "3000", "--workers", "2", "--json", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    assert json.loads(result.stdout) == figures
    assert figures["machine"]["device"] == "cpu" and figures["machine"]["cpu_cores"] == os.cpu_count()
    embed = figures["embed"]
    assert embed["images"] == 24 and embed["vectors_finite"] and embed["images_per_s"] > 0
    assert embed["met"] is None  # targets are judged on a GPU only
    search = figures["search"]
    assert search["vectors"] == 3000 and search["top1_agrees_with_brute_force"] == 1.0
    assert search["met"] is None and search["faiss_gpus_used"] == 0
