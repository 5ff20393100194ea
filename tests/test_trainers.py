"""`export --format trl|verl|easyr1`: the trainers' data layouts, their reward files run without the
package, and one reward for every trainer (the real TRL and verl run in tests/tools)."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from splitfixture import cli_ok, side_rows
from test_score import NOISE, truths

from medscout_data.evaluation.score import Truth, reward
from medscout_data.integrations.grpo_settings import PAPER, swift_flags
from medscout_data.integrations.swift import configured
from medscout_data.integrations.trainer_rewards import (
    easyr1_compute_score,
    ground_truth_text,
    trl_reward_funcs,
    verl_compute_score,
)
from medscout_data.tasks.messages import system_prompt


def _export(shards: Path, out: Path, fmt: str, mode: str = "direct", *extra: str) -> str:
    return cli_ok(
        "export",
        "--format",
        fmt,
        "--split",
        "bench",
        "--mode",
        mode,
        "--shards",
        str(shards),
        "--out",
        str(out),
        "--quiet",
        *extra,
    )


def _md5(data: bytes) -> str:
    return hashlib.md5(Image.open(io.BytesIO(data)).tobytes()).hexdigest()


def test_trl_folder_loads_with_datasets_as_conversational_rows(split_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "trl"
    text = _export(split_shards, out, "trl", "cot")
    rows = side_rows(split_shards)
    loaded = datasets.load_dataset(str(out))
    assert list(loaded) == ["test"]  # the bench is a test split
    data = loaded["test"]
    assert sorted(data["id"]) == sorted(rows)
    for example in data.select(range(0, len(data), 7)):
        row = rows[example["id"]]
        system, user = example["prompt"]
        assert system == {"role": "system", "content": [{"type": "text", "text": system_prompt("cot")}]}
        assert user["role"] == "user"
        parts = user["content"]
        assert [p["type"] for p in parts] == ["image"] * len(row["images"]) + ["text"]
        assert parts[-1]["text"] == row["question_cot"]
        assert all(isinstance(image, Image.Image) for image in example["images"])
        assert [hashlib.md5(i.tobytes()).hexdigest() for i in example["images"]] == [
            _md5(i["bytes"]) for i in row["images"]
        ]
        assert (example["task"], example["variant"], example["target"]) == (
            row["task"],
            row["variant"] or "",
            row["target"],
        )
        assert example["solution"] == f"<answer>{row['answer']}</answer>"
    assert "train_grpo.py --model MODEL" in text
    assert "beta 0.001" in text  # the released script's difference is said


def test_verl_rows_follow_verls_layout(split_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "verl"
    text = _export(split_shards, out, "verl")
    rows = side_rows(split_shards)
    table = pq.read_table(out / "test.parquet").to_pylist()
    assert sorted(r["extra_info"]["id"] for r in table) == sorted(rows)
    for record in table:
        row = rows[record["extra_info"]["id"]]
        assert record["data_source"] == "med_scout_bench"
        assert record["prompt"][0] == {"role": "system", "content": system_prompt("direct")}
        assert record["prompt"][1] == {
            "role": "user",
            "content": "<image>" * len(row["images"]) + row["question"],
        }
        assert [i["bytes"] for i in record["images"]] == [i["bytes"] for i in row["images"]]  # no re-encode
        assert record["reward_model"]["style"] == "rule"
        truth = json.loads(record["reward_model"]["ground_truth"])
        assert truth == {
            "task": row["task"],
            "variant": row["variant"] or "",
            "target": json.loads(row["target"]),
        }
        assert record["extra_info"]["split"] == "bench"
    assert f"custom_reward_function.path={(out / 'reward.py').resolve()}" in text
    assert "actor_rollout_ref.actor.kl_loss_coef=0.04" in text and "actor_rollout_ref.rollout.n=8" in text


def test_easyr1_rows_use_its_keys(split_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "easyr1"
    text = _export(split_shards, out, "easyr1", "cot")
    rows = side_rows(split_shards)
    for record in pq.read_table(out / "test.parquet").to_pylist():
        row = rows[record["id"]]
        assert record["problem"] == "<image>" * len(row["images"]) + row["question_cot"]
        assert json.loads(record["answer"])["task"] == row["task"]
    assert "data.prompt_key=problem" in text and f"{(out / 'reward.py').resolve()}:compute_score" in text


def _run_isolated(code: str, cwd: Path) -> object:
    """Run `code` in a Python that cannot import this checkout's package (only the export's copy)."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_reward_files_run_from_the_scorer_copy(split_shards: Path, tmp_path: Path) -> None:
    rows = side_rows(split_shards)
    row = next(r for r in rows.values() if r["task"] == "jigsaw")
    truth = ground_truth_text(row["task"], row["variant"], row["target"])
    good = f"<think>seams</think><answer>{row['answer']}</answer>"
    for fmt in ("trl", "verl", "easyr1"):
        out = tmp_path / fmt
        _export(split_shards, out, fmt, "cot")
        name = "rewards.py" if fmt == "trl" else "reward.py"
        load = (
            "import importlib.util, json, sys\n"
            f"spec = importlib.util.spec_from_file_location('r', {str(out / name)!r})\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            "import medscout_data\n"
        )
        if fmt == "trl":
            call = (
                f"cols = dict(task=[{row['task']!r}], variant=[''], target=[{row['target']!r}])\n"
                f"out = {{f.__name__: f([{good!r}], **cols)[0] for f in m.REWARD_FUNCS}}\n"
            )
        elif fmt == "verl":
            call = f"out = m.compute_score('med_scout_bench', {good!r}, {truth!r}, {{'id': 'x'}})\n"
        else:
            call = f"out = m.compute_score([{{'response': {good!r}, 'ground_truth': {truth!r}}}])[0]\n"
        got = _run_isolated(load + call + "print(json.dumps([out, medscout_data.__file__]))", tmp_path)
        values, scorer = got
        assert scorer == str(out / "_medscout" / "medscout_data" / "__init__.py")
        expected = {
            "trl": {"medscout_accuracy": 1.0, "medscout_format": 0.5, "medscout_cot": 0.5},
            "verl": {"score": 2.0, "accuracy": 1.0, "format": 0.5, "cot": 0.5},
            "easyr1": {"overall": 2.0, "accuracy": 1.0, "format": 0.5, "cot": 0.5},
        }[fmt]
        assert values == expected


def _item(truth: Truth) -> dict[str, str]:
    """An item row (task, variant, target JSON) of a property-test truth."""
    if truth.kind == "tier":
        target = {"levels": [int(label[-1]) for label in truth.labels]}
        return {"task": "scale", "variant": "tier", "target": json.dumps(target)}
    if truth.kind == "box":
        return {"task": "scale", "variant": "box", "target": json.dumps({"boxes_1000": list(truth.boxes)})}
    if truth.kind == "jigsaw":
        target = {"permutation": list(truth.permutation), "grid": truth.grid}
        return {"task": "jigsaw", "variant": "", "target": json.dumps(target)}
    return {"task": "anomaly", "variant": "", "target": json.dumps({"cell": truth.cell, "grid": truth.grid})}


@settings(max_examples=300, deadline=None)
@given(
    response=st.one_of(NOISE, st.text()),
    truth=truths(),
    profile=st.sampled_from(["official", "paper"]),
    mode=st.sampled_from(["direct", "cot"]),
)
def test_every_trainer_gets_the_same_reward(response: str, truth: Truth, profile: str, mode: str) -> None:
    """ms-swift's plugin classes, TRL's functions, verl's and EasyR1's compute_score and `score`'s
    reward give the same components for one response (the scorer tests' fuzz corpus)."""
    item = _item(truth)
    want = reward(response, item, profile, mode)
    columns = {key: [value] for key, value in item.items()}
    swift = {
        name.split("_")[1]: cls()([response], **columns)[0] for name, cls in configured(profile, mode).items()
    }
    assert swift == {"accuracy": want.accuracy, "format": want.format, "cot": want.cot, "total": want.total}
    trl = {f.__name__: f([response], **columns)[0] for f in trl_reward_funcs(profile, mode)}
    assert sum(trl.values()) == pytest.approx(want.total)
    assert trl["medscout_accuracy"] == want.accuracy and trl["medscout_format"] == want.format
    truth_text = ground_truth_text(item["task"], item["variant"], item["target"])
    verl = verl_compute_score("med_scout_bench", response, truth_text, {}, profile=profile, mode=mode)
    assert verl == {"score": want.total, "accuracy": want.accuracy, "format": want.format, "cot": want.cot}
    (easy,) = easyr1_compute_score(
        [{"response": response, "ground_truth": truth_text}], profile=profile, mode=mode
    )
    assert easy == {"overall": want.total, "accuracy": want.accuracy, "format": want.format, "cot": want.cot}


def test_swift_command_carries_the_paper_settings(split_shards: Path, tmp_path: Path) -> None:
    text = _export(split_shards, tmp_path / "swift", "swift")
    for flag in swift_flags():
        assert flag in text
    assert "--beta 0.04" in text and "beta 0.001" in text
    assert PAPER.prompts_per_step * PAPER.group_size == PAPER.global_batch


def test_trl_script_defaults_are_the_paper_settings(split_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "trl"
    _export(split_shards, out, "trl")
    spec = importlib.util.spec_from_file_location("train_grpo", out / "train_grpo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines, does not run (main() is behind __name__)
    assert module.PAPER["num_generations"] == 8 and module.PAPER["beta"] == 0.04
    assert module.PAPER["learning_rate"] == 1e-6 and module.PAPER["max_steps"] == 7200


def test_absolute_paths_is_refused_for_formats_without_image_files(
    split_shards: Path, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from medscout_data.cli import cli

    args = ["export", "--format", "verl", "--split", "bench", "--shards", str(split_shards)]
    result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "v"), "--absolute-paths"])
    assert result.exit_code == 2 and "--absolute-paths is for --format swift/jsonl" in result.output


def test_trainer_scorer_copy_is_the_pure_reward_only(split_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "verl"
    _export(split_shards, out, "verl")
    copied = sorted(p.relative_to(out / "_medscout").as_posix() for p in (out / "_medscout").rglob("*.py"))
    assert copied == [
        "medscout_data/__init__.py",
        "medscout_data/evaluation/__init__.py",
        "medscout_data/evaluation/reward.py",
        "medscout_data/integrations/__init__.py",
        "medscout_data/integrations/trainer_rewards.py",
    ]


@pytest.mark.parametrize("mode", ["direct", "cot"])
def test_trainer_rows_carry_evaluates_prompt(split_shards: Path, tmp_path: Path, mode: str) -> None:
    """TRL's and verl's prompts are evaluate's messages with the images as placeholders (the one message
    builder); EasyR1's problem is its user turn (EasyR1 builds no system turn)."""
    from medscout_data.evaluation.evaluate import request_messages
    from medscout_data.tasks.messages import tagged_messages

    rows = side_rows(split_shards)
    for fmt in ("trl", "verl", "easyr1"):
        _export(split_shards, tmp_path / fmt, fmt, mode)
    trl = {r["id"]: r for r in datasets.load_dataset(str(tmp_path / "trl"), split="test")}
    verl = {r["extra_info"]["id"]: r for r in pq.read_table(tmp_path / "verl" / "test.parquet").to_pylist()}
    easy = {r["id"]: r for r in pq.read_table(tmp_path / "easyr1" / "test.parquet").to_pylist()}
    for item_id, row in rows.items():
        sent = request_messages(row, mode)
        tagged = tagged_messages(sent)
        assert verl[item_id]["prompt"] == tagged
        assert easy[item_id]["problem"] == tagged[1]["content"]
        trl_tagged = tagged_messages(
            [{**m, "content": [{**p} for p in m["content"]]} for m in trl[item_id]["prompt"]]
        )
        assert trl_tagged == tagged


def test_trainer_export_folder_is_owned_and_a_ct_only_rerun_replaces_it_whole(
    split_shards: Path, tmp_path: Path
) -> None:
    """A rerun with --modality ct leaves no X-ray (MIMIC-CXR-derived) row in the folder, and a file of
    the user's in the way is refused with one line (owned.py), for every trainer format."""
    from click.testing import CliRunner

    from medscout_data.cli import cli

    for fmt in ("trl", "verl", "easyr1"):
        out = tmp_path / fmt
        _export(split_shards, out, fmt)
        _export(split_shards, out, fmt, "direct", "--modality", "ct")
        files = sorted(out.rglob("*.parquet"))
        modalities = {m for path in files for m in pq.read_table(path).to_pylist() for m in [_modality(m)]}
        assert modalities == {"ct"}, fmt
        user = tmp_path / f"user-{fmt}"
        user.mkdir()
        name = "rewards.py" if fmt == "trl" else "reward.py"
        (user / name).write_text("mine\n")
        args = ["export", "--format", fmt, "--split", "bench", "--shards", str(split_shards), "--quiet"]
        result = CliRunner().invoke(cli, [*args, "--out", str(user)])
        assert result.exit_code != 0 and str(user / name) in result.output
        assert (user / name).read_text() == "mine\n" and "Traceback" not in result.output


def _modality(row: dict) -> str:
    return row.get("modality") or row["extra_info"]["modality"]
