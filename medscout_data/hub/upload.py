"""Uploading a staged repo folder: the only code of push-bench that needs the network.

It creates the dataset repo if missing (private unless asked otherwise),
refuses when an existing public repo would receive MIMIC-derived items,
compares each staged file with the remote tree (LFS sha256, or git blob id
for small files) and makes one commit of only the changed files plus
deletions of stale `data/` files, whose message carries the sha256 of the
split's manifest.json. The token comes from huggingface_hub (`HF_TOKEN` or
the login cache) and is never printed, logged or written.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from medscout_data import MODALITIES
from medscout_data.hub.staged import DATA_DIR, LocalFile, PushError, PushRefused, PushResult, Stage

log = logging.getLogger(__name__)

REPO_TYPE = "dataset"
LOGIN_HINT = "log in with `hf auth login`, or set HF_TOKEN to a token with write access"


class HubApi(Protocol):
    """The part of `huggingface_hub.HfApi` the upload uses (tests pass a stand-in)."""

    def create_repo(self, repo_id: str, **kwargs: Any) -> Any: ...
    def repo_info(self, repo_id: str, **kwargs: Any) -> Any: ...
    def create_branch(self, repo_id: str, **kwargs: Any) -> Any: ...
    def list_repo_tree(self, repo_id: str, **kwargs: Any) -> Iterable[Any]: ...
    def create_commit(self, repo_id: str, operations: Iterable[Any], **kwargs: Any) -> Any: ...


def require_token() -> str:
    """The token huggingface_hub resolves (HF_TOKEN, then the login cache); an error says how to log in."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise PushError(f"no Hugging Face token found: {LOGIN_HINT} (or stage only with --dry-run)")
    return token


def hub_api(token: str) -> HubApi:
    """The real Hub client."""
    from huggingface_hub import HfApi, constants

    if constants.is_offline_mode():
        raise PushError("HF_HUB_OFFLINE is set: unset it to upload, or stage only with --dry-run")
    return HfApi(token=token)


def network_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the Hub could not be reached or refused a request."""
    from huggingface_hub.errors import HfHubHTTPError

    errors: list[type[BaseException]] = [HfHubHTTPError, OSError]  # OSError: connection errors, timeouts
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        if importlib.util.find_spec(module) is not None:
            errors.append(getattr(importlib.import_module(module), name))
    return tuple(errors)


def upload_stage(stage: Stage, api: HubApi) -> PushResult:
    """Create the repo if missing and commit only what changed; no commit when nothing did."""
    repo = stage.repo_id
    api.create_repo(repo, repo_type=REPO_TYPE, private=stage.private, exist_ok=True)
    remote_private = _check_remote(api, stage)
    if stage.revision:
        api.create_branch(repo, branch=stage.revision, repo_type=REPO_TYPE, exist_ok=True)
    remote = remote_files(api, repo, stage.revision)
    local = stage.local_files()
    changed, unchanged, stale = plan_changes(local, remote)
    if not changed and not stale:
        log.info("%s is up to date: nothing to commit", repo)
        return PushResult(stage, unchanged=tuple(unchanged), remote_private=remote_private)
    operations = _operations(local, changed, stale)
    info = api.create_commit(
        repo,
        operations=operations,
        commit_message=stage.commit_message,
        commit_description=_commit_description(stage),
        repo_type=REPO_TYPE,
        revision=stage.revision,
    )
    log.info("committed %d upload(s) and %d deletion(s) to %s", len(changed), len(stale), repo)
    return PushResult(
        stage,
        uploaded=tuple(changed),
        deleted=tuple(stale),
        unchanged=tuple(unchanged),
        commit_url=getattr(info, "commit_url", None),
        remote_private=remote_private,
    )


def _check_remote(api: HubApi, stage: Stage) -> bool:
    """The repo's visibility; refuses a public repo for MIMIC-derived items or a --private push."""
    reported = getattr(api.repo_info(stage.repo_id, repo_type=REPO_TYPE), "private", None)
    if reported is None:
        raise PushRefused(f"{stage.repo_id}: the Hub did not say whether the repo is private; not pushing")
    private = bool(reported)
    if not private and stage.includes_mimic:
        raise PushRefused(
            f"{stage.repo_id} exists and is public, and this push holds {stage.restricted_rows} "
            "MIMIC-CXR-derived item(s), which PhysioNet's terms forbid publishing; make the repo private "
            "first, push to another (private) repo, or leave them out with --modality ct --modality mri"
        )
    if not private and stage.private:
        raise PushRefused(
            f"{stage.repo_id} exists and is public but --private was asked; pass --public to push to it, "
            "or make it private first"
        )
    if private and not stage.private:
        log.warning("%s exists and is private; it stays private (change it in its settings)", stage.repo_id)
    return private


def remote_files(api: HubApi, repo_id: str, revision: str | None) -> dict[str, Any]:
    """path -> `RepoFile` of every file in the repo at `revision`."""
    from huggingface_hub.hf_api import RepoFile

    entries = api.list_repo_tree(repo_id, recursive=True, revision=revision, repo_type=REPO_TYPE)
    return {entry.path: entry for entry in entries if isinstance(entry, RepoFile)}


def plan_changes(local: list[LocalFile], remote: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """(to upload, unchanged, stale remote data files to delete), by content, not by name."""
    changed, unchanged = [], []
    for f in local:
        entry = remote.get(f.path_in_repo)
        (unchanged if entry is not None and same_content(f, entry) else changed).append(f.path_in_repo)
    names = {f.path_in_repo for f in local}
    stale = sorted(p for p in remote if p.startswith(f"{DATA_DIR}/") and p not in names)
    return changed, unchanged, stale


def same_content(local: LocalFile, remote: Any) -> bool:
    """LFS files compare by sha256, plain git files by blob id."""
    if remote.lfs is not None:
        return remote.lfs.sha256 == local.sha256
    return remote.size == local.size and remote.blob_id == git_blob_id(local.local)


def git_blob_id(path: Path, chunk: int = 1 << 20) -> str:
    """The git object id of a file's content: sha1 of `blob <size>\\0<content>`."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _operations(local: list[LocalFile], changed: list[str], stale: list[str]) -> list[Any]:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    by_path = {f.path_in_repo: f for f in local}
    adds = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(by_path[p].local)) for p in changed]
    return [*adds, *(CommitOperationDelete(path_in_repo=p) for p in stale)]


def _commit_description(stage: Stage) -> str:
    splits = sorted({f.split for f in stage.files})
    modalities = [m for m in MODALITIES if any(f.modality == m for f in stage.files)]
    return (
        f"Med-Scout-Bench staged by medscout-data push-bench.\n\n"
        f"- manifest.json sha256: {stage.manifest_sha256}\n"
        f"- modalities: {', '.join(modalities)}\n"
        f"- splits: {', '.join(splits)}\n"
        f"- items: {sum(f.rows for f in stage.files)}\n"
        f"- licence: {stage.license}\n"
    )
