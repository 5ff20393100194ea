"""One model, one score, whatever the path (issue 20).

A tiny random-weight Qwen2.5-VL (built here: a config, a byte-level BPE tokenizer trained on the
bench questions; nothing downloaded) is served by ms-swift's `swift deploy` on 127.0.0.1 behind a
loopback proxy that records every request as the server receives it. The bench is then answered
greedily, Direct and CoT, through

    (a) `medscout-data evaluate` against the server,
    (b) `swift infer` on the exported JSONL (ms-swift's infer has no client for a server, so it
        loads the same model folder itself, transformers backend) + `medscout-data score`,
    (c) lmms-eval's own evaluator with its OpenAI-compatible model on the exported task.

Every item's answer, the Avg, and (for the two paths that ask the server) the requests are the same.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from promptparity import canonical_request
from splitfixture import cli_ok, read_jsonl, side_rows
from toolrun import run_driver

from medscout_data.evaluation.predictions import id_from_images, image_paths
from medscout_data.tasks.messages import system_prompt

MODEL = "tiny-qwen"
MAX_TOKENS = 12
START_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Recorder:
    """A loopback HTTP proxy in front of the server. It keeps, under the current `label`, every chat
    request as the client sent it (`sent`) and as the server received it (`received`).

    One adaptation, and only this one: ms-swift 4.6's server asserts that a system message's content
    is a string, while lmms-eval 0.7.3's OpenAI-compatible model sends every content as a list of
    parts (`[{"type": "text", "text": ...}]`, as the OpenAI API allows; vLLM and SGLang take both
    forms). Without this every lmms-eval request with a system turn gets HTTP 400 from `swift deploy`,
    so the proxy joins a system message's text parts into one string before forwarding."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.label = ""
        self.sent: dict[str, list[bytes]] = {}
        self.received: dict[str, list[bytes]] = {}
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.endswith("/chat/completions"):
                    recorder.sent.setdefault(recorder.label, []).append(body)
                    body = join_system_parts(body)
                    recorder.received.setdefault(recorder.label, []).append(body)
                connection = http.client.HTTPConnection("127.0.0.1", recorder.upstream, timeout=600)
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "connection", "content-length")
                }
                connection.request(self.command, self.path, body or None, headers)
                reply = connection.getresponse()
                data = reply.read()
                self.send_response(reply.status)
                for key, value in reply.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                connection.close()

            do_GET = do_POST = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def join_system_parts(body: bytes) -> bytes:
    """The request with a system message given as text parts turned into one string (see Recorder);
    any other request unchanged, byte for byte."""
    request = json.loads(body)
    system = request["messages"][0]
    if system["role"] != "system" or isinstance(system["content"], str):
        return body
    assert all(part["type"] == "text" for part in system["content"]), system
    system["content"] = "".join(part["text"] for part in system["content"])
    return json.dumps(request).encode("utf-8")


def tool_env(workdir: Path) -> dict[str, str]:
    """The environment of a tool subprocess: offline, caches under `workdir`, no proxies."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env = {k: v for k, v in env.items() if "proxy" not in k.lower()}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "HF_HOME": str(workdir / "hf"),
            "MODELSCOPE_CACHE": str(workdir / "modelscope"),
            "NO_PROXY": "127.0.0.1,localhost",
            "OMP_NUM_THREADS": "1",  # the same float sums in every process
        }
    )
    return env


def swift_args(model: Path) -> list[str]:
    return ["--model", str(model), "--model_type", "qwen2_5_vl", "--template", "qwen2_5_vl"]


@pytest.fixture(scope="module")
def tiny_model(tiny_qwen: Path) -> Path:
    """The tiny Qwen2.5-VL folder (conftest.py); its tokenizer learnt from the bench questions."""
    return tiny_qwen


@pytest.fixture(scope="module")
def server(
    swift4_python: str, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Recorder]:
    """`swift deploy` of the tiny model on 127.0.0.1 behind the recording proxy; always stopped."""
    work = tmp_path_factory.mktemp("deploy")
    port = free_port()
    swift = str(Path(swift4_python).parent / "swift")
    command = [swift, "deploy", *swift_args(tiny_model), "--infer_backend", "transformers"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--served_model_name", MODEL]
    command += ["--max_batch_size", "1"]
    log = open(work / "deploy.log", "wb")  # noqa: SIM115 - closed below, after the process
    process = subprocess.Popen(command, cwd=work, env=tool_env(work), stdout=log, stderr=subprocess.STDOUT)
    recorder = None
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert process.poll() is None, (
                f"swift deploy exited:\n{(work / 'deploy.log').read_text()[-4000:]}"
            )
            assert time.monotonic() < deadline, f"swift deploy not up in {START_TIMEOUT_S} s"
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("GET", "/v1/models")
                if connection.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(2)
        recorder = Recorder(port)
        yield recorder
    finally:
        if recorder is not None:
            recorder.close()
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def evaluate_path(bench: Path, recorder: Recorder, mode: str, out: Path) -> tuple[dict, float]:
    recorder.label = f"evaluate-{mode}"
    cli_ok(
        "evaluate", "--bench", str(bench), "--base-url", f"http://127.0.0.1:{recorder.port}/v1",
        "--model", MODEL, "--mode", mode, "--max-tokens", str(MAX_TOKENS), "--concurrency", "1",
        "--out", str(out), "--quiet",
    )  # fmt: skip
    answers = {r["id"]: r["response"] for r in read_jsonl(out / "predictions.jsonl")}
    return answers, 100 * json.loads((out / "scores.json").read_text())["overall"]["accuracy"]


def swift_infer_path(
    swift4_python: str, bench: Path, model: Path, mode: str, work: Path
) -> tuple[dict, float, list[dict]]:
    export = work / "export"
    cli_ok(
        "export", "--split", "bench", "--mode", mode, "--shards", str(bench), "--out", str(export), "--quiet"
    )
    jsonl = export / f"bench-{mode}-swift.jsonl"
    result = work / "infer.jsonl"
    swift = str(Path(swift4_python).parent / "swift")
    command = [
        swift,
        "infer",
        *swift_args(model),
        "--infer_backend",
        "transformers",
        "--val_dataset",
        str(jsonl),
    ]
    command += ["--temperature", "0", "--max_new_tokens", str(MAX_TOKENS), "--max_batch_size", "1"]
    command += ["--result_path", str(result)]
    env = {**tool_env(work), "ROOT_IMAGE_DIR": str(export)}
    process = subprocess.run(command, cwd=export, env=env, capture_output=True, text=True, timeout=900)
    assert process.returncode == 0, f"swift infer failed:\n{process.stdout[-3000:]}\n{process.stderr[-3000:]}"
    figures = work / "score.json"
    cli_ok(
        "score", "--predictions", str(result), "--bench", str(bench), "--mode", mode, "--json", str(figures)
    )
    lines = read_jsonl(result)
    answers = {id_from_images(image_paths(line)): line["response"] for line in lines}
    return answers, 100 * json.loads(figures.read_text())["overall"]["accuracy"], lines


def lmms_path(swift4_python: str, bench: Path, recorder: Recorder, work: Path) -> dict:
    folder = work / "lmms"
    cli_ok("export", "--format", "lmms-eval", "--shards", str(bench), "--out", str(folder))
    got = {}
    for mode in ("direct", "cot"):
        recorder.label = f"lmms-{mode}"
        ask = {
            "include_path": str(folder),
            "tasks": [f"med_scout_bench_{mode}"],
            "base_url": f"http://127.0.0.1:{recorder.port}/v1",
            "model": MODEL,
            "max_new_tokens": MAX_TOKENS,
        }
        got[mode] = run_driver(swift4_python, "lmms_run.py", ask, work / f"run-{mode}", tool_env(work))[
            f"med_scout_bench_{mode}"
        ]
    return got


def test_every_path_gives_the_same_answers_score_and_requests(
    swift4_python: str, split_shards: Path, tiny_model: Path, server: Recorder, tmp_path: Path
) -> None:
    rows = side_rows(split_shards)
    lmms = lmms_path(swift4_python, split_shards, server, tmp_path / "lmms")
    for mode in ("direct", "cot"):
        evaluated, evaluated_avg = evaluate_path(split_shards, server, mode, tmp_path / f"evaluate-{mode}")
        inferred, inferred_avg, lines = swift_infer_path(
            swift4_python, split_shards, tiny_model, mode, tmp_path / f"swift-{mode}"
        )
        listed, listed_avg = lmms[mode]["responses"], lmms[mode]["metrics"]["avg"]
        assert sorted(evaluated) == sorted(inferred) == sorted(listed) == sorted(rows)
        assert len(set(evaluated.values())) > len(rows) // 2  # the answers depend on the prompt
        same = {
            "swift infer": sum(inferred[i] == evaluated[i] for i in rows),
            "lmms-eval": sum(listed[i] == evaluated[i] for i in rows),
        }
        print(  # the per-path table (pytest -s shows it)
            f"\n{mode}: {len(rows)} items, Avg evaluate {evaluated_avg:.2f}, swift infer {inferred_avg:.2f}, "
            f"lmms-eval {listed_avg:.2f}; answers equal to evaluate's: swift infer "
            f"{same['swift infer']}/{len(rows)}, lmms-eval {same['lmms-eval']}/{len(rows)}"
        )
        assert inferred == evaluated, (
            f"{mode}: swift infer differs on {len(rows) - same['swift infer']} items"
        )
        assert listed == evaluated, f"{mode}: lmms-eval differs on {len(rows) - same['lmms-eval']} items"
        assert inferred_avg == pytest.approx(evaluated_avg) and listed_avg == pytest.approx(evaluated_avg)
        # the two paths that ask the server: the requests it received are the same (texts byte for
        # byte, images by their pixels: lmms-eval re-encodes the PNGs), and evaluate's went through as sent
        received = sorted(canonical_request(b) for b in server.received[f"evaluate-{mode}"])
        assert len(received) == len(rows)
        assert server.received[f"evaluate-{mode}"] == server.sent[f"evaluate-{mode}"]
        assert sorted(canonical_request(b) for b in server.received[f"lmms-{mode}"]) == received
        first = json.loads(server.received[f"evaluate-{mode}"][0])["messages"][0]
        assert first == {"role": "system", "content": system_prompt(mode)}
        assert lines[0]["messages"][0] == first  # swift infer read the same system prompt
