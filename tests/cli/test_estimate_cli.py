"""`gpufleet estimate`: the JSON contract of the capacity issue, vLLM's defaults per entry point,
determinism, and user errors (exit 2, one line, no traceback). Runs the real command in a subprocess."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.catalog import load_catalog
from infra.plan.replica import build_replica, resolve_limits

REPO = Path(__file__).resolve().parents[2]
BASE = ["--model", "llama-3.1-8b", "--gpu", "H100-SXM", "--input-tokens", "1000", "--output-tokens", "200"]


def gpufleet(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120, check=False
    )


def estimate(*args: str) -> dict[str, Any]:
    done = gpufleet("estimate", *args, "--json")
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def assert_user_error(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert done.stdout == ""


# --------------------------------------------------------------------------------------------- contract


def test_rate_mode_prints_exactly_the_contract_keys() -> None:
    doc = estimate(*BASE, "--rate", "5")
    assert set(doc) == {
        "output_tokens_per_s",
        "requests_per_s",
        "ttft_ms",
        "tpot_ms",
        "e2e_ms",
        "kv_cache_tokens",
        "max_num_seqs",
        "max_num_batched_tokens",
        "weights_gib",
    }
    assert set(doc["ttft_ms"]) == {"p50", "p90", "p99"}
    assert set(doc["tpot_ms"]) == {"p50", "p90", "p99"}
    assert set(doc["e2e_ms"]) == {"p50", "p99"}
    # Values: the API server's H100 defaults, the replica's memory, and a replica keeping up with 5 req/s.
    assert (doc["max_num_seqs"], doc["max_num_batched_tokens"]) == (1024, 8192)
    assert doc["weights_gib"] == pytest.approx(14.958, abs=0.001)
    catalog = load_catalog()
    arch, gpu = catalog.models["llama-3.1-8b"].architecture, catalog.gpus["H100-SXM"]
    assert doc["kv_cache_tokens"] == build_replica(arch, gpu, limits=resolve_limits(arch, gpu)).kv_cache_tokens
    assert doc["requests_per_s"] == pytest.approx(5, rel=0.1)
    assert doc["output_tokens_per_s"] == pytest.approx(200 * doc["requests_per_s"], rel=0.05)
    for metric in ("ttft_ms", "tpot_ms"):
        assert 0 < doc[metric]["p50"] <= doc[metric]["p90"] <= doc[metric]["p99"]
    assert doc["ttft_ms"]["p50"] + 199 * doc["tpot_ms"]["p50"] == pytest.approx(doc["e2e_ms"]["p50"], rel=0.05)


def test_offline_mode_uses_the_offline_llm_class_defaults() -> None:
    offline = estimate(*BASE, "--offline", "200")
    served = estimate(*BASE, "--concurrency", "8")
    assert (offline["max_num_seqs"], offline["max_num_batched_tokens"]) == (1024, 16384)
    assert (served["max_num_seqs"], served["max_num_batched_tokens"]) == (1024, 8192)
    # A bigger profiling run leaves less room for KV cache.
    assert offline["kv_cache_tokens"] < served["kv_cache_tokens"]
    # All 200 requests arrive at once: the batch is throughput-bound, far beyond 8 closed-loop clients.
    assert offline["requests_per_s"] > 2 * served["requests_per_s"]


def test_offline_defaults_on_a_small_gpu() -> None:
    doc = estimate(
        "--model",
        "llama-3.1-8b",
        "--gpu",
        "A100-80G",
        "--input-tokens",
        "500",
        "--output-tokens",
        "50",
        "--offline",
        "50",
    )
    assert (doc["max_num_seqs"], doc["max_num_batched_tokens"]) == (256, 8192)


def test_concurrency_mode_runs_closed_loop_clients() -> None:
    one = estimate(*BASE, "--concurrency", "1")
    many = estimate(*BASE, "--concurrency", "64")
    assert many["requests_per_s"] > 10 * one["requests_per_s"]
    assert many["ttft_ms"]["p50"] > one["ttft_ms"]["p50"]
    # One client at a time: a request per end-to-end latency (plus nothing else).
    assert one["requests_per_s"] == pytest.approx(1000 / one["e2e_ms"]["p50"], rel=0.05)


def test_explicit_engine_limits_are_reported_back() -> None:
    doc = estimate(
        *BASE,
        "--rate",
        "2",
        "--max-num-seqs",
        "64",
        "--max-num-batched-tokens",
        "4096",
        "--gpu-memory-utilization",
        "0.8",
    )
    assert (doc["max_num_seqs"], doc["max_num_batched_tokens"]) == (64, 4096)


def test_same_seed_same_output_and_another_seed_another_sample() -> None:
    first = gpufleet("estimate", *BASE, "--rate", "8", "--seed", "3", "--json")
    again = gpufleet("estimate", *BASE, "--rate", "8", "--seed", "3", "--json")
    other = gpufleet("estimate", *BASE, "--rate", "8", "--seed", "4", "--json")
    assert first.returncode == again.returncode == other.returncode == 0
    assert first.stdout == again.stdout
    assert json.loads(first.stdout)["ttft_ms"] != json.loads(other.stdout)["ttft_ms"]


def test_a_context_that_does_not_fit_falls_back_to_the_workload_length() -> None:
    done = gpufleet(
        "estimate",
        "--model",
        "llama-3.1-8b",
        "--gpu",
        "L4",
        "--input-tokens",
        "1000",
        "--output-tokens",
        "200",
        "--rate",
        "0.5",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    assert "max_model_len=1200" in done.stderr
    assert json.loads(done.stdout)["kv_cache_tokens"] < 131072


# ----------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (
            [
                "--model",
                "llama-3.1-8b",
                "--gpu",
                "H900",
                "--input-tokens",
                "10",
                "--output-tokens",
                "10",
                "--rate",
                "1",
            ],
            ["--gpu", "H900"],
        ),
        (
            [
                "--model",
                "llama-9b",
                "--gpu",
                "H100-SXM",
                "--input-tokens",
                "10",
                "--output-tokens",
                "10",
                "--rate",
                "1",
            ],
            ["--model", "llama-9b"],
        ),
        ([*BASE, "--rate", "1", "--quantization", "fp9"], ["--quantization", "fp9"]),
        ([*BASE, "--rate", "1", "--offline", "10"], ["exactly one of --rate, --concurrency or --offline"]),
        ([*BASE, "--rate", "1", "--concurrency", "10"], ["exactly one of"]),
        (BASE, ["exactly one of"]),
        (
            [
                "--model",
                "llama-3.1-70b",
                "--gpu",
                "H100-SXM",
                "--input-tokens",
                "10",
                "--output-tokens",
                "10",
                "--rate",
                "1",
            ],
            ["llama-3.1-70b", "does not start", "GiB"],
        ),
        (
            [
                "--model",
                "qwen2.5-7b",
                "--gpu",
                "H100-SXM",
                "--tp",
                "8",
                "--input-tokens",
                "10",
                "--output-tokens",
                "10",
                "--rate",
                "1",
            ],
            ["28 attention heads"],
        ),
        ([*BASE, "--rate", "1", "--max-model-len", "1100"], ["exceed max_model_len 1100"]),
        ([*BASE, "--rate", "1", "--dtype", "fp16"], ["--dtype", "fp16"]),
    ],
    ids=[
        "unknown-gpu",
        "unknown-model",
        "unknown-quantization",
        "rate-and-offline",
        "rate-and-concurrency",
        "no-load",
        "70b-bf16-on-one-h100",
        "tp-does-not-split-heads",
        "requests-longer-than-max-model-len",
        "bad-dtype",
    ],
)
def test_user_errors_exit_2_with_one_line(args: list[str], fragments: list[str]) -> None:
    assert_user_error(gpufleet("estimate", *args, "--json"), *fragments)


def test_batched_tokens_below_max_num_seqs_is_a_user_error_not_a_traceback() -> None:
    """On an H100 the default max_num_seqs is 1024; vLLM refuses max_num_batched_tokens < max_num_seqs."""
    assert_user_error(gpufleet("estimate", *BASE, "--rate", "1", "--max-num-batched-tokens", "512", "--json"), "512")


# --------------------------------------------------------------------------------------------- engines


def test_a_profile_on_an_uncalibrated_engine_is_an_estimate(tmp_path: Path) -> None:
    """A profile's engine sets the step speed (its catalog factor); the JSON adds the engine object."""
    fixture = REPO / "tests" / "spec" / "fixture"
    shutil.copytree(fixture, tmp_path, dirs_exist_ok=True)
    args = ["--model", "chat-8b", "--gpu", "H100-SXM", "--input-tokens", "1000", "--output-tokens", "200",
            "--concurrency", "32", "-C"]
    vllm_done = gpufleet("estimate", *args, str(tmp_path), "--json")
    assert vllm_done.returncode == 0, vllm_done.stderr
    vllm = json.loads(vllm_done.stdout)
    assert "engine" not in vllm  # vLLM keeps the contract's keys exactly
    path = tmp_path / "stacks" / "models" / "chat-8b.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["engine"] = "ollama"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    done = gpufleet("estimate", *args, str(tmp_path), "--json")
    assert done.returncode == 0, done.stderr
    ollama = json.loads(done.stdout)
    record = load_catalog().engines["ollama"]
    factor = record.throughput.factor
    assert ollama["engine"]["name"] == "ollama"
    assert ollama["engine"]["throughputFactor"] == factor
    assert ollama["engine"]["calibrated"] is False
    assert ollama["engine"]["source"]["url"] == record.throughput.source.url
    # A closed loop of 32 clients: the same run at 1/factor the speed (the API overhead aside).
    assert ollama["output_tokens_per_s"] == pytest.approx(factor * vllm["output_tokens_per_s"], rel=0.02)
    assert ollama["tpot_ms"]["p50"] == pytest.approx(vllm["tpot_ms"]["p50"] / factor, rel=0.02)
    assert ollama["kv_cache_tokens"] == vllm["kv_cache_tokens"]
    text = gpufleet("estimate", *args, str(tmp_path))
    assert "note: ≈ estimate" in text.stdout
    assert record.throughput.source.url in text.stdout
