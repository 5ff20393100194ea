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
  `{"path": ...}` dicts (or as image parts of the user message). A path not of
  that form (one with `..`, another folder, image k named other than `-k`) is a
  bad line (`bad-image-path`), and so is a line whose images name two items
  (`images-disagree`).
- A line of `evaluate` whose request failed (`error` set, no `response`) is
  not a prediction; it is reported only when no later line answers the item.

Nothing bad stops the read: a line that is not UTF-8, not JSON (or nested
too deeply, or holding an integer too long to convert), not an object, has
an unusable `id`, a `response` that is not a string, `messages` that are not
a list, or content parts whose text is not a string is recorded in the run
report with `FILE:LINE` and the reason, and its item counts as missing.
Every bad line is counted; the first `MAX_EXAMPLES` of each reason are listed.
Two answers for one id are an error: scoring either would be a guess, and so
is a file with no usable line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from medscout_data import MODALITIES, TASKS
from medscout_data.evaluation.errors import ScoreError
from medscout_data.evaluation.reward import message_text  # noqa: F401  (moved to reward; importable here as before)
from medscout_data.report import RunReport

UTF8_BOM = b"\xef\xbb\xbf"
# The exported image name: `<id>-<k>.png` (integrations/export.py `image_relpath`).
_IMAGE_NAME = re.compile(r"(?P<id>.+)-(?P<k>\d+)\.png")
MAX_EXAMPLES = 20  # bad lines listed per reason (all are counted)
MAX_LINE_BYTES = 64 << 20  # a longer line is skipped unread (`line-too-long`): memory stays flat


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
    if report.max_examples is None:
        report.max_examples = MAX_EXAMPLES
    usable = 0
    predictions: dict[str, str] = {}
    failures: dict[str, str] = {}
    duplicates: list[str] = []  # the first few
    duplicated = 0
    models: set[str] = set()
    try:
        with open(path, "rb") as handle:
            for number, raw in enumerate(_lines(handle), 1):
                if number == 1 and raw.startswith(UTF8_BOM):
                    raw = raw[len(UTF8_BOM) :]
                if not raw.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    if raw is _TOO_LONG:
                        raise BadLine("line-too-long", f"longer than {MAX_LINE_BYTES >> 20} MiB; not read")
                    record = parse_line(raw)
                    item_id, response, error = parse_record(record)
                except BadLine as exc:
                    report.skip(where, exc.reason, f"{where}: {exc}")
                    continue
                usable += 1
                if isinstance(record.get("model"), str):
                    models.add(record["model"])
                if response is None:
                    failures[item_id] = f"{where}: request failed ({error})"
                    continue
                if item_id in predictions:
                    duplicated += 1
                    if len(duplicates) < 10:
                        duplicates.append(item_id)
                predictions[item_id] = response
    except OSError as exc:
        raise ScoreError(f"{path}: cannot read predictions ({exc.strerror or exc})") from exc
    if duplicated:
        more = f", ... ({duplicated - len(duplicates)} more)" if duplicated > len(duplicates) else ""
        raise ScoreError(f"{path}: duplicate prediction ids ({duplicated}): {', '.join(duplicates)}{more}")
    if not usable:
        reasons = ", ".join(f"{r}: {n}" for r, n in report.skipped_by_reason().items())
        raise ScoreError(
            f"{path}: no usable prediction line"
            + (f" ({reasons}; first: {report.skips[0].message})" if report.skips else " (the file is empty)")
        )
    for item_id, message in failures.items():
        if item_id not in predictions:
            report.skip(message.split(": ", 1)[0], "request-failed", message)
    report.count("predictions", len(predictions))
    report.info.setdefault("models", [])
    report.info["models"] = sorted(set(report.info["models"]) | models)
    return predictions


_TOO_LONG = b"\0too long"  # stands for a line over MAX_LINE_BYTES (compared by identity)


def _lines(handle: Any) -> Iterator[bytes]:
    """The file's lines; a line over `MAX_LINE_BYTES` is passed over in chunks and given as
    `_TOO_LONG`, so no line is ever held whole beyond that size."""
    while raw := handle.readline(MAX_LINE_BYTES + 1):
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while (rest := handle.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                pass
            yield _TOO_LONG
            continue
        yield raw


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
    recovered = id_from_images(image_paths(record), strict=True)
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


def id_from_images(paths: Iterable[str], strict: bool = False) -> str | None:
    """The item id shared by exported image paths `.../images/<modality>/<task>/<id>-0.png`,
    `<id>-1.png`, ... (in that order); None when there are none. A path not of that form, or
    paths naming two items: None, or with `strict` a `BadLine` saying which."""
    try:
        ids = [_exported_image_id(path, k) for k, path in enumerate(paths)]
        if len(set(ids)) > 1:
            named = preview(sorted(set(ids)))
            raise BadLine("images-disagree", f"its images name {len(set(ids))} items ({named}), not one")
    except BadLine:
        if strict:
            raise
        return None
    return ids[0] if ids else None


def _exported_image_id(path: str, k: int) -> str:
    """The item id of image `k` of an export (`images/<modality>/<task>/<id>-<k>.png`);
    `BadLine` (`bad-image-path`) when the path is not one."""
    parts = PurePosixPath(path.replace("\\", "/")).parts
    match = _IMAGE_NAME.fullmatch(parts[-1]) if parts else None
    if ".." in parts:
        problem = "leaves the export (`..`)"
    elif match is None:
        problem = "is not an exported image name (<id>-<k>.png)"
    elif int(match["k"]) != k:
        problem = f"is named as image {match['k']}"
    elif len(parts) < 4 or parts[-4] != "images" or parts[-3] not in MODALITIES or parts[-2] not in TASKS:
        problem = "is not under images/<modality>/<task>/ of an export"
    else:
        return match["id"]
    raise BadLine("bad-image-path", f"image {k} ({path[:200]!r}) {problem}")


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
