"""evaluate against a local protocol server: a real HTTP server on 127.0.0.1 (tests/chatserver.py)
that checks every request and answers each item by its script (truth, perturbed, garbage, 429,
500, delay, malformed). Nothing leaves the machine; the API key never reaches an output."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from benchfixture import make_shards
from chatserver import Answer, BenchResponder, ChatServer, bench_rows
from click.testing import CliRunner

from medscout_data.cli import cli
from medscout_data.evaluation.chat import Endpoint
from medscout_data.evaluation.evaluate import EvaluateOptions, cut_torn_tail, evaluate
from medscout_data.evaluation.score import Truth, accuracy_reward, resolve_bench

KEY = "sk-local-test-9f8e7d6c5b4a"
MODEL = "test-vlm"
FAST = (("retry-after-ms", "20"),)  # the client honours it: quick retries in tests
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shards(tmp_path_factory.mktemp("shards"), modalities=("ct", "xray"), per_cell=4)


@pytest.fixture(scope="module")
def rows(shards: Path) -> list[dict]:
    return bench_rows(shards / "bench")


def perturbed(row: dict) -> str:
    """A well-formed but wrong answer."""
    if row["task"] == "anomaly":
        return "0"
    if row["task"] == "jigsaw":
        return " ".join(reversed(row["answer"].split()))
    if row["variant"] == "tier":
        return ", ".join("Label 2" if a == "Label 1" else "Label 1" for a in row["answer"].split(", "))
    return "(0, 0, 100, 100), (0, 0, 100, 100), (0, 0, 100, 100)"


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def every_file_text(folder: Path) -> str:
    return "".join(p.read_bytes().decode("utf-8", "replace") for p in folder.rglob("*") if p.is_file())


def test_evaluate_against_a_local_protocol_server_records_every_case(
    shards: Path, rows: list[dict], tmp_path: Path
) -> None:
    by_task = {task: [r for r in rows if r["task"] == task] for task in ("scale", "jigsaw", "anomaly")}
    scale, jigsaw, anomaly = by_task["scale"], by_task["jigsaw"], by_task["anomaly"]
    scripts = {
        scale[0]["id"]: [perturbed(scale[0])],
        scale[1]["id"]: [perturbed(scale[1])],
        jigsaw[0]["id"]: ["I am not sure what this image shows."],  # garbage
        jigsaw[1]["id"]: [
            Answer(429, '{"error": {"message": "slow down"}}', headers=FAST),
            jigsaw[1]["answer"],
        ],
        anomaly[0]["id"]: [Answer(500, '{"error": {"message": "CUDA out of memory"}}', headers=FAST)],
        anomaly[1]["id"]: [Answer(200, anomaly[1]["answer"], delay=4.0)],  # past the 1.5 s timeout
        anomaly[2]["id"]: [Answer(200, raw=b"<html>bad gateway</html>")],
        anomaly[3]["id"]: [
            Answer(200, f"<think>cell 9 looks off</think><answer>{anomaly[3]['answer']}</answer>")
        ],
    }
    responder = BenchResponder(rows, "direct", MODEL, KEY, scripts)
    out = tmp_path / "run"
    with ChatServer(responder) as server:
        args = ["-vv", "evaluate", "--bench", str(shards), "--base-url", server.url, "--model", MODEL]
        args += ["--concurrency", "6", "--retries", "1", "--timeout", "1.5", "--out", str(out), "--quiet"]
        result = CliRunner(env={"OPENAI_API_KEY": KEY}).invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert responder.problems == []  # every request carried the prompt, the images in order, the question

    records = lines_of(out / "predictions.jsonl")
    assert sorted(r["id"] for r in records) == sorted(r["id"] for r in rows)  # one line per item
    errors = {r["id"]: r["error"] for r in records if r["error"]}
    assert set(errors) == {anomaly[0]["id"], anomaly[1]["id"], anomaly[2]["id"]}
    assert "HTTP 500" in errors[anomaly[0]["id"]] and "CUDA out of memory" in errors[anomaly[0]["id"]]
    assert "Timeout" in errors[anomaly[1]["id"]]
    assert responder.requests[jigsaw[1]["id"]] == 2 and responder.requests[anomaly[0]["id"]] == 2  # retried
    answered = {r["id"]: r for r in records if not r["error"]}
    assert answered[jigsaw[1]["id"]]["response"] == jigsaw[1]["answer"]
    assert all(
        r["model"] == MODEL and r["mode"] == "direct" and r["usage"]["total_tokens"] == 105
        for r in answered.values()
    )

    scores = json.loads((out / "scores.json").read_text())
    expected = sum(
        accuracy_reward(r["response"], Truth.from_item(row)) for row in rows if (r := answered.get(row["id"]))
    )
    assert math.isclose(scores["overall"]["accuracy"], expected / len(rows))
    assert scores["overall"]["missing"] == 3 and scores["extraction"] == {"method": "strict"}
    assert scores["model"] == MODEL and scores["bench_integrity"] == "sha256 (manifest.json)"
    assert "3 requests failed" in result.output and "Med-Scout-Bench Avg" in result.output

    assert KEY not in result.output and KEY not in every_file_text(out)
    with ChatServer(responder) as server:  # a rerun asks only the three failed items again
        before = sum(responder.requests.values())
        rerun = CliRunner(env={"OPENAI_API_KEY": KEY}).invoke(
            cli, [*args[1:5], server.url, *args[6:]], catch_exceptions=False
        )
    assert rerun.exit_code == 0, rerun.output
    # the 500 and the timeout again with their one retry; a malformed 200 is not retried by the client
    assert sum(responder.requests.values()) - before == 2 + 2 + 1


def test_cot_mode_and_lenient_extraction_against_a_local_protocol_server(
    shards: Path, rows: list[dict], tmp_path: Path
) -> None:
    anomaly = [r for r in rows if r["task"] == "anomaly"]
    cell = int(anomaly[0]["answer"])
    scripts = {r["id"]: [f"<think>comparing cells</think><answer>{r['answer']}</answer>"] for r in rows}
    scripts[anomaly[0]["id"]] = [f"<think>x</think><answer>Row {cell // 4}, column {cell % 4}</answer>"]
    responder = BenchResponder(rows, "cot", MODEL, KEY, scripts)
    with ChatServer(responder) as server:
        endpoint = Endpoint(server.url, MODEL, concurrency=4)
        os.environ["OPENAI_API_KEY"] = KEY
        try:
            strict = evaluate(EvaluateOptions(str(shards), tmp_path / "s", endpoint, "cot", progress=False))
            lenient = evaluate(
                EvaluateOptions(
                    str(shards), tmp_path / "l", endpoint, "cot", extract="lenient", progress=False
                )
            )
        finally:
            del os.environ["OPENAI_API_KEY"]
    assert responder.problems == []
    assert strict.result.cells["ct/scale"].means()["cot"] == 0.5
    assert lenient.result.overall.means()["accuracy"] == 1.0 > strict.result.overall.means()["accuracy"]
    # format still judges what the model wrote
    assert lenient.result.overall.means()["format"] == strict.result.overall.means()["format"]
    assert lenient.document["extraction"] == {"method": "lenient", "rules": "lenient-1"}


def test_kill_and_resume_against_a_local_protocol_server(
    shards: Path, rows: list[dict], tmp_path: Path
) -> None:
    """A real SIGKILL of the evaluate process mid-run, a torn last line, then a rerun: every item is
    answered exactly once, and no item answered before the kill is asked again."""
    scripts = {r["id"]: [Answer(200, r["answer"], delay=0.1)] for r in rows}
    responder = BenchResponder(rows, "direct", MODEL, KEY, scripts)
    out = tmp_path / "run"
    env = {**os.environ, "OPENAI_API_KEY": KEY, "PYTHONPATH": str(REPO)}
    with ChatServer(responder) as server:
        command = [sys.executable, "-m", "medscout_data.cli", "evaluate", "--bench", str(shards)]
        command += ["--base-url", server.url, "--model", MODEL, "--concurrency", "2", "--out", str(out)]
        first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            path = out / "predictions.jsonl"
            if path.exists() and path.read_bytes().count(b"\n") >= 6:
                break
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        stdout, stderr = first.communicate()
        answered_before = {r["id"] for r in lines_of(out / "predictions.jsonl")}
        assert 6 <= len(answered_before) < len(rows)
        with open(out / "predictions.jsonl", "ab") as handle:  # as if killed in the middle of a write
            handle.write(b'{"id": "ct-scale-00')
        asked_before = responder.order.copy()
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    records = lines_of(out / "predictions.jsonl")
    assert sorted(r["id"] for r in records) == sorted(r["id"] for r in rows)  # exactly once each
    asked_after = responder.order[len(asked_before) :]
    assert not set(asked_after) & answered_before and len(asked_after) == len(set(asked_after))
    assert json.loads((out / "scores.json").read_text())["overall"]["accuracy"] == 1.0
    for text in (stdout.decode(), stderr.decode(), second.stdout, second.stderr, every_file_text(out)):
        assert KEY not in text


def test_cut_torn_tail_keeps_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c"')
    assert cut_torn_tail(path) == 4 and path.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    assert cut_torn_tail(path) == 0
    path.write_bytes(b"x" * 100_000)
    assert cut_torn_tail(path) == 100_000 and path.read_bytes() == b""


def test_a_refused_key_stops_the_run_without_printing_it(
    shards: Path, rows: list[dict], tmp_path: Path
) -> None:
    responder = BenchResponder(rows, "direct", MODEL, "the-key-the-server-wants")
    with ChatServer(responder) as server:
        args = ["evaluate", "--bench", str(shards), "--base-url", server.url, "--model", MODEL]
        result = CliRunner(env={"MY_KEY": KEY}).invoke(
            cli, [*args, "--api-key-env", "MY_KEY", "--out", str(tmp_path / "r")]
        )
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "refused the key (HTTP 401)" in result.output and "$MY_KEY" in result.output
    assert KEY not in result.output and KEY not in every_file_text(tmp_path / "r")


def test_a_wrong_model_or_path_stops_the_run(shards: Path, rows: list[dict], tmp_path: Path) -> None:
    responder = BenchResponder(rows, "direct", MODEL, KEY)
    with ChatServer(responder) as server:
        endpoint = Endpoint(server.url.removesuffix("/v1"), MODEL)  # forgot /v1: 404
        os.environ["OPENAI_API_KEY"] = KEY
        try:
            with pytest.raises(Exception, match=r"not found \(HTTP 404\).*--base-url"):
                evaluate(EvaluateOptions(str(shards), tmp_path / "r", endpoint, progress=False))
        finally:
            del os.environ["OPENAI_API_KEY"]


def test_an_unreachable_server_stops_the_run(shards: Path, tmp_path: Path) -> None:
    with ChatServer(lambda body, headers: Answer()) as server:
        url = server.url  # a port that was just free, now closed
    result = CliRunner().invoke(
        cli,
        ["evaluate", "--bench", str(shards), "--base-url", url, "--model", MODEL, "--retries", "0",
         "--concurrency", "2", "--out", str(tmp_path / "r"), "--quiet"],
    )  # fmt: skip
    assert result.exit_code != 0 and "could not connect" in result.output and "Traceback" not in result.output


def test_a_rerun_with_other_settings_is_refused(shards: Path, rows: list[dict], tmp_path: Path) -> None:
    responder = BenchResponder(rows, "direct", MODEL, KEY)
    out = tmp_path / "run"
    with ChatServer(responder) as server:
        base = ["evaluate", "--bench", str(shards), "--base-url", server.url, "--out", str(out), "--quiet"]
        runner = CliRunner(env={"OPENAI_API_KEY": KEY})
        first = runner.invoke(cli, [*base, "--model", MODEL, "--limit", "1", "--modality", "ct"])
        assert first.exit_code == 0, first.output
        assert len(lines_of(out / "predictions.jsonl")) == 3  # one per ct cell
        other = runner.invoke(cli, [*base, "--model", "another-model"])
        assert other.exit_code != 0 and "other settings (model 'test-vlm' -> 'another-model')" in other.output
        wider = runner.invoke(cli, [*base, "--model", MODEL])  # same settings, wider scope: completes it
        assert wider.exit_code == 0 and len(lines_of(out / "predictions.jsonl")) == len(rows)
    user = tmp_path / "mine"
    user.mkdir()
    (user / "predictions.jsonl").write_text("my own notes\n")
    refused = CliRunner().invoke(cli, ["evaluate", "--bench", str(shards), "--base-url", "http://127.0.0.1:9/v1",
                                       "--model", MODEL, "--out", str(user)])  # fmt: skip
    assert refused.exit_code != 0 and "not an evaluate folder" in refused.output
    assert (user / "predictions.jsonl").read_text() == "my own notes\n"


JUDGE_KEY = "sk-judge-secret-0a1b2c3d"
JUDGE_MODEL = "judge-llm"


def test_judge_extraction_against_a_local_protocol_server_is_cached(
    shards: Path, rows: list[dict], tmp_path: Path
) -> None:
    """The model answers some items in free form; a judge server (checking its own key, model and
    the versioned prompt) rewrites them; a second scoring asks the judge nothing."""
    from medscout_data.evaluation.judge import JUDGE_PROMPT_VERSION, JUDGE_SYSTEM

    anomaly = [r for r in rows if r["task"] == "anomaly"]
    free = {
        anomaly[0]["id"]: "Looking closely, the odd block sits in the third row, second column.",
        anomaly[1]["id"]: "I cannot tell from these images.",
        anomaly[2]["id"]: "The tampered region is the one in the middle, left of centre.",
    }
    judge_says = {free[anomaly[0]["id"]]: anomaly[0]["answer"], free[anomaly[1]["id"]]: "NONE"}
    judge_calls: list[str] = []

    def judge(body: dict, headers: dict[str, str]) -> Answer:
        assert headers["authorization"] == f"Bearer {JUDGE_KEY}" and body["model"] == JUDGE_MODEL
        system, user = body["messages"]
        assert system == {"role": "system", "content": JUDGE_SYSTEM}
        reply = user["content"].split("<reply>\n", 1)[1].split("\n</reply>", 1)[0]
        assert "<question>" in user["content"] and "one integer, the cell index" in user["content"]
        judge_calls.append(reply)
        if reply not in judge_says:
            return Answer(500, '{"error": {"message": "judge overloaded"}}', headers=FAST)
        from chatserver import completion

        return Answer(200, json.dumps(completion(judge_says[reply], JUDGE_MODEL)))

    responder = BenchResponder(rows, "direct", MODEL, KEY, {k: [v] for k, v in free.items()})
    out = tmp_path / "run"
    env = {"OPENAI_API_KEY": KEY, "JUDGE_KEY": JUDGE_KEY}
    with ChatServer(responder) as model_server, ChatServer(judge) as judge_server:
        judge_args = [
            "--extract",
            "judge",
            "--judge-base-url",
            judge_server.url,
            "--judge-model",
            JUDGE_MODEL,
        ]
        judge_args += ["--judge-api-key-env", "JUDGE_KEY"]
        args = ["evaluate", "--bench", str(shards), "--base-url", model_server.url, "--model", MODEL]
        result = CliRunner(env=env).invoke(cli, [*args, "--out", str(out), "--quiet", *judge_args])
        assert result.exit_code == 0, result.output
        first_calls = len(judge_calls)
        scores = json.loads((out / "scores.json").read_text())
        rescored = CliRunner(env=env).invoke(
            cli,
            ["score", "--predictions", str(out / "predictions.jsonl"), "--bench", str(shards), "--quiet",
             "--json", str(tmp_path / "again.json"), *judge_args],
        )  # fmt: skip
    assert rescored.exit_code == 0, rescored.output
    assert responder.problems == []
    # only the three free-form answers go to the judge; the failing one is retried 4 times by the client
    assert sorted(set(judge_calls[:first_calls])) == sorted(free.values()) and first_calls == 2 + 5
    extraction = scores["extraction"]
    assert extraction["method"] == "judge" and extraction["prompt_version"] == JUDGE_PROMPT_VERSION
    assert extraction["judge_model"] == JUDGE_MODEL and extraction["judge_failed"] == [anomaly[2]["id"]]
    assert extraction["canonical_kept"] == len(rows) - 3 and extraction["judged_now"] == 2
    cells = (
        scores["cells"]["ct/anomaly"]
        if anomaly[0]["id"].startswith("ct")
        else scores["cells"]["xray/anomaly"]
    )
    assert math.isclose(
        cells["accuracy"], (1 + 0 + 0 + 1) / 4
    )  # judged right, NONE, failed (strict: 0), truth
    cached = lines_of(out / "judged.jsonl")
    assert sorted((c["id"], c["answer"], c["reply"]) for c in cached) == [
        (anomaly[0]["id"], anomaly[0]["answer"], anomaly[0]["answer"]),
        (anomaly[1]["id"], "", "NONE"),
    ]
    # rescoring: the two judged answers come from the cache; only the failed one is asked again
    assert sorted(set(judge_calls[first_calls:])) == [free[anomaly[2]["id"]]]
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["extraction"]["from_cache"] == 2 and again["overall"] == scores["overall"]
    for text in (result.output, rescored.output, every_file_text(out)):
        assert KEY not in text and JUDGE_KEY not in text


def test_the_spliced_request_body_is_the_plain_request(rows: list[dict]) -> None:
    from medscout_data.evaluation.evaluate import image_problem, request_body, request_messages

    row = {**rows[0], "question": 'a "quoted" question\nwith ünïcode and \\ slashes'}
    for mode, max_tokens in (("direct", None), ("cot", 512)):
        options = EvaluateOptions(
            "b", Path("o"), Endpoint("http://127.0.0.1:1/v1", MODEL), mode, max_tokens, 0.7
        )
        expected = {"model": MODEL, "temperature": 0.7, "messages": request_messages(row, mode)}
        if max_tokens:
            expected["max_tokens"] = max_tokens
        assert json.loads(request_body(row, options)) == expected
    damaged = {**row, "images": [row["images"][0], {"bytes": row["images"][0]["bytes"][:-30]}]}
    assert image_problem(row) == "" and image_problem(damaged).startswith("image 1: ")


def test_rows_from_a_hub_bench_match_the_local_shards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Hub path (datasets.load_dataset; a staged folder stands in for the Hub offline) yields
    the same rows, images byte for byte, as reading the shards."""
    import datasets
    from benchfixture import make_staged_repo

    from medscout_data.evaluation.evaluate import bench_rows as rows_of
    from medscout_data.evaluation.score import BenchSource

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    staged = make_staged_repo(tmp_path / "repo", modalities=("ct",), per_cell=2)
    local = resolve_bench(staged)
    wanted = {"ct-scale-0001", "ct-anomaly-0000", "ct-jigsaw-0001"}
    hub = BenchSource(str(staged), repo_id=str(staged))
    assert sorted(rows_of(hub, wanted), key=str) == sorted(rows_of(local, wanted), key=str)
    assert {r["id"] for r in rows_of(hub, wanted)} == wanted
