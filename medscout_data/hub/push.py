"""push-bench: stage the bench as a Hugging Face dataset repo, then upload it.

Staging is offline. It validates the split (an invalid split is never
pushed), picks the shards (the bench, plus train with `with_train`; some
modalities only; or none derived from MIMIC-CXR), reads every picked row's
modality and `source` to find MIMIC-CXR-derived items, refuses a public push
that would carry any, then hard-links (or copies) the shards to
`<stage>/data/<modality>/<task>/` and writes the dataset card (card.py). The
folder is built in a fresh work folder beside its target and swapped in, so a
stage is always whole; a lock (`.lock-push-<name>` beside it) keeps a second
push from staging into it at once. The stage marker lists what was staged: a
file a user put into the stage folder (or a folder that is not a stage) is
refused unless `--force`, and what `--force` deletes is said.

Upload (upload.py) is the only code that needs the network; `push_bench`
stages, then uploads. On a network error the stage stays for a rerun.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from medscout_data import MODALITIES
from medscout_data.errors import StageError
from medscout_data.hub.card import CardFacts, StagedFile, features_of_metadata, license_fields, render_card
from medscout_data.hub.refs import branch_problem
from medscout_data.hub.staged import (
    CARD_NAME,
    DATA_DIR,
    LocalFile,
    PushError,
    PushRefused,
    PushResult,
    Stage,
)
from medscout_data.hub.upload import (  # noqa: F401  (public names, importable from here)
    REPO_TYPE,
    HubApi,
    git_blob_id,
    hub_api,
    network_errors,
    plan_changes,
    remote_files,
    require_token,
    same_content,
    upload_stage,
)
from medscout_data.layout import STAGE_RECORD, Layout
from medscout_data.locking import stage_lock
from medscout_data.owned import OwnershipError, refuse_managed
from medscout_data.provenance import is_mimic_derived, source_dataset
from medscout_data.recipe import Recipe
from medscout_data.shards import sha256_file, write_bytes_atomic, write_json_atomic
from medscout_data.stages.manifest import read_manifest
from medscout_data.stages.outputs import (
    clean_leftovers,
    describe_files,
    foreign_files,
    make_work_dir,
    os_error_path,
    os_error_reason,
    remove_work_dir,
    unmark,
)
from medscout_data.stages.plan import BENCH, TRAIN, load_plan

log = logging.getLogger(__name__)

STAGE_MARKER = STAGE_RECORD  # the layout's name, kept under its old name here
SPLIT_OF_SIDE = {BENCH: "test", TRAIN: "train"}
SCAN_COLUMNS = ["modality", "task", "source"]


@dataclass(frozen=True)
class PushOptions:
    """What to push, where, and how."""

    repo_id: str
    private: bool = True
    modalities: tuple[str, ...] = ()  # empty: every modality of the split
    exclude_mimic: bool = False
    with_train: bool = False
    dry_run: bool = False
    stage_dir: Path | None = None
    revision: str | None = None
    progress: bool = True
    force: bool = False  # replace a stage folder holding files push-bench did not stage
    command: str = "medscout-data push-bench"  # what a concurrent run is told holds the lock


# --- what is MIMIC-derived ------------------------------------------------------------------


def is_restricted(modality: str, source: str | None) -> bool:
    """Whether an item may only go to a private repo: MIMIC-derived (provenance.py), or a source
    that does not say where it comes from."""
    return is_mimic_derived(modality, source) or source_dataset(source) is None


def refuse_public_mimic(files: Iterable[StagedFile], private: bool, repo_id: str) -> None:
    """Raise `PushRefused` when a public push would carry MIMIC-derived items."""
    restricted = [f for f in files if f.restricted_rows]
    if private or not restricted:
        return
    count = sum(f.restricted_rows for f in restricted)
    raise PushRefused(
        f"refusing to push {repo_id} publicly: {count} item(s) in {len(restricted)} shard(s) "
        f"(e.g. {restricted[0].path}) are derived from MIMIC-CXR, which is credentialed PhysioNet data "
        "(PhysioNet Credentialed Health Data License 1.5.0 and its data use agreement forbid public "
        "redistribution). Push privately (--private, the default), or publish only the CC BY 4.0 "
        "TotalSegmentator items with `--modality ct --modality mri` or `--exclude-mimic`."
    )


# --- staging --------------------------------------------------------------------------------


def default_stage_dir(layout: Layout, repo_id: str) -> Path:
    """`<shards>/stage/<owner>--<name>`: beside the split it is made from."""
    return layout.root / "stage" / repo_id.replace("/", "--")


def stage_bench(layout: Layout, options: PushOptions) -> Stage:
    """Validate the split, pick and check the shards, and write the stage folder (under its lock)."""
    stage_dir = Path(options.stage_dir) if options.stage_dir else default_stage_dir(layout, options.repo_id)
    check_targets(layout, stage_dir, options.revision)
    with stage_lock(stage_dir.parent, f"push-{stage_dir.name}", options.command):
        foreign = _check_stage_dir(stage_dir, options.force)
        manifest = _check_valid(layout, options)
        stage = _stage(layout, manifest, stage_dir, options)
    if foreign:
        log.warning("--force: deleted %s from %s", describe_files(foreign, stage_dir), stage_dir)
    return replace(stage, removed=tuple(p.relative_to(stage_dir).as_posix() for p in foreign))


def check_targets(layout: Layout, stage_dir: Path, revision: str | None) -> None:
    """Refuse a --revision git would refuse, and a --stage-dir that is or holds the shards root or
    lies in its managed folders (the stage is swapped in whole: it would move or break the split)."""
    if revision is not None and (why := branch_problem(revision)):
        raise PushError(f"--revision {revision!r}: not a valid branch name (it {why}); choose another")
    if stage_dir.exists() and not stage_dir.is_dir():
        raise PushError(f"{stage_dir}: not a folder; choose another --stage-dir")
    try:
        refuse_managed(stage_dir, "--stage-dir", allow=("stage",))
    except OwnershipError as exc:
        raise PushError(str(exc)) from None
    if layout.root.resolve().is_relative_to(stage_dir.resolve()):
        raise PushError(f"{stage_dir}: holds the shards root {layout.root}; choose another --stage-dir")


def _stage(layout: Layout, manifest: dict[str, Any], stage_dir: Path, options: PushOptions) -> Stage:
    manifest_sha256 = sha256_file(layout.manifest())
    files = [_scan_shard(layout, name, info) for name, info in _picked_shards(manifest, options)]
    files, excluded = _exclude_mimic(files) if options.exclude_mimic else (files, [])
    if not any(f.split == "test" for f in files):
        raise PushError(f"{layout.root}: nothing left to push (no bench shard is selected)")
    refuse_public_mimic(files, options.private, options.repo_id)
    facts = CardFacts(
        repo_id=options.repo_id,
        files=tuple(files),
        features=_shared_features(files),
        manifest=manifest,
        manifest_sha256=manifest_sha256,
        recipe=_recipe_of(layout, [f.modality for f in files]),
        with_train=options.with_train,
        audit=_audit_of(files, layout, options),
    )
    card_text = render_card(facts).encode("utf-8")
    record = {"repo_id": options.repo_id, "manifest_sha256": manifest_sha256}
    try:
        _write_stage(stage_dir, files, card_text, record)
    except OSError as exc:
        raise PushError(
            f"{os_error_path(exc, stage_dir)}: cannot stage the repo ({os_error_reason(exc)}); the previous "
            f"stage in {stage_dir}, if any, is left as it was; free space or choose another --stage-dir"
        ) from None
    card = LocalFile(CARD_NAME, stage_dir / CARD_NAME, len(card_text), hashlib.sha256(card_text).hexdigest())
    log.info("staged %d data file(s) and the card in %s", len(files), stage_dir)
    return Stage(
        root=stage_dir,
        repo_id=options.repo_id,
        private=options.private,
        revision=options.revision,
        files=tuple(files),
        card=card,
        manifest_sha256=manifest_sha256,
        license=license_fields(facts)["license"],
        excluded=tuple(excluded),
    )


def _audit_of(files: list[StagedFile], layout: Layout, options: PushOptions) -> dict:
    """The shortcut audit of the bench shards being staged, for the card (evaluation/audit.py)."""
    from medscout_data.evaluation.classical import audit
    from medscout_data.evaluation.score import BenchSource

    bench = tuple(f.source for f in files if f.split == "test")
    train = tuple(sorted((layout.root / "train").glob("*/*/train-*.parquet")))  # `classical` learns there
    source = BenchSource(str(layout.root / "bench"), files=bench, train_files=train)
    return audit(source, progress=options.progress).as_dict()


def _check_valid(layout: Layout, options: PushOptions) -> dict[str, Any]:
    """The split's manifest, once the split (the sides to push in full) has passed `validate`."""
    from medscout_data.stages.validate import validate_report

    sides = (BENCH, TRAIN) if options.with_train else (BENCH,)
    result = validate_report(layout, progress=options.progress, sides=sides)
    problems = result.problems
    if problems:
        shown = "\n  ".join(problems[:10]) + (
            f"\n  ... ({len(problems) - 10} more)" if len(problems) > 10 else ""
        )
        raise PushError(
            f"{layout.root}: the split is not valid, refusing to push it:\n  {shown}\n"
            "Fix it (rerun `medscout-data split`) and check with `medscout-data validate`."
        )
    for warning in result.warnings:
        log.warning("%s", warning)
    return read_manifest(layout)


def _picked_shards(manifest: dict, options: PushOptions) -> list[tuple[str, dict]]:
    """(manifest name, info) of the shards to stage: bench (and train) of the chosen modalities."""
    sides = (BENCH, TRAIN) if options.with_train else (BENCH,)
    wanted = set(options.modalities or MODALITIES)
    picked = []
    for name, info in sorted(manifest["shards"].items()):
        side, modality = name.split("/")[:2]
        if side in sides and modality in wanted:
            picked.append((name, info))
    present = {name.split("/")[1] for name, _ in picked if name.startswith(f"{BENCH}/")}
    missing = [m for m in options.modalities if m not in present]
    if missing:
        raise PushError(f"the split has no bench shards for --modality {', '.join(missing)}")
    return picked


def _scan_shard(layout: Layout, name: str, info: dict) -> StagedFile:
    """A split shard's facts; its rows must be of the modality and task its folder names."""
    path = layout.root / name
    side, modality, task, filename = name.split("/")
    parquet = pq.ParquetFile(path)
    table = parquet.read(columns=SCAN_COLUMNS)
    modalities, tasks = set(table.column("modality").to_pylist()), set(table.column("task").to_pylist())
    if modalities - {modality} or tasks - {task}:
        raise PushError(
            f"{path}: holds items of {sorted(modalities)} / {sorted(tasks)} but lies in {modality}/{task}; "
            "rerun `medscout-data split`"
        )
    sources = table.column("source").to_pylist()
    metadata = parquet.metadata
    return StagedFile(
        path=f"{DATA_DIR}/{modality}/{task}/{filename}",
        source=path,
        split=SPLIT_OF_SIDE[side],
        modality=modality,
        task=task,
        rows=metadata.num_rows,
        size=path.stat().st_size,
        arrow_bytes=sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups)),
        sha256=info["sha256"],  # validate has just checked it
        restricted_rows=sum(is_restricted(modality, s) for s in sources),
        datasets=tuple(sorted({d for d in map(source_dataset, sources) if d})),
    )


def _exclude_mimic(files: list[StagedFile]) -> tuple[list[StagedFile], list[str]]:
    """Drop the shards of MIMIC-derived items; a shard mixing them with others is an error."""
    kept, excluded = [], []
    for f in files:
        if not f.restricted_rows:
            kept.append(f)
        elif f.restricted_rows == f.rows:
            excluded.append(f.path)
        else:
            raise PushError(
                f"{f.source}: mixes {f.restricted_rows} MIMIC-derived (or unknown-provenance) items with "
                f"{f.rows - f.restricted_rows} others; --exclude-mimic cannot drop them alone, "
                "rerun `medscout-data split` or choose modalities with --modality"
            )
    if excluded:
        log.info("--exclude-mimic leaves out %d shard(s), e.g. %s", len(excluded), excluded[0])
    return kept, excluded


def _shared_features(files: list[StagedFile]) -> dict:
    """The `datasets` Features every staged shard declares (they must all agree)."""
    features: dict | None = None
    for f in files:
        raw = (pq.read_schema(f.source).metadata or {}).get(b"huggingface")
        if raw is None:
            raise PushError(f"{f.source}: no `huggingface` schema metadata; rerun `medscout-data split`")
        try:
            these = features_of_metadata(raw.decode("utf-8"), str(f.source))
        except ValueError as exc:
            raise PushError(str(exc)) from exc
        if features is not None and these != features:
            raise PushError(f"{f.source}: its features differ from the other shards'; rerun the split")
        features = these
    assert features is not None
    return features


def _recipe_of(layout: Layout, modalities: list[str]) -> Recipe | None:
    """The recipe the pool was built with (from a subject plan), for the card's task geometry."""
    for modality in dict.fromkeys(modalities):
        path = layout.plan(modality)
        if path.exists():
            try:
                return load_plan(path).recipe_settings()
            except (StageError, ValueError, KeyError, TypeError) as exc:
                log.warning(
                    "%s: cannot read the recipe from the plan (%s); the card uses defaults", path, exc
                )
    return None


def _check_stage_dir(stage_dir: Path, force: bool) -> list[Path]:
    """Files in `stage_dir` that push-bench did not stage; refused unless `force`."""
    ours = _staged_files(stage_dir)
    foreign = foreign_files(stage_dir, ours)
    if not foreign or force:
        return foreign
    listing = describe_files(foreign, stage_dir)
    if (stage_dir / STAGE_MARKER) not in ours:
        raise PushError(
            f"{stage_dir}: not empty and not a push-bench stage folder ({listing}); "
            "choose another --stage-dir, or pass --force to replace it (deleting those files)"
        )
    raise PushError(
        f"{stage_dir}: holds {listing} that push-bench did not stage; move them "
        "elsewhere, or pass --force to delete them when the stage is replaced"
    )


def _staged_files(stage_dir: Path) -> set[Path]:
    """What an earlier push-bench staged in `stage_dir`, from its marker (empty without one)."""
    marker = stage_dir / STAGE_MARKER
    try:
        files = json.loads(marker.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    if not isinstance(files, dict):
        return set()
    return {marker, stage_dir / CARD_NAME, *(stage_dir / name for name in files if isinstance(name, str))}


def _write_stage(stage_dir: Path, files: list[StagedFile], card: bytes, record: dict[str, Any]) -> None:
    """Build the stage in a fresh folder beside `stage_dir`, then swap it in (the old one back on failure)."""
    parent, name = stage_dir.parent, stage_dir.name
    for kind in ("partial", "old"):
        clean_leftovers(parent, f".{name}.{kind}-")
    partial = make_work_dir(parent, f".{name}.partial-")
    old: Path | None = None
    try:
        for f in files:
            _link_or_copy(f.source, partial / f.path)
        write_bytes_atomic(card, partial / CARD_NAME)
        write_json_atomic({**record, "files": {f.path: f.sha256 for f in files}}, partial / STAGE_MARKER)
        unmark(partial)
        if stage_dir.exists():
            old = make_work_dir(parent, f".{name}.old-")
            os.rename(stage_dir, old / "stage")
        os.rename(partial, stage_dir)
    except BaseException:
        if old is not None and (old / "stage").exists() and not stage_dir.exists():
            os.rename(old / "stage", stage_dir)
        shutil.rmtree(partial, ignore_errors=True)  # made by this run
        raise
    finally:
        if old is not None:
            remove_work_dir(old)


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link (no extra disk), or copy where links are impossible (another file system)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


# --- upload ---------------------------------------------------------------------------------


def push_bench(
    layout: Layout, options: PushOptions, api_factory: Callable[[str], HubApi] | None = None
) -> PushResult:
    """Stage the bench; then, unless `dry_run`, upload it with the client `api_factory(token)` makes
    (default: `hub_api`, the real Hub)."""
    stage = stage_bench(layout, options)
    if options.dry_run:
        return PushResult(stage=stage, uploaded=tuple(f.path_in_repo for f in stage.local_files()))
    token = require_token()
    api = (api_factory or hub_api)(token)
    try:
        return upload_stage(stage, api)
    except network_errors() as exc:
        message = str(exc).replace(token, "<token>")
        raise PushError(
            f"upload to {stage.repo_id} failed ({type(exc).__name__}: {message}); the stage {stage.root} "
            "is kept: rerun the same command to retry (unchanged files are not uploaded again)"
        ) from None
