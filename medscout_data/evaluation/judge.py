"""`--extract judge`: an LLM judge rewrites each response into the canonical answer format.

The paper's protocol: a judge model behind another OpenAI-compatible endpoint
reads the question and the model's response and writes the model's final
answer in the canonical format (or NONE), with a fixed prompt versioned as
`JUDGE_PROMPT_VERSION`; the scorer then reads the judge's text strictly. The
judge is told to keep the model's own values and conventions, never to solve
the question, and never sees the truth.

A response whose answer is already canonical is kept as it is (the judge would
copy it), so only the others are sent. Every judged answer is appended to a
cache (`judged.jsonl`, one line per judgement, keyed by the sha256 of prompt
version, judge model, item id and response), so rescoring never asks twice. A
judgement that fails after the client's retries is not cached: that item falls
back to the strict reading, and is listed in `scores.json` (`judge_failed`).

Responses to MIMIC-CXR-derived items (X-ray items, and the ids in `restricted`)
go only to a judge on loopback or a private network unless `allow_remote_mimic`
(egress.py); the refusal comes before any request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from medscout_data.evaluation.chat import ChatClient, Endpoint, Redactor, drain
from medscout_data.evaluation.egress import refuse_remote_mimic
from medscout_data.evaluation.extraction import AnswerShape, is_canonical
from medscout_data.evaluation.predictions import UTF8_BOM
from medscout_data.evaluation.score import BenchItem, extract_answer
from medscout_data.owned import open_in_place

log = logging.getLogger(__name__)

JUDGE_PROMPT_VERSION = "medscout-judge-1"
NO_ANSWER = "NONE"
JUDGE_SYSTEM = (
    "You convert a model's free-form reply to a visual question into one canonical answer string. "
    "You do not see the images and you never solve the question yourself."
)
JUDGE_TEMPLATE = """The question the model was asked:
<question>
{question}
</question>

The model's reply:
<reply>
{response}
</reply>

Write the model's final answer in exactly this format: {format}
Rules: keep the model's own values, even if they look wrong; do not solve, correct or complete the question; \
keep the index and coordinate conventions the model used; if the reply gives several answers, take its final \
one; if it gives no usable answer, write {none}.
Reply with the canonical answer only, or {none}."""
FORMATS = {
    "tier": "{n} labels separated by commas, each exactly `Label 1` or `Label 2`, e.g. `Label 1, Label 2`",
    "box": "{n} boxes separated by commas, each `(x1, y1, x2, y2)` with integers on the 0-1000 grid",
    "jigsaw": "{n} integers separated by single spaces, e.g. `2 0 3 1`",
    "anomaly": "one integer, the cell index, e.g. `9`",
}


def judge_messages(question: str, response: str, shape: AnswerShape) -> list[dict[str, Any]]:
    """The judge's chat messages for one response (prompt `JUDGE_PROMPT_VERSION`)."""
    answer_format = FORMATS[shape.kind].format(n=shape.size)
    text = JUDGE_TEMPLATE.format(question=question, response=response, format=answer_format, none=NO_ANSWER)
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": text}]


def judged_answer(reply: str) -> str:
    """The answer text of a judge's reply ("" for NONE)."""
    answer = extract_answer(reply).strip("` \n")
    return "" if answer.upper() == NO_ANSWER else answer


def cache_key(judge_model: str, item_id: str, response: str) -> str:
    text = json.dumps([JUDGE_PROMPT_VERSION, judge_model, item_id, response], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_cache(path: Path) -> dict[str, str]:
    """key -> answer of a judgement cache; unreadable lines (a torn last line) are left out."""
    cache: dict[str, str] = {}
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return cache
    for line in data.removeprefix(UTF8_BOM).splitlines():
        try:
            record = json.loads(line)
            cache[str(record["key"])] = str(record["answer"])
        except (ValueError, KeyError, TypeError):
            log.warning("%s: an unreadable judgement line is ignored (it will be judged again)", path)
    return cache


@dataclass
class JudgeExtractor:
    """`--extract judge` for `score_file` / `score_bench`: judged answers, cached in `cache`."""

    endpoint: Endpoint
    cache: Path
    questions: Mapping[str, str]
    redact: Redactor = field(default_factory=Redactor)
    progress: bool = True
    name: str = "judge"
    stats: dict[str, Any] = field(default_factory=dict)
    restricted: frozenset[str] = frozenset()  # MIMIC-derived ids besides the X-ray items
    allow_remote_mimic: bool = False

    def answers(self, items: Sequence[BenchItem], predictions: Mapping[str, str]) -> dict[str, str]:
        cached = read_cache(self.cache)
        answers: dict[str, str] = {}
        todo: list[tuple[BenchItem, str]] = []
        kept = 0
        for item in items:
            response = predictions.get(item.id)
            if response is None:
                continue
            shape = AnswerShape.of(item.truth)
            key = cache_key(self.endpoint.model, item.id, response)
            if is_canonical(extract_answer(response), shape):
                answers[item.id], kept = extract_answer(response), kept + 1
            elif key in cached:
                answers[item.id] = cached[key]
            else:
                todo.append((item, response))
        if not self.allow_remote_mimic:
            count = sum(item.modality == "xray" or item.id in self.restricted for item, _ in todo)
            refuse_remote_mimic(
                self.endpoint.base_url,
                self.endpoint.public_url,
                count,
                "the judge",
                "--judge-allow-remote-mimic",
            )
        failed = asyncio.run(self._judge(todo, answers)) if todo else []
        for item_id in failed:  # the strict reading stands
            answers[item_id] = extract_answer(predictions[item_id])
        self.stats = {"canonical_kept": kept, "judged_now": len(todo) - len(failed), "failed": failed}
        self.stats["from_cache"] = len(answers) - kept - len(todo)
        return answers

    async def _judge(self, todo: list[tuple[BenchItem, str]], answers: dict[str, str]) -> list[str]:
        failed: list[str] = []
        bar = tqdm(
            total=len(todo), desc=f"judge {self.endpoint.model}", unit="req", disable=not self.progress
        )
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        fd = open_in_place(self.cache, os.O_WRONLY | os.O_APPEND | os.O_CREAT)  # never through a link

        async def jobs() -> AsyncIterator[tuple[BenchItem, str]]:
            for job in todo:
                yield job

        async def handle(job: tuple[BenchItem, str]) -> None:
            item, response = job
            messages = judge_messages(self.questions.get(item.id, ""), response, AnswerShape.of(item.truth))
            reply = await chat.complete(messages, max_tokens=256, temperature=0.0)
            bar.update(1)
            if reply.error or reply.text is None:
                failed.append(item.id)
                log.warning("judge failed for %s: %s", item.id, reply.error)
                bar.set_postfix(errors=len(failed), refresh=False)
                return
            answers[item.id] = judged_answer(reply.text)
            line = {
                "key": cache_key(self.endpoint.model, item.id, response),
                "id": item.id,
                "judge_model": self.endpoint.model,
                "prompt_version": JUDGE_PROMPT_VERSION,
                "answer": answers[item.id],
                "reply": reply.text,
            }
            os.write(fd, self.redact(json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8"))

        try:
            async with ChatClient(self.endpoint, self.redact) as chat:
                await drain(jobs(), handle, self.endpoint.concurrency)
        finally:
            os.close(fd)
            bar.close()
        return sorted(failed)

    def describe(self) -> dict[str, Any]:
        return {
            "method": "judge",
            "prompt_version": JUDGE_PROMPT_VERSION,
            "judge_model": self.endpoint.model,
            "judge_base_url": self.endpoint.public_url,
            "cache": str(self.cache),
            "canonical_kept": self.stats.get("canonical_kept", 0),
            "from_cache": self.stats.get("from_cache", 0),
            "judged_now": self.stats.get("judged_now", 0),
            "judge_failed": self.stats.get("failed", []),
        }
