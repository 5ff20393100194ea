"""Index ranks (one per GPU in a Slurm array), the merge, and the stage's hardening.

Ranks run as real processes of the CLI; their merged neighbours must equal a
single process's byte for byte. Also: a missing rank is named, a killed rank
resumes, locks keep a second writer out, read-only outputs and user files.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from buildsupport import descendants
from click.testing import CliRunner
from test_index import smooth_image, write_xray_catalogue, xray_images

from medscout_data.cli import cli
from medscout_data.layout import Layout
from medscout_data.locking import LockError
from medscout_data.ranks import Rank, RankError
from medscout_data.recipe import Recipe, load_recipe
from medscout_data.stages import embeddings
from medscout_data.stages.embeddings import PREPARE_THREADS, EmbeddingStore
from medscout_data.stages.index import IndexOptions, IndexStageError, embed_rank, index_catalogue
from medscout_data.stages.plan import SubjectPlan

CLI = [sys.executable, "-m", "medscout_data.cli"]
REPO = Path(__file__).resolve().parents[1]
BATCH = 4


def write_plan(layout: Layout, recipe: Recipe, subjects: list[str]) -> None:
    """Two subjects on the bench side, the rest on train."""
    plan = SubjectPlan("xray", recipe.seed, recipe.name, recipe.pool.bench_fraction, frozenset(subjects[:2]),
                       frozenset(subjects[2:]))  # fmt: skip
    layout.plan("xray").parent.mkdir(parents=True, exist_ok=True)
    layout.plan("xray").write_text(json.dumps(plan.to_dict()))


def many_images(subjects: int, per_subject: int, seed: int = 0) -> dict[str, tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {
        f"p{s:03d}-{n:02d}": (f"p{s:03d}", smooth_image(rng))
        for s in range(subjects)
        for n in range(per_subject)
    }


@pytest.fixture
def recipe(test_recipe: Path) -> Recipe:
    return load_recipe(test_recipe)


def prepare(root: Path, recipe: Recipe, images: dict | None = None) -> Layout:
    """A catalogue, its cache and a plan under `root`, as ingest and build would leave them."""
    layout = Layout.at(root)
    images = images or xray_images()
    write_xray_catalogue(layout, images)
    write_plan(layout, recipe, sorted({subject for subject, _ in images.values()}))
    return layout


def options(recipe: Recipe, **overrides) -> IndexOptions:
    return IndexOptions.from_recipe(recipe, device="cpu", batch_size=overrides.pop("batch_size", BATCH),
                                    **overrides)  # fmt: skip


def child_env(**extra: str) -> dict[str, str]:
    """This environment for a child process, with the package importable and no Slurm array."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_ARRAY_")}
    return {**env, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **extra}


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [*CLI, "index", *args], env=child_env(), capture_output=True, text=True, check=False
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def single_run(tmp_path: Path, recipe: Recipe, images: dict | None = None, **overrides) -> bytes:
    """The neighbours file of one uninterrupted process on a fresh copy of the inputs."""
    layout = prepare(tmp_path / "single", recipe, images)
    return index_catalogue(layout, recipe, "xray", options(recipe, **overrides)).read_bytes()


# ----------------------------------------------------------------------------- ranks equal one process


def test_three_rank_processes_then_merge_equal_one_process(tmp_path: Path, test_recipe: Path, recipe) -> None:
    layout = prepare(tmp_path / "ranks", recipe)
    common = ["--out", str(layout.root), "--recipe", str(test_recipe), "--device", "cpu", "--batch-size", "4"]
    # Ranks as a Slurm array sees them: the rank comes from the environment.
    arrays = [{"SLURM_ARRAY_TASK_ID": str(r), "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_COUNT": "3"}
              for r in (10, 11, 12)]  # fmt: skip
    command = [*CLI, "index", *common]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    ranks = [subprocess.Popen(command, env=child_env(**array), **pipes) for array in arrays]
    outputs = [process.communicate() for process in ranks]
    assert [process.returncode for process in ranks] == [0, 0, 0], [err for _, err in outputs]
    folder = layout.index_dir("xray", "pixels")
    markers = sorted(p.name for p in (folder / "_ranks").glob("*.json"))
    assert markers == [f"rank-0000{r}-of-00003.json" for r in range(3)]
    shares = [json.loads((folder / "_ranks" / m).read_text())["counts"]["embedded"] for m in markers]
    assert sum(shares) == len(xray_images()) and min(shares) > 0  # 21 images in blocks of 4: 8 + 8 + 5
    assert not (folder / "neighbours.parquet").exists()  # ranks only embed

    merged = run_cli("--merge", *common)
    assert "neighbours:" in merged.stdout
    assert (folder / "neighbours.parquet").read_bytes() == single_run(tmp_path, recipe)
    assert not (folder / "_ranks").exists()  # merged: the ranks' outputs are gone
    assert len(EmbeddingStore(folder / "embeddings", _identity(folder))) == len(xray_images())
    report = json.loads((folder / "report.json").read_text())
    assert report["counts"]["embeddings_from_ranks"] == len(xray_images()) and report["ranks"] == 3


def _identity(folder: Path) -> dict:
    return json.loads((folder / "embeddings" / "model.json").read_text())


def test_ranks_with_a_vision_tower_equal_one_process(tmp_path: Path, recipe) -> None:
    """A ViT's output for an image changes in its last bits with the batch around it (2e-7 on this
    CPU), so this holds only because each block of the catalogue is one batch whoever embeds it."""
    from test_index_openclip import write_model_dir

    spec = f"local-dir:{write_model_dir(tmp_path / 'model', seed=3)}"
    images = many_images(subjects=8, per_subject=5)
    layout = prepare(tmp_path / "ranks", recipe, images)
    for number in (2, 0, 1):
        embed_rank(layout, "xray", options(recipe, model=spec, batch_size=3), Rank(number, 3))
    merged = index_catalogue(layout, recipe, "xray", options(recipe, model=spec, batch_size=3), merge=True)
    assert merged.read_bytes() == single_run(tmp_path, recipe, images, model=spec, batch_size=3)


def test_build_path_merges_finished_ranks_by_itself(tmp_path: Path, recipe) -> None:
    layout = prepare(tmp_path / "ranks", recipe)
    for number in range(2):
        embed_rank(layout, "xray", options(recipe), Rank(number, 2))
    path = index_catalogue(layout, recipe, "xray", options(recipe))  # what build's ensure_neighbours calls
    assert path.read_bytes() == single_run(tmp_path, recipe)
    assert json.loads((path.parent / "index.json").read_text())["ranks"] == 2


# ----------------------------------------------------------------------------- missing and stale ranks


def test_a_missing_rank_is_named_by_merge_build_and_the_cli(
    tmp_path: Path, test_recipe: Path, recipe
) -> None:
    layout = prepare(tmp_path / "ranks", recipe)
    for number in (0, 2):
        embed_rank(layout, "xray", options(recipe), Rank(number, 3))
    for merge in (True, False):  # --merge, and the build path that finds rank outputs
        with pytest.raises(RankError, match=r"1 of 3 ranks have not finished \(rank 1\)") as caught:
            index_catalogue(layout, recipe, "xray", options(recipe), merge=merge)
        assert "--rank 1 --world-size 3" in str(caught.value)
    result = run_cli("--merge", "--out", str(layout.root), "--recipe", str(test_recipe), "--batch-size", "4",
                     check=False)  # fmt: skip
    assert result.returncode == 1
    assert "(rank 1)" in result.stderr and "Traceback" not in result.stderr
    assert not layout.index_dir("xray", "pixels").joinpath("neighbours.parquet").exists()


def test_ranks_of_other_work_do_not_count_and_the_difference_is_said(tmp_path: Path, recipe) -> None:
    layout = prepare(tmp_path / "ranks", recipe)
    for number in range(2):
        embed_rank(layout, "xray", options(recipe, batch_size=4), Rank(number, 2))
    with pytest.raises(RankError, match=r"no rank has embedded .* batch size 8"):
        index_catalogue(layout, recipe, "xray", options(recipe, batch_size=8), merge=True)
    with pytest.raises(RankError, match="batch_size 4 there, 8 here"):
        index_catalogue(layout, recipe, "xray", options(recipe, batch_size=8), merge=True, world_size=2)


def test_merge_without_any_rank_says_how_to_run_them(tmp_path: Path, recipe) -> None:
    layout = prepare(tmp_path / "ranks", recipe)
    with pytest.raises(RankError, match="--rank R --world-size N"):
        index_catalogue(layout, recipe, "xray", options(recipe), merge=True)


def test_rank_outputs_deleted_after_their_markers_are_reported(tmp_path: Path, recipe) -> None:
    layout = prepare(tmp_path / "ranks", recipe)
    for number in range(2):
        embed_rank(layout, "xray", options(recipe), Rank(number, 2))
    rank_dir = layout.index_dir("xray", "pixels") / "_ranks" / "rank-00001-of-00002"
    for part in rank_dir.glob("part-*.parquet"):
        part.unlink()
    with pytest.raises(RankError, match=r"of rank 1 have no embedding .* --rank 1 --world-size 2"):
        index_catalogue(layout, recipe, "xray", options(recipe), merge=True)


# ----------------------------------------------------------------------------- faults


class CrashingEmbedderStandIn:
    """Wraps the real embedder and fails on its `fail_at`-th batch: a run dying mid-way."""

    def __init__(self, real, fail_at: int) -> None:
        self.real, self.model, self.fail_at, self.calls = real, real.model, fail_at, 0

    def prepare(self, image: np.ndarray) -> np.ndarray:
        return self.real.prepare(image)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("stand-in crash")
        return self.real.embed(batch)


def test_a_rank_that_crashed_mid_way_resumes_to_the_same_neighbours_with_a_stand_in(
    tmp_path: Path, recipe, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medscout_data.stages import index as stage

    layout = prepare(tmp_path / "ranks", recipe, many_images(subjects=6, per_subject=5))
    real = stage.load_embedder
    monkeypatch.setattr(embeddings, "FLUSH_ROWS", 4)  # a part per batch, so the crash leaves some behind
    monkeypatch.setattr(stage, "load_embedder", lambda *a, **k: CrashingEmbedderStandIn(real(*a, **k), 3))
    with pytest.raises(RuntimeError, match="stand-in crash"):
        embed_rank(layout, "xray", options(recipe), Rank(0, 2))
    folder = layout.index_dir("xray", "pixels") / "_ranks"
    assert len(list((folder / "rank-00000-of-00002").glob("part-*.parquet"))) == 2
    assert not (folder / "rank-00000-of-00002.json").exists()  # no marker: not taken as finished
    monkeypatch.setattr(stage, "load_embedder", real)
    marker = json.loads(embed_rank(layout, "xray", options(recipe), Rank(0, 2)).read_text())
    assert marker["counts"]["embeddings_reused"] == 2 * BATCH
    embed_rank(layout, "xray", options(recipe), Rank(1, 2))
    merged = index_catalogue(layout, recipe, "xray", options(recipe), merge=True)
    assert merged.read_bytes() == single_run(tmp_path, recipe, many_images(subjects=6, per_subject=5))


def test_prepare_threads_end_when_embedding_fails(tmp_path: Path, recipe, monkeypatch) -> None:
    from medscout_data.stages import index as stage

    layout = prepare(tmp_path / "out", recipe, many_images(subjects=4, per_subject=10))
    real = stage.load_embedder
    monkeypatch.setattr(stage, "load_embedder", lambda *a, **k: CrashingEmbedderStandIn(real(*a, **k), 2))
    with pytest.raises(RuntimeError, match="stand-in crash"):
        index_catalogue(layout, recipe, "xray", options(recipe, workers=3, batch_size=2))
    assert [t.name for t in threading.enumerate() if t.name.startswith(PREPARE_THREADS)] == []


KILLED_RANK = """
import sys
from medscout_data.layout import Layout
from medscout_data.ranks import Rank
from medscout_data.recipe import load_recipe
from medscout_data.stages import embeddings
from medscout_data.stages.index import IndexOptions, embed_rank
embeddings.FLUSH_ROWS = 1
recipe = load_recipe(sys.argv[2])
options = IndexOptions.from_recipe(recipe, device="cpu", batch_size=1, workers=2)
embed_rank(Layout.at(sys.argv[1]), "xray", options, Rank(0, 2))
"""


def test_sigkill_of_a_rank_leaves_no_process_and_no_marker_and_a_rerun_completes(
    tmp_path: Path, test_recipe: Path, recipe
) -> None:
    images = many_images(subjects=40, per_subject=25)  # 1,000 images, one part per image: seconds of work
    layout = prepare(tmp_path / "ranks", recipe, images)
    rank_dir = layout.index_dir("xray", "pixels") / "_ranks" / "rank-00000-of-00002"
    command = [sys.executable, "-c", KILLED_RANK, str(layout.root), str(test_recipe)]
    process = subprocess.Popen(command, env=child_env(), stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(list(rank_dir.glob("part-*.parquet"))) < 5 and process.poll() is None:
        assert time.monotonic() < deadline, "the rank wrote no parts"
        time.sleep(0.02)
    assert process.poll() is None, "the rank finished before it could be killed"
    tree = descendants(process.pid)
    process.send_signal(signal.SIGKILL)
    process.wait()
    time.sleep(0.5)
    assert [pid for pid in tree if Path(f"/proc/{pid}").exists()] == []
    assert not (rank_dir.parent / "rank-00000-of-00002.json").exists()
    with pytest.raises(RankError, match=r"\(rank 0, 1\)"):
        index_catalogue(layout, recipe, "xray", options(recipe, batch_size=1), merge=True)
    for number in range(2):
        embed_rank(layout, "xray", options(recipe, batch_size=1), Rank(number, 2))
    merged = index_catalogue(layout, recipe, "xray", options(recipe, batch_size=1), merge=True)
    assert merged.read_bytes() == single_run(tmp_path, recipe, images, batch_size=1)


# ----------------------------------------------------------------------------- locks


HOLD_LOCK = """
import sys, time
from medscout_data.locking import stage_lock
with stage_lock(sys.argv[1], sys.argv[2], "the-holder"):
    print("held", flush=True)
    time.sleep(60)
"""


@contextlib.contextmanager
def lock_held_by_another_process(folder: Path, name: str):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder), name], env=child_env(),
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait()


def test_a_second_index_on_the_same_folder_fails_clearly(tmp_path: Path, recipe) -> None:
    layout = prepare(tmp_path / "out", recipe)
    folder = layout.index_dir("xray", "pixels")
    with lock_held_by_another_process(folder, "index"), pytest.raises(LockError, match="the-holder"):
        index_catalogue(layout, recipe, "xray", options(recipe))
    path = index_catalogue(layout, recipe, "xray", options(recipe))
    with lock_held_by_another_process(folder, "index"):  # current: reading needs no lock
        assert index_catalogue(layout, recipe, "xray", options(recipe)) == path


def test_a_rank_running_twice_and_a_merge_during_a_rank_are_refused(tmp_path: Path, recipe) -> None:
    layout = prepare(tmp_path / "out", recipe)
    folder = layout.index_dir("xray", "pixels")
    for number in range(2):
        embed_rank(layout, "xray", options(recipe), Rank(number, 2))
    with lock_held_by_another_process(folder, "index-rank-00001-of-00002"):
        with pytest.raises(LockError, match=r"`the-holder` .* is already writing"):
            embed_rank(layout, "xray", options(recipe), Rank(1, 2))
        with pytest.raises(LockError, match=r"`the-holder` .* is already writing"):
            index_catalogue(layout, recipe, "xray", options(recipe), merge=True)
    assert index_catalogue(layout, recipe, "xray", options(recipe), merge=True).read_bytes() == single_run(
        tmp_path, recipe
    )


# ----------------------------------------------------------------------------- read-only folders


@contextlib.contextmanager
def read_only(folder: Path):
    """`folder` really read-only: a read-only bind mount as root (who ignores modes), else chmod."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")] if p.is_dir()}
        for path in modes:
            path.chmod(0o555)
        try:
            yield
        finally:
            for path, mode in modes.items():
                path.chmod(mode)
        return
    mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.fail(f"cannot make {folder} read-only here: {mounted.stderr.decode()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_output_is_a_clear_error_and_current_outputs_still_read(
    tmp_path: Path, test_recipe: Path, recipe
) -> None:
    layout = prepare(tmp_path / "out", recipe)
    with read_only(layout.root):
        with pytest.raises((IndexStageError, LockError), match="cannot write here"):
            index_catalogue(layout, recipe, "xray", options(recipe))
        with pytest.raises((IndexStageError, LockError), match="cannot write here"):
            embed_rank(layout, "xray", options(recipe), Rank(0, 2))
        args = ["--rank", "0", "--world-size", "2", "--out", str(layout.root), "--recipe", str(test_recipe)]
        result = CliRunner().invoke(cli, ["index", *args])
        assert result.exit_code == 1 and "cannot write here" in result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    path = index_catalogue(layout, recipe, "xray", options(recipe))
    expected = path.read_bytes()
    with read_only(layout.root):
        assert index_catalogue(layout, recipe, "xray", options(recipe)).read_bytes() == expected


# ----------------------------------------------------------------------------- only our files are removed


def test_a_store_of_other_weights_removes_only_its_own_parts(tmp_path: Path) -> None:
    folder = tmp_path / "embeddings"
    old = {"model": "m", "weights": "a", "dim": 2, "preprocess": {}}
    EmbeddingStore(folder, old).append(["x"], ["k"], np.eye(1, 2, dtype=np.float32))
    (folder / "notes.txt").write_text("mine")
    shutil.copy(folder / "part-00000.parquet", tmp_path / "copy.parquet")
    _write_foreign_part(folder / "part-00007.parquet")

    store = EmbeddingStore(folder, {**old, "weights": "b"})
    assert len(store) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "notes.txt", "part-00007.parquet"]
    store.append(["y"], ["k"], np.eye(1, 2, dtype=np.float32))
    assert (folder / "part-00008.parquet").exists()  # numbered past the user's file, never over it
    assert len(EmbeddingStore(folder, {**old, "weights": "b"})) == 1  # the user's part is not read


def _write_foreign_part(path: Path) -> None:
    """A user's Parquet file named like a part, with a plausible schema but not written by us."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    vectors = pa.FixedSizeListArray.from_arrays(pa.array([9.0, 9.0], pa.float32()), 2)
    pq.write_table(pa.table({"image_id": ["x"], "row_key": ["k"], "vector": vectors}), path)


def test_the_merge_removes_only_what_the_ranks_wrote(tmp_path: Path, recipe) -> None:
    layout = prepare(tmp_path / "out", recipe)
    for number in range(2):
        embed_rank(layout, "xray", options(recipe), Rank(number, 2))
    ranks = layout.index_dir("xray", "pixels") / "_ranks"
    (ranks / "rank-00001-of-00002" / "notes.txt").write_text("mine")
    (ranks / "rank-00000-of-00005.json").write_text('{"digest": "other run"}')
    index_catalogue(layout, recipe, "xray", options(recipe), merge=True)
    left = sorted(str(p.relative_to(ranks)) for p in ranks.rglob("*"))
    assert left == ["rank-00000-of-00005.json", "rank-00001-of-00002", "rank-00001-of-00002/notes.txt"]


def test_cli_help_lists_the_rank_options() -> None:
    result = CliRunner().invoke(cli, ["index", "--help"])
    assert result.exit_code == 0
    for option in ("--rank", "--world-size", "--merge", "SLURM_ARRAY_TASK_ID", "index.sbatch"):
        assert option in result.output


def test_merge_with_a_rank_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["index", "--merge", "--rank", "1"])
    assert result.exit_code == 2 and "--merge takes no --rank" in result.output


def test_a_grown_catalogue_reuses_merged_embeddings_in_later_ranks(tmp_path: Path, recipe) -> None:
    layout = prepare(tmp_path / "out", recipe)
    index_catalogue(layout, recipe, "xray", options(recipe))
    rng = np.random.default_rng(4)
    grown = {**xray_images(), "s5-new": ("s5", smooth_image(rng)), "s6-new": ("s6", smooth_image(rng))}
    write_xray_catalogue(layout, grown, name="c1")
    counts = [json.loads(embed_rank(layout, "xray", options(recipe), Rank(n, 2)).read_text())["counts"]
              for n in range(2)]  # fmt: skip
    assert sum(c.get("embedded", 0) for c in counts) == 2
    assert sum(c["embeddings_reused"] for c in counts) == len(xray_images())


# ----------------------------------------------------------------------------- the Slurm example


def fake_slurm(bin_dir: Path) -> Path:
    """`sbatch` that logs its arguments and answers a job id, `srun` that runs its command here."""
    bin_dir.mkdir()
    log = bin_dir / "sbatch.log"
    (bin_dir / "sbatch").write_text(f'#!/bin/bash\necho "$@" >> {log}\necho 4242\n')
    (bin_dir / "srun").write_text('#!/bin/bash\nexec "$@"\n')
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    return log


def test_the_slurm_example_submits_ranks_then_merge_and_runs_both(
    tmp_path: Path, test_recipe: Path, recipe
) -> None:
    script = REPO / "examples" / "slurm" / "index.sbatch"
    log = fake_slurm(tmp_path / "bin")
    layout = prepare(tmp_path / "out", recipe)
    settings = {"OUT": str(layout.root), "RECIPE": str(test_recipe), "RANKS": "2", "DEVICE": "cpu"}
    env = child_env(**settings, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}", MEDSCOUT=" ".join(CLI))
    env.pop("SLURM_JOB_ID", None)
    submitted = subprocess.run(["bash", str(script)], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert submitted.returncode == 0, submitted.stderr
    ranks, merge = log.read_text().splitlines()
    assert "--array=0-1" in ranks and ranks.endswith(f"{script} rank")
    assert "--dependency=afterany:4242" in merge and merge.endswith(f"{script} merge")

    def task(mode: str, **array: str) -> subprocess.CompletedProcess:
        task_env = {**env, "SLURM_JOB_ID": "4242", "SLURM_CPUS_PER_TASK": "2", **array}
        return subprocess.run(["bash", str(script), mode], env=task_env, capture_output=True, text=True)

    first = task("rank", SLURM_ARRAY_TASK_ID="0", SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_COUNT="2")
    assert first.returncode == 0, first.stderr
    early = task("merge")  # afterany: the merge runs even though rank 1 failed or never ran
    assert early.returncode == 1 and "(rank 1)" in early.stderr
    second = task("rank", SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_COUNT="2")
    assert second.returncode == 0, second.stderr
    merged = task("merge")
    assert merged.returncode == 0, merged.stderr
    path = layout.index_dir("xray", "pixels") / "neighbours.parquet"
    assert path.read_bytes() == single_run(tmp_path, recipe, batch_size=recipe.index.batch_size)
