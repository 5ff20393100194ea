"""Reading prediction files: one JSON object per line, each naming an item and the model's text.

Accepted lines:

- `{"id": ..., "response": "<raw model text>"}` (what `baseline` and
  `evaluate` write; `evaluate` adds `model`, `mode`, `latency_s`, `usage`,
  `error`).
- ms-swift `swift infer` results (3.x and 4.x): `response`, `labels`,
  `logprobs`, `messages` with the reply appended, `images`, and whatever
  dataset columns survived. Without an `id` column (ms-swift drops it by
  default) the id is recovered from the exported image paths,
  `images/<modality>/<task>/<id>-<k>.png`, given as strings or as
  `{"path": ...}` dicts (or as image parts of the user message).
- A line of `evaluate` whose request failed (`error` set, no `response`) is
  not a prediction; it is reported only when no later line answers the item.

Nothing bad stops the read: a line that is not UTF-8, not JSON (or nested
too deeply, or holding an integer too long to convert), not an object, has
an unusable `id`, a `response` that is not a string, `messages` that are not
a list, or content parts whose text is not a string is recorded in the run
report with `FILE:LINE` and the reason, and its item counts as missing.
Two answers for one id are an error: scoring either would be a guess.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from medscout_data.evaluation.errors import ScoreError
from medscout_data.evaluation.reward import message_text  # noqa: F401  (moved to reward; importable here as before)
from medscout_data.report import RunReport

UTF8_BOM = b"\xef\xbb\xbf"
# The exported image name: `<id>-<k>.png` (integrations/export.py `image_relpath`).
_IMAGE_NAME = re.compile(r"(?P<id>.+)-(?P<k>\d+)\.png")


class BadLine(ValueError):
    """One prediction line that cannot be used; `reason` is its tag in the run report."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def read_predictions(path: str | Path, report: RunReport) -> dict[str, str]:
    """Item id -> raw response from a JSONL file (see the module docstring for the forms read).

    Bad lines are recorded in `report` and skipped; duplicate answers for one id
    are a `ScoreError`. `report.info["models"]` lists the `model` fields seen.
    """
    path = Path(path)
    predictions: dict[str, str] = {}
    failures: dict[str, str] = {}
    duplicates: list[str] = []
    models: set[str] = set()
    try:
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                if number == 1 and raw.startswith(UTF8_BOM):
                    raw = raw[len(UTF8_BOM) :]
                if not raw.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    record = parse_line(raw)
                    item_id, response, error = parse_record(record)
                except BadLine as exc:
                    report.skip(where, exc.reason, f"{where}: {exc}")
                    continue
                if isinstance(record.get("model"), str):
                    models.add(record["model"])
                if response is None:
                    failures[item_id] = f"{where}: request failed ({error})"
                    continue
                if item_id in predictions:
                    duplicates.append(item_id)
                predictions[item_id] = response
    except OSError as exc:
        raise ScoreError(f"{path}: cannot read predictions ({exc.strerror or exc})") from exc
    if duplicates:
        raise ScoreError(f"{path}: duplicate prediction ids ({len(duplicates)}): {preview(duplicates)}")
    for item_id, message in failures.items():
        if item_id not in predictions:
            report.skip(message.split(": ", 1)[0], "request-failed", message)
    report.count("predictions", len(predictions))
    report.info.setdefault("models", [])
    report.info["models"] = sorted(set(report.info["models"]) | models)
    return predictions


def parse_line(raw: bytes) -> Any:
    """One line's JSON value; `BadLine` for bytes that are not UTF-8 or text that is not JSON."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadLine("not-utf8", f"not UTF-8 text (byte {exc.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadLine("bad-json", f"not a JSON line ({exc.msg}, column {exc.colno})") from None
    except RecursionError:
        raise BadLine("bad-json", "JSON nested too deeply to read") from None
    except ValueError as exc:  # e.g. an integer literal beyond Python's int-conversion limit
        raise BadLine("bad-json", f"not a usable JSON line ({exc})") from None


def parse_record(record: Any) -> tuple[str, str | None, str]:
    """(id, response or None for a failed request, error) of one parsed line; `BadLine` otherwise."""
    if not isinstance(record, dict):
        raise BadLine(
            "not-an-object", f"a JSON {type(record).__name__}, not an object with `id` and `response`"
        )
    item_id = record_id(record)
    error = record.get("error")
    if error and record.get("response") is None:
        return item_id, None, str(error)
    return item_id, response_of(record), ""


def record_id(record: Mapping[str, Any]) -> str:
    """The line's item id: its `id` field, else recovered from exported image paths."""
    value = record.get("id")
    if isinstance(value, bool) or (value is not None and not isinstance(value, (str, int))):
        raise BadLine("bad-id", f"`id` must be a string, got {type(value).__name__}")
    if value not in (None, ""):
        return str(value)
    recovered = id_from_images(image_paths(record))
    if recovered is None:
        raise BadLine(
            "no-id",
            "no `id` field, and no exported image paths (images/<modality>/<task>/<id>-<k>.png) to "
            "recover it from; score the JSONL that `export` wrote, or carry the id column through inference",
        )
    return recovered


def image_paths(record: Mapping[str, Any]) -> list[str]:
    """Image paths of a line: `images` (strings or `{"path": ...}`), else the messages' image parts."""
    images = record.get("images")
    if isinstance(images, (str, Mapping)):
        images = [images]
    paths = [_image_path(image) for image in images] if isinstance(images, list) else []
    if not paths:
        messages = record.get("messages")
        for message in messages if isinstance(messages, list) else []:
            content = message.get("content") if isinstance(message, Mapping) else None
            for part in content if isinstance(content, list) else []:
                if isinstance(part, Mapping) and part.get("type") in ("image", "image_url"):
                    paths.append(_image_path(part.get("image") or part.get("image_url")))
    return [p for p in paths if p]


def _image_path(image: Any) -> str:
    if isinstance(image, str):
        return image
    if isinstance(image, Mapping):
        for key in ("path", "url", "image"):
            if isinstance(image.get(key), str):
                return image[key]
    return ""


def id_from_images(paths: Iterable[str]) -> str | None:
    """The item id shared by exported image names `<id>-0.png`, `<id>-1.png`, ... (in that order);
    None when there are none, a name is not of that form, or they disagree."""
    ids = []
    for k, path in enumerate(paths):
        match = _IMAGE_NAME.fullmatch(PurePosixPath(path.replace("\\", "/")).name)
        if match is None or int(match["k"]) != k:
            return None
        ids.append(match["id"])
    return ids[0] if ids and len(set(ids)) == 1 else None


def response_of(record: Mapping[str, Any]) -> str:
    """The model's text of one prediction record: `response`, else the last assistant message.

    `BadLine` when `response` is there but not a string, `messages` is not a
    list, an assistant content part's text is not a string, or there is no reply at all.
    """
    response = record.get("response")
    if isinstance(response, str):
        return response
    if response is not None:
        raise BadLine("bad-response", f"`response` must be a string, got {type(response).__name__}")
    messages = record.get("messages")
    if messages is None:
        raise BadLine("no-response", "no `response` and no `messages` holding the model's reply")
    if not isinstance(messages, list):
        raise BadLine("bad-messages", f"`messages` must be a list of messages, got {type(messages).__name__}")
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "assistant":
            return _content_text(message.get("content"))
    raise BadLine("no-response", "no `response`, and `messages` holds no assistant reply")


def _content_text(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise BadLine(
            "bad-content",
            f"assistant `content` must be text or a list of parts, got {type(content).__name__}",
        )
    texts = []
    for part in content:
        if not isinstance(part, Mapping):
            raise BadLine("bad-content", f"a content part must be an object, got {type(part).__name__}")
        if part.get("type", "text") == "text":
            if not isinstance(part.get("text"), str):
                raise BadLine(
                    "bad-content",
                    f"a text part's `text` must be a string, got {type(part.get('text')).__name__}",
                )
            texts.append(part["text"])
    return "".join(texts)


def preview(values: Sequence[str], limit: int = 10) -> str:
    """The first `limit` values, comma-separated, and how many more there are."""
    shown = ", ".join(map(str, values[:limit]))
    return shown + (f", ... ({len(values) - limit} more)" if len(values) > limit else "")
