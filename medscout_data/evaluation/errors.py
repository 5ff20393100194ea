"""The error of the evaluation path: predictions, a bench or a model server that cannot be used."""

from __future__ import annotations

from medscout_data.errors import StageError


class ScoreError(StageError):
    """Predictions or a bench that cannot be scored; the message names the file and the reason."""
