"""Build on a cluster and under faults: ranks, merge, locks, orphans, the user's files, the PNG encoder."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from buildsupport import descendants
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from medscout_data.imaging import encode_png
from medscout_data.layout import Layout
from medscout_data.locking import stage_lock
from medscout_data.ranks import Rank, RankError
from medscout_data.recipe import PngConfig
from medscout_data.stages.pool import listed_shards, pool_problems, read_pool_record


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "medscout_data.cli", *args]


def _digests(root: Path, modality: str) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in listed_shards(Layout.at(root), modality)
    }


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory, test_recipe: Path, sample_sources) -> Path:
    """An output root with the CT catalogue and cache only (ranked builds need ingest done first)."""
    root = tmp_path_factory.mktemp("ingested")
    args = _cli("ingest", "--modality", "ct", "--root", str(sample_sources["totalseg-ct"]))
    subprocess.run([*args, "--recipe", str(test_recipe), "--out", str(root)], check=True, capture_output=True)
    return root


def _copy(ingested: Path, tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    for folder in ("catalogue", "cache"):
        shutil.copytree(ingested / folder, root / folder)
    return root


def _build_args(root: Path, recipe: Path, source: Path, *extra: str) -> list[str]:
    return _cli(
        "build",
        "--modality",
        "ct",
        "--root",
        str(source),
        "--recipe",
        str(recipe),
        "--out",
        str(root),
        "--quiet",
        *extra,
    )


def test_three_ranks_as_processes_equal_one_process(
    ingested: Path, tmp_path: Path, test_recipe: Path, sample_sources
) -> None:
    source = sample_sources["totalseg-ct"]
    single = _copy(ingested, tmp_path, "single")
    subprocess.run(_build_args(single, test_recipe, source), check=True, capture_output=True)
    ranked = _copy(ingested, tmp_path, "ranked")
    ranks = [
        subprocess.Popen(
            _build_args(ranked, test_recipe, source),
            env={
                **os.environ,
                "SLURM_ARRAY_TASK_ID": str(r + 1),
                "SLURM_ARRAY_TASK_MIN": "1",
                "SLURM_ARRAY_TASK_COUNT": "3",
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(3)
    ]
    for process in ranks:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        assert "rank done" in out
    assert not read_pool_record(Layout.at(ranked), "ct")["complete"]
    assert pool_problems(Layout.at(ranked), "ct"), "before the merge the pool is not whole"
    merged = subprocess.run(
        _build_args(ranked, test_recipe, source, "--merge"), capture_output=True, text=True
    )
    assert merged.returncode == 0, merged.stderr
    assert "shards written 0" in merged.stdout  # every shard came from a rank
    assert _digests(ranked, "ct") == _digests(single, "ct")
    assert not pool_problems(Layout.at(ranked), "ct")


def test_a_missing_rank_is_named_by_the_merge(
    ingested: Path, tmp_path: Path, test_recipe: Path, sample_sources
) -> None:
    source = sample_sources["totalseg-ct"]
    root = _copy(ingested, tmp_path, "missing")
    for rank in (0, 2):
        args = _build_args(root, test_recipe, source, "--rank", str(rank), "--world-size", "3")
        subprocess.run(args, check=True, capture_output=True)
    merged = subprocess.run(_build_args(root, test_recipe, source, "--merge"), capture_output=True, text=True)
    assert merged.returncode == 1
    assert "rank(s) 1 of 3 have not finished" in merged.stderr
    assert "--rank 1 --world-size 3" in merged.stderr
    assert "Traceback" not in merged.stderr


def test_rank_settings_from_slurm_and_their_errors() -> None:
    env = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "4", "SLURM_ARRAY_TASK_COUNT": "5"}
    assert Rank.resolve(env=env) == Rank(3, 5)
    assert Rank.resolve(1, 2, env=env) == Rank(1, 2)
    assert Rank.resolve(env={}) == Rank(0, 1)
    assert Rank(2, 5).share(list(range(12))) == [2, 7]
    with pytest.raises(RankError, match="need 0 <= rank < world size"):
        Rank.resolve(5, 5, env={})
    with pytest.raises(RankError, match="both --rank and --world-size"):
        Rank.resolve(1, None, env={})


@pytest.mark.parametrize(
    ("task_id", "count"), [("0", "0"), ("3", "0"), ("0", "1000000000000"), ("0", "100000")]
)
def test_an_empty_or_absurd_slurm_array_is_refused_in_one_line(task_id: str, count: str) -> None:
    """A count of 0 was read as one process (the whole job in every task); a count in the trillions was
    accepted, left a marker, and the merge then checked a marker per rank for ever."""
    env = {"SLURM_ARRAY_TASK_ID": task_id, "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": count}
    with pytest.raises(RankError, match=r"SLURM_ARRAY_TASK_COUNT of this Slurm job array: .*<= 99,999"):
        Rank.resolve(env=env)
    with pytest.raises(RankError, match="world size <= 99,999"):
        Rank.resolve(0, int(count) or 10**12, env={})


def test_an_absurd_world_size_leaves_no_marker_and_the_merge_returns(
    ingested: Path, tmp_path: Path, test_recipe: Path, sample_sources
) -> None:
    root = _copy(ingested, tmp_path, "absurd")
    source = sample_sources["totalseg-ct"]
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_MIN": "0"}
    for count in ("0", "1000000000000"):
        done = subprocess.run(
            _build_args(root, test_recipe, source),
            env=env | {"SLURM_ARRAY_TASK_COUNT": count},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 1 and "SLURM_ARRAY_TASK_COUNT" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not list(root.rglob("_ranks/*.json")) and not list((root / "pool").rglob("*.parquet"))
    merged = subprocess.run(
        _build_args(root, test_recipe, source, "--merge"), capture_output=True, text=True, timeout=120
    )
    assert merged.returncode == 1 and "no ranked build to merge" in merged.stderr, merged.stderr


def test_the_merge_ignores_the_array_variables_it_inherits(
    ingested: Path, tmp_path: Path, test_recipe: Path, sample_sources
) -> None:
    """A merge submitted from inside array task 0 carries its SLURM_ARRAY_* variables; they are not
    its --rank / --world-size (it stopped with "--merge runs once, after the ranks")."""
    source = sample_sources["totalseg-ct"]
    root = _copy(ingested, tmp_path, "inherit")
    array = {"SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "2"}
    for rank in ("0", "1"):
        env = {**os.environ, **array, "SLURM_ARRAY_TASK_ID": rank}
        subprocess.run(_build_args(root, test_recipe, source), env=env, check=True, capture_output=True)
    env = {**os.environ, **array, "SLURM_ARRAY_TASK_ID": "0"}
    merged = subprocess.run(
        _build_args(root, test_recipe, source, "--merge"), env=env, capture_output=True, text=True
    )
    assert merged.returncode == 0, merged.stderr
    assert read_pool_record(Layout.at(root), "ct")["complete"]
    given = subprocess.run(
        _build_args(root, test_recipe, source, "--merge", "--world-size", "2"), capture_output=True, text=True
    )
    assert given.returncode == 2 and "give it no --rank / --world-size" in given.stderr


def test_a_second_build_on_the_same_folder_fails_clearly(
    ingested: Path, tmp_path: Path, test_recipe: Path, sample_sources
) -> None:
    root = _copy(ingested, tmp_path, "locked")
    with stage_lock(Layout.at(root).pool_dir("ct"), "build", "medscout-data build --modality ct (test)"):
        result = subprocess.run(
            _build_args(root, test_recipe, sample_sources["totalseg-ct"]), capture_output=True, text=True
        )
    assert result.returncode == 1
    assert (
        "medscout-data build --modality ct (test)" in result.stderr
        and "already writing here" in result.stderr
    )
    assert "Traceback" not in result.stderr
    assert not list((root / "pool" / "ct").glob("*.parquet"))


def test_workers_die_with_a_killed_build(
    ingested: Path, tmp_path: Path, test_recipe: Path, sample_sources
) -> None:
    root = _copy(ingested, tmp_path, "orphans")
    process = subprocess.Popen(
        _build_args(root, test_recipe, sample_sources["totalseg-ct"], "--workers", "2"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    workers: list[int] = []
    while len(workers) < 2 and time.monotonic() < deadline and process.poll() is None:
        workers = descendants(process.pid)
        time.sleep(0.01)
    assert len(workers) >= 2, "the build must have started its workers"
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
        time.sleep(0.1)
    alive = [pid for pid in workers if Path(f"/proc/{pid}").exists() and _state(pid) != "Z"]
    assert not alive, f"workers outlived their parent: {alive}"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except (OSError, IndexError):
        return "X"


def test_build_deletes_only_its_own_shards(
    ingested: Path, tmp_path: Path, test_recipe: Path, sample_sources
) -> None:
    root = _copy(ingested, tmp_path, "userfiles")
    folder = root / "pool" / "ct"
    folder.mkdir(parents=True)
    mine = {
        "scale-99999.parquet": b"a user's file that happens to look like a shard",
        "notes.txt": b"keep me",
        "jigsaw-00000.parquet.bak": b"a backup",
    }
    for name, data in mine.items():
        (folder / name).write_bytes(data)
    source = sample_sources["totalseg-ct"]
    subprocess.run(_build_args(root, test_recipe, source, "--task", "jigsaw", "--limit", "20"), check=True)
    assert len(listed_shards(Layout.at(root), "ct", "jigsaw")) == 3
    subprocess.run(_build_args(root, test_recipe, source, "--task", "jigsaw", "--limit", "6"), check=True)
    assert [p.name for p in listed_shards(Layout.at(root), "ct")] == ["jigsaw-00000.parquet"]
    assert not (folder / "jigsaw-00002.parquet").exists(), "the earlier plan's own shards go"
    for name, data in mine.items():
        assert (folder / name).read_bytes() == data, name


def test_a_killed_build_leaves_a_pool_record_that_says_so(
    ingested: Path, tmp_path: Path, test_recipe: Path, sample_sources
) -> None:
    root = _copy(ingested, tmp_path, "killed")
    process = subprocess.Popen(
        _build_args(root, test_recipe, sample_sources["totalseg-ct"]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not list((root / "pool" / "ct").glob("*-0*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    problems = pool_problems(Layout.at(root), "ct")
    assert problems and "has not finished" in problems[0]
    assert "medscout-data build --modality ct" in problems[0] and "--recipe" in problems[0]


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.uint8, st.tuples(st.integers(1, 70), st.integers(1, 70))),
    st.sampled_from(["sub", "up", "none"]),
    st.integers(0, 3),
)
def test_png_decodes_bit_exactly_in_pillow_and_opencv(image: np.ndarray, kind: str, level: int) -> None:
    data = encode_png(image, PngConfig(compression=level, filter=kind))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), image)
    assert np.array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), image)


def test_png_decodes_bit_exactly_in_datasets(tmp_path: Path) -> None:
    import datasets

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w), dtype=np.uint8) for h, w in ((512, 512), (3, 900), (224, 160))]
    features = datasets.Features({"image": datasets.Image()})
    table = datasets.Dataset.from_dict(
        {"image": [{"bytes": encode_png(a), "path": None} for a in images]}, features
    )
    table.to_parquet(str(tmp_path / "png.parquet"))
    loaded = datasets.load_dataset("parquet", data_files=str(tmp_path / "png.parquet"), split="train")
    for row, image in zip(loaded, images, strict=True):
        assert row["image"].mode == "L" and np.array_equal(np.asarray(row["image"]), image)
