"""Talking to an OpenAI-compatible chat-completions server, many requests at once.

One `ChatClient` per endpoint wraps the `openai` async client (its aiohttp
transport when installed, which costs about half the CPU per request of the
default one). The client retries 408/409/429/5xx, connection errors and
timeouts itself, with exponential backoff and jitter, honouring `Retry-After`
(up to `Endpoint.retries` times), under a per-request timeout. Requests go
through the client's documented low-level `client.post("/chat/completions",
...)` with a JSON body built by the caller and the reply parsed here: the typed
`chat.completions.create` re-walks every message part against its type hints
and builds models of the reply, which together cost more CPU than the rest of
a request at high concurrency.

A request that still fails becomes a `Reply` with its `error`; a failure that
no retry can cure for any item (a refused key, an unknown model or path, an
unreachable server) is an `EndpointError` that stops the run. `drain` runs
jobs with bounded concurrency and a bounded queue (backpressure: a producer
never reads far ahead of the requests in flight).

The API key is read from an environment variable, sent only in the
Authorization header, and scrubbed from every message, log record and file:
`Redactor` hides every run of `MIN_FRAGMENT` or more characters of a key (a
server may echo part of it), always on the whole text before any cut.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from medscout_data.evaluation.errors import ScoreError

log = logging.getLogger(__name__)

DEFAULT_KEY_ENV = "OPENAI_API_KEY"
NO_KEY = "EMPTY"  # what local servers (vLLM, SGLang, LMDeploy) accept when they check no key
REDACTED = "<api-key>"
MAX_ERROR_CHARS = 300
MIN_FRAGMENT = 8  # no run of this many characters of a key is ever written
T = TypeVar("T")


class EndpointError(ScoreError):
    """The server cannot answer any request (key refused, unknown model or path, unreachable)."""


@dataclass(frozen=True)
class Endpoint:
    """One OpenAI-compatible server and model, and how to talk to it."""

    base_url: str
    model: str
    api_key_env: str = DEFAULT_KEY_ENV
    timeout: float = 300.0  # seconds per request (each attempt)
    retries: int = 4
    concurrency: int = 16
    flag: str = "--"  # the prefix of this endpoint's command-line options ("--judge-" for the judge)

    def __post_init__(self) -> None:
        if urlsplit(self.base_url).scheme not in ("http", "https"):
            raise ValueError(f"{self.flag}base-url {self.public_url}: must be an http:// or https:// URL")
        if self.concurrency < 1 or self.retries < 0 or self.timeout <= 0:
            raise ValueError("concurrency must be >= 1, retries >= 0 and the timeout > 0")

    @property
    def public_url(self) -> str:
        """The base URL without user info, query or fragment: safe to print and record."""
        parts = urlsplit(self.base_url)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    def api_key(self) -> str:
        """The key from the environment variable (a placeholder when it is unset)."""
        return os.environ.get(self.api_key_env) or NO_KEY


@dataclass(frozen=True)
class Reply:
    """One finished request: the model's text, or the error it ended with."""

    text: str | None
    latency_s: float
    usage: dict[str, int] | None = None
    finish_reason: str = ""
    error: str = ""


@dataclass
class Redactor(logging.Filter):
    """Hides secrets in text; as a logging filter, in every record that passes a handler.

    A secret of `MIN_FRAGMENT` or more characters is hidden wherever any run of
    `MIN_FRAGMENT` of its characters appears (a server that echoes the header
    cut short, a message cut across the key); a shorter one wherever it appears whole.
    """

    secrets: tuple[str, ...] = ()

    def __call__(self, text: str) -> str:
        hidden = self._hidden(text)
        if not hidden:
            return text
        pieces, end = [], 0
        for start, stop in hidden:
            pieces += [text[end:start], REDACTED]
            end = stop
        return "".join(pieces) + text[end:]

    def _hidden(self, text: str) -> list[tuple[int, int]]:
        """The merged spans of `text` that hold a secret or a fragment of one."""
        spans = []
        for secret in self.secrets:
            size = min(len(secret), MIN_FRAGMENT)
            for gram in {secret[k : k + size] for k in range(len(secret) - size + 1)}:
                start = text.find(gram)
                while start >= 0:
                    spans.append((start, start + size))
                    start = text.find(gram, start + 1)
        merged: list[tuple[int, int]] = []
        for start, stop in sorted(spans):
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(stop, merged[-1][1]))
            else:
                merged.append((start, stop))
        return merged

    def cut(self, text: str, limit: int) -> str:
        """The text without secrets, then at most `limit` characters of it (never the other way:
        a cut first could leave a key's first part)."""
        return self(text)[:limit]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg, record.args = self(record.getMessage()), None
        return True


def redactor_for(*endpoints: Endpoint) -> Redactor:
    """A redactor of every secret these endpoints carry: the key, and a password or query
    values in the base URL (`http://user:KEY@host/v1?api-key=KEY`)."""
    keys = {e.api_key() for e in endpoints} - {NO_KEY}
    for endpoint in endpoints:
        parts = urlsplit(endpoint.base_url)
        keys |= {parts.password or ""} | {v for _, v in parse_qsl(parts.query) if len(v) >= MIN_FRAGMENT}
    return Redactor(tuple(sorted(k for k in keys if len(k) >= 4)))


@dataclass
class ChatClient:
    """Async chat completions against one endpoint; use as `async with ChatClient(...) as chat`."""

    endpoint: Endpoint
    redact: Redactor = field(default_factory=Redactor)
    failures_in_a_row: int = 0
    attempted: int = 0  # requests sent this session
    unreachable: int = 0  # of them, those that never reached the server
    _client: Any = None
    _raw_body: str = "body"
    _response_type: Any = None

    async def __aenter__(self) -> ChatClient:
        try:
            import openai
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise ScoreError("evaluate needs the openai client: pip install 'openai[aiohttp]'") from exc
        http_client = openai.DefaultAioHttpClient() if importlib.util.find_spec("aiohttp") else None
        self._client = openai.AsyncOpenAI(
            base_url=self.endpoint.base_url,
            api_key=self.endpoint.api_key(),
            timeout=self.endpoint.timeout,
            max_retries=self.endpoint.retries,
            http_client=http_client,
        )
        # raw JSON bytes go in `content` (openai >= 2), in `body` before it
        self._response_type = raw_response_type()
        self._raw_body = "content" if "content" in inspect.signature(self._client.post).parameters else "body"
        return self

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        await self._client.close()
        if exc_type is None and self.attempted and self.unreachable == self.attempted:
            raise EndpointError(
                f"{self.endpoint.public_url}: none of the {self.attempted} requests could connect "
                f"(after {self.endpoint.retries} retries each); is the server running at "
                f"{self.endpoint.flag}base-url?"
            )

    async def complete(
        self, messages: list[dict[str, Any]], max_tokens: int | None, temperature: float
    ) -> Reply:
        """One chat completion of these messages (see `send`)."""
        body: dict[str, Any] = {
            "model": self.endpoint.model,
            "messages": messages,
            "temperature": temperature,
        }
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        return await self.send(json.dumps(body, separators=(",", ":")).encode("utf-8"))

    async def send(self, body: bytes) -> Reply:
        """One chat completion of a request body already serialised as JSON (retried by the
        client); errors that concern every request raise `EndpointError`."""
        import openai

        start = time.perf_counter()
        self.attempted += 1
        try:
            response = await self._client.post(
                "/chat/completions", cast_to=self._response_type, **{self._raw_body: body}
            )
            reply = parse_reply(await response.aread(), time.perf_counter() - start)
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise EndpointError(
                f"{self.endpoint.public_url}: the server refused the key (HTTP {exc.status_code}); set "
                f"${self.endpoint.api_key_env} (or {self.endpoint.flag}api-key-env) to a key it accepts"
            ) from None
        except openai.NotFoundError:
            raise EndpointError(
                f"{self.endpoint.public_url}/chat/completions: not found (HTTP 404) for model "
                f"{self.endpoint.model!r}; check {self.endpoint.flag}base-url (it usually ends in /v1) "
                f"and {self.endpoint.flag}model"
            ) from None
        except (openai.OpenAIError, ValueError, AttributeError, IndexError, TypeError) as exc:
            reply = Reply(None, time.perf_counter() - start, error=self.describe(exc))
            self._count_failure(exc)
            return reply
        self.failures_in_a_row = 0
        return reply

    def describe(self, exc: BaseException) -> str:
        """One line: what happened (could not connect, connection lost mid-reply, the error's kind
        and HTTP status) and the message, without the key: redacted whole, then cut."""
        status = getattr(exc, "status_code", None)
        cause = exc.__cause__
        detail = f"{exc} ({type(cause).__name__}: {cause})" if cause is not None and str(cause) else str(exc)
        kind = type(exc).__name__ + (f" (HTTP {status})" if status else "")
        if cannot_connect(exc):
            kind = f"could not connect ({kind})"
        elif lost_mid_reply(exc):
            kind = f"connection lost mid-reply ({kind})"
        return self.redact.cut(f"{kind}: " + " ".join(detail.split()), MAX_ERROR_CHARS)

    def _count_failure(self, exc: BaseException) -> None:
        if not cannot_connect(exc):
            self.failures_in_a_row = 0
            return
        self.unreachable += 1
        self.failures_in_a_row += 1
        if self.failures_in_a_row >= max(8, 2 * self.endpoint.concurrency):
            raise EndpointError(
                f"{self.endpoint.public_url}: {self.failures_in_a_row} requests in a row could not connect "
                f"(after {self.endpoint.retries} retries each); is the server running at --base-url?"
            )


def cannot_connect(exc: BaseException) -> bool:
    """Whether the request never reached the server (refused, unreachable), as opposed to a
    server that is slow to answer or drops the connection mid-reply. The aiohttp transport
    reports a refused connection as a connect timeout, so the cause decides."""
    import openai

    cause = type(exc.__cause__).__name__  # the HTTP library's ConnectError / ConnectTimeout
    return isinstance(exc, openai.APIConnectionError) and cause in ("ConnectError", "ConnectTimeout")


def lost_mid_reply(exc: BaseException) -> bool:
    """Whether the server was reached but the connection broke before the whole reply came
    (a reset or a close mid-body)."""
    import openai

    cause = type(exc.__cause__).__name__
    return isinstance(exc, openai.APIConnectionError) and cause in ("ReadError", "RemoteProtocolError")


def raw_response_type() -> type:
    """The HTTP response class the openai client returns unparsed when asked for it
    (`cast_to`): httpx2's from openai 3, httpx's before."""
    try:
        from httpx2 import Response
    except ImportError:
        from httpx import Response
    return Response


def parse_reply(body: bytes, latency: float) -> Reply:
    """The text, usage and finish reason of a chat.completion JSON body; ValueError when it is
    not one (no choices, a message that is not an object, content that is not text).

    Parsed here rather than into the client's typed models: a quarter of the client's CPU
    per request at high concurrency.
    """
    try:
        data = json.loads(body)
    except RecursionError:
        raise ValueError("the reply is JSON nested too deeply to read") from None
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("the reply holds no choices")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        kind = "null" if message is None else f"a {type(message).__name__}"
        raise ValueError(f"the reply's message is {kind}, not an object")
    text = message.get("content")
    if text is not None and not isinstance(text, str):
        raise ValueError(f"the reply's content is a {type(text).__name__}, not text")
    usage = data.get("usage")
    counts = None
    if isinstance(usage, dict):
        counts = {k: v for k, v in usage.items() if k.endswith("_tokens") and isinstance(v, int)}
    return Reply(text or "", round(latency, 4), counts, str(choices[0].get("finish_reason") or ""))


async def drain(jobs: AsyncIterator[T], handle: Callable[[T], Awaitable[None]], concurrency: int) -> None:
    """Run `handle` on every job with at most `concurrency` at once; the queue holds at most
    2 x concurrency jobs, so the producer stays just ahead. The first exception stops everything."""
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=2 * concurrency)
    done = object()

    async def produce() -> None:
        async for job in jobs:
            await queue.put(job)
        for _ in range(concurrency):
            await queue.put(done)

    async def work() -> None:
        while (job := await queue.get()) is not done:
            await handle(job)

    tasks = [asyncio.ensure_future(produce()), *(asyncio.ensure_future(work()) for _ in range(concurrency))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
