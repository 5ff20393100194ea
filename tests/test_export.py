"""Export: ms-swift GRPO and generic JSONL from a real split, images written as the shards' bytes,
solutions that score the maximum when fed back, and bad rows recorded, not fatal."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from splitfixture import cli_ok, read_jsonl, side_rows, write_manifest_for

from medscout_data import MODALITIES, TASKS
from medscout_data import cli as cli_package
from medscout_data.cli import cli
from medscout_data.cli import export as export_cli
from medscout_data.integrations.export import (
    EXPORT_SPLITS,
    FORMATS,
    MODES,
    PREVIEW_SPLITS,
    ExportOptions,
    export_split,
)
from medscout_data.layout import Layout
from medscout_data.schema import ITEM_SCHEMA
from medscout_data.tasks.messages import IMAGE_TAG, system_prompt


@pytest.fixture(scope="module")
def bench_direct(split_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "swift"
    cli_ok(
        "export",
        "--format",
        "swift",
        "--split",
        "bench",
        "--shards",
        str(split_shards),
        "--out",
        str(out),
        "--quiet",
    )
    return out


def test_swift_rows_follow_the_grpo_format(split_shards: Path, bench_direct: Path) -> None:
    jsonl = bench_direct / "bench-direct-swift.jsonl"
    records = read_jsonl(jsonl)
    manifest = json.loads((split_shards / "manifest.json").read_text())
    assert len(records) == manifest["totals"]["bench"] == 54
    shards = side_rows(split_shards, "bench")
    cells = [(MODALITIES.index(r["modality"]), TASKS.index(r["task"])) for r in records]
    assert cells == sorted(cells)  # pipeline order, cell by cell
    assert {r["id"] for r in records} == set(shards)
    for record in records:
        row = shards[record["id"]]
        system, message = record["messages"]
        assert system == {"role": "system", "content": system_prompt("direct")}  # every row carries it
        assert message["role"] == "user"
        content = message["content"]
        assert content.count(IMAGE_TAG) == len(record["images"]) == len(row["images"])
        assert content == IMAGE_TAG * len(row["images"]) + row["question"]
        assert record["solution"] == f"<answer>{row['answer']}</answer>"
        assert (record["modality"], record["task"], record["variant"]) == (
            row["modality"],
            row["task"],
            row["variant"],
        )
        assert json.loads(record["target"]) == json.loads(row["target"])
        for k, path in enumerate(record["images"]):
            assert not Path(path).is_absolute()
            file = jsonl.parent / path
            assert file.is_file(), path
            assert file.read_bytes() == row["images"][k]["bytes"]  # written as-is, no re-encode
    # byte for byte what the rows (and evaluate) send: ms-swift's --system sends a file verbatim
    assert (bench_direct / "system-direct.txt").read_bytes() == system_prompt("direct").encode("utf-8")
    report = json.loads((bench_direct / "_reports" / "bench-direct-swift" / "report.json").read_text())
    assert report["counts"] == {"images": sum(len(r["images"]) for r in records), "items": 54}
    assert report["skipped"] == 0 and report["split_manifest"]["seed"] == manifest["seed"]
    assert not list(bench_direct.rglob("*.tmp"))


def test_direct_solutions_score_the_maximum(split_shards: Path, bench_direct: Path, tmp_path: Path) -> None:
    records = read_jsonl(bench_direct / "bench-direct-swift.jsonl")
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text(
        "".join(json.dumps({"id": r["id"], "response": r["solution"]}) + "\n" for r in records)
    )
    figures = tmp_path / "score.json"
    cli_ok(
        "score",
        "--predictions",
        str(predictions),
        "--bench",
        str(split_shards),
        "--mode",
        "direct",
        "--json",
        str(figures),
    )
    overall = json.loads(figures.read_text())["overall"]
    assert overall["count"] == 54 and overall["missing"] == 0
    assert overall["accuracy"] == pytest.approx(1.0)
    assert overall["format"] == pytest.approx(0.5)
    assert overall["total"] == pytest.approx(1.5)


def test_cot_export_uses_the_cot_question_and_scores_the_maximum(split_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "cot"
    cli_ok(
        "export",
        "--split",
        "bench",
        "--mode",
        "cot",
        "--shards",
        str(split_shards),
        "--out",
        str(out),
        "--quiet",
    )
    records = read_jsonl(out / "bench-cot-swift.jsonl")
    shards = side_rows(split_shards, "bench")
    for record in records:
        row = shards[record["id"]]
        assert record["messages"][0] == {"role": "system", "content": system_prompt("cot")}
        assert record["messages"][1]["content"] == IMAGE_TAG * len(row["images"]) + row["question_cot"]
    assert (out / "system-cot.txt").read_bytes() == system_prompt("cot").encode("utf-8")
    assert "<think>" in system_prompt("cot")
    predictions = tmp_path / "cot.jsonl"
    lines = [
        json.dumps({"id": r["id"], "response": "<think>reasoning</think>" + r["solution"]}) for r in records
    ]
    predictions.write_text("\n".join(lines) + "\n")
    figures = tmp_path / "score.json"
    cli_ok(
        "score",
        "--predictions",
        str(predictions),
        "--bench",
        str(split_shards),
        "--mode",
        "cot",
        "--json",
        str(figures),
    )
    overall = json.loads(figures.read_text())["overall"]
    assert overall["total"] == pytest.approx(2.0) and overall["count"] == 54


def test_generic_jsonl_of_a_train_cell_with_absolute_paths(split_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "generic"
    args = [
        "export",
        "--format",
        "jsonl",
        "--split",
        "train",
        "--shards",
        str(split_shards),
        "--out",
        str(out),
    ]
    cli_ok(*args, "--absolute-paths", "--modality", "ct", "--task", "jigsaw", "--quiet")
    records = read_jsonl(out / "train-direct-generic.jsonl")
    shards = side_rows(split_shards, "train", "ct/jigsaw/*.parquet")
    rows_in_footers = sum(
        pq.ParquetFile(p).metadata.num_rows for p in (split_shards / "train/ct/jigsaw").glob("*")
    )
    assert len(records) == len(shards) == rows_in_footers == 18
    for record in records:
        row = shards[record["id"]]
        assert (record["question"], record["answer"]) == (row["question"], row["answer"])
        assert record["system"] == system_prompt("direct")
        assert record["task"] == "jigsaw" and len(record["images"]) == 1
        path = Path(record["images"][0])
        assert path.is_absolute() and path.read_bytes() == row["images"][0]["bytes"]
    assert not (out / "system-direct.txt").exists()


def test_rerun_gives_identical_output(split_shards: Path, bench_direct: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    export_split(Layout.at(split_shards), again, ExportOptions(split="bench", progress=False))
    name = "bench-direct-swift.jsonl"
    assert (again / name).read_bytes() == (bench_direct / name).read_bytes()
    first = sorted(p.relative_to(bench_direct) for p in (bench_direct / "images").rglob("*.png"))
    second = sorted(p.relative_to(again) for p in (again / "images").rglob("*.png"))
    assert first == second and len(first) == 108


def test_bad_rows_and_shards_are_recorded_and_skipped(split_shards: Path, tmp_path: Path) -> None:
    root = tmp_path / "shards"
    cell = root / "bench" / "ct" / "anomaly"
    cell.mkdir(parents=True)
    source = next((split_shards / "bench" / "ct" / "anomaly").glob("*.parquet"))
    rows = pq.read_table(source).to_pylist()
    rows[1]["images"] = [{"bytes": b"GIF89a not a png", "path": None}]
    rows.append(dict(rows[2]))  # a duplicate id
    pq.write_table(pa.Table.from_pylist(rows, schema=ITEM_SCHEMA), cell / "test-00000-of-00002.parquet")
    (cell / "test-00001-of-00002.parquet").write_bytes(b"not parquet at all")
    write_manifest_for(root, split_shards)  # bad at split time, so the manifest's hashes match
    out = tmp_path / "out"
    result = export_split(Layout.at(root), out, ExportOptions(split="bench", progress=False))
    assert result.items == len(rows) - 2 == 5
    assert result.report.skipped_by_reason() == {"duplicate-id": 1, "not-png": 1, "unreadable-shard": 1}
    assert len(read_jsonl(out / "bench-direct-swift.jsonl")) == 5
    errors = pq.read_table(out / "_reports" / "bench-direct-swift" / "errors.parquet").to_pylist()
    assert any(
        "test-00001-of-00002.parquet" in e["message"] and "not a readable" in e["message"] for e in errors
    )
    assert any(rows[1]["id"] in e["message"] and "not PNG" in e["message"] for e in errors)


def test_missing_split_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["export", "--split", "train", "--shards", str(tmp_path), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code != 0
    assert "medscout-data split" in result.output and str(tmp_path) in result.output
    assert "Traceback" not in result.output


def test_cli_choices_match_the_module() -> None:
    assert export_cli.FORMATS == FORMATS and export_cli.MODES == MODES
    assert export_cli.EXPORT_SPLITS == EXPORT_SPLITS and export_cli.PREVIEW_SPLITS == PREVIEW_SPLITS
    assert cli_package.COMMANDS["export"] == "medscout_data.cli.export:export"
    with pytest.raises(ValueError, match="unknown split"):
        ExportOptions(split="pool")


def test_mimic_note_on_xray_export(split_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "x"
    args = ["export", "--split", "bench", "--shards", str(split_shards), "--out", str(out), "--quiet"]
    result = CliRunner().invoke(cli, [*args, "--modality", "xray", "--task", "anomaly"])
    assert result.exit_code == 0 and "PhysioNet" in result.output
    assert len(read_jsonl(out / "bench-direct-swift.jsonl")) == 6
    result = CliRunner().invoke(cli, [*args, "--modality", "ct", "--task", "anomaly"])
    assert result.exit_code == 0 and "PhysioNet" not in result.output
