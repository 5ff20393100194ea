"""Integrations without the tools installed: damaged splits refused by export and preview, the pool
preview reading only pool.json's shards, the ms-swift ORM classes called the two ways ms-swift calls
them, the plugin importing its own scorer copy, the lmms-eval task files and functions, the VLMEvalKit
TSV round trip and its scoring, and item metadata that datasets 3.x knows.
(The real tools are exercised by tests/tools, run with `bash .ci/tools-test`.)"""

from __future__ import annotations

import base64
import importlib.util
import inspect
import io
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image
from splitfixture import cli_ok, copy_split, flip_byte, read_jsonl, side_rows, stage_repo

from medscout_data.cli import cli
from medscout_data.evaluation.score import DenseGeometricReward
from medscout_data.integrations import swift as swift_rewards
from medscout_data.integrations.lmms_eval import aggregate_accuracy, process_results
from medscout_data.integrations.preview import PreviewOptions, write_preview
from medscout_data.integrations.vendor import closure
from medscout_data.integrations.vlmeval import image_list, score_records, score_summary
from medscout_data.layout import Layout
from medscout_data.schema import DATASETS3_FEATURE_TYPES, ITEM_SCHEMA

CELLS = {f"{m}_{t}" for m in ("ct", "mri", "xray") for t in ("scale", "jigsaw", "anomaly")}


def _invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def swift_cot(split_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("swift") / "cot"
    args = ["--split", "bench", "--mode", "cot", "--quiet"]
    cli_ok("export", *args, "--shards", str(split_shards), "--out", str(out))
    return out


# ---------------------------------------------------------------- integrity


@pytest.mark.parametrize("fmt", ["swift", "vlmeval", "lmms-eval"])
def test_export_refuses_a_bench_shard_with_one_flipped_byte(
    fmt: str, split_shards: Path, tmp_path: Path
) -> None:
    root = copy_split(split_shards, tmp_path / "shards")
    damaged = root / "bench" / "ct" / "scale" / "test-00000-of-00001.parquet"
    flip_byte(damaged)
    out = tmp_path / "out"
    result = _invoke("export", "--format", fmt, "--split", "bench", "--shards", str(root), "--out", str(out))
    assert result.exit_code == 1
    assert (
        str(damaged) in result.output and "sha256" in result.output and "medscout-data split" in result.output
    )
    assert "Traceback" not in result.output
    assert not list(out.glob("*.jsonl")) and not list(out.glob("*.tsv")) and not list(out.glob("*.yaml"))


def test_preview_refuses_a_damaged_split_and_a_missing_manifest(split_shards: Path, tmp_path: Path) -> None:
    root = copy_split(split_shards, tmp_path / "shards")
    damaged = sorted((root / "train" / "mri" / "jigsaw").glob("train-*.parquet"))[-1]
    flip_byte(damaged)
    result = _invoke("preview", "--split", "train", "--shards", str(root), "--out", str(tmp_path / "p"))
    assert result.exit_code == 1 and str(damaged) in result.output and "Traceback" not in result.output
    (root / "manifest.json").unlink()
    result = _invoke("preview", "--split", "bench", "--shards", str(root), "--out", str(tmp_path / "q"))
    assert result.exit_code == 1 and "no manifest" in result.output and "medscout-data split" in result.output


def test_pool_preview_reads_only_the_shards_pool_json_lists(split_shards: Path, tmp_path: Path) -> None:
    root = copy_split(split_shards, tmp_path / "shards")
    listed = root / "pool" / "ct" / "jigsaw-00000.parquet"
    assert listed.is_file()
    user_file = root / "pool" / "ct" / "jigsaw-99999.parquet"  # the user's, with items of its own
    table = pq.read_table(listed)
    ids = [f"user-{i}" for i in range(table.num_rows)]
    pq.write_table(table.set_column(table.schema.get_field_index("id"), "id", [ids]), user_file)
    planned = json.loads((root / "pool" / "ct" / "pool.json").read_text())
    missing = sorted(planned["shards"])[-1]
    (root / "pool" / "ct" / missing).unlink()  # planned, not made yet (a build still running)
    options = PreviewOptions(split="pool", per_cell=100, size=64, modalities=("ct",), progress=False)
    result = write_preview(Layout.at(root), tmp_path / "p", options)
    page = (tmp_path / "p" / "index.html").read_text(encoding="utf-8")
    assert "user-0" not in page and user_file.is_file()
    assert result.report.skipped_by_reason() == {"pool-shard-missing": 1}
    assert missing in result.report.skips[0].message


# ---------------------------------------------------------------- ms-swift


def test_orm_classes_are_built_and_called_the_ways_ms_swift_3_and_4_do(swift_cot: Path) -> None:
    records = read_jsonl(swift_cot / "bench-cot-swift.jsonl")
    registry: dict = {}
    classes = swift_rewards.register(registry, profile="official", mode="cot")
    assert sorted(registry) == ["medscout_accuracy", "medscout_cot", "medscout_format", "medscout_total"]
    names = [cls.__name__ for cls in classes.values()]
    assert len(set(names)) == 4 and "MedScoutAccuracy" in names  # ms-swift logs by class name
    # ms-swift 3.x passes only the __init__ parameters that exist on its training args: there are none
    params = set(inspect.signature(registry["medscout_accuracy"].__init__).parameters) - {
        "self",
        "args",
        "kwargs",
    }
    assert params == set()
    columns = {key: [r[key] for r in records] for key in records[0] if key != "messages"}
    truth = ["<think>look</think>" + r["solution"] for r in records]
    wrong = ["<answer>(1, 2, 3, 4)</answer>" for _ in records]
    for name, component in [("medscout_accuracy", 1.0), ("medscout_format", 0.5), ("medscout_cot", 0.5)]:
        built4 = registry[name](args=object())  # ms-swift 4.x: orms[name](args=args)
        built3 = registry[name]()  # ms-swift 3.x, no matching args
        for built in (built4, built3):
            assert built(truth, trainer_state=None, messages=[r["messages"] for r in records], **columns) == [
                component
            ] * len(records)
        expected = DenseGeometricReward(name.split("_")[1], "official", "cot")(wrong, **columns)
        assert built4(wrong, **columns) == expected
    assert registry["medscout_total"]()(truth, **columns) == [2.0] * len(records)
    restored = pickle.loads(pickle.dumps(registry["medscout_cot"]()))
    assert (restored.profile, restored.mode, type(restored).__name__) == ("official", "cot", "MedScoutCot")


def test_plugin_registers_into_a_stand_in_registry_with_its_own_scorer_copy(
    swift_cot: Path, tmp_path: Path
) -> None:
    """The registry is a stand-in module `swift.rewards` (a plain `orms` dict, as in ms-swift); the real
    ms-swift runs the same plugin in tests/tools."""
    fake = tmp_path / "fake" / "swift"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "rewards.py").write_text("orms = {}\n")
    script = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('plugin', {str(swift_cot / 'plugin.py')!r})\n"
        "plugin = importlib.util.module_from_spec(spec); spec.loader.exec_module(plugin)\n"
        "from swift.rewards import orms\n"
        "import medscout_data\n"
        "print(json.dumps([sorted(orms), plugin.PROFILE, plugin.MODE, medscout_data.__file__,\n"
        "    orms['medscout_cot']()(['<think>a</think><answer>1</answer>'], task=['anomaly'], variant=[''],\n"
        '    target=[\'{"cell": 1, "grid": 4}\'])]))\n'
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "fake")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    names, profile, mode, scorer, cot = json.loads(done.stdout)
    assert names == ["medscout_accuracy", "medscout_cot", "medscout_format", "medscout_total"]
    assert (profile, mode, cot) == ("official", "cot", [0.5])
    assert scorer == str(swift_cot / "_medscout" / "medscout_data" / "__init__.py")


def test_printed_command_sets_the_image_root_or_uses_absolute_paths(
    split_shards: Path, tmp_path: Path
) -> None:
    out = tmp_path / "e"
    base = ["export", "--split", "bench", "--shards", str(split_shards), "--modality", "ct", "--quiet"]
    text = cli_ok(*base, "--out", str(out))
    assert f"ROOT_IMAGE_DIR={out.resolve()} swift rlhf --rlhf_type grpo" in text
    assert f"--external_plugins {(out / 'plugin.py').resolve()}" in text
    assert "--reward_funcs medscout_accuracy medscout_format \\" in text  # direct: no CoT reward
    assert "\n    --system" not in text  # the rows carry the system prompt
    assert f"--dataset {(out / 'bench-direct-swift.jsonl').resolve()}" in text
    text = cli_ok(*base, "--out", str(tmp_path / "abs"), "--absolute-paths", "--mode", "cot")
    assert "ROOT_IMAGE_DIR" not in text and "medscout_format medscout_cot" in text


def test_scorer_copy_holds_only_light_modules(swift_cot: Path) -> None:
    roots = ["medscout_data.integrations.swift", "medscout_data.integrations.lmms_eval"]
    needed = closure([*roots, "medscout_data.integrations.vlmeval"])
    assert "medscout_data.evaluation.score" in needed
    heavy = [
        m
        for m in needed
        if m.startswith(("medscout_data.stages", "medscout_data.sources", "medscout_data.hub"))
    ]
    assert heavy == []
    copied = {
        p.relative_to(swift_cot / "_medscout").as_posix() for p in (swift_cot / "_medscout").rglob("*.py")
    }
    assert (
        "medscout_data/integrations/swift.py" in copied
        and "medscout_data/integrations/export.py" not in copied
    )
    for name in copied:
        assert (swift_cot / "_medscout" / name).read_bytes() == (
            Path(__file__).parents[1] / name
        ).read_bytes()


# ---------------------------------------------------------------- lmms-eval


class _TaskLoader(yaml.SafeLoader):
    """Reads lmms-eval task YAML: `!function utils.name` becomes the string `utils.name`."""


_TaskLoader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


def test_lmms_eval_folder_declares_the_tasks_and_its_functions_score_the_truth(
    split_shards: Path, tmp_path: Path
) -> None:
    import datasets

    folder = tmp_path / "lmms"
    cli_ok("export", "--format", "lmms-eval", "--shards", str(split_shards), "--out", str(folder))
    group = yaml.load((folder / "med_scout_bench.yaml").read_text(), _TaskLoader)
    assert group["group"] == "med_scout_bench"
    assert group["task"] == ["med_scout_bench_direct", "med_scout_bench_cot"]
    template = yaml.load((folder / "_default_template_yaml").read_text(), _TaskLoader)
    files = template["dataset_kwargs"]["data_files"]["test"]
    assert files == sorted(str(p.resolve()) for p in (split_shards / "bench").glob("*/*/*.parquet"))
    assert {m["metric"] for m in template["metric_list"]} == {"avg", "total"} | CELLS
    for mode in ("direct", "cot"):
        task = yaml.load((folder / f"med_scout_bench_{mode}.yaml").read_text(), _TaskLoader)
        assert task["include"] == "_default_template_yaml" and task["task"] == f"med_scout_bench_{mode}"
        assert task["process_results"] == f"!function utils.process_results_{mode}"
    spec = importlib.util.spec_from_file_location("medscout_lmms_utils", folder / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    docs = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    records: dict[str, list] = {}
    for doc in docs:
        visuals = utils.doc_to_visual(doc)
        assert [v.mode for v in visuals] == ["RGB"] * len(doc["images"])
        assert utils.doc_to_text_cot(doc, {"pre_prompt": "", "post_prompt": "!"}) == doc["question_cot"] + "!"
        result = utils.process_results_cot(
            doc, [f"<think>x</think><answer>{utils.doc_to_target(doc)}</answer>"]
        )
        for metric, record in result.items():
            assert record["id"] == doc["id"]
            records.setdefault(metric, []).append(record)
    assert set(records) == {"avg", "total"} | CELLS
    assert all(utils.aggregate_accuracy(records[m]) == pytest.approx(100.0) for m in CELLS | {"avg"})
    assert utils.aggregate_total(records["total"]) == pytest.approx(200.0)
    wrong = process_results(docs[0], ["<answer>nothing</answer>"], "direct")
    assert aggregate_accuracy([wrong["avg"]]) < 100.0


def test_lmms_eval_reads_a_staged_repo_a_hub_bench_and_refuses_bad_locations(
    split_shards: Path, tmp_path: Path
) -> None:
    stage = stage_repo(split_shards, tmp_path / "stage")
    cli_ok("export", "--format", "lmms-eval", "--bench", str(stage), "--out", str(tmp_path / "staged"))
    template = yaml.load((tmp_path / "staged" / "_default_template_yaml").read_text(), _TaskLoader)
    staged = sorted(str(p.resolve()) for p in (stage / "data").glob("*/*/test-*.parquet"))
    assert sorted(template["dataset_kwargs"]["data_files"]["test"]) == staged and len(staged) == 9
    folder = tmp_path / "hub"
    cli_ok("export", "--format", "lmms-eval", "--bench", "org/med-scout-bench", "--out", str(folder))
    template = yaml.load((folder / "_default_template_yaml").read_text(), _TaskLoader)
    assert template["dataset_path"] == "org/med-scout-bench" and "dataset_kwargs" not in template
    result = _invoke(
        "export", "--format", "lmms-eval", "--bench", str(tmp_path / "nothing"), "--out", str(folder)
    )
    assert (
        result.exit_code == 1
        and str(tmp_path / "nothing") in result.output
        and "Traceback" not in result.output
    )
    result = _invoke("export", "--format", "lmms-eval", "--split", "train", "--out", str(folder))
    assert result.exit_code == 2 and "bench" in result.output


# ---------------------------------------------------------------- VLMEvalKit


def test_vlmeval_tsv_round_trips_to_the_shards_png_bytes(split_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "vlm"
    cli_ok("export", "--format", "vlmeval", "--shards", str(split_shards), "--out", str(out), "--quiet")
    table = pd.read_csv(out / "MedScoutBench.tsv", sep="\t")  # how VLMEvalKit loads a TSV
    rows = side_rows(split_shards)
    assert list(table["index"]) == list(range(len(rows))) and sorted(table["id"]) == sorted(rows)
    for line in table.to_dict("records"):
        row = rows[line["id"]]
        cell = line["image"]
        images = image_list(cell)
        assert (len(images) == 1) == (not cell.startswith("["))  # one image: a plain base64 string
        assert [base64.b64decode(b) for b in images] == [image["bytes"] for image in row["images"]]
        for key in ("question", "question_cot", "answer", "task", "modality", "target"):
            assert line[key] == row[key]
        Image.open(io.BytesIO(base64.b64decode(images[0]))).verify()
    truth = [dict(line, prediction=f"<answer>{line['answer']}</answer>") for line in table.to_dict("records")]
    summary = score_summary(score_records(truth, "direct"))
    assert summary["Overall"] == pytest.approx(100.0) and summary["total"] == pytest.approx(150.0)
    assert {k for k in summary if k not in ("Overall", "total")} >= CELLS
    predictions = tmp_path / "preds.tsv"
    pd.DataFrame(truth).drop(columns=["image"]).to_csv(predictions, sep="\t", index=False)
    shutil.copytree(out, tmp_path / "moved")  # the folder works wherever it is copied
    done = subprocess.run(
        [sys.executable, str(tmp_path / "moved" / "medscout_vlmeval.py"), "--score", str(predictions)],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Med-Scout-Bench Avg: 100.0" in done.stdout


# ---------------------------------------------------------------- datasets metadata


def test_every_parquet_written_uses_only_feature_types_datasets_3_knows(
    split_shards: Path, tmp_path: Path
) -> None:
    stage = tmp_path / "stage"
    stage_repo(split_shards, stage)
    files = sorted(split_shards.rglob("*.parquet")) + sorted(stage.rglob("*.parquet"))
    with_features = 0
    for path in files:
        raw = (pq.read_schema(path).metadata or {}).get(b"huggingface")
        if raw is None:  # no metadata: datasets infers plain types from the Arrow schema
            continue
        with_features += 1
        assert _feature_types(json.loads(raw)["info"]["features"]) <= DATASETS3_FEATURE_TYPES, path
    assert with_features >= 9 * 3  # pool, bench, train and staged shards all carry it
    features = json.loads(ITEM_SCHEMA.metadata[b"huggingface"])["info"]["features"]
    assert features["images"] == {"feature": {"_type": "Image"}, "_type": "Sequence"}


def _feature_types(node) -> set[str]:
    if isinstance(node, list):
        return set().union(*(_feature_types(v) for v in node)) if node else set()
    if not isinstance(node, dict):
        return set()
    found = {node["_type"]} if isinstance(node.get("_type"), str) else set()
    return found.union(*(_feature_types(v) for k, v in node.items() if k != "_type"))
