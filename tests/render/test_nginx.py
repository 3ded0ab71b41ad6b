"""The Nginx load balancer: `nginx -t` on every example stack, structure parsed with crossplane, and a real
nginx (with njs) on loopback in front of fake vLLM backends: routing by model, keys, limits, streaming.

nginx and its njs module are required (scripts/install-system-deps.sh installs them): a missing tool is a
failure, never a skip, in CI and locally.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import crossplane
import pytest

from infra.plan.optimize import FleetPlan, plan_stack
from infra.render.nginx import NJS_MODULE, NginxLayout, render_nginx, upstream_include
from infra.render.stack import render_fleet
from infra.spec.load import Project, load_stack
from tests.tooling import require_tool

ROOT = Path(__file__).resolve().parents[2]
STACKS = ["dev", "staging", "prod", "onprem-a800", "engines"]
KEY = "sk-test-not-a-real-key"
RATE_KEY = "sk-test-rate-limit-key"  # its own rate bucket, so the 429 test does not starve the others
TIMEOUT_S = 10


def require_nginx() -> str:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None or not Path(NJS_MODULE).exists():
        pytest.fail("nginx with njs is required: run scripts/install-system-deps.sh (apt: nginx, "
                    f"libnginx-mod-http-js; module expected at {NJS_MODULE})")
    return nginx


def require_openssl() -> str:
    return require_tool("openssl")


@cache
def plan(stack: str) -> FleetPlan:
    return plan_stack(load_stack(Project(ROOT), stack))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_layout(root: Path) -> NginxLayout:
    return NginxLayout(
        config_dir=str(root / "nginx"), tls_dir=str(root / "tls"), log_dir=str(root / "log"),
        pid_file=str(root / "nginx.pid"), listen_address="127.0.0.1",
        http_port=free_port(), https_port=free_port(), status_port=free_port(),
    )


test_layout.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def install(fleet: FleetPlan, root: Path, backends: dict[str, list[str]]) -> NginxLayout:
    """Write the LB as a deploy would: rendered files, upstream includes, key hashes, a test certificate."""
    layout = test_layout(root)
    for artifact in render_nginx(fleet, layout):
        target = Path(layout.config_dir) / Path(artifact.path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(artifact.content, encoding="utf-8")
    Path(layout.upstream_dir).mkdir(parents=True)
    for name, addresses in backends.items():
        (Path(layout.upstream_dir) / f"{name}.conf").write_text(upstream_include(name, addresses))
    hashes = "".join(f"{hashlib.sha256(k.encode()).hexdigest()} 1;\n" for k in (KEY, RATE_KEY))
    Path(layout.key_hash_file).write_text(hashes)
    Path(layout.log_dir).mkdir()
    self_signed_certificate(Path(layout.tls_dir))
    return layout


def self_signed_certificate(folder: Path) -> None:
    folder.mkdir(parents=True)
    subprocess.run(
        [require_openssl(), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-keyout", str(folder / "privkey.pem"), "-out", str(folder / "fullchain.pem")],
        check=True, capture_output=True, timeout=60,
    )


def nginx_args(layout: NginxLayout) -> list[str]:
    prefix = str(Path(layout.config_dir).parent)
    return [require_nginx(), "-p", prefix, "-e", f"{layout.log_dir}/error.log", "-c", f"{layout.config_dir}/nginx.conf"]


def deployments(fleet: FleetPlan) -> list[str]:
    return [d.deployment.name for d in fleet.deployments]


# --- nginx -t and structure ------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_nginx_accepts_the_rendered_config(stack: str, tmp_path: Path) -> None:
    fleet = plan(stack)
    layout = install(fleet, tmp_path, {name: ["127.0.0.1:9"] for name in deployments(fleet)})
    result = subprocess.run([*nginx_args(layout), "-t"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def production_config(stack: str, tmp_path: Path) -> list[dict[str, Any]]:
    """The nginx.conf render_fleet produces (production paths), parsed; includes are deploy-time files."""
    fleet = plan(stack)
    everything = [a for a in render_fleet(fleet) if a.kind == "nginx-conf"]
    # On-prem the upstream files are rendered too (the addresses are in the spec); elsewhere deploy-time.
    upstreams = {a.path for a in everything if a.path.startswith("nginx/upstreams/")}
    # On-prem the replicas' addresses; on aws-ec2 the "no replica yet" file discovery replaces (ec2_hosts.py).
    has_hosts = fleet.spec.target in ("onprem", "aws-ec2")
    expected = {f"nginx/upstreams/{n}.conf" for n in deployments(fleet)} if has_hosts else set()
    assert upstreams == expected
    artifacts = [a for a in everything if a.path not in upstreams]
    assert {a.path for a in artifacts} == {"nginx/nginx.conf", "nginx/gpufleet.js"}
    assert all(a.deployment is None for a in artifacts)
    conf = tmp_path / "nginx.conf"
    conf.write_text(next(a.content for a in artifacts if a.path == "nginx/nginx.conf"))
    parsed = crossplane.parse(str(conf), single=True, check_ctx=True, check_args=False)
    assert parsed["status"] == "ok", parsed["errors"]
    return list(parsed["config"][0]["parsed"])


def find(block: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [d for d in block if d["directive"] == name]


def one(block: list[dict[str, Any]], name: str) -> list[str]:
    found = find(block, name)
    assert len(found) == 1, f"{name}: {len(found)} times"
    return list(found[0]["args"])


def walk(block: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for d in block:
        yield d
        yield from walk(d.get("block", []))


@pytest.mark.parametrize("stack", STACKS)
def test_structure(stack: str, tmp_path: Path) -> None:
    top = production_config(stack, tmp_path)
    fleet = plan(stack)
    assert one(top, "load_module") == [NJS_MODULE]
    http = find(top, "http")[0]["block"]
    for directive, args in [("proxy_http_version", ["1.1"]), ("proxy_buffering", ["off"]),
                            ("proxy_cache", ["off"]), ("gzip", ["off"]), ("limit_req_status", ["429"])]:
        assert one(http, directive) == args
    assert ["Connection", ""] in [d["args"] for d in find(http, "proxy_set_header")]
    assert one(http, "proxy_next_upstream")[:4] == ["error", "timeout", "http_502", "http_503"]
    assert one(http, "client_max_body_size") == one(http, "client_body_buffer_size")

    upstreams = {d["args"][0]: d["block"] for d in find(http, "upstream")}
    assert set(upstreams) == {f"deployment_{n}" for n in deployments(fleet)}
    policies = {f"deployment_{d.deployment.name}": d.deployment.load_balancing for d in fleet.deployments}
    maps = {d["args"][1]: d for d in find(http, "map")}
    for name, block in upstreams.items():
        balancing = policies[name]
        if balancing.policy == "session-affinity":
            # Consistent hashing on the session header; no header -> a random key, so no hot replica.
            variable, mode = one(block, "hash")
            assert mode == "consistent" and not find(block, "least_conn")
            header = "$http_" + balancing.session_header.lower().replace("-", "_")
            assert maps[variable]["args"][0] == header
            entries = {(e["directive"], *e["args"]) for e in maps[variable]["block"]}  # crossplane: key = directive
            assert entries == {("", "$request_id"), ("default", header)}
        else:
            assert one(block, "least_conn") == [] and not find(block, "hash")
        assert int(one(block, "keepalive")[0]) > 0
        assert one(block, "include") == [f"/etc/gpufleet/nginx/upstreams/{name.removeprefix('deployment_')}.conf"]
    zones = [d["args"] for d in find(http, "limit_req_zone")]
    assert len(zones) == len(fleet.deployments)

    servers = [d["block"] for d in find(http, "server")]
    named = {d["args"][0]: d["block"] for s in servers for d in find(s, "location") if d["args"][0].startswith("@")}
    for d in fleet.deployments:
        location = named[f"@{d.deployment.name}"]
        assert one(location, "proxy_pass") == [f"http://deployment_{d.deployment.name}"]
        timeout = int(one(location, "proxy_read_timeout")[0].removesuffix("s"))
        assert 60 <= timeout <= 3600
        assert one(location, "limit_req")[0] == f"zone=rate_{d.deployment.name}"

    status_servers = [s for s in servers if any(d["directive"] == "stub_status" for d in walk(s))]
    assert len(status_servers) == 1
    assert [d["args"][0] for d in find(status_servers[0], "listen")] == ["127.0.0.1:8081"]
    other_listens = [d["args"][0] for s in servers if s is not status_servers[0] for d in find(s, "listen")]
    assert all(not a.startswith("127.") for a in other_listens)

    tls = fleet.spec.network.tls.source in ("file", "self-signed")
    ssl_listens = [d for d in walk(http) if d["directive"] == "listen" and "ssl" in d["args"]]
    assert len(ssl_listens) == (1 if tls else 0)
    if tls:
        redirects = [d for d in walk(servers[0]) if d["directive"] == "return" and d["args"][0] == "301"]
        assert redirects, "the HTTP server must redirect to HTTPS"


def test_read_timeout_follows_the_slo() -> None:
    """support (prod): 600 ms TTFT + 8192 tokens × 40 ms = 328.3 s, rounded up."""
    conf = render_nginx(plan("prod"))[0].content
    assert "proxy_read_timeout 329s;" in conf


def test_upstream_include_format() -> None:
    text = upstream_include("chat", ["10.0.0.2", "10.0.0.1", "10.0.0.3:8001"])
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == [
        "server 10.0.0.1:8000 max_fails=3 fail_timeout=10s;",
        "server 10.0.0.2:8000 max_fails=3 fail_timeout=10s;",
        "server 10.0.0.3:8001 max_fails=3 fail_timeout=10s;",
    ]
    with pytest.raises(ValueError, match="no replica"):
        upstream_include("chat", [])


def test_render_is_deterministic_and_holds_no_key() -> None:
    first, second = render_nginx(plan("prod")), render_nginx(plan("prod"))
    assert first == second
    assert all(KEY not in a.content for a in first)


# --- a real nginx in front of fake vLLM replicas ---------------------------------------------------------


class FakeVllm(BaseHTTPRequestHandler):
    """Answers with the deployment it belongs to; streams three SSE events, the last after STREAM_PAUSE_S."""

    protocol_version = "HTTP/1.1"  # keep-alive, like uvicorn
    deployment = "?"
    STREAM_PAUSE_S = 1.0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        request = json.loads(body or b"{}")
        if request.get("stream"):
            self.stream()
            return
        answer = json.dumps({"deployment": self.deployment, "path": self.path, "model": request.get("model"),
                             "authorization": self.headers.get("Authorization")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i, event in enumerate([f'data: {{"deployment": "{self.deployment}"}}\n\n', "data: more\n\n",
                                   "data: [DONE]\n\n"]):
            if i == 2:
                time.sleep(self.STREAM_PAUSE_S)
            data = event.encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


def start_backend(deployment: str) -> ThreadingHTTPServer:
    handler = type(f"FakeVllm_{deployment}", (FakeVllm,), {"deployment": deployment})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass
class RunningLb:
    layout: NginxLayout
    tls: bool

    def connection(self) -> http.client.HTTPConnection:
        if self.tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # the test certificate is self-signed
            return http.client.HTTPSConnection("127.0.0.1", self.layout.https_port, timeout=TIMEOUT_S,
                                               context=context)
        return http.client.HTTPConnection("127.0.0.1", self.layout.http_port, timeout=TIMEOUT_S)

    def call(self, method: str, path: str, body: Any = None, key: str | None = KEY) -> tuple[int, dict[str, str], Any]:
        connection = self.connection()
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        try:
            connection.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
            response = connection.getresponse()
            data = response.read()
            return response.status, dict(response.getheaders()), json.loads(data) if data else None
        finally:
            connection.close()


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"nginx exited: {log.read_text() if log.exists() else ''}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail(f"nginx did not listen on {port} within {TIMEOUT_S} s")


@pytest.fixture(scope="module", params=["prod", "dev"])
def lb(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningLb]:
    """prod: two deployments, LoRA adapters, plain HTTP (TLS on the AWS LB); dev: self-signed TLS."""
    fleet = plan(request.param)
    backends = {name: start_backend(name) for name in deployments(fleet)}
    root = tmp_path_factory.mktemp(f"lb-{request.param}")
    dead = f"127.0.0.1:{free_port()}"  # a replica that refuses connections: requests must go on to the next
    layout = install(fleet, root, {n: [dead, f"127.0.0.1:{s.server_address[1]}"] for n, s in backends.items()})
    running = RunningLb(layout, tls=fleet.spec.network.tls.source in ("file", "self-signed"))
    process = subprocess.Popen([*nginx_args(layout), "-g", "daemon off;"])
    try:
        wait_for_port(layout.https_port if running.tls else layout.http_port, process, root / "log" / "error.log")
        yield running
    finally:
        process.terminate()
        process.wait(timeout=TIMEOUT_S)
        for server in backends.values():
            server.shutdown()
            server.server_close()


def served(fleet: FleetPlan) -> dict[str, str]:
    """Every model name clients may send -> the deployment that must answer it."""
    out = {}
    for d in fleet.deployments:
        for model in [d.profile.resolved_served_name, *(a.name for a in d.profile.lora_adapters)]:
            out[model] = d.deployment.name
    return out


def stack_of(lb: RunningLb) -> str:
    return "dev" if lb.tls else "prod"


def test_healthz(lb: RunningLb) -> None:
    assert lb.call("GET", "/healthz", key=None)[0] == 200


def test_each_model_reaches_its_deployment(lb: RunningLb) -> None:
    models = served(plan(stack_of(lb)))
    for model, deployment in models.items():
        status, _, body = lb.call("POST", "/v1/chat/completions", {"model": model, "messages": []})
        assert status == 200, body
        assert (body["deployment"], body["model"], body["path"]) == (deployment, model, "/v1/chat/completions")
        assert body["authorization"] == f"Bearer {KEY}"  # vLLM checks the same key again


def test_lora_adapter_routes_to_its_base_deployment(lb: RunningLb) -> None:
    if stack_of(lb) != "prod":
        return  # dev serves no adapter
    status, _, body = lb.call("POST", "/v1/completions", {"model": "support-chat-billing", "prompt": "hi"})
    assert (status, body["deployment"]) == (200, "support")


def test_path_prefix_fallback(lb: RunningLb) -> None:
    name = deployments(plan(stack_of(lb)))[-1]
    status, _, body = lb.call("POST", f"/{name}/v1/completions", {"model": "anything", "prompt": "hi"})
    assert (status, body["deployment"], body["path"]) == (200, name, "/v1/completions")
    status, _, body = lb.call("POST", "/no-such-deployment/v1/completions", {"model": "x"})
    assert (status, body["error"]["code"]) == (404, "not_found")


def test_unknown_model_is_an_openai_404(lb: RunningLb) -> None:
    status, headers, body = lb.call("POST", "/v1/chat/completions", {"model": "gpt-17", "messages": []})
    assert status == 404
    assert headers["Content-Type"] == "application/json"
    assert body["error"]["code"] == "model_not_found" and body["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("key", [None, "sk-wrong"])
def test_missing_or_wrong_key_is_an_openai_401(lb: RunningLb, key: str | None) -> None:
    model = next(iter(served(plan(stack_of(lb)))))
    status, headers, body = lb.call("POST", "/v1/chat/completions", {"model": model}, key=key)
    assert status == 401
    assert headers["Content-Type"] == "application/json"
    assert body["error"]["code"] == "invalid_api_key" and body["error"]["type"] == "invalid_request_error"
    assert lb.call("GET", "/v1/models", key=key)[0] == 401


def test_models_lists_every_served_name(lb: RunningLb) -> None:
    status, _, body = lb.call("GET", "/v1/models")
    assert status == 200
    assert {m["id"] for m in body["data"]} == set(served(plan(stack_of(lb))))


def test_oversized_body_is_a_413(lb: RunningLb) -> None:
    connection = lb.connection()
    try:  # announce a body over the limit: nginx answers from the Content-Length, before reading it
        connection.putrequest("POST", "/v1/chat/completions")
        connection.putheader("Authorization", f"Bearer {KEY}")
        connection.putheader("Content-Length", str(64 << 20))
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 413
        assert json.loads(response.read())["error"]["code"] == "request_too_large"
    finally:
        connection.close()


def test_stream_arrives_in_chunks(lb: RunningLb) -> None:
    model = next(iter(served(plan(stack_of(lb)))))
    connection = lb.connection()
    try:
        start = time.monotonic()
        connection.request("POST", "/v1/chat/completions", body=json.dumps({"model": model, "stream": True}),
                           headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("X-Accel-Buffering") == "no"
        first = response.read1(65536)
        first_at = time.monotonic() - start
        rest = response.read()
        total = time.monotonic() - start
    finally:
        connection.close()
    assert first.startswith(b"data: ")
    assert b"[DONE]" not in first and b"[DONE]" in rest
    assert first_at < FakeVllm.STREAM_PAUSE_S / 2 < FakeVllm.STREAM_PAUSE_S <= total + 0.05


def test_per_key_rate_limit_is_a_429_with_retry_after(lb: RunningLb) -> None:
    if stack_of(lb) != "dev":
        return  # prod's bursts are hundreds of requests; dev's (10) is quick to exceed
    model = next(iter(served(plan("dev"))))
    statuses = []
    for _ in range(40):
        status, headers, body = lb.call("POST", "/v1/completions", {"model": model}, key=RATE_KEY)
        statuses.append(status)
        if status == 429:
            assert headers["Retry-After"] == "1"
            assert body["error"]["code"] == "rate_limit_exceeded"
            break
    assert statuses[-1] == 429 and statuses.count(200) >= 10, statuses
    assert lb.call("POST", "/v1/completions", {"model": model})[0] == 200  # another key: its own bucket


def test_http_redirects_to_https(lb: RunningLb) -> None:
    if not lb.tls:
        return
    connection = http.client.HTTPConnection("127.0.0.1", lb.layout.http_port, timeout=TIMEOUT_S)
    try:
        connection.request("GET", "/v1/models")
        response = connection.getresponse()
        assert response.status == 301
        assert response.getheader("Location") == f"https://127.0.0.1:{lb.layout.https_port}/v1/models"
    finally:
        connection.close()


def test_stub_status_answers_on_loopback(lb: RunningLb) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", lb.layout.status_port, timeout=TIMEOUT_S)
    try:
        connection.request("GET", "/stub_status")
        response = connection.getresponse()
        assert response.status == 200 and b"Active connections" in response.read()
    finally:
        connection.close()


def test_access_log_is_json_with_the_routed_model(lb: RunningLb) -> None:
    model = next(iter(served(plan(stack_of(lb)))))
    assert lb.call("POST", "/v1/chat/completions", {"model": model})[0] == 200
    log = Path(lb.layout.log_dir) / "access.log"
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        entries = [json.loads(line) for line in log.read_text().splitlines()]
        routed = [e for e in entries if e["model"] == model and e["status"] == 200]
        if routed:
            break
        time.sleep(0.05)
    entry = routed[-1]
    assert entry["deployment"] == served(plan(stack_of(lb)))[model]
    assert entry["upstream_addr"].startswith("127.0.0.1:")
    assert float(entry["request_time"]) >= 0 and entry["upstream_response_time"] != ""


def test_refused_connection_is_retried_on_another_replica(lb: RunningLb) -> None:
    """Every upstream has a dead replica first: least_conn tries it in turn, nginx moves on to the live one."""
    model = next(iter(served(plan(stack_of(lb)))))
    statuses = [lb.call("POST", "/v1/completions", {"model": model})[0] for _ in range(4)]
    assert statuses == [200] * 4
    entries = [json.loads(line) for line in (Path(lb.layout.log_dir) / "access.log").read_text().splitlines()]
    retried = [e for e in entries if ", " in e["upstream_addr"] and e["status"] == 200]
    assert retried, "no request was passed to the next replica"
    assert retried[0]["upstream_status"].startswith("502, 200")
