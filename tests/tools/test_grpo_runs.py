"""Real GRPO steps on the train side, in the trainers researchers use, on a tiny random-weight
Qwen2.5-VL built by the test (CPU, nothing downloaded): ms-swift (`swift rlhf --rlhf_type grpo`, the
command `export` prints) and TRL (`GRPOTrainer`, through the exported `train_grpo.py`), each for two
steps with its reward components logged and a checkpoint saved; verl's own dataset class and reward
manager on the exported Parquet and reward file (a full verl run needs GPUs)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from splitfixture import cli_ok, side_rows
from toolrun import run_driver

from medscout_data.evaluation.score import reward
from medscout_data.tasks.messages import system_prompt

TINY_RUN = ["--max_steps", "2", "--num_generations", "2", "--per_device_train_batch_size", "2"]
TINY_RUN += ["--max_completion_length", "8", "--save_steps", "2", "--logging_steps", "1"]
TINY_RUN += ["--report_to", "none", "--dataloader_num_workers", "0", "--torch_dtype", "float32"]
TRAIN_TIMEOUT_S = 900


def _tool_env(python: str, work: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The tool's own bin first on PATH, offline, caches under `work`, no path to this checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(
        PATH=f"{Path(python).parent}:{env.get('PATH', '/usr/bin:/bin')}",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(work / "hf"),
        MODELSCOPE_CACHE=str(work / "modelscope"),
        **(extra or {}),
    )
    return env


def _printed_command(text: str) -> tuple[dict[str, str], list[str]]:
    """The `swift rlhf` command `export` printed: its environment assignments and its argv."""
    block = text.split("the paper's GRPO settings):\n", 1)[1].split("\nnote:", 1)[0]
    words = shlex.split(block.replace("\\\n", " "))
    env = dict(word.split("=", 1) for word in words if re.fullmatch(r"[A-Z_]+=.*", word))
    return env, [word for word in words if not re.fullmatch(r"[A-Z_]+=.*", word)]


def _export(shards: Path, out: Path, fmt: str, split: str) -> None:
    """`export --format FMT --split SPLIT --mode cot` of the test's split."""
    cli_ok("export", "--format", fmt, "--split", split, "--mode", "cot", "--shards", str(shards),
           "--out", str(out), "--quiet")  # fmt: skip


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=TRAIN_TIMEOUT_S, check=False
    )
    assert done.returncode == 0, f"{argv[0]} failed:\n{done.stderr[-6000:]}"
    return done.stdout + done.stderr


def test_ms_swift_grpo_runs_two_steps_with_the_printed_command(
    swift4_python: str, split_shards: Path, tiny_qwen: Path, tmp_path: Path
) -> None:
    out = tmp_path / "export"
    text = cli_ok("export", "--split", "train", "--shards", str(split_shards), "--out", str(out), "--quiet")
    assigned, argv = _printed_command(text)
    assert argv[:4] == ["swift", "rlhf", "--rlhf_type", "grpo"]
    assert (out / "system-direct.txt").read_text() == system_prompt("direct")  # as evaluate sends it
    argv = [a if a != "MODEL" else str(tiny_qwen) for a in argv]  # the user's model
    argv += ["--model_type", "qwen2_5_vl", "--template", "qwen2_5_vl", "--output_dir", str(tmp_path / "run")]
    _run([*argv, *TINY_RUN], _tool_env(swift4_python, tmp_path, assigned), tmp_path)
    (run,) = (tmp_path / "run").iterdir()
    logged = [json.loads(line) for line in (run / "logging.jsonl").read_text().splitlines()]
    steps = [entry for entry in logged if "rewards/MedScoutAccuracy/mean" in entry]
    assert len(steps) == 2
    for entry in steps:
        assert 0.0 <= float(entry["rewards/MedScoutAccuracy/mean"]) <= 1.0
        assert 0.0 <= float(entry["rewards/MedScoutFormat/mean"]) <= 0.5
    assert (run / "checkpoint-2" / "adapter_model.safetensors").is_file()


def test_trl_grpo_trainer_runs_two_steps_on_the_export(
    swift4_python: str, split_shards: Path, tiny_qwen: Path, tmp_path: Path
) -> None:
    out = tmp_path / "trl"
    _export(split_shards, out, "trl", "train")
    argv = [
        swift4_python,
        str(out / "train_grpo.py"),
        "--model",
        str(tiny_qwen),
        "--output-dir",
        str(tmp_path / "run"),
        "--max-steps",
        "2",
        "--num-generations",
        "2",
        "--per-device-batch",
        "2",
        "--max-completion-length",
        "8",
        "--save-steps",
        "2",
        "--cpu",
    ]
    log = _run(argv, _tool_env(swift4_python, tmp_path), tmp_path)
    steps = [json.loads(line.replace("'", '"')) for line in re.findall(r"\{'loss'.*?\}", log)]
    assert len(steps) == 2
    for entry in steps:
        assert 0.0 <= float(entry["rewards/medscout_accuracy/mean"]) <= 1.0
        assert 0.0 <= float(entry["rewards/medscout_format/mean"]) <= 0.5
        assert float(entry["rewards/medscout_cot/mean"]) in (0.0, 0.5)
    assert (tmp_path / "run" / "checkpoint-2").is_dir()
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_verl_dataset_class_and_reward_manager_take_the_export(
    verl_python: str, split_shards: Path, tiny_qwen: Path, tmp_path: Path
) -> None:
    out = tmp_path / "verl"
    _export(split_shards, out, "verl", "bench")
    rows = side_rows(split_shards)
    table = pq.read_table(out / "test.parquet").to_pylist()
    responses, expected = [], []
    for k, record in enumerate(table):
        row = rows[record["extra_info"]["id"]]
        text = (
            f"<think>look</think><answer>{row['answer']}</answer>" if k % 2 else f"<answer>{k % 16}</answer>"
        )
        responses.append([row["id"], text])
        expected.append(reward(text, row, "official", "cot"))
    ask = {
        "parquet": str(out / "test.parquet"),
        "reward": str(out / "reward.py"),
        "model": str(tiny_qwen),
        "responses": responses,
    }
    got = run_driver(verl_python, "verl_data.py", ask, tmp_path / "run")
    assert got["verl"].startswith("0.")
    assert got["decoded"] == [text for _, text in responses]
    for item_id, messages in got["messages"].items():
        row = rows[item_id]
        assert messages[0] == {"role": "system", "content": [system_prompt("cot")]}
        assert messages[1]["content"][-1] == row["question_cot"]
        assert [part["type"] for part in messages[1]["content"][:-1]] == ["image"] * len(row["images"])
    assert got["scores"] == pytest.approx([r.total for r in expected])
    assert got["extra"]["accuracy"] == pytest.approx([r.accuracy for r in expected])
    assert got["extra"]["format"] == pytest.approx([r.format for r in expected])
    assert got["extra"]["cot"] == pytest.approx([r.cot for r in expected])
    assert max(r.total for r in expected) == 2.0  # the truths score the maximum through verl too
