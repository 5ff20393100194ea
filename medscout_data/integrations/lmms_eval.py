"""lmms-eval task functions for Med-Scout-Bench: what the exported task's `utils.py` calls.

lmms-eval reads the bench's Parquet shards itself (`datasets` decodes
`images` as PIL images); these small functions say how an item becomes a
request and how an answer is scored:

- `doc_to_visual`: the item's images in prompt order, as RGB (the grey
  values copied to three channels; nothing resized or re-encoded);
- `doc_to_text`: the Direct or CoT question, with lmms-eval's optional
  `pre_prompt` / `post_prompt` (what lmms-eval's simple models read);
- `doc_to_messages`: the item's messages (`tasks.messages`, the prompt
  `evaluate` sends): the mode's system turn, then one user turn of the images
  in prompt order (as decoded, not converted: lmms-eval's OpenAI-compatible
  model sends them as lossless PNG) and the question. lmms-eval's chat models
  read these; its OpenAI-compatible model ignores `--system_instruction`, so
  the task carries the system turn itself;
- `process_results`: the Dense Geometric Reward of the response (the
  project's scorer) as one record per item, carrying the item id, so logged
  samples name their item; the record goes to the item's cell metric
  (`ct_scale`, ...), to `avg` and to `total`;
- `aggregate_accuracy` / `aggregate_total`: mean accuracy / total reward x 100
  of the records of one metric: per cell, and over the whole bench (`avg`,
  the Med-Scout-Bench Avg).

Needs only the scorer, so the exported task runs with the copy beside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from medscout_data.evaluation.reward import Truth, completion_text, reward
from medscout_data.tasks.messages import item_messages, question_of

AVG_METRIC = "avg"
TOTAL_METRIC = "total"


def cell_metric(modality: str, task: str) -> str:
    """The metric name of one modality x task cell: `ct_scale`, `xray_anomaly`, ..."""
    return f"{modality}_{task}"


def doc_to_visual(doc: Mapping[str, Any]) -> list[Any]:
    """The item's images, in prompt order, as RGB PIL images."""
    return [image.convert("RGB") for image in doc["images"]]


def doc_to_text(doc: Mapping[str, Any], mode: str, kwargs: Mapping[str, Any] | None = None) -> str:
    """The Direct or CoT question, between lmms-eval's `pre_prompt` and `post_prompt` (empty by default)."""
    kwargs = kwargs or {}
    return f"{kwargs.get('pre_prompt') or ''}{question_of(doc, mode)}{kwargs.get('post_prompt') or ''}"


def doc_to_messages(
    doc: Mapping[str, Any], mode: str, kwargs: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The item's messages in lmms-eval's chat form (every content a part list; an image part is
    `{"type": "image", "url": PIL image}`): system prompt, then images and `doc_to_text`."""
    messages = item_messages(doc_to_text(doc, mode, kwargs), doc["images"], mode, image_part)
    for message in messages:
        if isinstance(message["content"], str):
            message["content"] = [{"type": "text", "text": message["content"]}]
    return messages


def image_part(image: Any) -> dict[str, Any]:
    """One image of a document (a PIL image, as `datasets` decodes it) as an lmms-eval chat part."""
    return {"type": "image", "url": image}


def doc_to_target(doc: Mapping[str, Any]) -> str:
    """The canonical answer text."""
    return doc["answer"]


def process_results(
    doc: Mapping[str, Any], results: Sequence[Any], mode: str, profile: str = "official"
) -> dict[str, dict[str, Any]]:
    """One record of the item's rewards, under its cell metric, `avg` and `total`.

    `score` is the accuracy (lmms-eval's standard-error code reads `score`)."""
    response = completion_text(results[0]) if results else ""
    value = reward(response, Truth.from_item(doc), profile, mode)
    record = {
        "id": doc["id"],
        "modality": doc["modality"],
        "task": doc["task"],
        "variant": doc.get("variant") or "",
        "score": value.accuracy,
        "format": value.format,
        "cot": value.cot,
        "total": value.total,
    }
    return {cell_metric(doc["modality"], doc["task"]): record, AVG_METRIC: record, TOTAL_METRIC: record}


def aggregate_accuracy(records: Sequence[Mapping[str, Any]]) -> float:
    """Mean accuracy x 100 of the records (0 when there are none)."""
    return 100.0 * sum(r["score"] for r in records) / len(records) if records else 0.0


def aggregate_total(records: Sequence[Mapping[str, Any]]) -> float:
    """Mean total reward x 100 (accuracy + format, + CoT in cot mode)."""
    return 100.0 * sum(r["total"] for r in records) / len(records) if records else 0.0
