"""Helpers for the build tests: recipe variants and process-tree inspection."""

from __future__ import annotations

import re
from pathlib import Path


def recipe_variant(folder: Path, base: Path, *settings: str) -> Path:
    """A copy of the recipe `base` with each `key = value` of `settings` replacing that key's line."""
    text = base.read_text(encoding="utf-8")
    for setting in settings:
        key = setting.split("=")[0].strip()
        text, n = re.subn(rf"(?m)^{re.escape(key)}\s*=.*$", setting, text)
        assert n == 1, f"{key} must appear once in {base}"
    path = Path(folder) / f"variant-{abs(hash(settings)) % 10**8}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc)."""
    out, frontier = [], [pid]
    while frontier:
        children = []
        for parent in frontier:
            for task in Path(f"/proc/{parent}/task").glob("*"):
                try:
                    children += [int(c) for c in (task / "children").read_text().split()]
                except OSError:
                    continue
        out += children
        frontier = children
    return out
