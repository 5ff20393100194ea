"""Branch names for `push-bench --revision`: git's ref-name rules (`git check-ref-format --branch`).

The Hub keeps a dataset repo's branches as git refs, so a name git would
refuse (`../../evil`, `a..b`, `x.lock`, `-f`) is refused before anything is
staged or sent, with the rule it breaks.
"""

from __future__ import annotations

import re

_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


def branch_problem(name: str) -> str | None:
    """Why `name` is not a valid branch name, or None when it is."""
    checks = (
        (not name, "is empty"),
        (name in ("@", "HEAD"), "is reserved"),
        (name.startswith("-"), "starts with '-'"),
        (bool(_FORBIDDEN.search(name)), "holds a space, a control character or one of ~ ^ : ? * [ \\"),
        (".." in name, "holds '..'"),
        ("@{" in name, "holds '@{'"),
        (name.startswith("/") or name.endswith("/") or "//" in name, "has an empty path component"),
        (name.endswith("."), "ends with '.'"),
        (
            any(p.startswith(".") or p.endswith(".lock") for p in name.split("/")),
            "has a part that starts with '.' or ends with '.lock'",
        ),
    )
    return next((why for bad, why in checks if bad), None)
