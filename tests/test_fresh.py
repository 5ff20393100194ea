"""fresh-bench: a second bench from the same bench-side subjects and recipe under another item
seed, on a real split of the sample (built pool, catalogues, caches, reference index)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from splitfixture import cli_ok, side_rows

from medscout_data.cli import cli
from medscout_data.evaluation.score import resolve_bench, score_file
from medscout_data.stages import fresh
from medscout_data.stages.fresh import FreshError, FreshOptions, fresh_bench

SEED = 5
KEEP = ("--modality", "ct", "--modality", "mri")  # the tiny sample has 1 bench-side X-ray subject


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory, built_pool: Path) -> Path:
    """A shards root as `build` and `split` leave it (read-only for the tests)."""
    from medscout_data.layout import Layout
    from medscout_data.stages.split import SplitOptions, split_pool

    root = tmp_path_factory.mktemp("original") / "shards"
    shutil.copytree(built_pool, root)
    split_pool(Layout.at(root), SplitOptions(progress=False))
    return root


@pytest.fixture(scope="module")
def fresh_root(tmp_path_factory: pytest.TempPathFactory, original: Path) -> Path:
    out = tmp_path_factory.mktemp("fresh") / "fresh-5"
    cli_ok("fresh-bench", "--shards", str(original), "--seed", str(SEED), "--out", str(out), *KEEP, "--quiet")
    return out


def image_hashes(rows: dict[str, dict]) -> dict[str, set[str]]:
    return {i: {hashlib.sha256(im["bytes"]).hexdigest() for im in r["images"]} for i, r in rows.items()}


def bench_bytes(root: Path) -> dict[str, bytes]:
    files = [*sorted((root / "bench").rglob("*.parquet")), root / "manifest.json", root / "fresh.json"]
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in files}


def test_a_fresh_bench_has_the_counts_and_balance_and_none_of_the_images(
    original: Path, fresh_root: Path
) -> None:
    before = json.loads((original / "manifest.json").read_text())
    after = json.loads((fresh_root / "manifest.json").read_text())
    assert set(after["cells"]) == {f"{m}/{t}" for m in ("ct", "mri") for t in ("scale", "jigsaw", "anomaly")}
    for cell, counts in after["cells"].items():
        assert counts["bench"] == before["cells"][cell]["bench"] == before["bench_per_cell"]
        shape = sorted(counts["bench_balance"].values())
        assert shape == sorted(before["cells"][cell]["bench_balance"].values()), cell
        if cell.endswith("scale"):
            assert counts["bench_balance"] == before["cells"][cell]["bench_balance"]  # tier/box halves
    assert (
        after["seed"] == SEED
        and after["subjects"]["ct"]["bench_sha256"] == before["subjects"]["ct"]["bench_sha256"]
    )
    old, new = side_rows(original), side_rows(fresh_root)
    assert all(i.startswith(f"fresh{SEED}-") for i in new)
    old_images = set().union(*image_hashes(old).values())
    shared = {i for i, h in image_hashes(new).items() if h & old_images}
    assert not shared
    bench_subjects = {r["subject_id"] for r in old.values() if r["modality"] in ("ct", "mri")}
    assert {r["subject_id"] for r in new.values()} <= bench_subjects  # the same bench-side subjects
    record = json.loads((fresh_root / "fresh.json").read_text())
    assert record["images_shared_with_original"] == 0 and record["images_checked"] == sum(
        len(r["images"]) for r in new.values()
    )


def test_validate_score_and_audit_take_it_like_any_bench(fresh_root: Path, tmp_path: Path) -> None:
    assert "split is valid" in cli_ok("validate", "--shards", str(fresh_root), "--quiet")
    source = resolve_bench(str(fresh_root))
    assert source.integrity == "sha256 (manifest.json)" and len(source.files) == 6
    rows = side_rows(fresh_root)
    predictions = tmp_path / "truth.jsonl"
    predictions.write_text(
        "".join(json.dumps({"id": i, "response": r["answer"]}) + "\n" for i, r in rows.items())
    )
    result = score_file(predictions, str(fresh_root))
    assert result.missing_ids == [] and result.overall.count == len(rows)
    assert result.overall.means()["accuracy"] == pytest.approx(1.0)
    audit = cli_ok("audit", "--bench", str(fresh_root), "--quiet")
    assert "ct" in audit and "jigsaw" in audit


def test_same_seed_same_bytes_and_a_rerun_resumes(original: Path, fresh_root: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    args = ("--seed", str(SEED), "--out", str(again), *KEEP, "--quiet")
    cli_ok("fresh-bench", "--shards", str(original), *args, "--workers", "2")  # any worker count
    assert bench_bytes(again) == bench_bytes(fresh_root)
    (again / "manifest.json").unlink()  # a run killed after the pool was made
    cli_ok(
        "fresh-bench", "--shards", str(original), "--seed", str(SEED), "--out", str(again), *KEEP, "--quiet"
    )
    assert bench_bytes(again) == bench_bytes(fresh_root)
    other = tmp_path / "other"
    cli_ok("fresh-bench", "--shards", str(original), "--seed", "6", "--out", str(other), *KEEP, "--quiet")
    assert (
        bench_bytes(other)["bench/ct/jigsaw/test-00000-of-00001.parquet"]
        != bench_bytes(fresh_root)["bench/ct/jigsaw/test-00000-of-00001.parquet"]
    )


def test_the_image_check_refuses_any_image_of_the_original(fresh_root: Path) -> None:
    from medscout_data.layout import Layout

    files = sorted((fresh_root / "bench").rglob("*.parquet"))
    cells = {("ct", "scale"), ("mri", "jigsaw")}
    with pytest.raises(FreshError, match="share an image with the original bench"):
        fresh._check_hashes(Layout.at(fresh_root), cells, fresh.read_original(files[:1]))
    assert fresh._check_hashes(Layout.at(fresh_root), cells, fresh.Original()) > 0


def test_the_original_scale_images_are_never_offered_again(
    original: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With only the slices the original scale items show left in the catalogue, a fresh scale
    cell cannot be made (a refusal, not a bench sharing them); with the exclusion off, the image
    check refuses it instead."""
    used = {
        json.loads(r["source"])["image_id"]
        for r in side_rows(original, pattern="ct/scale/*.parquet").values()
    }
    read = fresh.read_catalogue
    monkeypatch.setattr(fresh, "read_catalogue", lambda path: [i for i in read(path) if i.image_id in used])
    monkeypatch.setattr(fresh, "_bench_cells", lambda manifest, modalities: {("ct", "scale")})
    with pytest.raises(FreshError, match="ct/scale: only 0 of 6"):
        fresh_bench(FreshOptions(original, SEED, tmp_path / "a", progress=False))
    monkeypatch.setattr(fresh, "_without", lambda context, ids: context)
    with pytest.raises(FreshError, match="share an image with the original bench"):
        fresh_bench(FreshOptions(original, SEED, tmp_path / "b", progress=False))
    assert not (tmp_path / "b" / "manifest.json").exists() and not (tmp_path / "b" / "bench").exists()


def test_bad_requests_are_one_line_errors(original: Path, fresh_root: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    seed = json.loads((original / "manifest.json").read_text())["seed"]
    cases = {
        ("--seed", str(seed), "--out", str(tmp_path / "a")): "is the seed",
        ("--seed", "9", "--out", str(original)): "is the original shards root",
        ("--seed", "9", "--out", str(fresh_root)): "holds the fresh bench of seed 5",
        ("--seed", "9", "--out", str(tmp_path / "x"), "--modality", "xray"): "--modality",
        ("--seed", "5", "--out", str(fresh_root), "--modality", "ct"): "holds a fresh mri pool",
    }
    for args, expected in cases.items():
        result = runner.invoke(cli, ["fresh-bench", "--shards", str(original), *args, "--quiet"])
        assert result.exit_code == 1 and expected in result.output, result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "x" / "manifest.json").exists()


def test_a_models_two_scores_side_by_side(original: Path, fresh_root: Path, tmp_path: Path) -> None:
    """The comparison docs/notes/fresh.md shows: one table, the published bench beside the fresh one."""
    from medscout_data.evaluation.compare import Column, format_columns

    files = {}
    for name, root in (("published", original), ("fresh", fresh_root)):
        rows = side_rows(root)
        wrong = {i for n, i in enumerate(sorted(rows)) if name == "fresh" and n % 2 == 0}
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text(
            "".join(
                json.dumps({"id": i, "response": "" if i in wrong else r["answer"]}) + "\n"
                for i, r in rows.items()
            )
        )
    published = score_file(files["published"], str(original))
    fresh_result = score_file(files["fresh"], str(fresh_root))
    table = format_columns([Column("published", published), Column("fresh", fresh_result)])
    avg = table.splitlines()[-1].split()
    assert avg[-2] == "100.0" and float(avg[-1]) < 60  # the model "knew" only the published items


def test_evaluate_takes_it_like_any_bench(
    fresh_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local protocol server (tests/chatserver.py) playing a model that answers every fresh item
    right: evaluate reads the fresh bench, checks it against its manifest and scores it."""
    from chatserver import BenchResponder, ChatServer, bench_rows

    from medscout_data.evaluation.chat import Endpoint
    from medscout_data.evaluation.evaluate import EvaluateOptions, evaluate

    monkeypatch.setenv("OPENAI_API_KEY", "sk-fresh-test")
    responder = BenchResponder(bench_rows(fresh_root / "bench"), "direct", "m", "sk-fresh-test")
    with ChatServer(responder) as server:
        outcome = evaluate(
            EvaluateOptions(str(fresh_root), tmp_path / "run", Endpoint(server.url, "m"), progress=False)
        )
    assert responder.problems == [] and outcome.failed == 0 and outcome.sent == 36
    assert outcome.document["bench_integrity"] == "sha256 (manifest.json)"
    assert outcome.document["overall"]["accuracy"] == pytest.approx(1.0)
