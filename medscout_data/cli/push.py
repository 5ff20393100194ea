"""`medscout-data push-bench`: stage the bench as a Hub dataset repo and upload it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from medscout_data.cli.options import modalities_filter, quiet_option, shards_option

if TYPE_CHECKING:
    from medscout_data.hub.push import PushResult


def _repo_id(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError as exc:
        raise click.BadParameter(str(exc)) from exc
    if value.count("/") != 1:
        raise click.BadParameter(f"{value!r}: give the repo as ORG/NAME (or USER/NAME)")
    return value


@click.command(short_help="Stage the bench as a Hub dataset repo and upload it.")
@click.option("--repo-id", required=True, callback=_repo_id, help="Hub dataset repo, ORG/NAME.")
@shards_option
@click.option(
    "--private/--public",
    default=True,
    show_default=True,
    help="Visibility of a new repo. MIMIC-CXR-derived items can only go to a private one.",
)
@modalities_filter
@click.option(
    "--exclude-mimic", is_flag=True, help="Leave out MIMIC-CXR-derived items (found from the data)."
)
@click.option("--with-train", is_flag=True, help="Also publish the train side as split `train`.")
@click.option("--dry-run", is_flag=True, help="Stage and show what would be uploaded; no network.")
@click.option(
    "--stage-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where to stage the repo folder. Default: SHARDS/stage/ORG--NAME.",
)
@click.option("--revision", default=None, help="Branch to push to (created if missing). Default: main.")
@click.option(
    "--force",
    is_flag=True,
    help="Replace a stage folder that holds files push-bench did not stage, deleting them (default: refuse).",
)
@quiet_option
def push_bench(
    repo_id: str,
    shards: str,
    private: bool,
    modalities: tuple[str, ...],
    exclude_mimic: bool,
    with_train: bool,
    dry_run: bool,
    stage_dir: str | None,
    revision: str | None,
    force: bool,
    quiet: bool,
) -> None:
    """Stage the validated bench under SHARDS as a Hugging Face dataset repo
    (README.md dataset card + data/<modality>/<task>/test-*.parquet) and upload
    it in one commit, so that `datasets.load_dataset("ORG/NAME", "ct",
    split="test")` works for anyone with access.

    MIMIC-CXR-derived items (PhysioNet credentialed data) are found from the
    items themselves and may only go to a private repo: a public push that
    would carry any is refused, --dry-run included. `--public --modality ct
    --modality mri` (or --exclude-mimic) publishes the CC BY 4.0 part.

    The split must pass `validate` (the bench side in full, train too with
    --with-train), including its pool being whole. The stage folder is built
    beside the old one and swapped in; files a user put there are never
    deleted without --force. One push per stage folder at a time.

    The token is the one huggingface_hub finds (HF_TOKEN, or `hf auth login`).
    Unchanged files are not uploaded again; after a network error the stage
    is kept and the same command retries.
    """
    import shlex
    import sys
    from pathlib import Path

    from medscout_data.errors import StageError
    from medscout_data.hub import push
    from medscout_data.layout import Layout

    options = push.PushOptions(
        repo_id=repo_id,
        private=private,
        modalities=modalities,
        exclude_mimic=exclude_mimic,
        with_train=with_train,
        dry_run=dry_run,
        stage_dir=Path(stage_dir) if stage_dir else None,
        revision=revision,
        progress=not quiet,
        force=force,
        command=shlex.join(["medscout-data", *sys.argv[1:]]),
    )
    try:
        result = push.push_bench(Layout.at(shards), options)
    except StageError as exc:
        raise click.ClickException(str(exc)) from exc
    _report(result, dry_run)


def _report(result: PushResult, dry_run: bool) -> None:
    from medscout_data.stages.outputs import human_size

    stage = result.stage
    visibility = "private" if stage.private else "public"
    branch = stage.revision or "main"
    click.echo(f"staged: {stage.root}")
    click.echo(f"repo: {stage.repo_id} (dataset, {visibility}, branch {branch}), licence {stage.license}")
    if stage.includes_mimic:
        click.echo(f"  holds {stage.restricted_rows} MIMIC-CXR-derived item(s): keep the repo private")
    if stage.excluded:
        click.echo(f"  left out {len(stage.excluded)} MIMIC-derived shard(s) (--exclude-mimic)")
    for name in stage.removed:
        click.echo(f"  deleted from the stage folder (--force): {name}")
    click.echo(f"commit message: {stage.commit_message}")
    sizes = {f.path_in_repo: f.size for f in stage.local_files()}
    if dry_run:
        click.echo(f"dry run: would upload {len(sizes)} file(s), {human_size(sum(sizes.values()))}:")
        for path, size in sizes.items():
            click.echo(f"  {path}  {human_size(size)}")
        return
    for path in result.uploaded:
        click.echo(f"  uploaded {path}  {human_size(sizes[path])}")
    for path in result.deleted:
        click.echo(f"  deleted  {path}")
    if result.uploaded or result.deleted:
        click.echo(
            f"committed {len(result.uploaded)} upload(s), {len(result.deleted)} deletion(s); "
            f"{len(result.unchanged)} file(s) unchanged"
            + (f": {result.commit_url}" if result.commit_url else "")
        )
    else:
        click.echo(f"up to date: all {len(result.unchanged)} file(s) unchanged, no commit made")
