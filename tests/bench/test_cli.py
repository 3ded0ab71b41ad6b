"""`gpufleet bench` end to end against the fake server: the JSON document (checked with its JSON Schema), the
comparison with a real example stack's plan, and user errors (exit 2, `error:` lines, no traceback)."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from typer.testing import CliRunner

from infra.bench.schema import BENCH_SCHEMA
from infra.cli import app
from tests.bench.fake_openai import MODEL, Behaviour, FakeOpenAI

REPO = Path(__file__).resolve().parents[2]
KEYS = {"format", "endpoint", "model", "api", "stream", "mode", "rate_rps", "concurrency", "started_at", "duration_s",
        "target", "requests", "summary", "prediction"}


def cli(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, ["bench", *args, "-C", str(REPO)], env=env)


def validate(doc: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator.check_schema(BENCH_SCHEMA)
    jsonschema.Draft202012Validator(BENCH_SCHEMA, format_checker=jsonschema.FormatChecker()).validate(doc)


def test_json_document_matches_the_format(fake: FakeOpenAI, tmp_path: Path) -> None:
    fake.reset(Behaviour(ttft_s=0.005, fail=lambda i: "500" if i == 2 else None))
    out = tmp_path / "bench.json"
    done = cli("-e", fake.url + "/v1/", "--concurrency", "2", "-n", "6", "--input-tokens", "40",
               "--output-tokens", "8,20", "--completions", "-o", str(out), env={"GPUFLEET_API_KEY": "sk-test"})
    assert done.exit_code == 0, done.output
    doc = json.loads(out.read_text())
    validate(doc)
    assert set(doc) == KEYS
    assert (doc["format"], doc["endpoint"], doc["model"], doc["api"]) == (
        "gpufleet-bench/1", fake.url, MODEL, "completions")
    assert (doc["mode"], doc["rate_rps"], doc["concurrency"], doc["stream"]) == ("concurrency", None, 2, True)
    assert doc["target"] is None and doc["prediction"] is None
    assert len(doc["requests"]) == 6
    assert [r["error"] for r in doc["requests"]].count("http_5xx") == 1
    assert (doc["summary"]["completed"], doc["summary"]["errors"]) == (5, 1)
    assert doc["started_at"].endswith("Z")
    assert {r.headers.get("Authorization") for r in fake.records} == {"Bearer sk-test"}
    assert all(r.body["prompt"].count(" ") == 39 for r in fake.records)
    assert "TTFT" in done.stdout and "http_5xx 1" in done.stdout


def test_schema_rejects_a_renamed_field(fake: FakeOpenAI, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    assert cli("-e", fake.url, "--rate", "50", "-n", "3", "--output-tokens", "2", "-o", str(out)).exit_code == 0
    doc = json.loads(out.read_text())
    validate(doc)
    doc["summary"]["ttft"] = doc["summary"].pop("ttft_s")
    with pytest.raises(jsonschema.ValidationError):
        validate(doc)


def test_prediction_for_an_example_stack_is_finite(fake: FakeOpenAI, tmp_path: Path) -> None:
    fake.reset(Behaviour(ttft_s=0.005))
    out = tmp_path / "bench.json"
    done = cli("-e", fake.url, "--rate", "20", "-n", "24", "-s", "staging", "-d", "support", "-o", str(out))
    assert done.exit_code == 0, done.output
    doc = json.loads(out.read_text())
    validate(doc)
    assert doc["model"] == "support-chat"  # the profile's served name, not the first of /v1/models
    assert doc["target"] == {"stack": "staging", "deployment": "support", "gpu": "L40S", "tp": 1, "replicas": 3,
                             "instance_type": "g6e.xlarge"}
    prediction = doc["prediction"]
    assert prediction["per_replica_rate_rps"] > 0
    for metric in ("ttft_s", "tpot_s", "e2e_s"):
        values = [prediction[metric][q] for q in ("p50", "p95", "p99")]
        assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in values), (metric, values)
        assert values == sorted(values)
    assert "measured vs plan" in done.stdout and "TTFT p95 ms" in done.stdout
    # The deployment's own length model: long prompts (mean 1500 tokens), not the 1024-token default.
    assert max(r["prompt_tokens"] for r in doc["requests"]) > 1100


def test_replicas_override_and_closed_loop_prediction(fake: FakeOpenAI, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = cli("-e", fake.url, "--concurrency", "2", "-n", "6", "-s", "staging", "-d", "support", "--replicas", "1",
               "--input-tokens", "200", "--output-tokens", "20", "-o", str(out), "-q")
    assert done.exit_code == 0, done.output
    doc = json.loads(out.read_text())
    assert doc["target"]["replicas"] == 1
    assert all(math.isfinite(doc["prediction"]["tpot_s"][q]) for q in ("p50", "p95", "p99"))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--requests", "3"], "exactly one of --rate"),
        (["--rate", "1", "--concurrency", "2"], "exactly one of --rate"),
        (["--rate", "1", "-s", "staging"], "--stack and --deployment go together"),
        (["--rate", "1", "-s", "nope", "-d", "x"], "unknown stack 'nope'"),
        (["--rate", "1", "-s", "staging", "-d", "suport"], "did you mean 'support'"),
        (["--rate", "1", "--input-tokens", "lots"], "--input-tokens: 'lots'"),
        (["--rate", "1", "--output-tokens", "100,50"], "P95 (50) is below MEAN"),
        (["--rate", "1", "-o", "/nonexistent/dir/x.json"], "--output: directory"),
    ],
)
def test_user_errors_exit_2(fake: FakeOpenAI, args: list[str], fragment: str) -> None:
    done = cli("-e", fake.url, *args)
    assert done.exit_code == 2, done.output
    assert fragment in done.stderr and done.stderr.startswith("error: ")
    assert done.exception is None or isinstance(done.exception, SystemExit)
    assert fake.records == []  # nothing was sent


def test_bad_url_exits_2() -> None:
    done = cli("-e", "ftp://example", "--rate", "1")
    assert done.exit_code == 2 and "not an http(s) URL" in done.stderr


def test_bad_flag_value_exits_2() -> None:
    done = cli("-e", "http://127.0.0.1:9", "--rate", "0")
    assert done.exit_code == 2 and "Traceback" not in done.output


def test_unreachable_endpoint_exits_2_without_traceback() -> None:
    """In a real process: one `error:` line, no traceback."""
    port = _closed_port()
    done = subprocess.run(
        [sys.executable, "-m", "infra.cli", "bench", "-e", f"http://127.0.0.1:{port}", "--rate", "1", "-n", "1"],
        capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot reach http://127.0.0.1:{port}"), lines


def test_every_request_failing_exits_1(fake: FakeOpenAI, tmp_path: Path) -> None:
    fake.reset(Behaviour(fail=lambda _i: "500"))
    out = tmp_path / "bench.json"
    done = cli("-e", fake.url, "--concurrency", "1", "-n", "2", "-o", str(out))
    assert done.exit_code == 1
    assert "no request completed" in done.stderr
    validate(json.loads(out.read_text()))  # still written: the errors are the finding
