"""Run reports: every skipped input with its reason, counts, and a summary.

Nothing is dropped silently. A stage records each bad or filtered input with
`skip(path, reason, message)`, counts what it found and used, and ends with
`summary()` logged and `write()` to `errors.parquet` + `report.json`. A report
of user-written lines (a predictions file may hold a million bad ones) keeps
at most `max_examples` skips per reason, with their log lines, and counts the
rest: memory and output stay flat, the totals stay exact.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medscout_data.schema import ERROR_SCHEMA
from medscout_data.shards import write_json_atomic, write_rows_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Skip:
    """One input that did not make it, and why."""

    path: str
    reason: str
    message: str


@dataclass
class RunReport:
    """Counts and skips of one stage run."""

    stage: str
    counts: Counter[str] = field(default_factory=Counter)
    skips: list[Skip] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    max_examples: int | None = None  # skips kept (and logged) per reason; None: all
    dropped: Counter[str] = field(default_factory=Counter)  # skips counted beyond max_examples
    _kept: Counter[str] = field(default_factory=Counter)

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] += n

    def skip(self, path: str, reason: str, message: str) -> None:
        """Record a skipped input; the message must name the file and the reason."""
        if self.max_examples is not None and self._kept[reason] >= self.max_examples:
            if not self.dropped[reason]:
                log.warning("further %s skips are counted, not listed", reason)
            self.dropped[reason] += 1
            return
        self._kept[reason] += 1
        self.skips.append(Skip(str(path), reason, message))
        log.warning("skipped %s: %s", path, message)

    def extend(self, skips: list[Skip]) -> None:
        for item in skips:
            self.skip(item.path, item.reason, item.message)

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(sorted((Counter(s.reason for s in self.skips) + self.dropped).items()))

    @property
    def skipped(self) -> int:
        """Every skip, listed or only counted."""
        return len(self.skips) + sum(self.dropped.values())

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "counts": dict(sorted(self.counts.items())),
            "skipped_by_reason": self.skipped_by_reason(),
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
            **self.info,
        }

    def summary(self) -> str:
        """One readable paragraph: counts, skips by reason, time."""
        parts = [f"{k}={v}" for k, v in sorted(self.counts.items())]
        reasons = ", ".join(f"{r}: {n}" for r, n in self.skipped_by_reason().items())
        text = f"{self.stage}: {' '.join(parts) or 'nothing counted'}"
        text += f"; skipped {self.skipped}" + (f" ({reasons})" if reasons else "")
        return text + f"; {self.seconds:.1f} s"

    FILES = ("errors.parquet", "report.json")  # what `write` makes (an owned folder claims them first)

    def write(self, folder: Path) -> None:
        """errors.parquet (one row per skip) and report.json in `folder`."""
        rows = [{"path": s.path, "reason": s.reason, "message": s.message} for s in self.skips]
        write_rows_atomic(rows, ERROR_SCHEMA, Path(folder) / "errors.parquet")
        write_json_atomic(self.as_dict(), Path(folder) / "report.json")
