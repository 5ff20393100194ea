"""What a staged repo folder is: its files, its record, and the errors of staging and upload.

Shared by staging (push.py, offline) and upload (upload.py, the network), so
neither imports the other's internals.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medscout_data.errors import StageError
from medscout_data.hub.card_facts import StagedFile

CARD_NAME = "README.md"
DATA_DIR = "data"


class PushError(StageError):
    """The bench cannot be staged or uploaded; the message says why and what to do."""


class PushRefused(PushError):
    """The push would publish credentialed (MIMIC-CXR-derived) items."""


@dataclass(frozen=True)
class LocalFile:
    """A file of the stage as the upload sees it."""

    path_in_repo: str
    local: Path
    size: int
    sha256: str


@dataclass(frozen=True)
class Stage:
    """A staged repo folder, ready to upload."""

    root: Path
    repo_id: str
    private: bool
    revision: str | None
    files: tuple[StagedFile, ...]
    card: LocalFile
    manifest_sha256: str
    license: str
    excluded: tuple[str, ...] = ()  # split shards left out by --exclude-mimic
    removed: tuple[str, ...] = ()  # files push-bench had not staged, deleted under --force

    @property
    def includes_mimic(self) -> bool:
        return any(f.restricted_rows for f in self.files)

    @property
    def restricted_rows(self) -> int:
        return sum(f.restricted_rows for f in self.files)

    @property
    def commit_message(self) -> str:
        return f"Upload Med-Scout-Bench (manifest sha256 {self.manifest_sha256})"

    def local_files(self) -> list[LocalFile]:
        """Everything to upload: the card and the data files (not the stage marker)."""
        data = [LocalFile(f.path, self.root / f.path, f.size, f.sha256) for f in self.files]
        return [self.card, *data]


@dataclass(frozen=True)
class PushResult:
    """What an upload did."""

    stage: Stage
    uploaded: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    commit_url: str | None = None
    remote_private: bool | None = None
