"""`gpufleet emulate` as a process: user errors exit 2 without a traceback; it prints one line with its URL,
serves, stops cleanly on SIGTERM, and the "crash" fault kills the process (the port then refuses)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def gpufleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "infra.cli", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120, check=False)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["-s", "nope", "-d", "chat"], ["--stack", "unknown stack 'nope'"]),
        (["-s", "dev", "-d", "chta"], ["--deployment", "no deployment 'chta'", "chat"]),
        (["-s", "dev", "-d", "chat", "--fault", "melt"], ["--fault", "'melt'"]),
    ],
)
def test_user_errors_exit_2_with_one_line(args: list[str], fragments: list[str]) -> None:
    done = gpufleet("emulate", *args)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@contextmanager
def emulator_process(*flags: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "emulate", "-s", "dev", "-d", "chat", "--port", "0",
         "--time-scale", "0.02", *flags],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert " serving on http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        yield proc, line.rsplit(" ", 1)[1].strip()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def post(url: str, body: dict[str, object], key: str | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_serves_and_stops_cleanly_on_sigterm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_API_KEY", "sk-env")
    with emulator_process() as (proc, url):
        status, body = post(f"{url}/v1/completions", {"prompt": "hello", "max_tokens": 4})
        assert status == 401
        status, body = post(f"{url}/v1/completions", {"prompt": "hello", "max_tokens": 4}, key="sk-env")
        assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 4
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None and "Traceback" not in proc.stderr.read()


def test_crash_fault_kills_the_process() -> None:
    with emulator_process("--fault", "crash") as (proc, url):
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            assert response.status == 200
        status, body = post(f"{url}/v1/completions", {"prompt": "hello", "max_tokens": 4})
        assert status == 500 and b"EngineCore" in body
        assert proc.wait(timeout=10) == 1
        assert proc.stderr is not None and "injected crash" in proc.stderr.read()
        with pytest.raises(urllib.error.URLError) as refused:
            urllib.request.urlopen(f"{url}/health", timeout=5)
        assert isinstance(refused.value.reason, ConnectionRefusedError)
