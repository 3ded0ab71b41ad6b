"""hostagent.endpoints against a fake Kubernetes API (http.server on loopback serving EndpointSlice lists and
Status errors as the real API does) and, in one test, a real nginx: the files it writes (exactly the formats'
output), which endpoints count, when it checks and reloads nginx, how it fails, and how its loop stops."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from infra.hostagent import endpoints, formats
from tests.hostagent.conftest import closed_port, free_port
from tests.tooling import require_tool

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "gpufleet"
CHAT, EMBED = "gpufleet-vllm-chat", "gpufleet-vllm-embed"
SLICES_PATH = f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices"
TIMEOUT_S = 5


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    """A Kubernetes Status object: the body of the API's error replies."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


UNAUTHORIZED = status(401, "Unauthorized", "Unauthorized")
FORBIDDEN = status(403, "Forbidden", 'endpointslices.discovery.k8s.io is forbidden: User '
                   '"system:serviceaccount:gpufleet:gpufleet-lb" cannot list resource "endpointslices" in API '
                   'group "discovery.k8s.io" in the namespace "gpufleet"')


# -- the fake API ------------------------------------------------------------------------------------------

def endpoint(*addresses: str, pod: str, ready: bool | None = True, serving: bool | None = None,
             terminating: bool = False, zone: str = "us-east-1a") -> dict[str, Any]:
    """One endpoint of a discovery.k8s.io/v1 EndpointSlice; ``ready=None`` leaves the condition out."""
    conditions: dict[str, Any] = {"serving": ready is not False if serving is None else serving,
                                  "terminating": terminating}
    if ready is not None:
        conditions["ready"] = ready
    return {"addresses": list(addresses), "conditions": conditions, "nodeName": f"ip-10-0-1-7.{zone}.internal",
            "zone": zone, "targetRef": {"kind": "Pod", "namespace": NAMESPACE, "name": pod, "uid": f"uid-{pod}"}}


def endpoint_slice(service: str, suffix: str, endpoints_: list[dict[str, Any]],
                   ports: list[tuple[str, int]] | None = None, address_type: str = "IPv4") -> dict[str, Any]:
    """An EndpointSlice as the list returns its items (no kind/apiVersion); ``ports`` default: http 8000."""
    return {
        "metadata": {
            "name": f"{service}-{suffix}", "generateName": f"{service}-", "namespace": NAMESPACE,
            "resourceVersion": "48213", "uid": f"uid-slice-{suffix}",
            "labels": {"kubernetes.io/service-name": service,
                       "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": service, "uid": f"uid-{service}",
                                 "controller": True, "blockOwnerDeletion": True}],
        },
        "addressType": address_type,
        "endpoints": endpoints_,
        "ports": [{"name": name, "port": port, "protocol": "TCP"} for name, port in (ports or [("http", 8000)])],
    }


@dataclass
class FakeApi:
    """Serves ``GET /apis/discovery.k8s.io/v1/namespaces/gpufleet/endpointslices?labelSelector=...`` from
    ``slices`` (Service -> its slices), after checking the bearer token; ``failures`` (Service -> status and
    body) answer instead."""

    token: str = "token-1"
    slices: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    failures: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (Service, Authorization header)
    location: str | None = None  # the Location header of every reply
    server: http.server.ThreadingHTTPServer | None = None
    scheme: str = "http"

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}"

    def fail(self, code: int, body: dict[str, Any] | bytes, services: tuple[str, ...] = (CHAT, EMBED)) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.failures.update(dict.fromkeys(services, (code, raw)))

    def answer(self, path: str, authorization: str) -> tuple[int, bytes]:
        parts = urllib.parse.urlsplit(path)
        label, _, service = urllib.parse.parse_qs(parts.query).get("labelSelector", [""])[0].partition("=")
        self.requests.append((service, authorization))
        if authorization != f"Bearer {self.token}":
            return 401, json.dumps(UNAUTHORIZED).encode()
        if service in self.failures:
            return self.failures[service]
        if parts.path != SLICES_PATH or label != "kubernetes.io/service-name":
            return 404, json.dumps(status(404, "NotFound", f"the server could not find {path}")).encode()
        listing = {"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1",
                   "metadata": {"resourceVersion": "48213"}, "items": self.slices.get(service, [])}
        return 200, json.dumps(listing).encode()

    def start(self, tls: ssl.SSLContext | None = None) -> FakeApi:
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                code, body = api.answer(self.path, self.headers.get("Authorization", ""))
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if api.location is not None:
                    self.send_header("Location", api.location)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # quiet test output
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi().start()
    yield fake
    fake.stop()


# -- the writer --------------------------------------------------------------------------------------------

@dataclass
class Writer:
    """A configuration in tmp_path (built by config_document, as the render builds it, then pointed at the
    fake API) and the means to run passes with it."""

    root: Path
    api: FakeApi
    deployments: dict[str, tuple[str, str, int]] = field(
        default_factory=lambda: {"chat": (CHAT, "http", 8000), "embed": (EMBED, "http", 8000)})
    check: list[str] = field(default_factory=list)
    reload: list[str] = field(default_factory=list)
    pid_file: Path | None = None
    api_url: str | None = None  # None: the fake API's
    interval_s: int = 5

    def __post_init__(self) -> None:
        self.check = self.check or self.recorder("check")
        self.reload = self.reload or self.recorder("reload")
        self.pid_file = self.pid_file or self.root / "nginx.pid"
        self.rotate_token(self.api.token)

    @property
    def config_path(self) -> Path:
        return self.root / "endpoints.json"

    @property
    def upstreams(self) -> Path:
        return self.root / "upstreams"

    @property
    def ready_file(self) -> Path:
        return self.root / "run" / "upstreams.ready"

    @property
    def token_file(self) -> Path:
        return self.root / "token"

    @property
    def calls(self) -> list[str]:
        log = self.root / "calls.log"
        return log.read_text().split() if log.exists() else []

    def recorder(self, name: str, status: int = 0) -> list[str]:
        return ["sh", "-c", f"echo {name} >> {self.root / 'calls.log'}; exit {status}"]

    def rotate_token(self, token: str) -> None:
        self.token_file.write_text(f"{token}\n")

    def nginx_running(self) -> None:
        assert self.pid_file is not None
        self.pid_file.write_text("4242\n")

    def document(self) -> dict[str, Any]:
        document = endpoints.config_document(
            namespace=NAMESPACE, deployments=self.deployments, upstreams_dir=str(self.upstreams),
            nginx_conf="/unused/nginx.conf", pid_file=str(self.pid_file), ready_file=str(self.ready_file),
            interval_s=self.interval_s)
        document.update(api_url=self.api_url or self.api.url, token_file=str(self.token_file),
                        ca_file=str(self.root / "ca.crt"))
        document["upstreams"].update(check=self.check, reload=self.reload)
        return document

    def write_config(self) -> Path:
        self.config_path.write_text(json.dumps(self.document()))
        return self.config_path

    def once(self) -> int:
        return endpoints.main(["--config", str(self.write_config()), "--once"])

    def run_pass(self, state: endpoints.State) -> bool:
        return endpoints.run_pass(endpoints.parse_config(self.document()), state)

    def upstream(self, deployment: str) -> str:
        return (self.upstreams / f"{deployment}.conf").read_text()

    def stats(self) -> dict[str, tuple[int, int]]:
        return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in self.upstreams.iterdir()}


@pytest.fixture
def writer(tmp_path: Path, api: FakeApi) -> Writer:
    """Two deployments, nginx "running" (its pid file exists), check and reload recorded."""
    made = Writer(tmp_path, api)
    made.nginx_running()
    return made


def conf(deployment: str, servers: list[str]) -> str:
    return formats.upstream_conf(deployment, servers, 8000, allow_empty=True)


def chat_endpoints(api: FakeApi, *ready_ips: str) -> None:
    api.slices[CHAT] = [endpoint_slice(CHAT, "a1b2c", [endpoint(ip, pod=f"chat-{ip}") for ip in ready_ips])]


# -- the files ---------------------------------------------------------------------------------------------

def test_a_pass_writes_the_ready_endpoints_in_the_formats_format(
        writer: Writer, api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    api.slices[CHAT] = [endpoint_slice(CHAT, "x7k2p", [
        endpoint("10.0.1.11", pod="chat-0"),
        endpoint("10.0.1.12", pod="chat-1", ready=None),  # no ready condition: "nil should be interpreted as true"
        endpoint("10.0.1.13", pod="chat-2", ready=False),  # loading its model
        endpoint("10.0.1.14", pod="chat-3", ready=False, serving=True, terminating=True),  # draining
        endpoint("10.0.1.15", pod="chat-4", ready=True, terminating=True),  # publishNotReadyAddresses: still out
    ])]
    assert writer.once() == 0
    assert writer.upstream("chat") == conf("chat", ["10.0.1.11:8000", "10.0.1.12:8000"])
    # No slice yet: the one `down` server, so nginx.conf still loads and requests get the 502.
    assert writer.upstream("embed") == conf("embed", [])
    assert f"server {formats.UNAVAILABLE_SERVER};" in writer.upstream("embed")
    assert sorted(p.name for p in writer.upstreams.iterdir()) == ["chat.conf", "embed.conf"]  # no temporary left
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in writer.upstreams.iterdir())
    assert writer.calls == ["check", "reload"]
    assert writer.ready_file.read_text().startswith("20")  # an ISO time
    assert sorted(api.requests) == [(CHAT, "Bearer token-1"), (EMBED, "Bearer token-1")]
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"wrote {writer.upstreams / 'chat.conf'}",
        "upstream chat: + 10.0.1.11:8000 (ready)",
        "upstream chat: + 10.0.1.12:8000 (ready)",
        f"wrote {writer.upstreams / 'embed.conf'}",
        "reloaded nginx",
        f"every upstream is written: {writer.ready_file}",
    ]
    assert err == ""


def test_slices_are_merged_and_every_address_of_an_endpoint_is_taken(writer: Writer, api: FakeApi) -> None:
    api.slices[CHAT] = [
        endpoint_slice(CHAT, "aaaaa", [endpoint("10.0.1.11", pod="chat-0"),
                                       endpoint("10.0.1.12", "10.0.1.22", pod="chat-1")]),
        # During an update of the Service's slices a pod can be in two of them.
        endpoint_slice(CHAT, "bbbbb", [endpoint("10.0.1.11", pod="chat-0"), endpoint("10.0.1.13", pod="chat-2")]),
    ]
    assert writer.once() == 0
    assert writer.upstream("chat") == conf("chat", ["10.0.1.11:8000", "10.0.1.12:8000", "10.0.1.13:8000",
                                                    "10.0.1.22:8000"])
    assert writer.upstream("chat").count("10.0.1.11:8000") == 1


def test_the_port_is_the_slice_port_named_port_name(writer: Writer, api: FakeApi) -> None:
    api.slices[CHAT] = [
        endpoint_slice(CHAT, "aaaaa", [endpoint("10.0.1.11", pod="chat-0")], ports=[("metrics", 9090), ("http", 8001)]),
        endpoint_slice(CHAT, "bbbbb", [endpoint("10.0.1.12", pod="chat-1")], ports=[("metrics", 9090)]),
    ]
    no_ports = endpoint_slice(CHAT, "ccccc", [endpoint("10.0.1.13", pod="chat-2")])
    no_ports["ports"] = None  # the API's "no ports defined"
    api.slices[CHAT].append(no_ports)
    assert writer.once() == 0
    # No port of the slice is named "http": the configured port.
    assert writer.upstream("chat") == conf("chat", ["10.0.1.11:8001", "10.0.1.12:8000", "10.0.1.13:8000"])


def test_ipv6_is_bracketed_and_fqdn_slices_are_skipped(writer: Writer, api: FakeApi) -> None:
    api.slices[CHAT] = [
        endpoint_slice(CHAT, "v4aaa", [endpoint("10.0.1.11", pod="chat-0")]),
        endpoint_slice(CHAT, "v6aaa", [endpoint("fd00:10:0:1::b", pod="chat-0"),
                                       endpoint("fd00:0010:0000:0001:0000:0000:0000:000c", pod="chat-1")],
                       address_type="IPv6"),
        endpoint_slice(CHAT, "fqdna", [endpoint("vllm-0.example.internal", pod="chat-9")], address_type="FQDN"),
    ]
    assert writer.once() == 0
    servers = ["10.0.1.11:8000", "[fd00:10:0:1::b]:8000", "[fd00:10:0:1::c]:8000"]
    assert writer.upstream("chat") == conf("chat", servers)
    assert "example.internal" not in writer.upstream("chat")


def test_nothing_is_rewritten_checked_or_reloaded_when_nothing_changed(
        writer: Writer, api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    chat_endpoints(api, "10.0.1.11", "10.0.1.12")
    assert writer.once() == 0
    before = writer.stats()
    capsys.readouterr()
    api.slices[CHAT].reverse()
    assert writer.once() == 0  # a new process, as after a restart of the sidecar: the files are the state
    assert writer.stats() == before  # same inode and mtime: not even rewritten with the same bytes
    assert writer.calls == ["check", "reload"]
    assert capsys.readouterr().out == ""


def test_each_change_of_the_endpoints_is_a_line(writer: Writer, api: FakeApi,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    chat_endpoints(api, "10.0.1.11", "10.0.1.12")
    assert writer.once() == 0
    capsys.readouterr()
    chat_endpoints(api, "10.0.1.12", "10.0.1.13")
    assert writer.once() == 0
    assert capsys.readouterr().out.splitlines() == [
        f"wrote {writer.upstreams / 'chat.conf'}",
        "upstream chat: + 10.0.1.13:8000 (ready)",
        "upstream chat: - 10.0.1.11:8000 (no longer a ready endpoint)",
        "reloaded nginx",
    ]
    assert writer.calls == ["check", "reload"] * 2


def test_the_token_is_read_again_every_pass(writer: Writer, api: FakeApi) -> None:
    state = endpoints.State()
    chat_endpoints(api, "10.0.1.11")
    assert writer.run_pass(state)
    api.token = "token-2"  # the API rotated the token and the kubelet refreshed the file
    writer.rotate_token("token-2")
    chat_endpoints(api, "10.0.1.12")
    assert writer.run_pass(state)
    assert writer.upstream("chat") == conf("chat", ["10.0.1.12:8000"])
    assert sorted(api.requests) == sorted([(CHAT, "Bearer token-1"), (EMBED, "Bearer token-1"),
                                           (CHAT, "Bearer token-2"), (EMBED, "Bearer token-2")])


# -- API failures ------------------------------------------------------------------------------------------

def stale_token(writer: Writer, api: FakeApi) -> str:
    api.token = "token-2"  # the file still holds token-1
    return "HTTP 401: Unauthorized"


def forbidden(writer: Writer, api: FakeApi) -> str:
    api.fail(403, FORBIDDEN)
    return f"HTTP 403: {FORBIDDEN['message']}"


def server_error(writer: Writer, api: FakeApi) -> str:
    api.fail(500, status(500, "InternalError", "Internal error occurred:\n etcdserver: request timed out"))
    return "HTTP 500: Internal error occurred: etcdserver: request timed out"  # on one line


def gateway_error(writer: Writer, api: FakeApi) -> str:
    api.fail(503, b"<html><body>503 Service Unavailable</body></html>")
    return "HTTP 503; its upstream"  # no Status object: the status alone


def not_json(writer: Writer, api: FakeApi) -> str:
    api.fail(200, b"<html>proxy login</html>")
    return "the reply is not JSON"


def not_a_list(writer: Writer, api: FakeApi) -> str:
    api.fail(200, {"kind": "Table", "rows": []})
    return "the reply is not an EndpointSlice list"


def not_an_address(writer: Writer, api: FakeApi) -> str:
    # Checked before it reaches nginx.conf: a value like this must never be written into an upstream.
    for service in (CHAT, EMBED):
        api.slices[service] = [endpoint_slice(service, "bad", [endpoint("10.0.1.9; include /etc/shadow", pod="x")])]
    return "not IPv4: '10.0.1.9; include /etc/shadow'"


def redirect(writer: Writer, api: FakeApi) -> str:
    # Not followed: the token would go along. Followed, it would end in "Connection refused".
    api.location = f"http://127.0.0.1:{closed_port()}/api"
    api.fail(302, b"")
    return "HTTP 302"


def unreachable(writer: Writer, api: FakeApi) -> str:
    writer.api_url = f"http://127.0.0.1:{closed_port()}"
    return "Connection refused"


@pytest.mark.parametrize("failure", [stale_token, forbidden, server_error, gateway_error, not_json, not_a_list,
                                     not_an_address, redirect, unreachable])
def test_an_api_failure_leaves_the_upstream_as_it_is_and_fails_the_pass(
        writer: Writer, api: FakeApi, capsys: pytest.CaptureFixture[str],
        failure: Callable[[Writer, FakeApi], str]) -> None:
    chat_endpoints(api, "10.0.1.11")
    assert writer.once() == 0
    before, upstream = writer.stats(), writer.upstream("chat")
    writer.ready_file.unlink()
    capsys.readouterr()
    cause = failure(writer, api)
    assert writer.once() == 1
    assert writer.stats() == before and writer.upstream("chat") == upstream  # never emptied by an API failure
    assert not writer.ready_file.exists()
    assert writer.calls == ["check", "reload"]  # nothing written: nothing to check or reload
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == "" and len(lines) == 2, err  # one line per deployment
    for line, (name, service) in zip(lines, [("chat", CHAT), ("embed", EMBED)], strict=True):
        assert line.startswith(f"endpoints: deployment {name}: cannot list the endpoints of service "
                               f"{NAMESPACE}/{service}: "), line
        assert cause in line, line


def test_one_failing_deployment_does_not_hold_the_others_back(writer: Writer, api: FakeApi,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert writer.once() == 0
    embed = writer.upstream("embed")
    writer.ready_file.unlink()
    chat_endpoints(api, "10.0.1.11")
    api.slices[EMBED] = [endpoint_slice(EMBED, "a", [endpoint("10.0.2.11", pod="embed-0")])]
    api.fail(500, status(500, "InternalError", "boom"), services=(EMBED,))
    assert writer.once() == 1
    assert writer.upstream("chat") == conf("chat", ["10.0.1.11:8000"])
    assert writer.upstream("embed") == embed
    assert writer.calls == ["check", "reload"] * 2  # chat's change went through
    assert not writer.ready_file.exists()  # but the pass failed: not every upstream is current
    assert "deployment embed" in capsys.readouterr().err


@pytest.fixture
def silent_api() -> Iterator[str]:
    """An API whose port accepts connections (the kernel's backlog) but never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def test_a_silent_api_times_out_once_per_pass(writer: Writer, silent_api: str, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(endpoints, "API_TIMEOUT_S", 0.5)
    writer.api_url = silent_api
    started = time.monotonic()
    assert writer.once() == 1
    elapsed = time.monotonic() - started
    assert elapsed < 0.9, f"two listings of 0.5 s took {elapsed:.1f} s: not concurrent"
    err = capsys.readouterr().err
    assert err.count("timed out") == 2, err
    assert not writer.upstreams.exists()


def test_an_unreadable_token_fails_the_pass_in_one_line(writer: Writer, api: FakeApi,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    writer.token_file.unlink()
    assert writer.once() == 1
    assert capsys.readouterr().err == (f"endpoints: cannot read the service-account token {writer.token_file}: "
                                       "No such file or directory; no upstream updated\n")
    assert api.requests == []


# -- https -------------------------------------------------------------------------------------------------

def self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A certificate for IP 127.0.0.1 (its own CA) and its key."""
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run([require_tool("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=kube-apiserver",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=30)
    return cert, key


@pytest.fixture
def https_api(tmp_path: Path) -> Iterator[tuple[FakeApi, Path]]:
    cert, key = self_signed(tmp_path, "apiserver")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    fake = FakeApi().start(tls=context)
    yield fake, cert
    fake.stop()


def test_an_https_api_is_verified_with_ca_file(tmp_path: Path, https_api: tuple[FakeApi, Path],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    api, cert = https_api
    (tmp_path / "writer").mkdir()
    writer = Writer(tmp_path / "writer", api)
    chat_endpoints(api, "10.0.1.11")
    shutil.copy(cert, writer.root / "ca.crt")
    assert writer.once() == 0
    assert writer.upstream("chat") == conf("chat", ["10.0.1.11:8000"])

    other, _ = self_signed(tmp_path, "other")
    shutil.copy(other, writer.root / "ca.crt")  # the API's certificate is not signed by this CA
    capsys.readouterr()
    assert writer.once() == 1
    assert "CERTIFICATE_VERIFY_FAILED" in capsys.readouterr().err

    (writer.root / "ca.crt").unlink()
    assert writer.once() == 1
    assert f"cannot load the API's CA {writer.root / 'ca.crt'}" in capsys.readouterr().err


# -- nginx check and reload --------------------------------------------------------------------------------

def test_a_failed_check_restores_the_previous_files_and_does_not_reload(
        writer: Writer, api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    chat_endpoints(api, "10.0.1.11")
    assert writer.once() == 0
    before = writer.upstream("chat")
    writer.ready_file.unlink()
    chat_endpoints(api, "10.0.1.12")
    writer.deployments["new"] = ("gpufleet-vllm-new", "http", 8000)  # a file that is not there yet
    writer.check = writer.recorder("bad-check", status=1)
    capsys.readouterr()
    assert writer.once() == 1
    assert writer.upstream("chat") == before
    assert not (writer.upstreams / "new.conf").exists()
    assert writer.calls == ["check", "reload", "bad-check"]
    assert not writer.ready_file.exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nginx check" in err and "restored" in err and "not reloaded" in err, err
    writer.check = writer.recorder("check")  # nginx.conf fixed: the change goes through on the next pass
    assert writer.once() == 0
    assert writer.upstream("chat") == conf("chat", ["10.0.1.12:8000"])
    assert writer.calls[-2:] == ["check", "reload"]


def test_without_nginx_running_the_files_are_written_and_the_reload_waits_for_it(
        tmp_path: Path, api: FakeApi) -> None:
    writer = Writer(tmp_path, api)  # no pid file: nginx has not started (it waits for the ready file)
    state = endpoints.State()
    chat_endpoints(api, "10.0.1.11")
    assert writer.run_pass(state)
    assert writer.upstream("chat") == conf("chat", ["10.0.1.11:8000"])
    assert writer.ready_file.exists()
    assert writer.calls == ["check"]
    assert writer.run_pass(state)
    assert writer.calls == ["check"]
    assert writer.pid_file is not None
    writer.pid_file.write_text("")  # what `nginx -t` leaves when there is no pid file: still no nginx
    assert writer.run_pass(state)
    assert writer.calls == ["check"]
    writer.nginx_running()  # it may have read its configuration before the write: the reload is owed
    assert writer.run_pass(state)
    assert writer.calls == ["check", "reload"]
    assert writer.run_pass(state)
    assert writer.calls == ["check", "reload"]


def test_a_failed_reload_is_retried_by_the_next_pass(writer: Writer, api: FakeApi,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    state = endpoints.State()
    writer.reload = writer.recorder("bad-reload", status=1)
    assert not writer.run_pass(state)
    assert "nginx reload" in capsys.readouterr().err
    writer.reload = writer.recorder("reload")
    assert writer.run_pass(state)  # nothing changed in the files, but the reload is still owed
    assert writer.calls == ["check", "bad-reload", "reload"]
    assert writer.run_pass(state)
    assert writer.calls == ["check", "bad-reload", "reload"]


# -- a real nginx ------------------------------------------------------------------------------------------

def nginx_binary() -> str:
    # Not on a non-root user's PATH on Debian; a missing nginx fails the test (tests/tooling.py), never skips.
    return shutil.which("nginx", path="/usr/sbin") or require_tool("nginx")


class Replica(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "7")
        self.end_headers()
        self.wfile.write(b"replica")

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass


def get(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        connection.request("GET", "/v1/models")
        return connection.getresponse().status
    finally:
        connection.close()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {TIMEOUT_S} s")
        time.sleep(0.05)


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Nginx:
    prefix: Path
    conf: Path
    port: int

    @property
    def args(self) -> list[str]:
        return [nginx_binary(), "-p", str(self.prefix), "-e", str(self.prefix / "error.log"), "-c", str(self.conf)]


def nginx_conf(prefix: Path, upstreams: Path, port: int) -> Nginx:
    prefix.mkdir()
    temp_paths = "\n".join(f"    {kind}_temp_path {prefix}/{kind};"
                           for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = prefix / "nginx.conf"
    conf.write_text(f"""pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{}}
http {{
    access_log off;
{temp_paths}
    upstream deployment_chat {{ include {upstreams}/chat.conf; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{ proxy_pass http://deployment_chat; }}
    }}
}}
""")
    return Nginx(prefix, conf, port)


def test_a_real_nginx_follows_the_ready_endpoints(tmp_path: Path, api: FakeApi,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    replica = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Replica)
    threading.Thread(target=replica.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    nginx = nginx_conf(tmp_path / "nginx", tmp_path / "upstreams", free_port())
    writer = Writer(tmp_path, api, {"chat": (CHAT, "http", 8000)}, check=[*nginx.args, "-t", "-q"],
                    reload=[*nginx.args, "-s", "reload"], pid_file=nginx.prefix / "nginx.pid")
    ready = endpoint("127.0.0.1", pod="chat-0")
    api.slices[CHAT] = [endpoint_slice(CHAT, "a", [ready], ports=[("http", replica.server_address[1])])]
    state = endpoints.State()
    assert writer.run_pass(state)  # before nginx, as in the pod: its include must exist when it starts
    process = subprocess.Popen([*nginx.args, "-g", "daemon off;"])
    try:
        wait_until(lambda: listening(nginx.port) and nginx.prefix.joinpath("nginx.pid").exists(), "nginx up")
        assert get(nginx.port) == 200
        assert writer.run_pass(state)  # the owed reload, now that nginx runs
        assert "reloaded nginx" in capsys.readouterr().out

        ready["conditions"].update(ready=False, serving=False)
        nginx.conf.write_text(nginx.conf.read_text().replace("events {}", "events {}\nbogus_directive on;"))
        before = writer.upstream("chat")
        assert not writer.run_pass(state)  # the real `nginx -t` refuses: the previous file is back
        assert writer.upstream("chat") == before
        assert get(nginx.port) == 200  # and nginx was not reloaded
        assert "restored" in capsys.readouterr().err

        nginx.conf.write_text(nginx.conf.read_text().replace("bogus_directive on;\n", ""))
        assert writer.run_pass(state)
        assert writer.upstream("chat") == conf("chat", [])
        wait_until(lambda: get(nginx.port) == 502, "nginx answers 502 (the down server) after the reload")
    finally:
        process.terminate()
        process.wait(timeout=TIMEOUT_S)
        replica.shutdown()
        replica.server_close()


# -- configuration -----------------------------------------------------------------------------------------

def valid_document(tmp_path: Path) -> dict[str, Any]:
    return Writer(tmp_path, FakeApi(), api_url="http://127.0.0.1:1").document()


@pytest.mark.parametrize(("edit", "field"), [
    (lambda d: d.pop("namespace"), "'namespace': missing"),
    (lambda d: d.update(namespace="GPU fleet"), "'namespace': expected a namespace"),
    (lambda d: d.update(colour="blue"), "'colour': unknown field"),
    (lambda d: d.update(interval_s=0), "'interval_s': expected an integer from 1 to 300, got 0"),
    (lambda d: d.update(interval_s=301), "'interval_s'"),
    (lambda d: d.update(interval_s="5"), "'interval_s'"),
    (lambda d: d.update(interval_s=True), "'interval_s'"),
    (lambda d: d.pop("deployments"), "'deployments': missing"),
    (lambda d: d.update(deployments={}), "'deployments': expected at least one deployment"),
    (lambda d: d["deployments"].update({"../etc": d["deployments"]["chat"]}), "'deployments.../etc'"),
    (lambda d: d["deployments"]["chat"].update(service="Chat_70B"), "'deployments.chat.service'"),
    (lambda d: d["deployments"]["chat"].update(service="chat\n"), "'deployments.chat.service'"),
    (lambda d: d["deployments"]["chat"].update(port=0), "'deployments.chat.port'"),
    (lambda d: d["deployments"]["chat"].pop("port_name"), "'deployments.chat.port_name': missing"),
    (lambda d: d["deployments"]["chat"].update(ports=[8000]), "'deployments.chat.ports': unknown field"),
    (lambda d: d["upstreams"].update(check="nginx -t"), "'upstreams.check'"),
    (lambda d: d["upstreams"].pop("pid_file"), "'upstreams.pid_file': missing"),
    (lambda d: d.update(api_url="ftp://apiserver"), "'api_url'"),
    (lambda d: d.update(ready_file=""), "'ready_file'"),
])
@pytest.mark.parametrize("mode", [["--once"], []], ids=["once", "loop"])
def test_a_bad_config_exits_2_naming_the_file_and_field(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: Callable[[dict[str, Any]], Any], field: str,
        mode: list[str]) -> None:
    document = valid_document(tmp_path)
    edit(document)
    path = tmp_path / "endpoints.json"
    path.write_text(json.dumps(document))
    assert endpoints.main(["--config", str(path), *mode]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"endpoints: config {path}: field {field}"), err


def test_a_missing_or_broken_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "absent.json"
    assert endpoints.main(["--config", str(missing)]) == 2
    assert f"config {missing}: cannot read it" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert endpoints.main(["--config", str(broken), "--once"]) == 2
    assert f"config {broken}: not JSON" in capsys.readouterr().err


def test_without_api_url_and_outside_a_pod_the_config_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    document = valid_document(tmp_path)
    del document["api_url"]
    path = tmp_path / "endpoints.json"
    path.write_text(json.dumps(document))
    assert endpoints.main(["--config", str(path), "--once"]) == 2
    assert "field 'api_url': missing, and KUBERNETES_SERVICE_HOST" in capsys.readouterr().err


EXAMPLE = {
    "namespace": "gpufleet",
    "interval_s": 5,
    "deployments": {"chat-70b": {"service": "gpufleet-vllm-chat-70b", "port_name": "http", "port": 8000}},
    "upstreams": {"dir": "/etc/gpufleet/nginx/upstreams",
                  "check": ["nginx", "-t", "-q", "-c", "/etc/gpufleet/nginx/nginx.conf"],
                  "reload": ["nginx", "-s", "reload", "-c", "/etc/gpufleet/nginx/nginx.conf"],
                  "pid_file": "/run/nginx.pid"},
    "ready_file": "/run/gpufleet/upstreams.ready",
}


def example_document() -> dict[str, Any]:
    return endpoints.config_document(
        namespace="gpufleet", deployments={"chat-70b": ("gpufleet-vllm-chat-70b", "http", 8000)},
        upstreams_dir="/etc/gpufleet/nginx/upstreams", nginx_conf="/etc/gpufleet/nginx/nginx.conf",
        pid_file="/run/nginx.pid", ready_file="/run/gpufleet/upstreams.ready", interval_s=5)


def test_config_document_round_trips_through_parse_config() -> None:
    document = example_document()
    assert document == EXAMPLE
    assert json.loads(json.dumps(document)) == document and set(document) <= set(endpoints.CONFIG_FIELDS)
    pod = {"KUBERNETES_SERVICE_HOST": "172.20.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert endpoints.parse_config(document, environ=pod) == endpoints.Config(
        namespace="gpufleet", api_url="https://172.20.0.1:443",
        token_file=Path("/var/run/secrets/kubernetes.io/serviceaccount/token"),
        ca_file=Path("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"), interval_s=5,
        deployments={"chat-70b": endpoints.Deployment("chat-70b", "gpufleet-vllm-chat-70b", "http", 8000)},
        upstreams=endpoints.Upstreams(Path("/etc/gpufleet/nginx/upstreams"),
                                      ("nginx", "-t", "-q", "-c", "/etc/gpufleet/nginx/nginx.conf"),
                                      ("nginx", "-s", "reload", "-c", "/etc/gpufleet/nginx/nginx.conf"),
                                      Path("/run/nginx.pid")),
        ready_file=Path("/run/gpufleet/upstreams.ready"))


def test_the_in_cluster_api_of_an_ipv6_cluster_is_bracketed() -> None:
    pod = {"KUBERNETES_SERVICE_HOST": "fd00:10:96::1", "KUBERNETES_SERVICE_PORT": "443"}
    assert endpoints.parse_config(example_document(), environ=pod).api_url == "https://[fd00:10:96::1]:443"


@pytest.mark.parametrize(("change", "field"), [
    ({"deployments": {"chat": ("Chat_Service", "http", 8000)}}, "deployments.chat.service"),
    ({"deployments": {"chat": ("chat", "http", 70000)}}, "deployments.chat.port"),
    ({"interval_s": 0}, "interval_s"),
])
def test_config_document_refuses_what_the_writer_would_refuse(change: dict[str, Any], field: str) -> None:
    arguments: dict[str, Any] = {
        "namespace": "gpufleet", "deployments": {"chat": ("gpufleet-vllm-chat", "http", 8000)},
        "upstreams_dir": "/u", "nginx_conf": "/n.conf", "pid_file": "/run/nginx.pid", "ready_file": "/run/r",
        "interval_s": 5, **change}
    with pytest.raises(endpoints.ConfigError, match=f"field '{field}'"):
        endpoints.config_document(**arguments)


# -- the loop ----------------------------------------------------------------------------------------------

def start_loop(writer: Writer) -> subprocess.Popen[str]:
    """``python -m infra.hostagent.endpoints --config ...`` without --once, as the sidecar runs it."""
    return subprocess.Popen([sys.executable, "-m", "infra.hostagent.endpoints", "--config",
                             str(writer.write_config())], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def stop_loop(process: subprocess.Popen[str], within_s: float) -> tuple[int, str, str]:
    """SIGTERM, then the exit code and output; fails when it takes longer than ``within_s``."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        out, err = process.communicate(timeout=within_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail(f"the loop did not exit within {within_s} s of SIGTERM")
    assert time.monotonic() - started < within_s
    return process.returncode, out, err


def test_the_loop_survives_a_failed_pass_and_retries_at_the_next_interval(writer: Writer, api: FakeApi) -> None:
    writer.interval_s = 1
    api.fail(500, status(500, "InternalError", "etcd is down"))
    process = start_loop(writer)
    try:
        wait_until(lambda: len(api.requests) >= 2, "the first pass listed both deployments")
        assert process.poll() is None  # a failed pass does not end the loop
        api.failures.clear()
        wait_until(writer.ready_file.exists, "a later pass succeeded")
    finally:
        code, out, err = stop_loop(process, within_s=2)
    assert code == 0, err
    assert writer.upstream("chat") == conf("chat", [])
    assert "HTTP 500: etcd is down" in err and "Traceback" not in err
    assert out.startswith("watching the endpoints of 2 deployment(s) in namespace gpufleet every 1 s\n")


def test_sigterm_ends_the_loop_at_once_with_0(writer: Writer, api: FakeApi) -> None:
    writer.interval_s = 300  # the loop is in its wait: SIGTERM must not wait for the interval to end
    process = start_loop(writer)
    try:
        wait_until(writer.ready_file.exists, "the first pass succeeded")
    finally:
        code, _, err = stop_loop(process, within_s=2)
    assert code == 0 and err == "", err
