"""An AWS emulator (moto's server, in a thread) and local HTTP replicas for the host agent's tests.

The agents talk to AWS with boto3 like on a host, only with ``endpoint_url`` pointing at the emulator. The
fleet's instances get private IPs in a VPC of 127.0.0.0/16: Linux routes all of 127/8 to the loopback
interface, so a test can run a replica's /health server on the very IP and port discovery probes.
"""

from __future__ import annotations

import http.server
import logging
import socket
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
AMI = "ami-12c6146b"  # one of the emulator's built-in images
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per AWS call otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The emulator's endpoint, emptied, with credentials that reach only it (never a real account)."""
    urllib.request.urlopen(urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST"), timeout=10)
    nowhere = tmp_path_factory.mktemp("aws-config") / "none"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(nowhere))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", *PROXY_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return moto_endpoint


def client(endpoint: str, service: str) -> Any:
    return boto3.client(service, endpoint_url=endpoint, region_name=REGION)


def closed_port() -> int:
    """A port nothing listens on (bound and released: the kernel does not hand it out again at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def free_port() -> int:
    """A port free on every address (bound on the wildcard), for servers on several loopback IPs."""
    with socket.socket() as probe:
        probe.bind(("0.0.0.0", 0))
        return int(probe.getsockname()[1])


# -- replicas ----------------------------------------------------------------------------------------------

@dataclass
class Replica:
    """A vLLM stand-in: GET /health answers ``status``."""

    ip: str
    port: int
    status: int = 200
    probes: list[str] = field(default_factory=list)
    server: http.server.ThreadingHTTPServer | None = None

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    def start(self) -> Replica:
        replica = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                replica.probes.append(self.path)
                self.send_response(replica.status if self.path == "/health" else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # quiet test output
                pass

        self.server = http.server.ThreadingHTTPServer((self.ip, self.port), Handler)
        self.server.daemon_threads = True
        # A short poll: shutdown() waits for it, and a test stops a dozen replicas.
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture
def replicas() -> Iterator[Callable[[str, int], Replica]]:
    """Starts replicas; all are stopped after the test."""
    started: list[Replica] = []

    def start(ip: str, port: int) -> Replica:
        started.append(Replica(ip, port).start())
        return started[-1]

    yield start
    for replica in started:
        replica.stop()
