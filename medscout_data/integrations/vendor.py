"""A private copy of the scorer for exported tool files, so they run where medscout-data is not installed.

The ms-swift plugin and the lmms-eval task score with
`medscout_data.evaluation.reward` (standard library only), the VLMEvalKit
wrapper with `medscout_data.evaluation.score` (the reward plus per-cell
tables). A training or evaluation box often has
ms-swift or lmms-eval but not this package (whose own dependencies include
SimpleITK, open_clip and FAISS). So `export` copies the exact source files the
runtime modules import at module level (found from their `import` statements,
following `medscout_data.*` imports only) into `<out>/_medscout/`, and each
exported entry file puts that folder first on `sys.path`. The copy is the
code that wrote the export, so rewards and scores match the bench it came
with. Third-party imports of those modules (pyarrow) come with every such
tool, since `datasets` needs them.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from medscout_data import __version__
from medscout_data.shards import write_bytes_atomic

if TYPE_CHECKING:
    from medscout_data.owned import OwnedFolder

VENDOR_DIR = "_medscout"
PACKAGE = "medscout_data"


def module_file(name: str) -> Path:
    """The source file of an importable module of this package."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ImportError(f"cannot find the source of {name}")
    return Path(spec.origin)


def is_module(name: str) -> bool:
    """Whether `name` is an importable module (not a function or constant inside one)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent that is a module, not a package
        return False


def top_level_imports(source: str, name: str, is_package: bool) -> set[str]:
    """Modules of this package that `source` (module `name`) imports at module level."""
    found = set()
    base = name if is_package else name.rpartition(".")[0]
    for node in ast.parse(source).body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                parts = base.split(".")
                module = ".".join(parts[: len(parts) - node.level + 1] + ([module] if module else []))
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {m for m in found if m == PACKAGE or m.startswith(PACKAGE + ".")}


def closure(roots: list[str]) -> list[str]:
    """Every module of this package that importing `roots` loads, parent packages included, sorted."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen or not is_module(name):
            continue  # `from module import name` of a function or constant
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:k]) for k in range(1, len(parts)))
        path = module_file(name)
        todo.extend(top_level_imports(path.read_text("utf-8"), name, path.name == "__init__.py"))
    return sorted(seen)


def write_vendored(folder: OwnedFolder, roots: list[str]) -> list[Path]:
    """Copy the sources `roots` need under `<folder>/_medscout/`; returns the files written.

    Every file is claimed in the folder's record first (owned.py: nothing foreign or linked in the
    way, and nothing foreign left inside the old copy, which is replaced whole). The copy is made in
    a hidden folder beside it and then renamed into place, so a full disk or a read-only folder
    leaves the earlier copy (or none), never half a scorer.
    """
    out = folder.root
    final = out / VENDOR_DIR
    relatives = []
    for name in closure(roots):
        source = module_file(name)
        relative = PurePosixPath(*name.split("."))
        relative = relative / "__init__.py" if source.name == "__init__.py" else relative.with_suffix(".py")
        relatives.append((source, relative))
    existed = os.path.lexists(final)
    written = [folder.claim(f"{VENDOR_DIR}/{relative}") for _, relative in relatives]
    folder.claim(f"{VENDOR_DIR}/README.txt")
    folder.keep_out_foreign(final)
    staging = out / f".{VENDOR_DIR}-new-{os.getpid()}"
    try:
        for source, relative in relatives:
            write_bytes_atomic(source.read_bytes(), staging / relative)
        note = f"Copied by `medscout-data export` {__version__}: the scorer the exported tool files import.\n"
        write_bytes_atomic(note.encode("utf-8"), staging / "README.txt")
        _replace_folder(staging, final)
    except BaseException:
        if not existed:  # only the empty folders the claims made: leave no half a copy behind
            _remove_empty_folders(final)
        raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return written


def _remove_empty_folders(top: Path) -> None:
    """Remove `top` and the folders under it, as long as they hold no file."""
    if top.is_symlink() or not top.is_dir():
        return
    for folder in sorted((p for p in top.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()
    with contextlib.suppress(OSError):
        top.rmdir()


def _replace_folder(new: Path, final: Path) -> None:
    """Put folder `new` at `final`, the earlier one (if any) out of the way first, then deleted."""
    old = final.with_name(f".{final.name}-old-{os.getpid()}")
    if final.is_symlink() or final.exists():
        final.rename(old)
    new.rename(final)
    if old.is_symlink():
        old.unlink()
    elif old.exists():
        shutil.rmtree(old)


BOOTSTRAP = f'''import os as _os
import sys as _sys

# The scorer copied beside this file by `medscout-data export` (the code that wrote this export);
# put first so it is used even where another medscout-data is installed.
_VENDORED = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "{VENDOR_DIR}")
if _os.path.isdir(_VENDORED) and _VENDORED not in _sys.path:
    _sys.path.insert(0, _VENDORED)
'''
