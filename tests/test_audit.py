"""The shortcut audit (`medscout-data audit`) and its place in the dataset card."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from benchfixture import make_shards, write_manifest
from click.testing import CliRunner

from medscout_data.cli import cli
from medscout_data.evaluation.audit import (
    PROBES,
    AuditError,
    ItemRecord,
    audit_bench,
    audit_cell,
    chance_accuracy,
    fit_threshold,
    separability,
)
from medscout_data.evaluation.baselines import AnswerShape, tier_text
from medscout_data.evaluation.score import Truth, accuracy_reward
from medscout_data.layout import Layout
from medscout_data.report import RunReport
from medscout_data.stages.manifest import ManifestError
from medscout_data.tasks.geometry import non_identity_permutations


@pytest.fixture(scope="module")
def audit(split_shards: Path):
    return audit_bench(split_shards, progress=False)


def test_every_cell_has_its_probes_next_to_chance(audit) -> None:
    assert list(audit.cells) == [
        f"{m}/{t}" for m in ("ct", "mri", "xray") for t in ("scale", "jigsaw", "anomaly")
    ]
    for key, cell in audit.cells.items():
        task = key.split("/")[1]
        assert cell.items == 6  # the test recipe's bench_per_cell
        assert list(cell.probes) == list(PROBES[task])
        for name, probe in cell.probes.items():
            assert 0.0 <= probe.accuracy <= 1.0 and 0.0 <= probe.chance <= 1.0, (key, name)
        if task == "scale":
            for name in ("sharpness", "noise"):
                assert cell.probes[name].chance == pytest.approx(0.5)  # tier items only
                assert cell.probes[name].items == 3 and 0.5 <= cell.probes[name].auc <= 1.0
        if task == "anomaly":
            exact = (1 + 2 * math.exp(-1) + math.exp(-math.sqrt(2))) / 4  # uniform over 5, 6, 9, 10
            assert cell.probes["seams"].chance == pytest.approx(exact)


def test_classical_baseline_uses_the_strongest_jigsaw_solver(audit) -> None:
    """Issue 17: the classical baseline scored 25 on X-ray jigsaw where seam continuity scores 100."""
    for modality in ("ct", "mri", "xray"):
        probes = audit.cells[f"{modality}/jigsaw"].probes
        assert probes["classical"].accuracy == probes["seams"].accuracy
        assert probes["classical"].accuracy >= max(p.accuracy for p in probes.values()) - 1e-9
        assert probes["classical"].accuracy >= 0.9, modality


def test_chance_is_the_expected_accuracy_of_a_uniform_answer() -> None:
    perms = non_identity_permutations(4)
    for truth_perm in ((1, 0, 3, 2), (0, 1, 3, 2)):
        truth = Truth("jigsaw", permutation=truth_perm, grid=2)
        brute = np.mean([accuracy_reward(" ".join(map(str, p)), truth) for p in perms])
        assert chance_accuracy(AnswerShape("jigsaw", 4, grid=2), truth, "x") == pytest.approx(brute)
    tier = Truth("tier", labels=("Label 1", "Label 2", "Label 2"))
    assert chance_accuracy(AnswerShape("tier", 3, level_areas=(0.2, 0.0625)), tier, "x") == pytest.approx(0.5)
    box = Truth("box", boxes=((0, 0, 500, 500),) * 3)
    assert chance_accuracy(AnswerShape("box", 3), box, "x") < 0.1


def test_threshold_and_auc() -> None:
    levels = [1, 1, 1, 2, 2, 2]
    rule = fit_threshold([0.1, 0.2, 0.3, 0.7, 0.8, 0.9], levels)
    assert [rule.level(v) for v in (0.1, 0.9)] == [1, 2]
    reversed_rule = fit_threshold([0.9, 0.8, 0.7, 0.3, 0.2, 0.1], levels)
    assert [reversed_rule.level(v) for v in (0.9, 0.1)] == [1, 2]
    assert separability([0.1, 0.2, 0.3, 0.7, 0.8, 0.9], levels) == 1.0
    assert separability([0.9, 0.8, 0.7, 0.3, 0.2, 0.1], levels) == 1.0  # either direction counts
    assert separability([0.5] * 6, levels) == 0.5
    assert separability([0.5] * 3, [1, 1, 1]) is None


def _anomaly_record(number: int, cell: int) -> ItemRecord:
    truth = Truth("anomaly", cell=cell, grid=4)
    return ItemRecord(f"{number:03d}", "ct/anomaly", "", truth, 0.5, answers={"seams": str(cell)})


def test_prior_and_thresholds_are_learnt_on_the_other_half() -> None:
    """Alternate items (in id order) form the halves: a prior that only memorised one half
    scores what a constant answer really scores on unseen items."""
    records = [_anomaly_record(n, 5 if n % 2 == 0 else 10) for n in range(10)]
    cell = audit_cell("ct/anomaly", records)
    assert cell.probes["prior"].accuracy == pytest.approx(math.exp(-math.sqrt(2)))  # 5 vs 10, never right
    assert cell.probes["seams"].accuracy == 1.0
    tier = Truth("tier", labels=("Label 1", "Label 2"))
    scale = [
        ItemRecord(
            f"{n:03d}", "ct/scale", "tier", tier, 0.5, levels=[1, 2], features=[(0.1, 1.0), (0.9, 1.0)]
        )
        for n in range(6)
    ]
    for record in scale:
        record.answers["classical"] = tier_text([1, 2])
    probes = audit_cell("ct/scale", scale).probes
    assert probes["sharpness"].accuracy == 1.0 and probes["sharpness"].auc == 1.0
    assert probes["noise"].auc == 0.5  # the noise feature is constant: no information


def test_cli_prints_the_table_and_writes_json(split_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "audit.json"
    result = CliRunner().invoke(cli, ["audit", "--bench", str(split_shards), "--json", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "xray/jigsaw" in result.output and "sharpness" in result.output
    figures = json.loads(out.read_text())
    assert figures["cells"]["ct/scale"]["probes"]["sharpness"]["auc"] >= 0.5
    assert "audit" in CliRunner().invoke(cli, ["--help"]).output


def test_a_damaged_bench_shard_is_refused_naming_it(split_shards: Path, tmp_path: Path) -> None:
    root = tmp_path / "shards"
    shutil.copytree(split_shards, root)
    shard = next((root / "bench" / "ct" / "jigsaw").glob("test-*.parquet"))
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="bench/ct/jigsaw"):
        audit_bench(root, progress=False)
    result = CliRunner().invoke(cli, ["audit", "--bench", str(root), "--quiet"])
    assert result.exit_code == 1 and "bench/ct/jigsaw" in result.output and "Traceback" not in result.output
    with pytest.raises(AuditError, match="no such bench"):
        audit_bench(tmp_path / "missing", progress=False)


def test_an_undecodable_item_is_recorded_and_left_out(tmp_path: Path) -> None:
    root = make_shards(tmp_path / "shards", modalities=("xray",), per_cell=4)
    path = next((root / "bench" / "xray" / "anomaly").glob("*.parquet"))
    table = pq.read_table(path)
    images = table.column("images").to_pylist()
    images[1] = [{"bytes": b"not a png", "path": None}]
    pq.write_table(table.set_column(table.schema.get_field_index("images"), "images", [images]), path)
    write_manifest(root)  # the damage is in the item, not the file: the manifest check passes
    report = RunReport("audit")
    result = audit_bench(root, progress=False, report=report)
    assert [s.reason for s in report.skips] == ["ImageDecodeError"] and "xray-anomaly-0001" in report.skips[
        0
    ].message
    assert result.cells["xray/anomaly"].items == 3


def test_push_bench_puts_the_audit_in_the_card(split_shards: Path, tmp_path: Path) -> None:
    from medscout_data.hub.push import PushOptions, stage_bench

    stage = stage_bench(
        Layout.at(split_shards), PushOptions("me/bench", stage_dir=tmp_path / "stage", progress=False)
    )
    card = (stage.root / "README.md").read_text()
    assert "## Validity: answerable only by looking" in card and "### Shortcut audit" in card
    assert "| xray | jigsaw | seams |" in card and "| ct | scale | sharpness |" in card
    assert "why not a naive crop-and-resize" in card or "naive crop-and-resize" in card
    assert "hard, as in the paper" in card
