"""The bench is checked before scoring: sha256 against the split's manifest, against push-bench's
staged record, or a decode check; and a mistyped local path never goes to the Hub."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from benchfixture import make_shards, make_staged_repo
from click.testing import CliRunner

from medscout_data.cli import cli
from medscout_data.errors import StageError
from medscout_data.evaluation import bench as bench_module
from medscout_data.evaluation.integrity import png_problem
from medscout_data.evaluation.score import ScoreError, resolve_bench, score_file
from medscout_data.hub.push import PushOptions, stage_bench
from medscout_data.layout import Layout


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shards(tmp_path_factory.mktemp("shards"), modalities=("ct",), per_cell=2)


def flip_png_byte(shard: Path) -> str:
    """Flip one byte inside the first image's PNG bytes of a shard; returns that item's id."""
    row = pq.read_table(shard, columns=["id", "images"]).to_pylist()[0]
    png = row["images"][0]["bytes"]
    data = bytearray(shard.read_bytes())
    offset = bytes(data).find(png) + len(png) // 2
    assert offset > len(png) // 2
    data[offset] ^= 0x40
    shard.write_bytes(bytes(data))
    return row["id"]


def answers_file(root: Path, folder: str, tmp_path: Path) -> Path:
    rows = [
        r for p in sorted((root / folder).glob("*/*/test-*.parquet")) for r in pq.read_table(p).to_pylist()
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(f'{{"id": "{r["id"]}", "response": "{r["answer"]}"}}\n' for r in rows))
    return path


# ---------------------------------------------------------------- a typo goes online


@pytest.mark.parametrize(
    "typed", ["runs/reff", "./runs/reff", "../nowhere/bench", "/no/such/bench", "~/no-such-bench-x", "a/b/c"]
)
def test_a_mistyped_local_path_is_an_error_not_a_hub_repo(
    typed: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    called = []
    monkeypatch.setattr(bench_module, "load_hub_bench", lambda *a, **k: called.append(a))
    with pytest.raises(ScoreError, match=rf"{typed}: no such bench folder"):
        resolve_bench(typed)
    result = CliRunner().invoke(
        cli, ["score", "--predictions", str(answers_file_stub(tmp_path)), "--bench", typed]
    )
    assert (
        result.exit_code != 0 and "no such bench folder" in result.output and "Traceback" not in result.output
    )
    assert not called


def answers_file_stub(tmp_path: Path) -> Path:
    path = tmp_path / "stub.jsonl"
    path.write_text('{"id": "x", "response": "1"}\n')
    return path


def test_hub_ids_stay_hub_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert resolve_bench("someone/med-scout-bench").repo_id == "someone/med-scout-bench"
    assert resolve_bench("hf://datasets/runs/reff").repo_id == "runs/reff"  # explicit: the Hub
    with pytest.raises(ScoreError, match="nor an owner/name"):
        resolve_bench("hf://datasets/not a repo")


# ---------------------------------------------------------------- shards root: manifest sha256


def test_a_flipped_byte_in_a_bench_shard_is_refused(pristine: Path, tmp_path: Path) -> None:
    root = tmp_path / "shards"
    shutil.copytree(pristine, root)
    preds = answers_file(root, "bench", tmp_path)
    assert resolve_bench(root).integrity == "sha256 (manifest.json)"
    assert score_file(preds, root).overall.means()["accuracy"] == 1.0
    shard = root / "bench" / "ct" / "jigsaw" / "test-00000-of-00001.parquet"
    flip_png_byte(shard)
    with pytest.raises(StageError, match=rf"{shard}: sha256 differs from the manifest"):
        score_file(preds, root)
    with pytest.raises(StageError, match="sha256 differs"):
        resolve_bench(root / "bench")  # the bench side of a root is checked against the root's manifest
    result = CliRunner().invoke(cli, ["score", "--predictions", str(preds), "--bench", str(root)])
    assert result.exit_code != 0 and "sha256 differs" in result.output and "Traceback" not in result.output


def test_a_missing_or_resized_shard_is_refused(pristine: Path, tmp_path: Path) -> None:
    root = tmp_path / "shards"
    shutil.copytree(pristine, root)
    shard = root / "bench" / "ct" / "scale" / "test-00000-of-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(StageError, match="bytes, the manifest says"):
        resolve_bench(root)
    shard.unlink()
    with pytest.raises(StageError, match=r"listed in .* but missing"):
        resolve_bench(root)


def test_files_the_manifest_does_not_list_are_not_read(pristine: Path, tmp_path: Path) -> None:
    root = tmp_path / "shards"
    shutil.copytree(pristine, root)
    stray = root / "bench" / "ct" / "scale" / "test-00001-of-00001.parquet"
    stray.write_bytes(b"the user's own file")
    assert stray not in resolve_bench(root).files


# ---------------------------------------------------------------- staged repo folder


@pytest.fixture(scope="module")
def staged(split_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    stage = tmp_path_factory.mktemp("stage") / "repo"
    stage_bench(Layout.at(split_shards), PushOptions("me/bench", stage_dir=stage, progress=False))
    return stage


def test_a_staged_folder_is_checked_against_its_record(staged: Path, tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(staged, copy)
    preds = answers_file(copy, "data", tmp_path)
    source = resolve_bench(copy)
    assert source.integrity == "sha256 (staged record)" and len(source.files) == 9
    assert score_file(preds, copy).overall.means()["accuracy"] == 1.0
    shard = copy / "data" / "mri" / "jigsaw" / "test-00000-of-00001.parquet"
    shard.unlink()
    shutil.copyfile(staged / "data" / "ct" / "anomaly" / shard.name, shard)  # a real, but different, shard
    with pytest.raises(ScoreError, match=rf"{shard}: sha256 differs from .*\.medscout-stage\.json"):
        resolve_bench(copy)


def test_a_staged_folder_without_our_record_is_decode_checked(tmp_path: Path) -> None:
    repo = make_staged_repo(tmp_path / "repo", modalities=("ct",), per_cell=2)
    assert resolve_bench(repo).integrity == "decode check"
    shard = repo / "data" / "ct" / "anomaly" / "test-00000-of-00001.parquet"
    item = flip_png_byte(shard)
    with pytest.raises(ScoreError, match=rf"{shard}: item {item}, image 0: CRC mismatch"):
        resolve_bench(repo)
    with pytest.raises(ScoreError, match="CRC mismatch"):
        resolve_bench(shard)  # one Parquet file: decode-checked too


def test_png_problem_names_the_damage() -> None:
    import numpy as np

    from medscout_data.imaging import encode_png

    png = encode_png(np.arange(64 * 64, dtype=np.uint8).reshape(64, 64))
    assert png_problem(png) == ""
    assert png_problem(png[:-20]).endswith("(truncated)")
    assert png_problem(b"GIF89a") == "not PNG data"
    damaged = bytearray(png)
    damaged[40] ^= 1
    assert "CRC mismatch" in png_problem(bytes(damaged))
