"""Background programs on loopback: start one, wait until it answers, stop it; and the small HTTP helpers
that go with it. Used by the loopback fleet (``make demo``) and by the end-to-end tests."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 10


class MissingProgram(RuntimeError):
    """A program the fleet needs is not installed."""


def program(name: str) -> str:
    """A Debian package's binary (on PATH or in /usr/sbin), or a console script of this Python's venv."""
    found = (shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
             or shutil.which(name, path=str(Path(sys.executable).parent)))
    if found is None:
        raise MissingProgram(f"{name} is not installed (scripts/install-system-deps.sh installs the Debian "
                             "packages listed in scripts/apt-packages.txt)")
    return found


def free_port() -> int:
    """A loopback port nobody listens on now (the OS picks it; a race with another process is possible but
    harmless on a test machine)."""
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
    args: tuple[str, ...]
    log: Path
    env: dict[str, str] | None = None
    """Added to this process's environment (e.g. the API key, kept off the command line)."""
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        env = None if self.env is None else {**os.environ, **self.env}
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env)
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, url: str, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until `url` answers 200; fails at once with the log's tail when the program exits."""
        def ready() -> bool:
            if not self.running:
                code = None if self.process is None else self.process.returncode
                raise RuntimeError(f"{self.name} exited with {code}:\n{self.log_tail()}")
            try:
                return http_get(url, timeout=1)[0] == 200
            except OSError:
                return False
        wait_until(ready, timeout_s, f"{self.name} at {url}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown (no connection is closed gracefully)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def service(name: str, args: Sequence[str], log_dir: Path, env: dict[str, str] | None = None) -> Service:
    return Service(name, tuple(args), log_dir / f"{name}.log", env)


def prometheus_query(port: int, expr: str) -> list[dict[str, Any]]:
    """An instant query; raises on a PromQL error (the expression is then wrong, not just empty)."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    status, body = http_get(url)
    payload = json.loads(body)
    if status != 200 or payload.get("status") != "success":
        raise ValueError(f"query failed ({status}): {expr}\n{payload.get('error')}")
    result: list[dict[str, Any]] = payload["data"]["result"]
    return result


# -- the monitoring programs (Debian packages) --------------------------------------------------------------

def prometheus(config: Path, data: Path, port: int, log_dir: Path) -> Service:
    return service("prometheus", [
        program("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={data}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",  # POST /-/reload after rewriting rules, as on the monitoring host
    ], log_dir)


def alertmanager(config: Path, data: Path, port: int, log_dir: Path) -> Service:
    return service("alertmanager", [
        program("prometheus-alertmanager"), f"--config.file={config}", f"--storage.path={data}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # no gossip port: one instance
    ], log_dir)


def mtail(progs: Path, logs: Path, port: int, log_dir: Path) -> Service:
    return service("mtail", [
        program("mtail"), f"--progs={progs}", f"--logs={logs}", "--address=127.0.0.1", f"--port={port}",
        "--emit_prog_label=false",  # as the rendered program's header says: only the contract's labels
        "--logtostderr",
    ], log_dir)


def node_exporter(port: int, log_dir: Path) -> Service:
    return service("node_exporter", [
        program("prometheus-node-exporter"), f"--web.listen-address=127.0.0.1:{port}",
    ], log_dir)


def nginx_exporter(stub_status_url: str, port: int, log_dir: Path) -> Service:
    return service("nginx_exporter", [
        program("prometheus-nginx-exporter"), f"-nginx.scrape-uri={stub_status_url}",
        f"-web.listen-address=127.0.0.1:{port}",
    ], log_dir)
