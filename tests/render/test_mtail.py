"""The mtail program over the LB's access log: `mtail --compile_only` on every example stack, and the
program run (`mtail --one_shot`) over the log a real rendered nginx wrote in front of fake vLLM backends,
with exact counts per (deployment, status) and the upstream-time histogram checked against the log.

mtail, nginx (with njs) and openssl are required (scripts/install-system-deps.sh installs them): a missing
tool is a failure, never a skip, in CI and locally.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from infra.render.mtail import MTAIL_PATH, render_mtail
from infra.render.telemetry import NGINX_RESPONSES, NGINX_UPSTREAM_BUCKETS, NGINX_UPSTREAM_SECONDS
from tests.render.test_nginx import (
    KEY,
    RATE_KEY,
    STACKS,
    TIMEOUT_S,
    FakeVllm,
    RunningLb,
    free_port,
    install,
    nginx_args,
    plan,
    served,
    wait_for_port,
)
from tests.tooling import require_tool

STACK = "onprem-a800"  # two deployments, Nginx terminates TLS, chat-72b's burst (31) is quick to exceed
LIMITED = "chat-72b"  # rate-limited, then its only replica goes away: 429 and 503
RETRIED = "support"  # a dead replica before the live one: some requests are retried ("a, b" times)
NO_REPLICA = (502, 503)  # what a deployment without a live replica answers


def require_mtail() -> str:
    return require_tool("mtail")  # apt: mtail


def mtail_args(progs: Path) -> list[str]:
    # --port 0 on loopback: this mtail version opens its HTTP listener even with --compile_only/--one_shot.
    return [require_mtail(), "--progs", str(progs), "--logtostderr", "--address", "127.0.0.1", "--port", "0",
            "--emit_prog_label=false"]


def write_program(stack: str, folder: Path) -> Path:
    [artifact] = render_mtail(plan(stack))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / Path(artifact.path).name).write_text(artifact.content, encoding="utf-8")
    return folder


# --- the program -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_mtail_compiles_the_rendered_program(stack: str, tmp_path: Path) -> None:
    progs = write_program(stack, tmp_path / "progs")
    result = subprocess.run([*mtail_args(progs), "--compile_only"], capture_output=True, text=True,
                            timeout=TIMEOUT_S, check=False)
    assert result.returncode == 0, result.stderr
    assert "Loaded program nginx.mtail" in result.stderr


def test_mtail_rejects_a_broken_program(tmp_path: Path) -> None:
    """The check above means something: this mtail fails --compile_only on a syntax error."""
    progs = tmp_path / "progs"
    progs.mkdir()
    (progs / "broken.mtail").write_text("counter x\n/(/ { x++ }\n")
    result = subprocess.run([*mtail_args(progs), "--compile_only"], capture_output=True, text=True,
                            timeout=TIMEOUT_S, check=False)
    assert result.returncode != 0


def test_render_is_deterministic_and_follows_the_contract() -> None:
    first, second = render_mtail(plan("prod")), render_mtail(plan("prod"))
    assert first == second
    [artifact] = first
    assert (artifact.path, artifact.kind, artifact.deployment) == (MTAIL_PATH, "prometheus-config", None)
    text = artifact.content
    assert f'as "{NGINX_RESPONSES}"' in text and f'as "{NGINX_UPSTREAM_SECONDS}"' in text
    assert text.endswith("\n") and "{{" not in text and "{%" not in text
    # Only the header names the stack: the program is the same for every stack.
    others = {render_mtail(plan(s))[0].content.replace(f"'{s}'", "'STACK'") for s in STACKS}
    assert len(others) == 1


# --- the program over a real nginx's access log ----------------------------------------------------------


class ClosingVllm(FakeVllm):
    """HTTP/1.0: every response closes its connection, so once the server is closed Nginx holds no kept-alive
    connection to it and the replica is really gone (connection refused)."""

    protocol_version = "HTTP/1.0"


def start_backend(deployment: str) -> ThreadingHTTPServer:
    handler = type(f"ClosingVllm_{deployment}", (ClosingVllm,), {"deployment": deployment})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    Thread(target=server.serve_forever, daemon=True).start()
    return server


def stop_backend(server: ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()


@dataclass
class Traffic:
    expected: Counter[tuple[str, str]]
    """(deployment, status) -> requests, from what the client sent and got."""
    log: list[dict[str, Any]]
    """The access log nginx wrote, parsed."""
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]
    """mtail's exported samples: (sample name, sorted labels) -> value."""
    seconds: float


def stream(lb: RunningLb, model: str) -> int:
    connection = lb.connection()
    try:
        connection.request("POST", "/v1/chat/completions", body=json.dumps({"model": model, "stream": True}),
                           headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
        response = connection.getresponse()
        assert b"[DONE]" in response.read()
        return response.status
    finally:
        connection.close()


def make_requests(lb: RunningLb, backends: dict[str, ThreadingHTTPServer]) -> Counter[tuple[str, str]]:
    """Every kind of answer, each noted with the deployment label the log must carry."""
    expected: Counter[tuple[str, str]] = Counter()

    def call(deployment: str, want: int, path: str, body: Any = None, key: str | None = KEY) -> int:
        status = lb.call("POST" if body is not None else "GET", path, body, key=key)[0]
        assert status == want, (path, body, key)
        expected[deployment, str(status)] += 1
        return status

    models = served(plan(STACK))
    for model, deployment in models.items():  # 200 per deployment and per model
        call(deployment, 200, "/v1/chat/completions", {"model": model, "messages": []})
    for _ in range(4):  # some go to the dead replica first: upstream times "0.000, 0.001"
        call(RETRIED, 200, "/v1/completions", {"model": "support-chat", "prompt": "hi"})
    call(RETRIED, 200, f"/{RETRIED}/v1/completions", {"model": "anything"})  # path-prefix route
    call(RETRIED, 200, '/v1/chat%22completions', {"model": "support-chat"})  # uri logged with \"
    assert stream(lb, "support-chat") == 200  # upstream time >= FakeVllm.STREAM_PAUSE_S: the whole stream
    expected[RETRIED, "200"] += 1

    call("", 200, "/v1/models")  # answered by njs, no deployment
    call("", 401, "/v1/chat/completions", {"model": "support-chat"}, key="sk-wrong")
    call("", 401, "/v1/chat/completions", {"model": "support-chat"}, key=None)
    call("", 404, "/v1/chat/completions", {"model": 'gpt-"17"', "messages": []})  # model logged with \"
    call("", 404, "/no-such-deployment/v1/completions", {"model": "x"})
    call("", 404, "/nowhere", {"model": "x"})
    call("", 400, "/v1/completions", {"prompt": "no model"})

    limited_model = next(m for m, d in models.items() if d == LIMITED)
    for _ in range(60):  # burst 31, nodelay: the 32nd or so is refused
        status = lb.call("POST", "/v1/completions", {"model": limited_model}, key=RATE_KEY)[0]
        assert status in (200, 429)
        expected[LIMITED, str(status)] += 1
        if status == 429:
            break
    assert expected[LIMITED, "429"] == 1

    # Its only replica goes away: connection refused, 502, error_page @unavailable. The client gets that
    # location's body with 502 (error_page without "=503" keeps the original code) or 503 if nginx.conf
    # says "=503": the program counts whichever Nginx logs.
    stop_backend(backends[LIMITED])
    for _ in range(2):
        status = lb.call("POST", "/v1/completions", {"model": limited_model})[0]
        assert status in NO_REPLICA
        expected[LIMITED, str(status)] += 1
    return expected


def run_mtail_once(progs: Path, log: Path) -> str:
    result = subprocess.run([*mtail_args(progs), "--logs", str(log), "--one_shot", "--one_shot_format",
                             "prometheus"], capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traffic]:
    started = time.monotonic()
    fleet = plan(STACK)
    assert {d.deployment.name for d in fleet.deployments} == {LIMITED, RETRIED}
    backends = {name: start_backend(name) for name in (LIMITED, RETRIED)}
    root = tmp_path_factory.mktemp("mtail-lb")
    dead = f"127.0.0.1:{free_port()}"
    addresses = {LIMITED: [f"127.0.0.1:{backends[LIMITED].server_address[1]}"],
                 RETRIED: [dead, f"127.0.0.1:{backends[RETRIED].server_address[1]}"]}
    layout = install(fleet, root, addresses)
    lb = RunningLb(layout, tls=True)
    process = subprocess.Popen([*nginx_args(layout), "-g", "daemon off;"])
    try:
        wait_for_port(layout.https_port, process, root / "log" / "error.log")
        expected = make_requests(lb, backends)
    finally:
        process.terminate()  # fast shutdown: every answered request is in the log (written unbuffered)
        process.wait(timeout=TIMEOUT_S)
        for server in backends.values():
            stop_backend(server)
    log = Path(layout.log_dir) / "access.log"
    output = run_mtail_once(write_program(STACK, root / "mtail"), log)
    samples = {}
    for family in text_string_to_metric_families(output):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    entries = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    yield Traffic(expected, entries, samples, time.monotonic() - started)


def responses(traffic: Traffic) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    for (name, labels), value in traffic.samples.items():
        if name == NGINX_RESPONSES:
            label = dict(labels)
            assert set(label) == {"deployment", "status"}
            out[label["deployment"], label["status"]] = int(value)
    return out


def test_responses_per_deployment_and_status(traffic: Traffic) -> None:
    assert responses(traffic) == traffic.expected
    logged = Counter((e["deployment"], str(e["status"])) for e in traffic.log)
    assert logged == traffic.expected  # every request logged once, with the deployment label expected
    # What the brief is about: answers of Nginx itself, with and without a deployment.
    no_replica = {k for k in traffic.expected if int(k[1]) in NO_REPLICA}
    assert len(no_replica) == 1 and traffic.expected[no_replica.pop()] == 2
    assert {k for k in traffic.expected if k[1] != "200" and int(k[1]) not in NO_REPLICA} == {
        ("", "400"), ("", "401"), ("", "404"), (LIMITED, "429")}
    assert traffic.seconds < 20, traffic.seconds


def last_attempt(upstream_response_time: str) -> float | None:
    """The program's rule, restated: the last attempt's seconds; None when Nginx answered itself ("") or
    the last attempt has no time ("-")."""
    last = re.split(r", | : ", upstream_response_time)[-1]
    return float(last) if re.fullmatch(r"\d+\.\d+", last) else None


def histogram(traffic: Traffic, deployment: str) -> tuple[dict[float, float], float, float]:
    buckets, total, count = {}, -1.0, -1.0
    for (name, labels), value in traffic.samples.items():
        label = dict(labels)
        if label.get("deployment") != deployment:
            continue
        if name == f"{NGINX_UPSTREAM_SECONDS}_bucket":
            assert set(label) == {"deployment", "le"}
            buckets[float(label["le"])] = value
        elif name == f"{NGINX_UPSTREAM_SECONDS}_sum":
            total = value
        elif name == f"{NGINX_UPSTREAM_SECONDS}_count":
            count = value
    return dict(sorted(buckets.items())), total, count


def test_upstream_histogram_per_deployment(traffic: Traffic) -> None:
    exported = {dict(labels).get("deployment") for (name, labels) in traffic.samples
                if name.startswith(NGINX_UPSTREAM_SECONDS)}
    assert exported == {LIMITED, RETRIED}  # nothing for requests Nginx answered itself
    retried = [e for e in traffic.log if ", " in e["upstream_response_time"]]
    assert retried, "no request was passed on to the next replica"
    for deployment in (LIMITED, RETRIED):
        buckets, total, count = histogram(traffic, deployment)
        assert list(buckets) == [*map(float, NGINX_UPSTREAM_BUCKETS), float("inf")]
        values = list(buckets.values())
        assert values == sorted(values), "buckets must be cumulative"
        # Proxied = sent (or tried) to a replica: the 200s and the 502/503s of a refused replica, not the 429s.
        proxied = sum(traffic.expected[deployment, str(s)] for s in (200, *NO_REPLICA))
        assert count == values[-1] == proxied
        observed = [t for e in traffic.log if e["deployment"] == deployment
                    if (t := last_attempt(e["upstream_response_time"])) is not None]
        assert len(observed) == proxied
        assert buckets == {le: sum(t <= le for t in observed) for le in buckets}
        assert total == pytest.approx(sum(observed), abs=1e-6)
    # The stream's last event comes after FakeVllm.STREAM_PAUSE_S: the whole stream is one observation.
    buckets, _, _ = histogram(traffic, RETRIED)
    assert buckets[float("inf")] - buckets[0.5] == 1


def test_log_fields_are_in_the_order_the_program_expects(traffic: Traffic) -> None:
    assert all(list(e) == list(FIELDS) for e in traffic.log)


def test_escaped_quotes_do_not_break_parsing(traffic: Traffic) -> None:
    quoted = [e for e in traffic.log if '"' in e["uri"] or '"' in e["model"]]
    assert {(e["deployment"], e["status"]) for e in quoted} == {(RETRIED, 200), ("", 404)}
    assert sum(responses(traffic).values()) == len(traffic.log)  # no line left unparsed


# --- edge cases nginx does not produce on demand: lines written as gpufleet_json writes them -----------------

FIELDS = ("time", "request_id", "client", "method", "uri", "status", "bytes_sent", "request_time", "model",
          "deployment", "upstream_addr", "upstream_status", "upstream_connect_time", "upstream_header_time",
          "upstream_response_time")


def line(status: int, deployment: str, upstream_response_time: str, uri: str = "/v1/completions",
         model: str = "m") -> str:
    upstream = "" if not upstream_response_time else "127.0.0.1:8000"
    values = ["2025-01-01T00:00:00+00:00", "0" * 32, "10.0.0.1", "POST", uri, status, 12, 0.5, model,
              deployment, upstream, "200" if upstream else "", upstream_response_time, upstream_response_time,
              upstream_response_time]
    return json.dumps(dict(zip(FIELDS, values, strict=True)), ensure_ascii=False, separators=(",", ":"))


def test_edge_cases(tmp_path: Path) -> None:
    lines = [
        line(499, "chat", "-"),  # client gone before the replica answered: counted, not observed
        line(200, "chat", "0.002, 3.000"),  # retried: the last attempt
        line(502, "chat", "0.000 : 0.000"),  # attempts across an internal redirect: the last one
        line(200, "chat", "0.000"),  # rounds to 0: in the first bucket
        line(404, "", "", model='x","deployment":"evil'),  # escaped quotes cannot forge a label
        line(200, "chat", "0.120", uri='/v1/a"b\\"c'),
        "not a gpufleet_json line",
        line(200, "chat", "0.100")[:-1],  # truncated: no match, nothing counted
    ]
    log = tmp_path / "access.log"
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    samples = {}
    for family in text_string_to_metric_families(run_mtail_once(write_program("dev", tmp_path / "progs"), log)):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    counts = {labels: v for (name, labels), v in samples.items() if name == NGINX_RESPONSES}
    assert counts == {(("deployment", "chat"), ("status", "499")): 1, (("deployment", "chat"), ("status", "200")): 3,
                      (("deployment", "chat"), ("status", "502")): 1, (("deployment", ""), ("status", "404")): 1}
    chat = (("deployment", "chat"),)
    assert samples[f"{NGINX_UPSTREAM_SECONDS}_count", chat] == 4
    assert samples[f"{NGINX_UPSTREAM_SECONDS}_sum", chat] == pytest.approx(3.12)
    le = {float(dict(labels)["le"]): v for (name, labels), v in samples.items()
          if name == f"{NGINX_UPSTREAM_SECONDS}_bucket"}
    assert (le[0.05], le[0.25], le[2.5], le[5.0], le[float("inf")]) == (2, 3, 3, 4, 4)
