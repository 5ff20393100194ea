"""push-bench: the staged folder loads with `datasets` config by config, its card matches the
shards, MIMIC-derived items never go public, and the upload (against a fake Hub client
standing in for the network) commits only what changed and never leaks the token."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from medscout_data.cli.push import push_bench as push_command
from medscout_data.hub.push import (
    STAGE_MARKER,
    PushError,
    PushOptions,
    PushRefused,
    is_restricted,
    push_bench,
    stage_bench,
)
from medscout_data.layout import Layout
from medscout_data.schema import hf_features
from medscout_data.shards import sha256_file

REPO = "med-scout/bench-test"
FAKE_TOKEN = "hf_FAKEtokenMEDSCOUT0123456789abcdef"
IMAGES_PER_TASK = {"scale": 4, "jigsaw": 1, "anomaly": 1}


# --- helpers ------------------------------------------------------------------------------


def front_matter(stage: Path) -> dict:
    text = (stage / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def staged_data_files(stage: Path) -> set[str]:
    return {p.relative_to(stage).as_posix() for p in (stage / "data").rglob("*.parquet")}


def manifest_count(shards: Path, side: str, config: str) -> int:
    cells = json.loads((shards / "manifest.json").read_text())["cells"]
    return sum(c[side] for cell, c in cells.items() if config in ("default", *cell.split("/")))


def copy_split(split_shards: Path, target: Path) -> Path:
    shutil.copytree(split_shards, target)
    return target


def git_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHubApi:
    """Stands in for `huggingface_hub.HfApi` where the network would be needed: repos, branches
    and commits live in memory; the tree lists real `RepoFile`s with git blob ids and, for
    Parquet files, LFS sha256 as the Hub does."""

    def __init__(self, token: str | None = None, fail_commit: BaseException | None = None) -> None:
        self.token = token
        self.fail_commit = fail_commit
        self.repos: dict[str, dict[str, Any]] = {}
        self.commits: list[dict[str, Any]] = []

    def create_repo(self, repo_id: str, *, repo_type=None, private=None, exist_ok=False, **_: Any):
        if repo_id in self.repos:
            assert exist_ok
        else:
            self.repos[repo_id] = {
                "type": repo_type,
                "private": bool(private),
                "branches": {"main": {".gitattributes": b"*.parquet filter=lfs\n"}},
            }
        return f"fake://datasets/{repo_id}"

    def repo_info(self, repo_id: str, *, repo_type=None, **_: Any):
        assert repo_type == self.repos[repo_id]["type"]
        return SimpleNamespace(id=repo_id, private=self.repos[repo_id]["private"])

    def create_branch(self, repo_id: str, *, branch: str, repo_type=None, exist_ok=False, **_: Any):
        branches = self.repos[repo_id]["branches"]
        assert exist_ok or branch not in branches
        branches.setdefault(branch, dict(branches["main"]))

    def list_repo_tree(self, repo_id: str, *, recursive=False, revision=None, repo_type=None, **_: Any):
        from huggingface_hub.hf_api import RepoFile, RepoFolder

        assert recursive and repo_type == self.repos[repo_id]["type"]
        files = self.repos[repo_id]["branches"][revision or "main"]
        for folder in sorted({p.rsplit("/", 1)[0] for p in files if "/" in p}):
            yield RepoFolder(path=folder, oid="0" * 40)
        for path, data in sorted(files.items()):
            lfs = None
            if path.endswith(".parquet"):
                lfs = {"size": len(data), "oid": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
            yield RepoFile(path=path, size=len(data), oid=git_blob(data), lfs=lfs)

    def create_commit(
        self, repo_id: str, operations, *, commit_message: str, repo_type=None, revision=None, **kwargs: Any
    ):
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        if self.fail_commit is not None:
            raise self.fail_commit
        files = self.repos[repo_id]["branches"][revision or "main"]
        operations = list(operations)
        for op in operations:
            if isinstance(op, CommitOperationAdd):
                files[op.path_in_repo] = Path(op.path_or_fileobj).read_bytes()
            else:
                assert isinstance(op, CommitOperationDelete)
                del files[op.path_in_repo]
        self.commits.append(
            {
                "repo_id": repo_id,
                "repo_type": repo_type,
                "revision": revision,
                "message": commit_message,
                "description": kwargs.get("commit_description"),
                "added": sorted(op.path_in_repo for op in operations if isinstance(op, CommitOperationAdd)),
                "deleted": sorted(
                    op.path_in_repo for op in operations if isinstance(op, CommitOperationDelete)
                ),
            }
        )
        return SimpleNamespace(commit_url=f"fake://datasets/{repo_id}/commit/{len(self.commits)}")

    def factory(self, token: str) -> FakeHubApi:
        self.token = token
        return self


@pytest.fixture()
def hf_token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    return FAKE_TOKEN


@pytest.fixture(scope="module")
def full_stage(split_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All three modalities' bench, private, staged once for the read-only checks."""
    stage = tmp_path_factory.mktemp("stage") / "full"
    stage_bench(Layout.at(split_shards), PushOptions(REPO, stage_dir=stage, progress=False))
    return stage


# --- the staged folder --------------------------------------------------------------------


@pytest.mark.parametrize("config", ["default", "ct", "mri", "xray", "scale", "jigsaw", "anomaly"])
def test_every_config_loads_with_datasets(
    full_stage: Path, split_shards: Path, tmp_path: Path, config: str
) -> None:
    import datasets

    dataset = datasets.load_dataset(str(full_stage), config, split="test", cache_dir=str(tmp_path / "cache"))
    assert dataset.num_rows == manifest_count(split_shards, "bench", config) > 0
    column = "task" if config in IMAGES_PER_TASK else "modality"
    expected = {"ct", "mri", "xray"} if config == "default" else {config}
    assert set(dataset[column]) == expected
    for row in dataset.select(range(0, dataset.num_rows, 7)):
        assert len(row["images"]) == IMAGES_PER_TASK[row["task"]]
        assert all(isinstance(image, Image.Image) and image.mode == "L" for image in row["images"])
        assert row["answer"] and row["question"] != row["question_cot"]


def test_readme_demo_call_on_the_staged_folder(full_stage: Path, split_shards: Path, tmp_path: Path) -> None:
    """The README demo's last step: `datasets.load_dataset(stage_dir, "default", split="test")`."""
    import datasets

    dataset = datasets.load_dataset(str(full_stage), "default", split="test", cache_dir=str(tmp_path / "c"))
    assert dataset.num_rows == json.loads((split_shards / "manifest.json").read_text())["totals"]["bench"]
    assert set(dataset["modality"]) == {"ct", "mri", "xray"}
    assert isinstance(dataset[0]["images"][0], Image.Image)


def test_card_yaml_matches_the_staged_shards(full_stage: Path, split_shards: Path) -> None:
    import datasets
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCardData

    meta = front_matter(full_stage)
    staged = staged_data_files(full_stage)
    configs = {c["config_name"]: c for c in meta["configs"]}
    assert set(configs) == {"default", "ct", "mri", "xray", "scale", "jigsaw", "anomaly"}
    assert [c["config_name"] for c in meta["configs"] if c.get("default")] == ["default"]
    for name, config in configs.items():
        assert [f["split"] for f in config["data_files"]] == ["test"]
        matched = {
            p.relative_to(full_stage).as_posix() for p in full_stage.glob(config["data_files"][0]["path"])
        }
        expected = {p for p in staged if name in ("default", *p.split("/")[1:3])}
        assert matched == expected and expected, name
    assert {p.split("/")[-1] for p in staged} == {
        n.split("/")[-1]
        for n in json.loads((split_shards / "manifest.json").read_text())["shards"]
        if n.startswith("bench/")
    }
    infos = DatasetInfosDict.from_dataset_card_data(DatasetCardData(**meta))
    assert set(infos) == set(configs)
    expected_features = datasets.Features.from_dict(hf_features())
    for name, info in infos.items():
        assert info.features == expected_features, name
        assert info.splits["test"].num_examples == manifest_count(split_shards, "bench", name)
    assert meta["license"] == "other" and "physionet" in meta["license_name"]
    assert meta["license_link"].startswith("https://")
    assert meta["task_categories"] == ["visual-question-answering"]
    assert meta["size_categories"] == ["n<1K"] and meta["pretty_name"].startswith("Med-Scout-Bench")


def test_card_body_explains_tasks_scoring_split_licences_and_citation(
    full_stage: Path, split_shards: Path
) -> None:
    text = (full_stage / "README.md").read_text(encoding="utf-8")
    manifest_text = (split_shards / "manifest.json").read_bytes()
    manifest = json.loads(manifest_text)
    assert hashlib.sha256(manifest_text).hexdigest() in text
    assert f"seed\n{manifest['seed']}" in text or f"seed {manifest['seed']}" in text
    for phrase in (
        "Label 1, Label 2, Label 1",
        "(x1, y1, x2, y2)",
        "non-identity permutation",
        "{5, 6, 9, 10}",
        "Profile `official`",
        "Profile `paper`",
        "no 0.2 floor",
        "subject (patient)",
        "CC BY 4.0",
        "PhysioNet Credentialed Health Data License 1.5.0",
        "do not make this repository public",
        "arxiv.org/abs/2601.23220",
        "eprint    = {2601.23220}",
        f'datasets.load_dataset("{REPO}", "default", split="test")',
        f"medscout-data score --bench {REPO}",
    ):
        assert phrase in text, phrase
    for cell, counts in manifest["cells"].items():
        assert f"| {cell} | {counts['pool']:,} | {counts['bench']:,} | {counts['train']:,} |" in text


def test_staged_files_are_the_split_shards_byte_for_byte(full_stage: Path, split_shards: Path) -> None:
    manifest = json.loads((split_shards / "manifest.json").read_text())
    for name, info in manifest["shards"].items():
        if name.startswith("bench/"):
            assert sha256_file(full_stage / "data" / name.split("/", 1)[1]) == info["sha256"]
    marker = json.loads((full_stage / STAGE_MARKER).read_text())
    assert marker["repo_id"] == REPO and len(marker["files"]) == len(staged_data_files(full_stage))


def test_ct_mri_public_stage_is_cc_by_and_loads(split_shards: Path, tmp_path: Path) -> None:
    import datasets

    stage = tmp_path / "public"
    result = CliRunner().invoke(
        push_command,
        [
            "--repo-id",
            REPO,
            "--shards",
            str(split_shards),
            "--public",
            "--modality",
            "ct",
            "--modality",
            "mri",
            "--dry-run",
            "--stage-dir",
            str(stage),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "public" in result.output and "would upload" in result.output and "README.md" in result.output
    manifest_sha = sha256_file(split_shards / "manifest.json")
    assert f"manifest sha256 {manifest_sha}" in result.output
    assert {p.split("/")[1] for p in staged_data_files(stage)} == {"ct", "mri"}
    meta = front_matter(stage)
    assert meta["license"] == "cc-by-4.0" and "license_name" not in meta
    assert {c["config_name"] for c in meta["configs"]} == {
        "default",
        "ct",
        "mri",
        "scale",
        "jigsaw",
        "anomaly",
    }
    body = (stage / "README.md").read_text()
    assert "TotalSegmentator" in body and "MIMIC" not in body
    dataset = datasets.load_dataset(str(stage), "default", split="test", cache_dir=str(tmp_path / "c"))
    assert set(dataset["modality"]) == {"ct", "mri"}
    assert dataset.num_rows == manifest_count(split_shards, "bench", "ct") * 2


def test_with_train_adds_the_train_split(split_shards: Path, tmp_path: Path) -> None:
    import datasets

    stage = tmp_path / "train"
    options = PushOptions(REPO, modalities=("ct",), with_train=True, stage_dir=stage, progress=False)
    staged = stage_bench(Layout.at(split_shards), options)
    assert {f.split for f in staged.files} == {"test", "train"}
    meta = front_matter(stage)
    for config in meta["configs"]:
        assert [f["split"] for f in config["data_files"]] == ["test", "train"]
    train = datasets.load_dataset(str(stage), "ct", split="train", cache_dir=str(tmp_path / "c"))
    assert train.num_rows == manifest_count(split_shards, "train", "ct")


# --- the MIMIC guard ----------------------------------------------------------------------


def test_public_push_with_mimic_items_is_refused(split_shards: Path, tmp_path: Path) -> None:
    stage = tmp_path / "refused"
    with pytest.raises(PushRefused, match="MIMIC-CXR"):
        stage_bench(
            Layout.at(split_shards), PushOptions(REPO, private=False, stage_dir=stage, progress=False)
        )
    assert not stage.exists()
    result = CliRunner().invoke(
        push_command,
        [
            "--repo-id",
            REPO,
            "--shards",
            str(split_shards),
            "--public",
            "--dry-run",
            "--stage-dir",
            str(stage),
        ],
    )
    assert result.exit_code != 0
    assert "refusing" in result.output and "PhysioNet" in result.output and "--modality ct" in result.output
    assert not stage.exists()


def test_exclude_mimic_lets_a_public_push_carry_ct_and_mri(split_shards: Path, tmp_path: Path) -> None:
    stage = tmp_path / "excluded"
    result = CliRunner().invoke(
        push_command,
        [
            "--repo-id",
            REPO,
            "--shards",
            str(split_shards),
            "--public",
            "--exclude-mimic",
            "--dry-run",
            "--stage-dir",
            str(stage),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "left out 3 MIMIC-derived shard(s)" in result.output
    assert {p.split("/")[1] for p in staged_data_files(stage)} == {"ct", "mri"}


@pytest.mark.parametrize(
    ("modality", "source", "restricted"),
    [
        ("ct", '{"dataset": "totalseg", "path": "s0001/ct.nii.gz"}', False),
        ("mri", '{"dataset": "totalseg"}', False),
        ("xray", '{"dataset": "totalseg"}', True),
        ("ct", '{"dataset": "mimic-cxr-jpg"}', True),
        ("ct", '{"dataset": "MIMIC-CXR"}', True),
        ("ct", '{"path": "x"}', True),
        ("ct", "not json", True),
    ],
)
def test_restricted_items_are_found_from_the_data(modality: str, source: str, restricted: bool) -> None:
    assert is_restricted(modality, source) is restricted


def test_mimic_source_inside_a_ct_shard_blocks_a_public_push(split_shards: Path, tmp_path: Path) -> None:
    """Provenance comes from each row's `source`, not from the folder or a flag."""
    shards = copy_split(split_shards, tmp_path / "shards")
    name = "bench/ct/jigsaw/test-00000-of-00001.parquet"
    path = shards / name
    table = pq.read_table(path)
    sources = table.column("source").to_pylist()
    sources[0] = json.dumps({**json.loads(sources[0]), "dataset": "mimic-cxr"})
    table = table.set_column(table.schema.get_field_index("source"), "source", [sources])
    pq.write_table(table, path)
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["shards"][name].update(sha256=sha256_file(path), bytes=path.stat().st_size)
    (shards / "manifest.json").write_text(json.dumps(manifest))
    options = PushOptions(REPO, private=False, modalities=("ct",), stage_dir=tmp_path / "s", progress=False)
    with pytest.raises(PushRefused, match="1 item"):
        stage_bench(Layout.at(shards), options)
    with pytest.raises(PushError, match="mixes 1 MIMIC-derived"):
        stage_bench(Layout.at(shards), PushOptions(**{**options.__dict__, "exclude_mimic": True}))


# --- staging errors -----------------------------------------------------------------------


def test_invalid_split_is_not_pushed(split_shards: Path, tmp_path: Path) -> None:
    shards = copy_split(split_shards, tmp_path / "shards")
    (shards / "bench/mri/anomaly/test-00000-of-00001.parquet").unlink()
    with pytest.raises(PushError, match=r"(?s)not valid.*listed in .*manifest.json but missing"):
        stage_bench(
            Layout.at(shards), PushOptions(REPO, dry_run=True, stage_dir=tmp_path / "s", progress=False)
        )
    assert not (tmp_path / "s").exists()


def test_a_foreign_folder_is_never_replaced(split_shards: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(PushError, match="not a push-bench stage folder"):
        stage_bench(Layout.at(split_shards), PushOptions(REPO, stage_dir=foreign, progress=False))
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_restaging_replaces_the_stage_whole(split_shards: Path, tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    layout = Layout.at(split_shards)
    stage_bench(layout, PushOptions(REPO, stage_dir=stage, progress=False))
    assert "xray" in {p.split("/")[1] for p in staged_data_files(stage)}
    stage_bench(layout, PushOptions(REPO, modalities=("mri",), stage_dir=stage, progress=False))
    assert {p.split("/")[1] for p in staged_data_files(stage)} == {"mri"}
    assert not list(tmp_path.glob("stage.*"))  # no .partial / .old left behind


def test_unknown_modality_request_is_an_error(built_pool: Path, tmp_path: Path) -> None:
    from medscout_data.stages.split import SplitOptions, split_pool

    root = tmp_path / "ct-only"
    shutil.copytree(built_pool / "pool" / "ct", root / "pool" / "ct")
    shutil.copytree(built_pool / "plan", root / "plan")
    split_pool(Layout.at(root), SplitOptions(progress=False))
    with pytest.raises(PushError, match="no bench shards for --modality xray"):
        stage_bench(Layout.at(root), PushOptions(REPO, modalities=("xray",), stage_dir=tmp_path / "s"))


# --- upload (fake Hub client) -------------------------------------------------------------


def test_upload_with_fake_hub_api_commits_only_changes_and_never_leaks_the_token(
    split_shards: Path,
    tmp_path: Path,
    hf_token: str,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    layout = Layout.at(split_shards)
    stage = tmp_path / "stage"
    hub = FakeHubApi()
    options = PushOptions(REPO, stage_dir=stage, progress=False)
    manifest_sha = hashlib.sha256((split_shards / "manifest.json").read_bytes()).hexdigest()

    first = push_bench(layout, options, api_factory=hub.factory)
    assert hub.token == hf_token  # the token reached the client, and nowhere else (below)
    assert hub.repos[REPO]["type"] == "dataset" and hub.repos[REPO]["private"] is True
    assert len(hub.commits) == 1
    commit = hub.commits[0]
    assert commit["repo_type"] == "dataset" and commit["revision"] is None
    assert manifest_sha in commit["message"] and manifest_sha in commit["description"]
    assert commit["added"] == sorted({"README.md", *staged_data_files(stage)}) and commit["deleted"] == []
    remote = hub.repos[REPO]["branches"]["main"]
    for path in commit["added"]:
        assert remote[path] == (stage / path).read_bytes()
    assert STAGE_MARKER not in remote and first.commit_url

    second = push_bench(layout, options, api_factory=hub.factory)
    assert len(hub.commits) == 1 and second.uploaded == () and second.deleted == ()
    assert set(second.unchanged) == set(commit["added"])

    narrowed = push_bench(
        layout,
        PushOptions(REPO, modalities=("ct", "mri"), stage_dir=stage, progress=False),
        api_factory=hub.factory,
    )
    assert hub.commits[-1]["added"] == ["README.md"]  # the card changed, no shard did
    assert narrowed.deleted and all(p.startswith("data/xray/") for p in narrowed.deleted)
    assert not any(p.startswith("data/xray/") for p in remote)

    on_branch = push_bench(
        layout, PushOptions(REPO, stage_dir=stage, revision="v1", progress=False), api_factory=hub.factory
    )
    assert hub.commits[-1]["revision"] == "v1" and "data/xray/anomaly/test-00000-of-00001.parquet" in (
        on_branch.uploaded
    )
    assert "README.md" in on_branch.uploaded and not any(p.startswith("data/ct/") for p in on_branch.uploaded)

    CliRunner().invoke(
        push_command,
        [
            "--repo-id",
            REPO,
            "--shards",
            str(split_shards),
            "--dry-run",
            "--stage-dir",
            str(tmp_path / "cli"),
            "--quiet",
        ],
    )
    out, err = capsys.readouterr()
    for text in (out, err, caplog.text, json.dumps(hub.commits)):
        assert hf_token not in text
    for path in [*stage.rglob("*"), *(tmp_path / "cli").rglob("*")]:
        if path.is_file():
            assert hf_token.encode() not in path.read_bytes(), path


def test_existing_public_repo_never_receives_mimic_items(
    split_shards: Path, tmp_path: Path, hf_token: str
) -> None:
    hub = FakeHubApi()
    hub.create_repo(REPO, repo_type="dataset", private=False)
    with pytest.raises(PushRefused, match="exists and is public"):
        push_bench(
            Layout.at(split_shards),
            PushOptions(REPO, stage_dir=tmp_path / "s", progress=False),
            api_factory=hub.factory,
        )
    assert hub.commits == []
    public = PushOptions(
        REPO, private=False, modalities=("ct", "mri"), stage_dir=tmp_path / "s", progress=False
    )
    push_bench(Layout.at(split_shards), public, api_factory=hub.factory)
    assert hub.commits and not any("xray" in p for p in hub.commits[0]["added"])


@pytest.mark.parametrize("error", ["connection", "http"])
def test_network_error_keeps_the_stage_and_a_rerun_finishes(
    split_shards: Path, tmp_path: Path, hf_token: str, error: str
) -> None:
    import httpx2

    failure = (
        ConnectionError("network unreachable") if error == "connection" else httpx2.ConnectError("refused")
    )
    stage = tmp_path / "stage"
    options = PushOptions(REPO, stage_dir=stage, progress=False)
    broken = FakeHubApi(fail_commit=failure)
    with pytest.raises(PushError, match="rerun the same command") as caught:
        push_bench(Layout.at(split_shards), options, api_factory=broken.factory)
    assert hf_token not in str(caught.value)
    assert (stage / "README.md").exists() and staged_data_files(stage)
    working = FakeHubApi()
    working.repos = broken.repos
    result = push_bench(Layout.at(split_shards), options, api_factory=working.factory)
    assert len(working.commits) == 1 and "README.md" in result.uploaded


def test_no_token_fails_with_the_login_hint_but_dry_run_needs_none(
    split_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    hub = FakeHubApi()
    options = PushOptions(REPO, stage_dir=tmp_path / "s", progress=False)
    with pytest.raises(PushError, match="hf auth login"):
        push_bench(Layout.at(split_shards), options, api_factory=hub.factory)
    assert hub.repos == {} and (tmp_path / "s" / "README.md").exists()
    result = CliRunner().invoke(
        push_command,
        ["--repo-id", REPO, "--shards", str(split_shards), "--stage-dir", str(tmp_path / "s"), "--quiet"],
    )
    assert result.exit_code != 0 and "hf auth login" in result.output
    dry = CliRunner().invoke(
        push_command,
        ["--repo-id", REPO, "--shards", str(split_shards), "--dry-run", "--stage-dir", str(tmp_path / "d")],
    )
    assert dry.exit_code == 0 and "private" in dry.output, dry.output


def test_repo_id_must_be_owner_and_name(split_shards: Path) -> None:
    result = CliRunner().invoke(
        push_command, ["--repo-id", "no-owner", "--shards", str(split_shards), "--dry-run"]
    )
    assert result.exit_code != 0 and "ORG/NAME" in result.output


def test_cli_upload_reports_the_commit_then_up_to_date(
    split_shards: Path, tmp_path: Path, hf_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medscout_data.hub import push

    hub = FakeHubApi()
    monkeypatch.setattr(push, "hub_api", hub.factory)
    args = ["--repo-id", REPO, "--shards", str(split_shards), "--stage-dir", str(tmp_path / "s"), "--quiet"]
    first = CliRunner().invoke(push_command, args)
    assert first.exit_code == 0, first.output
    assert "uploaded data/ct/scale/test-00000-of-00001.parquet" in first.output
    assert f"committed {len(staged_data_files(tmp_path / 's')) + 1} upload(s), 0 deletion(s)" in first.output
    second = CliRunner().invoke(push_command, args)
    assert second.exit_code == 0 and "up to date" in second.output and len(hub.commits) == 1
    assert hf_token not in first.output + second.output


# --- the user's files, faults and concurrent runs ------------------------------------------


def test_user_folders_named_like_the_old_work_folders_are_kept(split_shards: Path, tmp_path: Path) -> None:
    stage = tmp_path / "X"
    for name in ("X.partial", "X.old"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "mine.txt").write_text("keep")
    layout = Layout.at(split_shards)
    stage_bench(layout, PushOptions(REPO, stage_dir=stage, progress=False))
    stage_bench(layout, PushOptions(REPO, modalities=("ct",), stage_dir=stage, progress=False))
    for name in ("X.partial", "X.old"):
        assert (tmp_path / name / "mine.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock-push-X", "X", "X.old", "X.partial"]


def test_a_file_added_to_the_stage_is_refused_then_deleted_with_force(
    split_shards: Path, tmp_path: Path
) -> None:
    stage = tmp_path / "stage"
    layout = Layout.at(split_shards)
    stage_bench(layout, PushOptions(REPO, stage_dir=stage, progress=False))
    notes = stage / "data" / "ct" / "NOTES.md"
    notes.write_text("my notes")
    before = {p: p.read_bytes() for p in stage.rglob("*") if p.is_file()}
    args = [
        "--repo-id",
        REPO,
        "--shards",
        str(split_shards),
        "--dry-run",
        "--stage-dir",
        str(stage),
        "--quiet",
    ]
    refused = CliRunner().invoke(push_command, args)
    assert refused.exit_code == 1 and "data/ct/NOTES.md" in refused.output and "--force" in refused.output
    assert {p: p.read_bytes() for p in stage.rglob("*") if p.is_file()} == before
    forced = CliRunner().invoke(push_command, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    assert "deleted from the stage folder (--force): data/ct/NOTES.md" in forced.output
    assert not notes.exists() and (stage / "README.md").exists()


def test_force_replaces_a_foreign_folder_saying_what_it_deleted(split_shards: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    staged = stage_bench(
        Layout.at(split_shards), PushOptions(REPO, stage_dir=foreign, force=True, progress=False)
    )
    assert staged.removed == ("notes.txt",) and not (foreign / "notes.txt").exists()
    assert (foreign / STAGE_MARKER).exists()


def test_disk_full_while_staging_keeps_the_previous_stage(
    split_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while copying a shard (the stage on another file system, so no hard links)."""
    import errno

    from faultkit import fail_on_call

    from medscout_data.hub import push

    stage = tmp_path / "stage"
    layout = Layout.at(split_shards)
    stage_bench(layout, PushOptions(REPO, stage_dir=stage, progress=False))
    before = {p: p.read_bytes() for p in stage.rglob("*") if p.is_file()}
    full = OSError(errno.ENOSPC, "No space left on device", str(stage / "data"))

    def no_links(source: Path, target: Path) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(push.os, "link", no_links)
    monkeypatch.setattr(push.shutil, "copy2", fail_on_call(shutil.copy2, 2, full))
    with pytest.raises(PushError) as caught:
        stage_bench(layout, PushOptions(REPO, modalities=("ct",), stage_dir=stage, progress=False))
    assert "no space left on the device" in str(caught.value) and "\n" not in str(caught.value)
    assert "left as it was" in str(caught.value)
    assert {p: p.read_bytes() for p in stage.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock-push-stage", "stage"]


def test_read_only_stage_folder_is_a_clear_error(split_shards: Path, tmp_path: Path) -> None:
    from faultkit import cli, no_traceback, read_only

    parent = tmp_path / "ro"
    parent.mkdir()
    args = ["push-bench", "--repo-id", REPO, "--shards", str(split_shards), "--dry-run", "--quiet"]
    with read_only(parent) as prefix:
        result = cli(*args, "--stage-dir", str(parent / "stage"), prefix=prefix)
    assert result.returncode == 1 and "cannot write here" in result.stdout, result.stdout
    no_traceback(result.stdout)
    assert not (parent / "stage").exists()


def test_a_second_push_into_the_same_stage_is_refused(split_shards: Path, tmp_path: Path) -> None:
    """Two real processes: the first frozen while it holds the stage's lock."""
    from faultkit import cli, no_traceback, resume, start_frozen_holder

    stage = tmp_path / "stage"
    args = ["push-bench", "--repo-id", REPO, "--shards", str(split_shards), "--dry-run"]
    args += ["--stage-dir", str(stage), "--quiet"]
    first = start_frozen_holder(args, tmp_path / ".lock-push-stage")
    try:
        second = cli(*args)
    finally:
        code, output = resume(first)
    assert second.returncode == 1 and "is already writing here" in second.stdout, second.stdout
    assert f"pid {first.pid}" in second.stdout
    no_traceback(second.stdout)
    assert code == 0 and "would upload" in output, output
