"""The exported files in the real tools: ms-swift 4.x and 3.x build and call the plugin's rewards on
rows of the exported JSONL through their own loaders; lmms-eval's TaskManager loads the exported task
and its process_results gives the maximum on the truth; datasets 3.x decodes the shards and the staged
repo. Each tool runs in its own environment without medscout-data (see conftest.py)."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from splitfixture import cli_ok, read_jsonl, side_rows, stage_repo
from toolrun import run_driver

from medscout_data.evaluation.score import DenseGeometricReward, reward

COMPONENTS = ("accuracy", "format", "cot", "total")
NAMES = [f"medscout_{c}" for c in COMPONENTS]


def _pixels(data: bytes, mode: str | None = None) -> list:
    image = Image.open(io.BytesIO(data))
    image = image.convert(mode) if mode else image
    return [image.mode, list(image.size), hashlib.md5(image.tobytes()).hexdigest()]


def _completions(records: list[dict], mode: str) -> list[list[str]]:
    """Per row: the truth (with a <think> block in cot mode), the truth without the CoT template,
    another item's answer of the same task, and no answer at all."""
    think = "<think>the seams and the anatomy</think>" if mode == "cot" else ""
    out = []
    for k, record in enumerate(records):
        other = next(r for r in records[k + 1 :] + records[:k] if r["task"] == record["task"])
        out.append([think + record["solution"], record["solution"], think + other["solution"], "no idea"])
    return out


def _expected(records: list[dict], completions: list[list[str]], mode: str) -> list[list[float]]:
    """What the project's own scorer gives, per component, in the driver's sample order."""
    texts = [text for texts in completions for text in texts]
    rows = [record for record, texts in zip(records, completions, strict=True) for _ in texts]
    columns = {key: [r[key] for r in rows] for key in ("task", "variant", "target")}
    return [DenseGeometricReward(c, "official", mode)(texts, **columns) for c in COMPONENTS]


@pytest.mark.parametrize(
    ("environment", "mode"),
    [("swift4_python", "cot"), ("swift3_python", "direct")],
    ids=["ms-swift-4-cot", "ms-swift-3-direct"],
)
def test_ms_swift_builds_and_calls_the_plugin_rewards_on_exported_rows(
    environment: str, mode: str, split_shards: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    python = request.getfixturevalue(environment)
    out = tmp_path / "export"
    cli_ok(
        "export",
        "--split",
        "bench",
        "--mode",
        mode,
        "--shards",
        str(split_shards),
        "--out",
        str(out),
        "--quiet",
    )
    jsonl = out / f"bench-{mode}-swift.jsonl"
    records = read_jsonl(jsonl)
    completions = _completions(records, mode)
    ask = {"plugin": str(out / "plugin.py"), "jsonl": str(jsonl), "completions": completions, "names": NAMES}
    got = run_driver(python, "swift_rewards.py", ask, tmp_path / "run", {"ROOT_IMAGE_DIR": str(out)})
    assert got["swift"].split(".")[0] == ("4" if environment == "swift4_python" else "3")
    assert got["registered"] == sorted(NAMES)
    assert got["logged_names"] == ["MedScoutAccuracy", "MedScoutFormat", "MedScoutCot", "MedScoutTotal"]
    assert got["settings"] == ["official", mode]
    assert got["scorer_from"].startswith(str(out / "_medscout"))  # the copy, not this checkout
    assert got["row_ids"] == [r["id"] for r in records]
    assert {"task", "variant", "target", "solution", "images"} <= set(got["row_columns"])
    expected = _expected(records, completions, mode)
    assert len(got["rewards"]) == len(expected)
    for values, wanted in zip(got["rewards"], expected, strict=True):
        assert values == pytest.approx(wanted)
    accuracy, fmt, cot, total = (values[0::4] for values in got["rewards"])  # the truth of every row
    assert set(accuracy) == {1.0} and set(fmt) == {0.5}
    assert set(cot) == ({0.5} if mode == "cot" else {0.0})
    assert set(total) == ({2.0} if mode == "cot" else {1.5})
    assert max(got["rewards"][3][3::4]) < 1.0  # "no idea" scores low: the rewards can tell


def test_lmms_eval_task_loads_and_scores_the_truth_at_the_maximum(
    swift4_python: str, split_shards: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "lmms"
    cli_ok("export", "--format", "lmms-eval", "--shards", str(split_shards), "--out", str(folder))
    rows = side_rows(split_shards)
    wrong = {
        i: "<answer>0</answer>" for i, r in rows.items() if (r["modality"], r["task"]) == ("xray", "anomaly")
    }
    responses = {
        "med_scout_bench_direct": {i: f"<answer>{r['answer']}</answer>" for i, r in rows.items()},
        "med_scout_bench_cot": {i: f"<think>t</think><answer>{r['answer']}</answer>" for i, r in rows.items()}
        | {i: f"<think>t</think>{text}" for i, text in wrong.items()},
    }
    ask = {"include_path": str(folder), "group": "med_scout_bench", "responses": responses}
    got = run_driver(swift4_python, "lmms_task.py", ask, tmp_path / "run")
    assert got["scorer_from"].startswith(str(folder / "_medscout"))
    assert set(got["tasks"]) == {"med_scout_bench_direct", "med_scout_bench_cot"}
    cells = {f"{m}_{t}" for m in ("ct", "mri", "xray") for t in ("scale", "jigsaw", "anomaly")}
    for name, task in got["tasks"].items():
        mode = name.rsplit("_", 1)[1]
        assert set(task["metric_list"]) == set(task["scores"]) == {"avg", "total"} | cells
        assert task["reasoning_tags"] is None  # lmms-eval leaves <think> in the responses it scores
        assert sorted(s["id"] for s in task["samples"]) == sorted(rows)
        for sample in task["samples"]:
            row = rows[sample["id"]]
            assert sample["text"] == row["question_cot" if mode == "cot" else "question"]
            assert sample["target"] == row["answer"]
            assert sample["visuals"] == [_pixels(image["bytes"], "RGB") for image in row["images"]]
            assert {record["id"] for record in sample["logged"].values()} == {sample["id"]}  # ids logged
    direct = got["tasks"]["med_scout_bench_direct"]["scores"]
    assert all(direct[c] == pytest.approx(100.0) for c in cells)
    assert direct["avg"] == pytest.approx(100.0) and direct["total"] == pytest.approx(150.0)
    cot = got["tasks"]["med_scout_bench_cot"]["scores"]
    assert all(cot[c] == pytest.approx(100.0) for c in cells - {"xray_anomaly"})
    expected = [100 * reward(wrong[i], rows[i], "official", "cot").accuracy for i in wrong]
    assert cot["xray_anomaly"] == pytest.approx(sum(expected) / len(expected)) and cot["xray_anomaly"] < 100
    assert cot["avg"] == pytest.approx((800 + cot["xray_anomaly"]) / 9)


def test_datasets_3_decodes_the_shards_and_the_staged_repo(
    swift3_python: str, split_shards: Path, tmp_path: Path
) -> None:
    stage = tmp_path / "stage"
    stage_repo(split_shards, stage)
    shards = sorted(str(p) for p in (split_shards / "bench").glob("*/*/*.parquet"))
    old = tmp_path / "old-metadata.parquet"  # the datasets-4 `List` metadata this project used to write
    table = pq.read_table(shards[0])
    legacy = json.loads(table.schema.metadata[b"huggingface"])
    legacy["info"]["features"]["images"]["_type"] = "List"
    pq.write_table(table.replace_schema_metadata({b"huggingface": json.dumps(legacy).encode()}), old)
    ask = {"parquet": shards, "staged": str(stage), "expect_error": [str(old)]}
    got = run_driver(swift3_python, "datasets_read.py", ask, tmp_path / "run")
    assert got["datasets"].startswith("3.")
    assert "Feature type 'List' not found" in got["error"]  # so the read below is a real check
    assert got["parquet"]["features"].startswith("Sequence(feature=Image(")
    rows = side_rows(split_shards)
    for side in ("parquet", "staged"):
        decoded = got[side]["rows"]
        assert sorted(r["id"] for r in decoded) == sorted(rows)
        for r in decoded:
            expected = [["PIL.PngImagePlugin", *_pixels(image["bytes"])] for image in rows[r["id"]]["images"]]
            assert r["images"] == expected


def test_tool_environments_do_not_contain_medscout_data(
    swift4_python: str, swift3_python: str, tmp_path: Path
) -> None:
    for python in (swift4_python, swift3_python):
        found = subprocess.run(
            [python, "-c", "import importlib.util as u; print(u.find_spec('medscout_data'))"],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin"},
            cwd=tmp_path,
        )
        assert found.stdout.strip() == "None", found.stdout + found.stderr
