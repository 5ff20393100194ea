"""evaluate and the judge against misbehaving servers, real ones on 127.0.0.1 (aiohttp for the
servers that echo the key, tests/chatserver.py for the rest): no run of 8 characters of a key in
any output, whatever the server echoes and wherever the cut falls; a run that never reached the
server stops with one line; a null message, a deeply nested reply and a reset mid-reply are
failed requests, named as such."""

from __future__ import annotations

import asyncio
import json
import random
import string
import threading
from pathlib import Path

import pytest
from benchfixture import make_shards
from chatserver import Answer, BenchResponder, ChatServer, bench_rows
from faultkit import cli, no_traceback

from medscout_data.evaluation.chat import MAX_ERROR_CHARS, MIN_FRAGMENT, ChatClient, Endpoint, Redactor

MODEL = "test-vlm"
JUDGE_MODEL = "judge-llm"
KEY_LENGTHS = (20, 21, 28, 57, 128, 199, 200)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shards(tmp_path_factory.mktemp("shards"), modalities=("ct", "xray"), per_cell=4)


@pytest.fixture(scope="module")
def rows(shards: Path) -> list[dict]:
    return bench_rows(shards / "bench")


def make_key(length: int, seed: int = 0) -> str:
    alphabet = string.ascii_letters + string.digits + "-_"
    return "sk-" + "".join(random.Random(seed * 1000 + length).choices(alphabet, k=length - 3))


def fragments(key: str) -> set[str]:
    return {key[k : k + MIN_FRAGMENT] for k in range(len(key) - MIN_FRAGMENT + 1)}


def assert_no_fragment(text: str, key: str, where: str) -> None:
    found = sorted(g for g in fragments(key) if g in text)
    assert not found, f"{where}: {len(found)} runs of {MIN_FRAGMENT} characters of the key, e.g. {found[:3]}"


def files_text(folder: Path) -> str:
    return "".join(p.read_bytes().decode("utf-8", "replace") for p in folder.rglob("*") if p.is_file())


# ---------------------------------------------------------------- secrets


@pytest.mark.parametrize("length", KEY_LENGTHS)
def test_an_error_message_never_holds_a_key_fragment_wherever_the_cut_falls(length: int) -> None:
    """Every start of the key from wholly before the cut to just after it."""
    key = make_key(length)
    chat = ChatClient(Endpoint("http://127.0.0.1:9/v1", MODEL), Redactor((key,)))
    prefix = len("ValueError: ")
    for start in range(MAX_ERROR_CHARS - length - 3, MAX_ERROR_CHARS + 2):
        pad = "x" * (start - prefix)
        text = chat.describe(ValueError(f"{pad}{key} and more text after the key"))
        assert_no_fragment(text, key, f"key of {length} at {start}")
        assert len(text) <= MAX_ERROR_CHARS


def test_the_redactor_hides_every_fragment_and_keeps_the_rest() -> None:
    key = make_key(40)
    redact = Redactor((key,))
    assert redact(f"a {key[:8]} b {key[5:30]} c {key[-9:]}") == "a <api-key> b <api-key> c <api-key>"
    assert redact(f"keep {key[:7]} as is") == f"keep {key[:7]} as is"  # 7 characters: not a fragment
    assert Redactor(("abcd",))("xabcdx abc") == "x<api-key>x abc"  # a short key: hidden whole


def echo_header(pads: list[int]):
    """A server that refuses every request with a 400 whose message echoes the Authorization
    header after `pads[n]` characters (the n-th request)."""
    lock, served = threading.Lock(), [0]

    def respond(body: dict, headers: dict[str, str]) -> Answer:
        with lock:
            pad = pads[served[0] % len(pads)]
            served[0] += 1
        message = "p" * pad + f"received Authorization: {headers.get('authorization')} - refused"
        return Answer(400, json.dumps({"error": {"message": message}}))

    return respond


class AiohttpServer:
    """A real aiohttp server on 127.0.0.1 (its own event loop in a thread) answering
    POST /v1/chat/completions with `respond(body, headers) -> Answer`, as a hosted API would."""

    def __init__(self, respond) -> None:
        self.respond = respond
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        from aiohttp import web

        async def handle(request: web.Request) -> web.Response:
            body = await request.json()
            answer = self.respond(body, {k.lower(): v for k, v in request.headers.items()})
            return web.Response(status=answer.status, text=answer.text, content_type="application/json")

        app = web.Application()
        app.router.add_post("/v1/chat/completions", handle)
        self.runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = self.runner.addresses[0][1]
        self.ready.set()
        self.loop.run_forever()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> AiohttpServer:
        self.thread.start()
        assert self.ready.wait(30), "the aiohttp server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


def spread(length: int, n: int) -> list[int]:
    """`n` pads that put the echoed key from wholly before the cut to past it, at evenly
    spread offsets (the key comes 77 characters after the pad: error kind, status, echo text)."""
    low, high = MAX_ERROR_CHARS - 77 - length - 5, MAX_ERROR_CHARS - 77 + 32
    return sorted({low + (high - low) * k // (n - 1) for k in range(n)})


@pytest.mark.parametrize("length", (20, 28, 77, 200))
def test_evaluate_writes_no_key_fragment_when_the_server_echoes_it_across_the_cut(
    shards: Path, rows: list[dict], tmp_path: Path, length: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = make_key(length, seed=1)
    monkeypatch.setenv("MY_KEY", key)
    out = tmp_path / "run"
    with AiohttpServer(echo_header(spread(length, len(rows)))) as server:
        result = cli("-v", "evaluate", "--bench", str(shards), "--base-url", server.url, "--model", MODEL,
                     "--api-key-env", "MY_KEY", "--retries", "0", "--concurrency", "4", "--out", str(out),
                     "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stdout
    errors = [json.loads(line)["error"] for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(errors) == len(rows) and sum("received Authorization" in e for e in errors) > len(rows) // 2
    assert any("<api-key>" in e for e in errors)  # the key reached the records, hidden
    scores = (out / "scores.json").read_text()
    assert "received Authorization" in scores  # the failed requests are listed there
    for where, text in (("output", result.stdout), ("predictions + scores", files_text(out))):
        assert_no_fragment(text, key, where)


@pytest.mark.parametrize("length", (20, 28, 200))
def test_the_judge_writes_no_key_fragment_when_its_server_echoes_it_across_the_cut(
    shards: Path, rows: list[dict], tmp_path: Path, length: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = make_key(length, seed=2)
    monkeypatch.setenv("JUDGE_KEY", key)
    predictions = tmp_path / "predictions.jsonl"
    lines = [{"id": r["id"], "response": "I think it is the one near the middle."} for r in rows]
    predictions.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with AiohttpServer(echo_header(spread(length, len(rows)))) as judge:
        result = cli("-v", "score", "--predictions", str(predictions), "--bench", str(shards),
                     "--extract", "judge", "--judge-base-url", judge.url, "--judge-model", JUDGE_MODEL,
                     "--judge-api-key-env", "JUDGE_KEY", "--json", str(tmp_path / "scores.json"),
                     "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stdout
    assert result.stdout.count("judge failed for") == len(rows) and "<api-key>" in result.stdout
    for where, text in (("output", result.stdout), ("scores, cache", files_text(tmp_path))):
        assert_no_fragment(text, key, where)


# ---------------------------------------------------------------- evaluate says what happened


def test_nothing_listening_with_fewer_items_than_the_stop_threshold_stops_with_one_line(
    shards: Path, tmp_path: Path
) -> None:
    with ChatServer(lambda body, headers: Answer()) as server:
        url = server.url  # a port that was just free, now closed
    result = cli("evaluate", "--bench", str(shards), "--base-url", url, "--model", MODEL, "--retries", "0",
                 "--limit", "1", "--modality", "ct", "--out", str(tmp_path / "r"), "--quiet")  # fmt: skip
    assert result.returncode != 0, result.stdout
    no_traceback(result.stdout)
    assert "none of the 3 requests could connect" in result.stdout and "--base-url" in result.stdout
    assert "requests failed" not in result.stdout


def test_a_null_message_is_a_failed_request_asked_again(
    shards: Path, rows: list[dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-null-message-test")
    null = json.dumps({"choices": [{"index": 0, "message": None, "finish_reason": "stop"}]})
    target = next(r for r in rows if r["modality"] == "ct")
    responder = BenchResponder(
        rows, "direct", MODEL, "sk-null-message-test", {target["id"]: [Answer(200, raw=null.encode())]}
    )
    args = ["evaluate", "--bench", str(shards), "--model", MODEL, "--retries", "0", "--limit", "1",
            "--modality", "ct", "--out", str(tmp_path / "r"), "--quiet", "--base-url"]  # fmt: skip
    with ChatServer(responder) as server:
        first = cli(*args, server.url)
        line = next(json.loads(x) for x in (tmp_path / "r/predictions.jsonl").read_text().splitlines()
                    if json.loads(x)["id"] == target["id"])  # fmt: skip
        responder.scripts.pop(target["id"])
        second = cli(*args, server.url)
    assert first.returncode == 0 and "1 requests failed" in first.stdout, first.stdout
    assert line["response"] is None and "message is null" in line["error"]
    assert second.returncode == 0 and responder.requests[target["id"]] == 2, second.stdout


def test_a_reset_mid_reply_is_reported_as_such_not_as_no_connection(
    shards: Path, rows: list[dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-reset-test")
    reset = [Answer(200, raw=b'{"choices": [{"index": 0, ', reset=True)]
    responder = BenchResponder(rows, "direct", MODEL, "sk-reset-test", {r["id"]: reset for r in rows})
    with ChatServer(responder) as server:
        result = cli("evaluate", "--bench", str(shards), "--base-url", server.url, "--model", MODEL,
                     "--retries", "0", "--concurrency", "2", "--out", str(tmp_path / "r"),
                     "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stdout  # the server was reached: failed requests, no stop
    no_traceback(result.stdout)
    assert f"{len(rows)} requests failed" in result.stdout and "could not connect" not in result.stdout
    errors = [json.loads(x)["error"] for x in (tmp_path / "r/predictions.jsonl").read_text().splitlines()]
    assert len(errors) == len(rows) and all(e.startswith("connection lost mid-reply") for e in errors)


def test_a_reply_nested_too_deeply_is_a_failed_request(
    shards: Path, rows: list[dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-deep-test")
    deep = b'{"choices": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    target = next(r for r in rows if r["modality"] == "ct")
    responder = BenchResponder(rows, "direct", MODEL, "sk-deep-test", {target["id"]: [Answer(200, raw=deep)]})
    with ChatServer(responder) as server:
        result = cli("evaluate", "--bench", str(shards), "--base-url", server.url, "--model", MODEL,
                     "--retries", "0", "--limit", "1", "--modality", "ct", "--out", str(tmp_path / "r"),
                     "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stdout
    no_traceback(result.stdout)
    lines = [json.loads(x) for x in (tmp_path / "r/predictions.jsonl").read_text().splitlines()]
    assert [x["error"] for x in lines if x["id"] == target["id"]] == [
        "ValueError: the reply is JSON nested too deeply to read"
    ]


def test_a_resumed_run_accepts_the_same_bench_by_a_relative_path(
    shards: Path, rows: list[dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-relative-test")
    monkeypatch.chdir(shards.parent)
    responder = BenchResponder(rows, "direct", MODEL, "sk-relative-test")
    args = ["evaluate", "--model", MODEL, "--limit", "1", "--out", str(tmp_path / "r"), "--quiet"]
    with ChatServer(responder) as server:
        first = cli(*args, "--bench", str(shards.resolve()), "--base-url", server.url)
        second = cli(*args, "--bench", shards.name, "--base-url", server.url)
        third = cli(*args, "--bench", f"./{shards.name}/", "--base-url", server.url)
    assert first.returncode == 0, first.stdout
    assert second.returncode == 0 and third.returncode == 0, second.stdout + third.stdout
    assert sum(responder.requests.values()) == 6  # one per cell, asked once


@pytest.mark.parametrize(
    ("status", "names", "not_names"),
    [
        (403, "--judge-api-key-env", "(or --api-key-env)"),
        (401, "--judge-api-key-env", "(or --api-key-env)"),
        (404, "--judge-base-url", "check --base-url"),
    ],
)
def test_a_judge_refusal_names_the_judge_options(
    shards: Path, rows: list[dict], tmp_path: Path, status: int, names: str, not_names: str
) -> None:
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text(json.dumps({"id": rows[0]["id"], "response": "somewhere in the middle"}) + "\n")
    with ChatServer(lambda body, headers: Answer(status, '{"error": {"message": "no"}}')) as judge:
        result = cli("score", "--predictions", str(predictions), "--bench", str(shards), "--extract",
                     "judge", "--judge-base-url", judge.url, "--judge-model", JUDGE_MODEL,
                     "--quiet")  # fmt: skip
    assert result.returncode != 0
    no_traceback(result.stdout)
    assert names in result.stdout and not_names not in result.stdout, result.stdout


def test_secrets_in_the_base_url_are_hidden_too(monkeypatch: pytest.MonkeyPatch) -> None:
    from medscout_data.evaluation.chat import redactor_for

    monkeypatch.setenv("K", "sk-the-env-key-0123456789")
    endpoint = Endpoint("http://me:url-password-42@127.0.0.1:9/v1?api-key=query-key-abcdef&v=1", MODEL, "K")
    redact = redactor_for(endpoint)
    text = redact("sk-the-env-key-0123456789 url-password-42 query-key-abcdef v=1")
    assert text == "<api-key> <api-key> <api-key> v=1"
    assert "url-password" not in endpoint.public_url and "query-key" not in endpoint.public_url
