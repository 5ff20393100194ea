"""Owned output folders: only files medscout-data wrote are ever replaced or deleted, never through a link.

Every command that writes where the user points it (export in every format,
preview, evaluate's OUT, `score --json/--plot`, `baseline --out`, `audit
--json`) writes through `OwnedFolder`, so one set of rules holds for all:

- The folder's record, `<folder>/.medscout-written.json`, lists per writer
  (an export's name, `preview`, `evaluate`, `score --json NAME`, ...) the
  files it wrote there. Each claim is journalled first
  (`.medscout-written.journal`), so the files of a killed run are still known
  as ours when it is rerun.
- A file (or folder, or symlink) in the way that no writer's record lists is
  the user's: refused with one line naming it, or, with `force`, deleted and
  said so.
- A symlink is never written through: a link where a file or a folder of the
  output would go is foreign like any other file; files are opened with
  O_NOFOLLOW and replaced by rename (which replaces a link, not its target).
- A writer that finishes replaces its own earlier output whole: the files it
  wrote last time and not this time (and no other writer lists) are deleted,
  so an export redone for CT only leaves no X-ray image of the first one.
- Nothing is written inside a shards root's managed folders (manifest.json,
  bench/, train/, pool/, ...): those belong to the pipeline's stages, and a
  stray file there would make the split fail its own check.

A folder lock (flock on the folder itself, no lock file) keeps two writers
from updating one record at once.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from types import TracebackType

from medscout_data import MODALITIES
from medscout_data.errors import StageError
from medscout_data.report import RunReport
from medscout_data.shards import write_json_atomic

log = logging.getLogger(__name__)

RECORD = ".medscout-written.json"
JOURNAL = ".medscout-written.journal"
# What the stages write directly under a shards root (layout.py); outputs of other commands stay out.
MANAGED = (
    "manifest.json",
    "bench",
    "train",
    "pool",
    "plan",
    "catalogue",
    "cache",
    "index",
    "reports",
    "sample",
    "stage",
)
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
SHOWN = 5  # files named one by one when --force deletes them
_HELD: dict[tuple[int, int], int] = {}  # folders this process holds the lock of (two outputs in one folder)


class OwnershipError(StageError):
    """An output would replace a file medscout-data did not write, write through a link, or land in
    the pipeline's own folders."""


def is_shards_root(folder: Path) -> bool:
    """Whether `folder` is a pipeline output root (`shards/`): a split (manifest.json beside bench/
    or train/), or a stage's per-modality output (plan/<m>.json, pool/<m>/, catalogue/<m>/)."""
    if (folder / "manifest.json").is_file() and any((folder / side).is_dir() for side in ("bench", "train")):
        return True
    return any(
        (folder / "plan" / f"{m}.json").is_file()
        or (folder / "pool" / m).is_dir()
        or (folder / "catalogue" / m).is_dir()
        for m in MODALITIES
    )


def refuse_managed(target: str | os.PathLike[str], option: str, allow: Iterable[str] = ()) -> None:
    """Refuse an output at `target` that is a shards root or inside one's managed folders (`allow`
    names managed folders this output may use, e.g. push-bench's `stage`)."""
    real = Path(os.path.abspath(target)).resolve()
    for root in (real, *real.parents):
        if not is_shards_root(root):
            continue
        if root == real:
            raise OwnershipError(
                f"{target}: is a shards root (the pipeline's outputs live there); choose another {option}"
            )
        first = real.relative_to(root).parts[0]
        if first in MANAGED and first not in set(allow):
            raise OwnershipError(
                f"{target}: inside {root / first}, which the pipeline writes and checks (a file put "
                f"there breaks the split's manifest); choose another {option}"
            )


def _clean_rel(rel: str) -> str | None:
    """`rel` when it is a relative POSIX path that stays inside the folder, else None."""
    if not rel or rel.startswith("/") or any(part in ("", ".", "..") for part in rel.split("/")):
        return None
    return rel


def open_nofollow(path: Path, flags: int, mode: int = 0o644) -> int:
    """`os.open` that refuses a symlink at `path` with an `OwnershipError` naming it."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OwnershipError(f"{path}: is a symlink; medscout-data never writes through links") from None
        raise


def open_in_place(path: Path, flags: int) -> int:
    """`os.open` for a file changed in place (appended to, cut): never through a link, and never a
    file with other hard links (the user's file under another name) or anything but a plain file."""
    fd = open_nofollow(path, flags)
    info = os.fstat(fd)
    if stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
        return fd
    os.close(fd)
    what = "has other hard links (it is a file elsewhere too)" if stat.S_ISREG(info.st_mode) else "not a file"
    raise OwnershipError(
        f"{path}: {what}; medscout-data changes only files of its own in place; move it away"
    )


class OwnedFolder:
    """An output folder written under the rules of the module docstring; use as a context manager.

    `claim(rel)` before writing each file (it returns the path to write, its
    folders made); leaving the block without an error writes the record and
    deletes what this writer wrote last time and not this time.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        writer: str,
        force: bool = False,
        option: str = "--out",
        wait: bool = False,
        can_force: bool = True,
        check_root: bool = True,
    ) -> None:
        self.root = Path(root)
        self.writer = writer
        self.force = force
        self.option = option
        self.wait = wait  # wait for another writer's lock (single files: a short wait) instead of refusing
        self.check_root = check_root  # refuse a root inside a shards root's managed folders
        self.can_force = can_force  # whether the command has --force (the refusal then offers it)
        self.owned: dict[str, set[str]] = {}
        self.claimed: set[str] = set()
        self.removed: list[Path] = []  # foreign files deleted under force
        self._dirs: dict[str, Path] = {"": self.root}  # folders checked and made, by relative path
        self._dir_fd = -1
        self._journal_fd = -1

    # ------------------------------------------------------------------ opening and closing

    def __enter__(self) -> OwnedFolder:
        if self.check_root:
            refuse_managed(self.root, self.option)
        if os.path.lexists(self.root) and not self.root.is_dir():
            raise OwnershipError(f"{self.root}: not a folder; choose another {self.option}")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._dir_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise self._cannot_write(exc) from None
        try:
            self._lock()
            self._load()
            self._journal_fd = open_nofollow(self.root / JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        except OSError as exc:
            self._unlock()
            os.close(self._dir_fd)
            raise self._cannot_write(exc) from None
        except BaseException:
            self._unlock()
            os.close(self._dir_fd)
            raise
        return self

    def _cannot_write(self, exc: OSError) -> OwnershipError:
        """One line for a folder that cannot be made or written (read-only, no permission, full)."""
        where = exc.filename or self.root
        return OwnershipError(f"{where}: cannot write here ({exc.strerror}); choose a writable {self.option}")

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if kind is None:
                self.commit()
        finally:
            if self._journal_fd >= 0:
                os.close(self._journal_fd)
            self._unlock()
            os.close(self._dir_fd)  # releases the lock

    def _lock(self) -> None:
        info = os.fstat(self._dir_fd)
        self._key = (info.st_dev, info.st_ino)
        if self._key in _HELD:  # e.g. `score --json` and `--plot` into one folder
            _HELD[self._key] += 1
            return
        try:
            fcntl.flock(self._dir_fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except OSError as exc:
            if exc.errno in _NO_LOCKS:
                log.warning("%s: no file locks here; concurrent writers are not detected", self.root)
                return
            raise OwnershipError(
                f"{self.root}: another medscout-data run is writing here; wait for it, or choose "
                f"another {self.option}"
            ) from None
        _HELD[self._key] = 1

    def _unlock(self) -> None:
        key = getattr(self, "_key", None)
        if key in _HELD:
            _HELD[key] -= 1
            if not _HELD[key]:
                del _HELD[key]

    def _load(self) -> None:
        """The record plus the journal a killed run left (both only ever name paths inside the folder)."""
        record = self.root / RECORD
        if os.path.lexists(record):
            try:
                fd = open_nofollow(record, os.O_RDONLY)
                with os.fdopen(fd, "rb") as handle:
                    writers = json.loads(handle.read())["writers"]
                for name, files in writers.items():
                    self._add(name, files)
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                reason = exc if isinstance(exc, OwnershipError) else f"unreadable ({exc})"
                raise OwnershipError(
                    f"{record}: {reason}; medscout-data cannot tell its own files from yours there: "
                    f"remove it (then pass --force), or choose another {self.option}"
                ) from None
        journal = self.root / JOURNAL
        if os.path.lexists(journal):
            with os.fdopen(open_nofollow(journal, os.O_RDONLY), "rb") as handle:
                for line in handle:
                    try:
                        name, rel = json.loads(line)
                    except (ValueError, TypeError):
                        continue  # a line torn by a kill
                    self._add(name, [rel])

    def _add(self, writer: object, files: Iterable[object]) -> None:
        if not isinstance(writer, str):
            return
        good = set()
        for f in files:
            if isinstance(f, str) and (p := _clean_rel(f.removesuffix("/"))) is not None:
                good.add(str(p) + ("/" if f.endswith("/") else ""))  # `name/`: a whole tree
        self.owned.setdefault(writer, set()).update(good)

    # ------------------------------------------------------------------ claiming

    def ours(self, rel: str) -> bool:
        """Whether some writer's record lists `rel`."""
        return any(rel in files for files in self.owned.values())

    def adopt(self, rels: Iterable[str]) -> None:
        """Count `rels` as this writer's (for folders made before records existed, which the caller
        has recognised as its own by their content)."""
        self._add(self.writer, [r for r in rels if os.path.lexists(self.root / r)])

    def claim(self, rel: str) -> Path:
        """The path to write `rel` at: its folders made, nothing foreign or linked in the way."""
        key = _clean_rel(rel)
        if key is None:
            raise ValueError(f"{rel!r}: not a path inside the output folder")
        parent, _, name = key.rpartition("/")
        target = self._folder(parent) / name
        if key not in self.claimed:
            self._check_free(target, key)
            self._journal(key)
        return target

    def _journal(self, key: str) -> None:
        """Note `key` as this writer's before it is made (a killed run's files stay known as ours)."""
        try:
            os.write(self._journal_fd, (json.dumps([self.writer, key]) + "\n").encode("utf-8"))
        except OSError as exc:
            raise self._cannot_write(exc) from None
        self.claimed.add(key)

    def claim_tree(self, rel: str) -> Path:
        """A folder wholly this writer's, for files written by code that cannot claim each one
        (worker processes, other libraries): refused when it exists and no record lists it as a
        tree. Trees are never pruned (their content is the writer's to manage)."""
        clean = _clean_rel(rel)
        if clean is None:
            raise ValueError(f"{rel!r}: not a path inside the output folder")
        key = f"{clean}/"
        parent, _, name = clean.rpartition("/")
        target = self._folder(parent) / name
        if key not in self.claimed:
            try:
                mode: int | None = os.lstat(target).st_mode
            except FileNotFoundError:
                mode = None
            if mode is not None and not (stat.S_ISDIR(mode) and self.ours(key)):
                self._foreign(target, mode)
            self._journal(key)
        return target

    def claim_report(self, rel: str) -> Path:
        """The folder `rel` for a `RunReport.write`, its files claimed."""
        for name in RunReport.FILES:
            self.claim(f"{rel}/{name}")
        return self.root / rel

    def writers_under(self, prefix: str) -> list[str]:
        """Other writers whose recorded files lie under `prefix` (e.g. `images/xray/`)."""
        return sorted(
            name
            for name, files in self.owned.items()
            if name != self.writer and any(f.startswith(prefix) for f in files)
        )

    def _folder(self, rel: str) -> Path:
        """`root/rel`, made, each level a real folder (a link or a file there is foreign)."""
        known = self._dirs.get(rel)
        if known is not None:
            return known
        parent, _, name = rel.rpartition("/")
        path = self._folder(parent) / name
        try:
            mode: int | None = os.lstat(path).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None and not stat.S_ISDIR(mode):
            self._foreign(path, mode)
            mode = None
        if mode is None:
            os.mkdir(path)
        self._dirs[rel] = path
        return path

    def _check_free(self, target: Path, key: str) -> None:
        try:
            mode = os.lstat(target).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISREG(mode) and self.ours(key):
            return
        self._foreign(target, mode)

    def keep_out_foreign(self, folder: Path) -> None:
        """Refuse (or with --force delete) every file under `folder` that no record lists: for a
        folder of ours that is about to be replaced whole."""
        if folder.is_symlink() or not folder.is_dir():
            return
        for path in sorted(folder.rglob("*")):
            mode = os.lstat(path).st_mode
            if stat.S_ISDIR(mode):
                continue
            if not (stat.S_ISREG(mode) and self.ours(path.relative_to(self.root).as_posix())):
                self._foreign(path, mode)

    def _foreign(self, path: Path, mode: int) -> None:
        """Refuse what is in the way, or with `force` delete it (a link itself, never its target)."""
        if stat.S_ISLNK(mode):
            what = f"a symlink (to {os.readlink(path)}); medscout-data never writes through links"
        elif stat.S_ISDIR(mode):
            what = "a folder medscout-data did not make"
        else:
            what = f"a file medscout-data did not write (not in {RECORD})"
        if not self.force:
            forcing = ", or pass --force to delete it" if self.can_force else ""
            raise OwnershipError(f"{path}: {what}; move it away{forcing}, or choose another {self.option}")
        if stat.S_ISDIR(mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)
        self.removed.append(path)
        if len(self.removed) <= SHOWN:
            log.warning("--force: deleted %s (%s)", path, what.split(";")[0])
        elif len(self.removed) == SHOWN + 1:
            log.warning("--force: deleting more files in the way; their count follows at the end")

    # ------------------------------------------------------------------ committing

    def commit(self) -> list[Path]:
        """Delete this writer's files of last time that it did not write again (and no other writer
        lists), write the record, drop the journal. Returns the deleted files."""
        self.owned = {}
        self._load()  # again: another output of this process may have written the record meanwhile
        others = set().union(*(files for name, files in self.owned.items() if name != self.writer))
        previous = self.owned.get(self.writer, set())
        stale = sorted(rel for rel in previous - self.claimed - others if not rel.endswith("/"))
        deleted = [path for rel in stale if (path := self._delete_ours(rel)) is not None]
        self.owned[self.writer] = self.claimed | {rel for rel in previous if rel.endswith("/")}
        record = {"writers": {name: sorted(files) for name, files in sorted(self.owned.items()) if files}}
        try:
            write_json_atomic(record, self.root / RECORD)
        except OSError as exc:
            raise self._cannot_write(exc) from None
        (self.root / JOURNAL).unlink(missing_ok=True)
        if len(self.removed) > SHOWN:
            log.warning(
                "--force: deleted %d files medscout-data had not written in %s", len(self.removed), self.root
            )
        if deleted:
            log.info("removed %d file(s) of the previous %s in %s", len(deleted), self.writer, self.root)
        return deleted

    def _delete_ours(self, rel: str) -> Path | None:
        """Unlink a file we wrote, only as a plain file reached through real folders; then its empty
        folders."""
        path = PurePosixPath(rel)
        folder = self.root
        for part in path.parent.parts:
            folder = folder / part
            try:
                if not stat.S_ISDIR(os.lstat(folder).st_mode):
                    return None
            except FileNotFoundError:
                return None
        target = folder / path.name
        try:
            if not stat.S_ISREG(os.lstat(target).st_mode):
                return None
            os.unlink(target)
        except FileNotFoundError:
            return None
        for parent in [folder, *folder.parents]:
            if parent == self.root or self.root not in parent.parents:
                break
            try:
                os.rmdir(parent)
            except OSError:
                break
        return target


def owned_file(
    path: str | os.PathLike[str], writer: str, force: bool = False, option: str = "--out"
) -> OwnedFile:
    """A single output file (`score --json FILE`, `baseline --out FILE`, ...) under the same rules; its
    folder's record names it under `<writer> <file name>`."""
    return OwnedFile(Path(path), writer, force, option)


class OwnedFile:
    """Context manager yielding the path to write (see `owned_file`)."""

    def __init__(self, path: Path, writer: str, force: bool, option: str) -> None:
        refuse_managed(path, option)  # a file may sit at a shards root, never in its managed folders
        self.folder = OwnedFolder(
            path.parent, f"{writer} {path.name}", force, option, wait=True, check_root=False
        )
        self.name = path.name

    def __enter__(self) -> Path:
        self.folder.__enter__()
        try:
            return self.folder.claim(self.name)
        except BaseException as exc:
            self.folder.__exit__(type(exc), exc, exc.__traceback__)
            raise

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.folder.__exit__(kind, exc, tb)
