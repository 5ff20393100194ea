"""The error every stage raises when it cannot run: the CLI shows its message, no traceback."""

from __future__ import annotations


class StageError(RuntimeError):
    """A stage cannot run or finish; the message names the file or setting at fault and what to do."""
