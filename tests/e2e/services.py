"""Real monitoring programs on loopback for the live tests: Prometheus, Alertmanager, mtail, node_exporter,
and a webhook receiver that records what Alertmanager sends. Every program is the Debian package's binary
(scripts/apt-packages.txt); a missing one fails the test (tests/tooling.require_tool)."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.tooling import require_tool

START_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.25) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"gave up after {timeout_s:.0f} s waiting for {what}")


@dataclass
class Service:
    """A program started in the background; its output goes to a log file shown when it fails."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, url: str, timeout_s: float = START_TIMEOUT_S) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                return http_get(url, timeout=1)[0] == 200
            except OSError:
                return False
        wait_until(ready, timeout_s, f"{self.name} at {url}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(name: str, args: Sequence[str], log: Path) -> Service:
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return Service(name, process, log)


@contextmanager
def running(service: Service, ready_url: str) -> Iterator[Service]:
    try:
        service.wait_ready(ready_url)
        yield service
    finally:
        service.stop()


def prometheus(config: Path, data: Path, port: int) -> Service:
    return start("prometheus", [
        require_tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={data}",
        f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle",
    ], data.parent / "prometheus.log")


def alertmanager(config: Path, data: Path, port: int) -> Service:
    return start("alertmanager", [
        require_tool("prometheus-alertmanager"), f"--config.file={config}", f"--storage.path={data}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # no gossip port: one instance
    ], data.parent / "alertmanager.log")


def mtail(progs: Path, logs: Path, port: int) -> Service:
    return start("mtail", [
        require_tool("mtail"), f"--progs={progs}", f"--logs={logs}", "--address=127.0.0.1", f"--port={port}",
        "--emit_prog_label=false",  # as the rendered program's header says: only the contract's labels
        "--logtostderr",
    ], progs.parent / "mtail.log")


def node_exporter(port: int, log_dir: Path) -> Service:
    return start("node_exporter", [
        require_tool("prometheus-node-exporter"), f"--web.listen-address=127.0.0.1:{port}",
    ], log_dir / "node_exporter.log")


def query(port: int, expr: str) -> list[dict[str, Any]]:
    """An instant query; raises on a PromQL error (the expression is then wrong, not just empty)."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    status, body = http_get(url)
    payload = json.loads(body)
    if status != 200 or payload.get("status") != "success":
        raise AssertionError(f"query failed ({status}): {expr}\n{payload.get('error')}")
    result: list[dict[str, Any]] = payload["data"]["result"]
    return result


@dataclass
class WebhookReceiver:
    """Records every notification Alertmanager POSTs (its webhook JSON payload)."""

    port: int = field(default_factory=free_port)
    received: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alerts"

    def __enter__(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    receiver.received.append({"path": self.path, "authorization": self.headers.get("Authorization"),
                                              "payload": json.loads(body)})
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def alerts(self) -> list[dict[str, Any]]:
        with self._lock:
            return [alert for message in self.received for alert in message["payload"]["alerts"]]
