"""A real chat-completions server on 127.0.0.1 for the tests (stdlib http.server in a thread).

`ChatServer` speaks the OpenAI protocol over HTTP/1.1 keep-alive and hands each
parsed request to a responder. `BenchResponder` plays a model on a bench: it
checks every request (the key, the model, the mode's system prompt, one user
turn with each image of the item, in prompt order, as a data URL that decodes
to the shard's own PNG bytes, then the question), finds the item from its
images, and answers by that item's script: the truth, a perturbed answer,
garbage, a 429 then the truth, a 500, a delay, or a malformed body.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow.parquet as pq

from medscout_data.tasks.prompts import SYSTEM_PROMPTS

DATA_URL = "data:image/png;base64,"


@dataclass(frozen=True)
class Answer:
    """What the server sends back: a status, a JSON (or raw) body, headers, after a delay; with
    `reset`, the body's first bytes and then a TCP reset (the connection dies mid-reply)."""

    status: int = 200
    text: str = ""
    delay: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()
    raw: bytes | None = None
    reset: bool = False


def completion(text: str, model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105},
    }


class _QuietServer(ThreadingHTTPServer):
    """Connections the client drops (a stopped run, a timeout) are not printed as tracebacks:
    the tests read the client's output, which must hold none."""

    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass


class ChatServer:
    """Serves POST /v1/chat/completions with `respond(body, headers) -> Answer` until `close()`."""

    def __init__(self, respond: Callable[[dict[str, Any], dict[str, str]], Answer]) -> None:
        self.respond = respond
        self.connections = 0  # TCP connections accepted, requests or not
        self.targets: list[str] = []  # the request targets, as received
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                with outer.lock:
                    outer.connections += 1
                super().setup()

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.targets.append(self.path)  # absolute-form when it serves as a proxy
                if urlsplit(self.path).path != "/v1/chat/completions":
                    answer = Answer(404, json.dumps({"error": {"message": f"no route {self.path}"}}))
                else:
                    answer = outer.respond(body, {k.lower(): v for k, v in self.headers.items()})
                time.sleep(answer.delay)
                payload = answer.raw if answer.raw is not None else answer.text.encode("utf-8")
                try:
                    self.send_response(answer.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload) + 1000 * answer.reset))
                    for name, value in answer.headers:
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                    if answer.reset:  # SO_LINGER 0: close() sends RST, not FIN
                        self.wfile.flush()
                        linger = struct.pack("ii", 1, 0)
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                        self.connection.close()
                        self.close_connection = True
                except OSError:  # the client gave up (a timeout): nothing to answer
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> ChatServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bench_rows(folder: Path) -> list[dict[str, Any]]:
    """Every row (with images) of the bench shards under `folder`."""
    return [r for p in sorted(folder.glob("*/*/test-*.parquet")) for r in pq.read_table(p).to_pylist()]


def images_key(blobs: list[bytes]) -> str:
    return hashlib.sha256(b"".join(hashlib.sha256(b).digest() for b in blobs)).hexdigest()


@dataclass
class BenchResponder:
    """Plays a model on the bench rows; `scripts[id]` is the list of answers to give, in turn
    (the last one repeats); items without a script get the truth."""

    rows: list[dict[str, Any]]
    mode: str
    model: str
    key: str
    scripts: dict[str, list[Answer | str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    requests: Counter[str] = field(default_factory=Counter)
    order: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.by_images = {images_key([i["bytes"] for i in r["images"]]): r for r in self.rows}

    def __call__(self, body: dict[str, Any], headers: dict[str, str]) -> Answer:
        if headers.get("authorization") != f"Bearer {self.key}":
            return Answer(401, json.dumps({"error": {"message": "invalid api key"}}))
        row, problem = self.check(body)
        if row is None:
            with self.lock:
                self.problems.append(problem)
            return Answer(400, json.dumps({"error": {"message": problem}}))
        with self.lock:
            turn = self.requests[row["id"]]
            self.requests[row["id"]] += 1
            self.order.append(row["id"])
        script = self.scripts.get(row["id"]) or [row["answer"]]
        answer = script[min(turn, len(script) - 1)]
        if isinstance(answer, str):
            answer = Answer(200, answer)
        if answer.status == 200 and answer.raw is None:
            return Answer(200, json.dumps(completion(answer.text, self.model)), answer.delay, answer.headers)
        return answer

    def check(self, body: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        """The row a request is about, or None and what is wrong with the request."""
        messages = body.get("messages")
        if body.get("model") != self.model:
            return None, f"model {body.get('model')!r}"
        if not isinstance(messages, list) or len(messages) != 2:
            return None, "expected a system and one user message"
        if messages[0] != {"role": "system", "content": SYSTEM_PROMPTS[self.mode]}:
            return None, f"system message {messages[0]!r}"
        user = messages[1]
        parts = user.get("content") if user.get("role") == "user" else None
        if not isinstance(parts, list) or len(parts) < 2:
            return None, "the user turn must be a list of parts"
        images, text = parts[:-1], parts[-1]
        if any(
            p.get("type") != "image_url" or not p["image_url"]["url"].startswith(DATA_URL) for p in images
        ):
            return None, "every part but the last must be a PNG data URL"
        blobs = [base64.b64decode(p["image_url"]["url"][len(DATA_URL) :], validate=True) for p in images]
        row = self.by_images.get(images_key(blobs))
        if row is None:
            return None, "the images are not, in order, the PNG bytes of any bench item"
        question = row["question_cot"] if self.mode == "cot" else row["question"]
        if text != {"type": "text", "text": question}:
            return None, f"{row['id']}: the last part must be the {self.mode} question"
        return row, ""
