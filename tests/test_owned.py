"""Only files medscout-data wrote are replaced or deleted, never through a link, never inside a
shards root's managed folders (owned.py), for every command that writes where the user points it;
a re-export replaces its own earlier export whole (no MIMIC-derived image left in a CT-only folder);
push-bench's --stage-dir and --revision are checked; a symlink loop in a source tree is skipped."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from benchfixture import make_shards
from chatserver import BenchResponder, ChatServer, bench_rows
from click.testing import CliRunner

from medscout_data.cli import cli
from medscout_data.hub.refs import branch_problem
from medscout_data.layout import Layout
from medscout_data.locking import LockError, stage_lock
from medscout_data.owned import JOURNAL, RECORD, OwnedFolder, OwnershipError, owned_file
from medscout_data.report import RunReport
from medscout_data.shards import sha256_file, write_bytes_atomic

KEY = "sk-local-owned-test-1234"
MODEL = "test-vlm"
USER_TEXT = "the user's own file\nlast line without a newline"


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shards(
        tmp_path_factory.mktemp("shards"), modalities=("ct", "xray"), per_cell=2, train_per_cell=2
    )


def user_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(USER_TEXT, encoding="utf-8")
    return path


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [*args])
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def one_line_error(output: str, *needles: str) -> None:
    """The CLI's error: one line (`Error: ...`) naming each needle."""
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    for needle in needles:
        assert needle in errors[0], output


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ------------------------------------------------------------------ the folder rules (unit)


def test_a_foreign_file_is_refused_and_force_deletes_it_saying_so(tmp_path: Path, caplog) -> None:
    out = tmp_path / "out"
    mine = user_file(out / "a.txt")
    refused = pytest.raises(OwnershipError, match=r"a\.txt: a file medscout-data did not write.*--force")
    with refused, OwnedFolder(out, "w") as folder:
        folder.claim("a.txt")
    assert mine.read_text() == USER_TEXT
    with caplog.at_level(logging.WARNING), OwnedFolder(out, "w", force=True) as folder:
        write_bytes_atomic(b"ours", folder.claim("a.txt"))
    assert folder.removed == [out / "a.txt"] and "--force: deleted" in caplog.text and "a.txt" in caplog.text
    with OwnedFolder(out, "w") as folder:  # ours now: replaced without a word
        write_bytes_atomic(b"ours again", folder.claim("a.txt"))
    assert mine.read_bytes() == b"ours again"


def test_no_write_goes_through_a_link(tmp_path: Path) -> None:
    target = user_file(tmp_path / "elsewhere" / "notes.txt")
    out = tmp_path / "out"
    out.mkdir()
    (out / "plugin.py").symlink_to(target)
    (out / "images").symlink_to(target.parent, target_is_directory=True)
    for name in ("plugin.py", "images/x.png"):
        with pytest.raises(OwnershipError, match="symlink"), OwnedFolder(out, "w") as folder:
            folder.claim(name)
    with OwnedFolder(out, "w", force=True) as folder:
        write_bytes_atomic(b"png", folder.claim("images/x.png"))
        write_bytes_atomic(b"py", folder.claim("plugin.py"))
    assert target.read_text() == USER_TEXT and sorted(os.listdir(target.parent)) == ["notes.txt"]
    assert not (out / "images").is_symlink() and (out / "images" / "x.png").read_bytes() == b"png"


def test_a_planted_link_at_a_temporary_name_or_lock_is_never_followed(tmp_path: Path) -> None:
    target = user_file(tmp_path / "mine.txt")
    path = tmp_path / "out.json"
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    tmp.symlink_to(target)
    with pytest.raises(OSError):
        write_bytes_atomic(b"data", path)
    report = tmp_path / "report" / "errors.parquet"
    report.parent.mkdir()
    report.with_name("errors.parquet.tmp").symlink_to(target)
    with pytest.raises(OSError):
        RunReport("test").write(report.parent)
    (tmp_path / ".lock-x").symlink_to(target)
    with pytest.raises(LockError), stage_lock(tmp_path, "x", "test"):
        pass
    assert target.read_text() == USER_TEXT


def test_a_rerun_replaces_its_own_output_whole_and_keeps_other_writers(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with OwnedFolder(out, "a") as folder:
        for name in ("x/1.png", "x/2.png", "shared.txt"):
            write_bytes_atomic(b"a", folder.claim(name))
    with OwnedFolder(out, "b") as folder:
        write_bytes_atomic(b"b", folder.claim("shared.txt"))
        write_bytes_atomic(b"b", folder.claim("b.txt"))
    user_file(out / "x" / "mine.txt")
    with OwnedFolder(out, "a") as folder:
        write_bytes_atomic(b"a", folder.claim("x/1.png"))
    assert sorted(tree(out)) == sorted([RECORD, "b.txt", "shared.txt", "x/1.png", "x/mine.txt"])
    record = json.loads((out / RECORD).read_text())["writers"]
    assert record == {"a": ["x/1.png"], "b": ["b.txt", "shared.txt"]}


def test_a_killed_run_leaves_its_files_known_as_ours(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt), OwnedFolder(out, "a") as folder:
        write_bytes_atomic(b"half", folder.claim("img/1.png"))
        raise KeyboardInterrupt  # no commit: only the journal says img/1.png is ours
    assert (out / JOURNAL).exists() and not (out / RECORD).exists()
    with OwnedFolder(out, "a") as folder:  # not refused as foreign; not written again: pruned
        write_bytes_atomic(b"whole", folder.claim("img/2.png"))
    assert sorted(tree(out)) == [RECORD, "img/2.png"]


def test_a_forged_record_cannot_make_anything_outside_the_folder_ours(tmp_path: Path) -> None:
    victim = user_file(tmp_path / "victim.txt")
    out = tmp_path / "out"
    out.mkdir()
    forged = {"writers": {"a": ["../victim.txt", str(victim), "ok.txt"]}}
    (out / RECORD).write_text(json.dumps(forged))
    with OwnedFolder(out, "a"):
        pass  # prunes what "a" wrote last time
    assert victim.read_text() == USER_TEXT


def test_outputs_inside_a_shards_roots_managed_folders_are_refused(shards: Path, tmp_path: Path) -> None:
    for target in ("manifest.json", "bench/x.json", "train/ct/x.json", "pool/x.json", "stage/x.json"):
        refused = pytest.raises(OwnershipError, match="the pipeline writes and checks")
        with refused, owned_file(shards / target, "test"):
            pass
    with pytest.raises(OwnershipError, match="is a shards root"), OwnedFolder(shards, "test"):
        pass
    with owned_file(shards / "scores.json", "test") as path:  # beside the split is fine
        write_bytes_atomic(b"{}", path)
    path.unlink()
    (shards / RECORD).unlink()


# ------------------------------------------------------------------ every command


def test_export_and_preview_never_replace_a_users_file(shards: Path, tmp_path: Path) -> None:
    cases = {
        "swift": (["--format", "swift", "--split", "train"], "plugin.py"),
        "jsonl": (["--format", "jsonl", "--split", "bench"], "bench-direct-generic.jsonl"),
        "lmms-eval": (["--format", "lmms-eval"], "utils.py"),
        "vlmeval": (["--format", "vlmeval"], "MedScoutBench.tsv"),
        "preview": ([], "index.html"),
    }
    for name, (args, victim) in cases.items():
        out = tmp_path / name
        mine = user_file(out / victim)
        command = "preview" if name == "preview" else "export"
        base = [command, *args, "--shards", str(shards), "--out", str(out), "--quiet"]
        code, output = invoke(*base)
        assert code != 0, name
        one_line_error(output, str(mine), "did not write", "--force")
        assert mine.read_text() == USER_TEXT, name
        code, output = invoke(*base, "--force")
        assert code == 0, output
        assert mine.read_text() != USER_TEXT, name


def test_export_refuses_a_link_in_place_of_an_image_folder(shards: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "my-pictures"
    elsewhere.mkdir()
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "images" / "ct").symlink_to(elsewhere, target_is_directory=True)
    code, output = invoke("export", "--split", "bench", "--shards", str(shards), "--out", str(out), "--quiet")
    assert code != 0
    one_line_error(output, "images/ct", "symlink")
    assert list(elsewhere.iterdir()) == []
    assert not (out / "bench-direct-swift.jsonl").exists()


def test_a_ct_only_reexport_leaves_no_mimic_image(shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "swift"
    base = [
        "export",
        "--format",
        "swift",
        "--split",
        "bench",
        "--shards",
        str(shards),
        "--out",
        str(out),
        "--quiet",
    ]
    invoke(*base)
    assert list((out / "images" / "xray").rglob("*.png"))
    code, output = invoke(*base, "--modality", "ct")
    assert code == 0, output
    assert not (out / "images" / "xray").exists()
    pngs = {p.relative_to(out).as_posix() for p in (out / "images").rglob("*.png")}
    listed = {
        p
        for line in (out / "bench-direct-swift.jsonl").read_text().splitlines()
        for p in json.loads(line)["images"]
    }
    assert pngs == listed and all(p.startswith("images/ct/") for p in pngs)
    preview = tmp_path / "preview"
    invoke("preview", "--shards", str(shards), "--out", str(preview), "--per-cell", "1", "--quiet")
    assert any("xray" in p.name for p in (preview / "sheets").iterdir())
    invoke(
        "preview",
        "--shards",
        str(shards),
        "--out",
        str(preview),
        "--per-cell",
        "1",
        "--modality",
        "ct",
        "--quiet",
    )
    assert all(p.name.startswith("ct-") for p in (preview / "sheets").iterdir())


def test_another_exports_xray_images_in_the_folder_are_named(shards: Path, tmp_path: Path, caplog) -> None:
    from medscout_data.integrations.export import ExportOptions, export_split

    out = tmp_path / "mixed"
    export_split(Layout.at(shards), out, ExportOptions(split="train", progress=False))
    with caplog.at_level(logging.WARNING):
        export_split(Layout.at(shards), out, ExportOptions(split="bench", modalities=("ct",), progress=False))
    assert "X-ray (MIMIC-CXR-derived) images of other exports: export train-direct-swift" in caplog.text


def test_score_baseline_and_audit_never_touch_the_split_or_a_users_file(shards: Path, tmp_path: Path) -> None:
    manifest = sha256_file(shards / "manifest.json")
    before = tree(shards / "bench")
    predictions = tmp_path / "random.jsonl"
    code, output = invoke(
        "baseline", "--name", "random", "--bench", str(shards), "--out", str(predictions), "--quiet"
    )
    assert code == 0, output
    score = ["score", "--predictions", str(predictions), "--bench", str(shards), "--quiet"]
    refused = [
        ["baseline", "--name", "random", "--bench", str(shards), "--out", str(shards / "manifest.json")],
        ["baseline", "--name", "random", "--bench", str(shards), "--out", str(shards / "bench" / "b.jsonl")],
        [*score, "--json", str(shards / "manifest.json")],
        [*score, "--plot", str(shards / "bench" / "ct" / "cells.png")],
        ["audit", "--bench", str(shards), "--json", str(shards / "bench" / "audit.json"), "--quiet"],
    ]
    for args in refused:
        code, output = invoke(*args)
        assert code != 0, args
        one_line_error(output, "the pipeline writes and checks")
    assert sha256_file(shards / "manifest.json") == manifest and tree(shards / "bench") == before
    mine = user_file(tmp_path / "figures.json")
    code, output = invoke(*score, "--json", str(mine))
    assert code != 0 and mine.read_text() == USER_TEXT
    one_line_error(output, str(mine), "--force")
    code, output = invoke(*score, "--json", str(mine), "--force")
    assert code == 0 and "overall" in json.loads(mine.read_text())
    code, output = invoke(*score, "--json", str(mine))  # ours now: rewritten
    assert code == 0, output


def test_evaluate_never_cuts_or_appends_to_a_linked_predictions_file(shards: Path, tmp_path: Path) -> None:
    rows = bench_rows(shards / "bench")
    out = tmp_path / "run"
    mine = user_file(tmp_path / "my-notes.jsonl")
    with ChatServer(BenchResponder(rows, "direct", MODEL, KEY)) as server:
        base = [
            "evaluate",
            "--bench",
            str(shards),
            "--base-url",
            server.url,
            "--model",
            MODEL,
            "--out",
            str(out),
        ]
        first = CliRunner(env={"OPENAI_API_KEY": KEY}).invoke(cli, [*base, "--quiet", "--limit", "1"])
        assert first.exit_code == 0, first.output
        (out / "predictions.jsonl").unlink()
        (out / "predictions.jsonl").symlink_to(mine)
        again = CliRunner(env={"OPENAI_API_KEY": KEY}).invoke(cli, [*base, "--quiet"])
        assert again.exit_code != 0 and "Traceback" not in again.output
        one_line_error(again.output, "predictions.jsonl", "symlink")
        assert mine.read_text() == USER_TEXT
        (out / "predictions.jsonl").unlink()
        os.link(mine, out / "predictions.jsonl")  # the user's file under a second name
        linked = CliRunner(env={"OPENAI_API_KEY": KEY}).invoke(cli, [*base, "--quiet"])
    assert linked.exit_code != 0 and "Traceback" not in linked.output
    one_line_error(linked.output, "predictions.jsonl", "hard links")
    assert mine.read_text() == USER_TEXT


# ------------------------------------------------------------------ push-bench


@pytest.mark.parametrize("name", ["main", "v1.0", "feature/ct-only", "release-2026_12", "a.b/c-d"])
def test_valid_branch_names_pass(name: str) -> None:
    assert branch_problem(name) is None


@pytest.mark.parametrize(
    "name",
    ["", "../../evil", "a..b", "-f", "x.lock", "a/.hidden", "/lead", "trail/", "a//b", "end.", "a b",
     "a~1", "a^", "a:b", "a?", "a*", "a[b", "a\\b", "a@{1}", "@", "HEAD", "tab\there"],
)  # fmt: skip
def test_invalid_branch_names_are_refused(name: str) -> None:
    assert branch_problem(name)


def test_push_bench_refuses_a_bad_revision_and_a_stage_dir_in_the_split(shards: Path, tmp_path: Path) -> None:
    before = tree(shards)
    base = ["push-bench", "--repo-id", "me/bench", "--dry-run", "--shards", str(shards), "--quiet"]
    for stage, needle in (
        (shards / "bench", "the pipeline writes and checks"),
        (shards / "train" / "stage", "the pipeline writes and checks"),
        (shards, "is a shards root"),
        (shards.parent, "holds the shards root"),
    ):
        code, output = invoke(*base, "--stage-dir", str(stage))
        assert code != 0, stage
        one_line_error(output, needle)
    code, output = invoke(*base, "--stage-dir", str(tmp_path / "stage"), "--revision", "../../evil")
    assert code != 0 and not (tmp_path / "stage").exists()
    one_line_error(output, "--revision '../../evil': not a valid branch name")
    assert tree(shards) == before


# ------------------------------------------------------------------ sources


def test_a_symlink_loop_in_a_source_tree_is_skipped_and_recorded(sample_sources, tmp_path: Path) -> None:
    from medscout_data.recipe import load_recipe
    from medscout_data.sources.runner import run_ingest

    recipe = load_recipe("sample")
    for kind, modality in (("totalseg-ct", "ct"), ("mimic-cxr-jpg", "xray")):
        root = shutil.copytree(sample_sources[kind], tmp_path / kind, symlinks=True)
        (root / "loop-a").symlink_to("loop-b")
        (root / "loop-b").symlink_to("loop-a")
        images = root / "files" if (root / "files").is_dir() else root
        (images / "self.jpg").symlink_to("self.jpg")
        (images / "gone.jpg").symlink_to("nothing-here.jpg")
        layout = Layout.at(tmp_path / f"out-{modality}")
        for _ in range(2):  # a rerun skips it again, never stops
            result = run_ingest(layout, recipe, modality, root, workers=1, progress=False)
            reasons = {s.path: s.reason for s in result.skips}
            assert reasons.get("loop-a") == reasons.get("loop-b") == "symlink-loop" or modality == "xray"
            if modality == "xray":
                assert (
                    reasons["files/self.jpg"] == "symlink-loop" and reasons["files/gone.jpg"] == "broken-link"
                )
            assert result.counts["used"] > 0
        errors = pq.read_table(layout.catalogue_dir(modality) / "errors.parquet").to_pylist()
        assert "symlink-loop" in {e["reason"] for e in errors}


def test_sample_never_replaces_a_users_folder_or_readme(tmp_path: Path) -> None:
    out = tmp_path / "data"
    args = ["sample", "--out", str(out), "--subjects", "2", "--size", "32", "--slices", "4"]
    mine = user_file(out / "README.txt")
    code, output = invoke(*args, "--source", "totalseg-ct")
    assert code != 0 and mine.read_text() == USER_TEXT
    one_line_error(output, "README.txt", "--force")
    mine.unlink()
    theirs = user_file(out / "mimic-cxr-jpg" / "notes.txt")
    for _ in range(2):  # its own tree again: fine
        code, output = invoke(*args, "--source", "totalseg-ct")
        assert code == 0, output
    code, output = invoke(*args)  # all four: mimic-cxr-jpg/ is the user's
    assert code != 0 and theirs.read_text() == USER_TEXT
    one_line_error(output, "mimic-cxr-jpg", "a folder medscout-data did not make")


def test_a_folder_that_only_looks_like_a_shards_root_is_not_one(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "plan").mkdir(parents=True)  # the user's own plan/ and bench/ folders
    (home / "manifest.json").write_text("{}")
    with owned_file(home / "bench" / "figures.json", "test") as path:
        write_bytes_atomic(b"{}", path)
    assert path.read_bytes() == b"{}"
