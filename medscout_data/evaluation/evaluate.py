"""evaluate: ask a model every bench item over an OpenAI-compatible server, then score it.

For each item, one chat request: the messages of `tasks.messages.row_messages`
(the one prompt every exporter writes too): the mode's system prompt, then one
user message with every image of the item in prompt order as a
`data:image/png;base64,` URL of the shard's own PNG bytes (no decode, no
re-encode), then the question (`question` or `question_cot`). Requests run
concurrently with backpressure (chat.py).

`DIR/predictions.jsonl` gets one line per finished request, written with a
single append and so flushed per answer: id, model, mode, response, error,
latency, token usage, finish reason. A rerun of the same command sends only the
items with no answered line (failed ones are asked again), so however often a
run is killed, the folder ends with every item answered exactly once. A line
torn by a kill mid-write is cut off at the next start. `DIR/run.json` pins the
settings that make answers comparable (bench, model, mode, max tokens,
temperature, system prompt); a rerun with other ones is refused. A lock on
DIR keeps two runs out of each other's way. DIR is an owned folder (owned.py):
a file of the user's, or a link, where one of evaluate's files goes is
refused, and predictions.jsonl is appended to and cut only when it is a plain
file of its own (no link, no second hard link).

At the end the items in scope are scored with the chosen extraction, written
to `DIR/scores.json` (what `score --json` writes) and returned for the table.

MIMIC-CXR-derived items (every X-ray item) go only to servers on loopback or a
private network unless `allow_remote_mimic` says otherwise (egress.py): the run
is refused before a byte is sent.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from medscout_data import MODALITIES, TASKS, __version__
from medscout_data.evaluation.chat import ChatClient, Endpoint, Redactor, Reply, drain, redactor_for
from medscout_data.evaluation.egress import refuse_remote_mimic, url_is_local
from medscout_data.evaluation.errors import ScoreError
from medscout_data.evaluation.extraction import METHODS, STRICT, LenientExtractor
from medscout_data.evaluation.integrity import png_problem, row_groups
from medscout_data.evaluation.judge import JudgeExtractor
from medscout_data.evaluation.predictions import BadLine, parse_line, parse_record, read_predictions
from medscout_data.evaluation.score import (
    MODES,
    PROFILES,
    BenchItem,
    BenchSource,
    Extractor,
    ScoreResult,
    bench_items,
    load_bench,
    load_hub_bench,
    read_metadata,
    resolve_bench,
    score_bench,
    scores_document,
)
from medscout_data.locking import stage_lock
from medscout_data.owned import OwnedFolder, open_in_place, refuse_managed
from medscout_data.provenance import is_mimic_derived
from medscout_data.report import RunReport
from medscout_data.shards import write_json_atomic
from medscout_data.tasks.messages import question_of, row_messages, system_prompt

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.jsonl"
SCORES = "scores.json"
RUN_RECORD = "run.json"
JUDGED = "judged.jsonl"
READ_ROWS = 32  # rows read from a shard at a time
PINNED = ("bench", "model", "mode", "max_tokens", "temperature", "system_prompt_sha256")


@dataclass(frozen=True)
class EvaluateOptions:
    """What to ask, whom, and how to score it."""

    bench: str
    out: Path
    endpoint: Endpoint
    mode: str = "direct"
    max_tokens: int | None = None
    temperature: float = 0.0
    limit: int | None = None  # items per modality x task cell
    modalities: tuple[str, ...] = MODALITIES
    tasks: tuple[str, ...] = TASKS
    profile: str = "official"
    extract: str = "strict"
    judge: Endpoint | None = None
    progress: bool = True
    allow_remote_mimic: bool = False  # send MIMIC-derived items to a remote model server (egress.py)
    judge_allow_remote_mimic: bool = False  # the same for the judge's server

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("mode", self.mode, MODES),
            ("profile", self.profile, PROFILES),
            ("extract", self.extract, METHODS),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; use one of {', '.join(allowed)}")
        if self.extract == "judge" and self.judge is None:
            raise ValueError("--extract judge needs --judge-base-url and --judge-model")
        if self.limit is not None and self.limit < 1:
            raise ValueError("--limit must be at least 1")

    def run_record(self) -> dict[str, Any]:
        """The settings a rerun must share, and where the answers came from."""
        prompt = system_prompt(self.mode).encode("utf-8")
        return {
            "created_by": f"medscout-data {__version__}",
            "bench": bench_identity(self.bench),
            "model": self.endpoint.model,
            "base_url": self.endpoint.public_url,
            "mode": self.mode,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "system_prompt_sha256": hashlib.sha256(prompt).hexdigest(),
        }


@dataclass
class EvaluateResult:
    """What a run did and scored."""

    result: ScoreResult
    document: dict[str, Any]
    report: RunReport
    sent: int = 0
    failed: int = 0
    unanswered: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- requests (pure)


def select_items(
    items: Sequence[BenchItem], modalities: Sequence[str], tasks: Sequence[str], limit: int | None
) -> list[BenchItem]:
    """The items in scope, in bench order: these modalities and tasks, the first `limit` per cell."""
    taken: dict[tuple[str, str], int] = {}
    chosen = []
    for item in items:
        cell = (item.modality, item.task)
        if item.modality in modalities and item.task in tasks and taken.get(cell, 0) < (limit or len(items)):
            taken[cell] = taken.get(cell, 0) + 1
            chosen.append(item)
    return chosen


def data_url(png: bytes) -> str:
    """The PNG bytes as they are, as a data URL."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image_url_part(image: dict[str, Any]) -> dict[str, Any]:
    """An image of a row (its PNG bytes as they are) as an OpenAI `image_url` part."""
    return {"type": "image_url", "image_url": {"url": data_url(image["bytes"])}}


def request_messages(row: dict[str, Any], mode: str) -> list[dict[str, Any]]:
    """The item's messages (`tasks.messages.row_messages`), images as PNG data URLs."""
    return row_messages(row, mode, image_url_part)


def request_body(row: dict[str, Any], options: EvaluateOptions) -> bytes:
    """The JSON request body of `request_messages`, built from pieces: base64 is JSON-safe as
    it is, so the images are spliced in as bytes instead of being scanned by a JSON encoder
    (which costs more CPU than the rest of a request). Equal, once parsed, to the plain form."""
    head: dict[str, Any] = {"model": options.endpoint.model, "temperature": options.temperature}
    if options.max_tokens is not None:
        head["max_tokens"] = options.max_tokens
    question = question_of(row, options.mode)
    images = b",".join(
        b'{"type":"image_url","image_url":{"url":"data:image/png;base64,'
        + base64.b64encode(image["bytes"])
        + b'"}}'
        for image in row["images"]
    )
    return b"".join(
        [
            json.dumps(head)[:-1].encode("ascii"),
            b',"messages":[{"role":"system","content":',
            json.dumps(system_prompt(options.mode)).encode("ascii"),
            b'},{"role":"user","content":[',
            images,
            b',{"type":"text","text":',
            json.dumps(question).encode("ascii"),
            b"}]}]}",
        ]
    )


def image_problem(row: dict[str, Any]) -> str:
    """Why a row's images cannot be sent (empty when they can)."""
    images = row.get("images") or []
    if not images:
        return "the item has no images"
    for k, image in enumerate(images):
        problem = png_problem((image or {}).get("bytes") or b"")
        if problem:
            return f"image {k}: {problem} (the bench is damaged)"
    return ""


def prediction_record(item_id: str, reply: Reply, options: EvaluateOptions) -> dict[str, Any]:
    """One line of predictions.jsonl."""
    return {
        "id": item_id,
        "model": options.endpoint.model,
        "mode": options.mode,
        "response": reply.text,
        "error": reply.error or None,
        "latency_s": round(reply.latency_s, 4),
        "usage": reply.usage,
        "finish_reason": reply.finish_reason,
    }


# ---------------------------------------------------------------- the folder


def bench_identity(bench: str) -> str:
    """What a run pins of `--bench`: a local bench's absolute path (so `shards`, `./shards` and
    `/abs/shards` are one bench), a Hub repo id as given."""
    path = Path(str(bench)).expanduser()
    return str(path.resolve()) if path.exists() else str(bench)


OWN_FILES = (RUN_RECORD, PREDICTIONS, SCORES, JUDGED)  # what evaluate writes in DIR


def claim_folder(folder: OwnedFolder) -> None:
    """Claim evaluate's files in DIR (owned.py: a file of the user's or a link there is refused).
    A folder from before records existed is adopted when its run.json is evaluate's."""
    out = folder.root
    if (
        not os.path.lexists(out / RUN_RECORD)
        and os.path.lexists(out / PREDICTIONS)
        and not folder.ours(PREDICTIONS)
    ):
        raise ScoreError(
            f"{out}: holds {PREDICTIONS} but no {RUN_RECORD}, so it is not an evaluate folder; "
            "choose another --out"
        )
    if not folder.ours(RUN_RECORD) and _is_run_record(folder.root / RUN_RECORD):
        folder.adopt(OWN_FILES)
    for name in OWN_FILES:
        folder.claim(name)


def _is_run_record(path: Path) -> bool:
    try:
        if path.is_symlink():
            return False
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and str(record.get("created_by", "")).startswith("medscout-data")


def check_folder(out: Path, record: dict[str, Any]) -> None:
    """Refuse a folder that is not ours, or ours with other pinned settings; write run.json."""
    path = out / RUN_RECORD
    if not path.exists():
        if (out / PREDICTIONS).exists():
            raise ScoreError(
                f"{out}: holds {PREDICTIONS} but no {RUN_RECORD}, so it is not an evaluate folder; "
                "choose another --out"
            )
        write_json_atomic(record, path)
        return
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ScoreError(f"{path}: unreadable ({exc}); choose another --out") from exc
    if isinstance(previous, dict) and isinstance(previous.get("bench"), str):
        previous["bench"] = bench_identity(previous["bench"])  # a record from before absolute paths
    changed = (
        [key for key in PINNED if previous.get(key) != record[key]] if isinstance(previous, dict) else []
    )
    if not isinstance(previous, dict) or changed:
        detail = ", ".join(f"{k} {previous.get(k)!r} -> {record[k]!r}" for k in changed) or "not an object"
        raise ScoreError(
            f"{out}: answers there were made with other settings ({detail}); rerun with the same "
            "settings to complete it, or choose another --out"
        )
    if previous.get("base_url") != record["base_url"]:
        write_json_atomic({**previous, "base_url": record["base_url"]}, path)


def cut_torn_tail(path: Path) -> int:
    """Cut a last line left unfinished by a killed run (bytes after the last newline); how many."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    with os.fdopen(open_in_place(path, os.O_RDWR), "rb+") as handle:
        keep = size
        while keep > 0:
            handle.seek(max(keep - 65536, 0))
            chunk = handle.read(keep - max(keep - 65536, 0))
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = max(keep - 65536, 0) + newline + 1
                break
            keep = max(keep - 65536, 0)
        if keep < size:
            handle.truncate(keep)
            log.warning("%s: cut a torn last line (%d bytes) left by a killed run", path, size - keep)
    return size - keep


def answered_ids(path: Path) -> set[str]:
    """Ids with an answer (not a failed request) in our predictions file; quietly, since the
    final scoring reports every line."""
    answered: set[str] = set()
    if not path.exists():
        return answered
    with open(path, "rb") as handle:
        for raw in handle:
            try:
                item_id, response, _ = parse_record(parse_line(raw))
            except BadLine:
                continue
            if response is not None:
                answered.add(item_id)
    return answered


# ---------------------------------------------------------------- reading the bench's rows


ROW_COLUMNS = ["id", "images", "question", "question_cot"]


def bench_rows(source: BenchSource, wanted: set[str]) -> Iterator[dict[str, Any]]:
    """The rows (id, images, both questions) of the wanted items, a few at a time, in bench order."""
    value_set = pa.array(sorted(wanted), pa.string())
    for batch in _batches(source):
        kept = batch.filter(pc.is_in(batch.column("id"), value_set=value_set))
        yield from kept.to_pylist()


def _batches(source: BenchSource) -> Iterator[pa.RecordBatch | pa.Table]:
    if source.is_hub:
        import datasets

        dataset = datasets.load_dataset(source.repo_id, split="test").select_columns(ROW_COLUMNS)
        yield from dataset.with_format("arrow").iter(batch_size=READ_ROWS)
        return
    for path in source.files:
        try:
            yield from row_groups(path, ROW_COLUMNS)
        except (pa.ArrowException, OSError) as exc:
            raise ScoreError(f"{path}: cannot read the bench's images ({exc})") from exc


def mimic_ids(source: BenchSource) -> frozenset[str]:
    """The ids of the bench's MIMIC-CXR-derived items (provenance.py)."""
    table = load_bench(source, ["id", "modality", "source"])
    columns = [table.column(name).to_pylist() for name in ("id", "modality", "source")]
    return frozenset(i for i, m, s in zip(*columns, strict=True) if is_mimic_derived(m, s))


def check_egress(options: EvaluateOptions, source: BenchSource, scope: Sequence[BenchItem]) -> None:
    """Refuse, before any request, to send MIMIC-derived items to a remote model server or judge
    (unless allowed)."""
    servers = [(options.endpoint, options.allow_remote_mimic, "the model server", "--allow-remote-mimic")]
    if options.extract == "judge" and options.judge is not None:
        servers.append(
            (options.judge, options.judge_allow_remote_mimic, "the judge", "--judge-allow-remote-mimic")
        )
    restricted: frozenset[str] | None = None
    for endpoint, allowed, who, override in servers:
        if allowed or url_is_local(endpoint.base_url):
            continue
        restricted = mimic_ids(source) if restricted is None else restricted
        count = sum(item.id in restricted for item in scope)
        refuse_remote_mimic(endpoint.base_url, endpoint.public_url, count, who, override)


def bench_questions(source: BenchSource, mode: str) -> dict[str, str]:
    """Item id -> the question of the mode (for the judge)."""
    column = "question_cot" if mode == "cot" else "question"
    table = (
        load_hub_bench(source.repo_id, ["id", column])
        if source.is_hub
        else read_metadata(source.files, ["id", column])
    )
    return dict(zip(table.column("id").to_pylist(), table.column(column).to_pylist(), strict=True))


# ---------------------------------------------------------------- asking


@dataclass
class _Asker:
    """Sends the to-do rows and appends one line per reply."""

    options: EvaluateOptions
    fd: int
    redact: Redactor
    bar: tqdm
    check_images: bool = True  # False when the bench check already covered every PNG byte
    sent: int = 0
    failed: int = 0

    async def run(self, rows: Iterator[dict[str, Any]]) -> None:
        async with ChatClient(self.options.endpoint, self.redact) as chat:
            self.chat = chat
            await drain(_rows_async(rows), self.ask, self.options.endpoint.concurrency)

    async def ask(self, row: dict[str, Any]) -> None:
        problem = image_problem(row) if self.check_images else ""
        if problem:
            reply = Reply(None, 0.0, error=problem)
        else:
            reply = await self.chat.send(request_body(row, self.options))
            self.sent += 1
        line = json.dumps(prediction_record(row["id"], reply, self.options), ensure_ascii=False) + "\n"
        _append(self.fd, self.redact(line).encode("utf-8"))
        self.bar.update(1)
        if reply.error:
            self.failed += 1
            self.bar.set_postfix(errors=self.failed, refresh=False)
            log.info("%s: %s", row["id"], reply.error)


async def _rows_async(rows: Iterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """The rows, read a few at a time in one reader thread, so the requests in flight never wait
    on disk (one thread, not a pool: each thread would grow its own malloc arena)."""
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-reader") as reader:
        while chunk := await loop.run_in_executor(reader, _take, rows, READ_ROWS):
            for row in chunk:
                yield row


def _take(rows: Iterator[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    return [row for _, row in zip(range(n), rows, strict=False)]


def _append(fd: int, data: bytes) -> None:
    """One line with one append (a kill leaves whole lines, or one torn last line)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# ---------------------------------------------------------------- the run


def make_extractor(
    method: str,
    judge: Endpoint | None,
    cache: Path,
    source: BenchSource,
    mode: str,
    redact: Redactor,
    progress: bool,
    allow_remote_mimic: bool = False,
) -> Extractor | None:
    """The extractor of `--extract` (None: strict); the judge refuses to send MIMIC-derived
    items to a remote server unless `allow_remote_mimic`."""
    if method == "lenient":
        return LenientExtractor()
    if method == "judge":
        assert judge is not None
        remote = not allow_remote_mimic and not url_is_local(judge.base_url)
        restricted = mimic_ids(source) if remote else frozenset()
        return JudgeExtractor(
            judge, cache, bench_questions(source, mode), redact, progress,
            restricted=restricted, allow_remote_mimic=allow_remote_mimic,
        )  # fmt: skip
    return None


def evaluate(options: EvaluateOptions, command: str = "medscout-data evaluate") -> EvaluateResult:
    """Ask every item in scope that has no answer yet, then score all of them."""
    source = resolve_bench(options.bench)
    items = bench_items(load_bench(source), source.location)
    scope = select_items(items, options.modalities, options.tasks, options.limit)
    if not scope:
        raise ScoreError(
            f"{options.bench}: no bench items for modality {options.modalities} / task {options.tasks}"
        )
    check_egress(options, source, scope)
    out = Path(options.out)
    redact = redactor_for(options.endpoint, *([options.judge] if options.judge else []))
    refuse_managed(out, "--out")  # before the lock file: nothing of ours inside the split's folders
    with (
        stage_lock(out, "evaluate", command),
        _redacted_logs(redact),
        OwnedFolder(out, "evaluate", can_force=False) as folder,
    ):
        claim_folder(folder)
        check_folder(out, options.run_record())
        predictions_path = out / PREDICTIONS
        cut_torn_tail(predictions_path)
        answered = answered_ids(predictions_path)
        todo = {item.id for item in scope} - answered
        asker = _ask(options, source, todo, predictions_path, redact)
        report = RunReport("evaluate")
        result, document = _score(options, source, scope, predictions_path, report, redact)
        write_json_atomic(document, out / SCORES)
    unanswered = sorted(set(result.missing_ids))
    return EvaluateResult(result, document, report, asker.sent, asker.failed, unanswered)


def _ask(
    options: EvaluateOptions, source: BenchSource, todo: set[str], path: Path, redact: Redactor
) -> _Asker:
    fd = open_in_place(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    bar = tqdm(
        total=len(todo), desc=f"evaluate {options.endpoint.model}", unit="req", disable=not options.progress
    )
    asker = _Asker(options, fd, redact, bar, check_images=source.is_hub)
    try:
        if todo:
            asyncio.run(asker.run(bench_rows(source, todo)))
    finally:
        os.close(fd)
        bar.close()
    return asker


def _score(
    options: EvaluateOptions,
    source: BenchSource,
    scope: list[BenchItem],
    path: Path,
    report: RunReport,
    redact: Redactor,
) -> tuple[ScoreResult, dict[str, Any]]:
    ids = {item.id for item in scope}
    predictions = {k: v for k, v in read_predictions(path, report).items() if k in ids}
    extractor = make_extractor(
        options.extract, options.judge, path.parent / JUDGED, source, options.mode, redact, options.progress,
        options.judge_allow_remote_mimic,
    )  # fmt: skip
    answers = extractor.answers(scope, predictions) if extractor is not None else None
    result = score_bench(scope, predictions, options.profile, options.mode, answers)
    extraction = extractor.describe() if extractor is not None else STRICT
    document = scores_document(result, report, source, path, extraction)
    document.update(
        model=options.endpoint.model,
        base_url=options.endpoint.public_url,
        limit_per_cell=options.limit,
        modalities=list(options.modalities),
        tasks=list(options.tasks),
    )
    return result, document


@contextmanager
def _redacted_logs(redact: Redactor) -> Iterator[None]:
    """The redactor on every root log handler for the run: the key never reaches a log."""
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(redact)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(redact)
