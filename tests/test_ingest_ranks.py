"""Ingest by ranks (a Slurm array): three ranks as local processes, then a merge, equal one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_ingest_run import digests, recipe_with

from medscout_data.cli import cli
from medscout_data.layout import Layout
from medscout_data.ranks import Rank, RankError
from medscout_data.sources import ensure_catalogue, merge_ranks, run_ingest

REPO = Path(__file__).resolve().parent.parent
RECIPE = """
name = "ranks"
seed = 1
[pool]
items_per_cell = 10
bench_per_cell = 2
[ingest]
min_body_fraction = 0.1
max_size = 256
xray_chunk_images = 4
"""


def outputs(out: Path) -> dict[str, str]:
    """Every file of the catalogue and cache, except reports, locks and rank markers."""
    files = digests(out / "catalogue") | {f"cache/{k}": v for k, v in digests(out / "cache").items()}
    return {k: v for k, v in files.items() if "_ranks/" not in k}


def rank_command(root: Path, out: Path, recipe: Path, rank: int, world: int, modality: str) -> list[str]:
    args = [sys.executable, "-m", "medscout_data.cli", "ingest", "--modality", modality, "--quiet"]
    args += ["--root", str(root), "--out", str(out), "--recipe", str(recipe)]
    return [*args, "--rank", str(rank), "--world-size", str(world)]


@pytest.mark.parametrize("modality,source", [("ct", "totalseg-ct"), ("xray", "mimic-cxr-jpg")])
def test_three_ranks_as_processes_then_merge_equal_one_process(sample_sources, tmp_path, modality, source):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE)
    root = sample_sources[source]
    args = ["ingest", "--modality", modality, "--root", str(root), "--recipe", str(recipe), "--quiet"]
    single = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "one")])
    assert single.exit_code == 0, single.output
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"):
        env.pop(name, None)
    out = tmp_path / "ranked"
    ranks = [
        subprocess.Popen(
            rank_command(root, out, recipe, r, 3, modality), env=env, stderr=subprocess.PIPE, text=True
        )
        for r in range(3)
    ]
    for process in ranks:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    assert not Layout.at(out).catalogue(modality).exists(), "ranks write parts, not the catalogue"
    merged = CliRunner().invoke(cli, [*args, "--out", str(out), "--merge"])
    assert merged.exit_code == 0, merged.output
    assert outputs(out) == outputs(tmp_path / "one")
    assert any(name.endswith(".stack") for name in outputs(out))


def test_a_missing_rank_is_named_and_merge_waits_for_it(sample_sources, tmp_path: Path) -> None:
    layout, recipe, root = Layout.at(tmp_path / "out"), recipe_with(), sample_sources["totalseg-ct"]
    for number in (0, 2):
        report = run_ingest(layout, recipe, "ct", root, rank=Rank(number, 3), progress=False)
        assert report.counts["units_run"] == 2  # 6 subjects, every third one
    with pytest.raises(
        RankError, match=r"1 of 3 ranks have not finished \(rank 1\).*--rank 1 --world-size 3"
    ):
        merge_ranks(layout, recipe, "ct", root, progress=False)
    with pytest.raises(RankError, match=r"rank 1"):
        ensure_catalogue(layout, recipe, "ct", root)  # build's entry point: merges, never re-ingests
    recipe_file = tmp_path / "recipe.toml"
    recipe_file.write_text(RECIPE)  # the same [ingest] settings as recipe_with()
    args = ["ingest", "--modality", "ct", "--root", str(root), "--merge", "--recipe", str(recipe_file)]
    result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "rank 1" in result.output and "Traceback" not in result.output
    run_ingest(layout, recipe, "ct", root, rank=Rank(1, 3), progress=False)
    path = ensure_catalogue(layout, recipe, "ct", root)
    assert path == layout.catalogue("ct") and path.is_file()
    single = tmp_path / "single"
    run_ingest(Layout.at(single), recipe, "ct", root, progress=False)
    assert outputs(tmp_path / "out") == outputs(single)


def test_ranks_default_from_the_slurm_array(sample_sources, tmp_path: Path) -> None:
    env = {"SLURM_ARRAY_TASK_ID": "11", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_COUNT": "2"}
    assert Rank.resolve(env=env) == Rank(1, 2)
    args = ["ingest", "--modality", "ct", "--root", str(sample_sources["totalseg-ct"]), "--quiet"]
    result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path)], env=env)
    assert result.exit_code == 0, result.output
    assert "rank 1 of 2" in result.output and "--merge" in result.output
    assert (tmp_path / "catalogue" / "ct" / "_ranks" / "rank-00001-of-00002.json").is_file()


def test_the_slurm_example_runs_an_array_then_its_merge(sample_sources, tmp_path: Path) -> None:
    """examples/slurm/ingest.sbatch as Slurm would run it: two array tasks, then the merge step."""
    script = REPO / "examples" / "slurm" / "ingest.sbatch"
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    env |= {"MODALITY": "ct", "ROOT": str(sample_sources["totalseg-ct"]), "OUT": str(tmp_path / "out")}
    env |= {"RECIPE": str(recipe), "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "0"}
    for task in ("0", "1"):
        done = subprocess.run(
            ["bash", str(script), "rank"], env={**env, "SLURM_ARRAY_TASK_ID": task}, capture_output=True
        )
        assert done.returncode == 0, done.stderr
    # the merge job may carry the array's variables (submitted from inside a task): still one process
    merge_env = env | {"SLURM_ARRAY_TASK_ID": "1", "SLURM_JOB_ID": "7"}
    done = subprocess.run(["bash", str(script), "merge"], env=merge_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "catalogue:" in done.stdout and Layout.at(tmp_path / "out").catalogue("ct").is_file()
