"""MIMIC-CXR-derived items never go to a hosted API by accident: `evaluate` and the judge refuse a
remote server before a byte leaves. The "remote" servers here are public IP literals (no DNS);
every request is routed through a loopback proxy (HTTP_PROXY, tests/chatserver.py), which counts
the connections that reach it and answers as the model would."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchfixture import make_shards
from chatserver import BenchResponder, ChatServer, bench_rows, completion
from click.testing import CliRunner

from medscout_data.cli import cli
from medscout_data.evaluation.chat import Endpoint
from medscout_data.evaluation.egress import RemoteMimicRefused, address_is_local, host_is_local
from medscout_data.evaluation.evaluate import EvaluateOptions, evaluate
from medscout_data.evaluation.judge import JudgeExtractor
from medscout_data.evaluation.score import bench_items, load_bench, resolve_bench
from medscout_data.provenance import is_mimic_derived

KEY = "sk-egress-test-1234"
MODEL = "test-vlm"
REMOTE = "http://203.0.113.9/v1"  # TEST-NET-3: public, never resolved, only reached through the proxy


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shards(tmp_path_factory.mktemp("shards"), modalities=("ct", "xray"), per_cell=2)


@pytest.fixture(scope="module")
def rows(shards: Path) -> list[dict]:
    return bench_rows(shards / "bench")


@pytest.fixture
def proxy(rows: list[dict], monkeypatch: pytest.MonkeyPatch):
    """A loopback server every HTTP request goes to, whatever the URL's host."""
    responder = BenchResponder(rows, "direct", MODEL, KEY)
    with ChatServer(responder) as server:
        url = f"http://127.0.0.1:{server.httpd.server_address[1]}"
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.setenv(name, url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        yield server, responder


def options(shards: Path, out: Path, **kwargs: object) -> EvaluateOptions:
    return EvaluateOptions(str(shards), out, Endpoint(REMOTE, MODEL, retries=0), progress=False, **kwargs)


@pytest.mark.parametrize(
    ("address", "local"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("10.20.30.40", True),
        ("172.16.0.1", True),
        ("172.31.255.254", True),
        ("172.32.0.1", False),
        ("192.168.1.7", True),
        ("169.254.10.1", True),
        ("fe80::1%eth0", True),
        ("fd12:3456::1", True),
        ("::ffff:192.168.0.3", True),
        ("::ffff:8.8.8.8", False),
        ("8.8.8.8", False),
        ("203.0.113.9", False),  # documentation range: Python calls it "private", it is not ours
        ("100.64.0.1", False),  # carrier-grade NAT: shared with other customers
        ("2001:db8::1", False),
        ("0.0.0.0", False),
        ("not-an-address", False),
    ],
)
def test_local_addresses_are_loopback_rfc1918_link_local_and_unique_local(address: str, local: bool) -> None:
    assert address_is_local(address) is local


def test_a_name_is_local_only_when_every_address_it_resolves_to_is() -> None:
    table = {
        "gpu-box.lan": ["192.168.1.20", "fd00::20"],
        "api.hosted.example": ["93.184.216.34"],
        "split.example": ["10.0.0.5", "93.184.216.34"],
        "nowhere.invalid": [],
    }
    resolve = table.__getitem__  # a stand-in for DNS: tests never look up external names
    assert host_is_local("gpu-box.lan", resolve)
    assert not host_is_local("api.hosted.example", resolve)
    assert not host_is_local("split.example", resolve)
    assert not host_is_local("nowhere.invalid", resolve)  # a proxy might still reach it
    assert host_is_local("[::1]", resolve) and not host_is_local("[2001:db8::5]", resolve)
    assert host_is_local("localhost")  # the system resolver, from the hosts file


def test_x_ray_and_mimic_sources_are_mimic_derived() -> None:
    assert is_mimic_derived("xray", '{"dataset": "benchfixture"}')  # every X-ray item, sample included
    assert is_mimic_derived("ct", '{"dataset": "mimic-cxr-jpg"}')
    assert not is_mimic_derived("ct", '{"dataset": "totalseg-ct"}')
    assert not is_mimic_derived("mri", None)


def test_a_remote_server_is_refused_before_any_byte_is_sent(
    proxy, shards: Path, rows: list[dict], tmp_path: Path
) -> None:
    server, responder = proxy
    with pytest.raises(RemoteMimicRefused) as refused:
        evaluate(options(shards, tmp_path / "run"))
    message = str(refused.value)
    assert "PhysioNet's responsible-use policy for credentialed data" in message
    assert (
        "--allow-remote-mimic" in message
        and f"{len(rows) // 2} MIMIC-CXR-derived" in message
        and "\n" not in message
    )
    assert server.connections == 0 and sum(responder.requests.values()) == 0
    assert not (tmp_path / "run").exists()


def test_the_override_lets_it_go_to_the_proxy(proxy, shards: Path, rows: list[dict], tmp_path: Path) -> None:
    server, responder = proxy
    outcome = evaluate(options(shards, tmp_path / "run", allow_remote_mimic=True))
    assert outcome.sent == len(rows) and outcome.failed == 0 and responder.problems == []
    assert server.targets and all(t == f"{REMOTE}/chat/completions" for t in server.targets)
    assert outcome.result.missing_ids == [] and outcome.document["overall"]["accuracy"] == pytest.approx(1.0)


def test_a_ct_only_scope_is_never_refused(proxy, shards: Path, rows: list[dict], tmp_path: Path) -> None:
    server, responder = proxy
    outcome = evaluate(options(shards, tmp_path / "run", modalities=("ct",)))
    assert outcome.sent == sum(r["modality"] == "ct" for r in rows) and responder.problems == []
    assert server.connections >= 1


def test_the_cli_refusal_is_one_line_naming_policy_and_option(proxy, shards: Path, tmp_path: Path) -> None:
    server, _ = proxy
    args = ["evaluate", "--bench", str(shards), "--base-url", REMOTE, "--model", MODEL, "--quiet"]
    result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = result.output.strip().splitlines()
    assert "PhysioNet" in line and "--allow-remote-mimic" in line and "203.0.113.9" in line
    assert server.connections == 0


def test_a_remote_judge_is_refused_for_x_ray_responses_before_any_request(
    proxy,
    shards: Path,
    rows: list[dict],
    tmp_path: Path,
) -> None:
    server, _ = proxy
    source = resolve_bench(str(shards))
    items = bench_items(load_bench(source))
    free = {item.id: "the odd block is somewhere in the middle" for item in items}
    judge = JudgeExtractor(
        Endpoint(REMOTE, "judge", retries=0), tmp_path / "judged.jsonl", {}, progress=False
    )
    with pytest.raises(RemoteMimicRefused, match="--judge-allow-remote-mimic"):
        judge.answers(items, free)
    assert server.connections == 0
    # with the model local and the judge remote, evaluate refuses before asking the model
    with ChatServer(BenchResponder(rows, "direct", MODEL, KEY)) as local:
        local_endpoint = Endpoint(f"http://127.0.0.1:{local.httpd.server_address[1]}/v1", MODEL)
        judged = EvaluateOptions(
            str(shards), tmp_path / "run", local_endpoint, extract="judge",
            judge=Endpoint(REMOTE, "judge"), progress=False,
        )  # fmt: skip
        with pytest.raises(RemoteMimicRefused, match="the judge"):
            evaluate(judged)
        assert local.connections == 0
    # CT responses may go to a remote judge
    ct = [item for item in items if item.modality == "ct" and item.task == "anomaly"]
    answers = JudgeExtractor(Endpoint(REMOTE, "judge", retries=0), tmp_path / "j2.jsonl", {}, progress=False)
    server.respond = lambda body, headers: _judge_reply()
    assert answers.answers(ct, {item.id: "cell nine, I think" for item in ct}) == {
        item.id: "9" for item in ct
    }
    assert server.connections >= 1


def _judge_reply():
    from chatserver import Answer

    return Answer(200, json.dumps(completion("9", "judge")))
