"""Real programs on loopback for the end-to-end tests, and a webhook receiver that records what Alertmanager
sends. The programs are the Debian packages' binaries (scripts/apt-packages.txt), started through
infra.emulate.processes; a test calls tests.tooling.require_tool first, so a missing one fails it."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from infra.emulate.processes import (
    Service,
    alertmanager,
    free_port,
    http_get,
    mtail,
    node_exporter,
    prometheus,
    prometheus_query,
    wait_until,
)

__all__ = ["WebhookReceiver", "alertmanager", "free_port", "http_get", "mtail", "node_exporter", "prometheus",
           "query", "running", "wait_until"]


@contextmanager
def running(service: Service, ready_url: str) -> Iterator[Service]:
    """Start `service`, wait until `ready_url` answers, stop it on exit."""
    try:
        service.start().wait_ready(ready_url)
        yield service
    finally:
        service.stop()


def query(port: int, expr: str) -> list[dict[str, Any]]:
    return prometheus_query(port, expr)


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
