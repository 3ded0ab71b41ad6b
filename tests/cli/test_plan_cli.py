"""`gpufleet plan`: the JSON document of an example stack, --explain, and an infeasible stack."""

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
from tests.engine_profiles import on_engine

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "spec" / "fixture"

CHOSEN_FIELDS = {
    "gpu",
    "gpus_per_replica",
    "tensor_parallel_size",
    "quantization",
    "instance_type",
    "market",
    "replicas",
    "machines",
    "engine",
    "capacity_qps_per_replica",
    "target_qps_per_replica",
    "saturation_qps_per_replica",
    "predicted_at_peak",
    "best_case",
    "hourly_usd",
    "monthly_usd",
    "usd_per_1m_input_tokens",
    "usd_per_1m_output_tokens",
    "utilisation",
    "peak_utilisation",
}
ENGINE_FIELDS = {"max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization", "max_model_len", "kv_cache_tokens"}


def gpufleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def dev_plan() -> dict[str, Any]:
    done = gpufleet("plan", "-s", "dev", "--json", "-C", str(REPO))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def test_plan_json_has_the_documented_fields(dev_plan: dict[str, Any]) -> None:
    assert dev_plan["stack"] == "dev"
    assert dev_plan["feasible"] is True
    assert dev_plan["problems"] == []
    (deployment,) = dev_plan["deployments"]
    chosen = deployment["chosen"]
    assert set(chosen) >= CHOSEN_FIELDS
    assert set(chosen["engine"]) >= ENGINE_FIELDS
    assert set(chosen["predicted_at_peak"]) == {"ttft_p95_ms", "tpot_p95_ms", "e2e_p95_ms"}
    assert chosen["gpu"] in ("L4", "A10G")  # the stack's allowed GPUs
    assert chosen["tensor_parallel_size"] == chosen["gpus_per_replica"] == 1  # maxTensorParallel: 1
    assert 1 <= chosen["replicas"] <= 2  # replicas: {min: 1, max: 2}
    slo = deployment["slo"]
    assert chosen["predicted_at_peak"]["ttft_p95_ms"] <= slo["ttft_p95_ms"]
    assert chosen["predicted_at_peak"]["tpot_p95_ms"] <= slo["tpot_p95_ms"]
    assert chosen["target_qps_per_replica"] == pytest.approx(0.85 * chosen["capacity_qps_per_replica"], abs=2e-3)
    assert chosen["replicas"] * chosen["target_qps_per_replica"] >= deployment["traffic"]["peak_qps"]


def test_monthly_is_730_hours(dev_plan: dict[str, Any]) -> None:
    options = [o for d in dev_plan["deployments"] for o in (d["chosen"], *d["alternatives"])]
    assert len(options) >= 2
    for option in options:
        # Both figures are rounded in the JSON (hourly to 4 digits, monthly to 2).
        assert option["monthly_usd"] == pytest.approx(option["hourly_usd"] * 730, abs=730 * 5e-5 + 5e-3)
    total = sum(d["chosen"]["monthly_usd"] for d in dev_plan["deployments"])
    assert dev_plan["monthly_usd"] == pytest.approx(total, abs=0.01)
    assert dev_plan["monthly_usd"] <= dev_plan["budget_usd"]


def test_alternatives_cost_more_than_the_chosen_option(dev_plan: dict[str, Any]) -> None:
    for d in dev_plan["deployments"]:
        hourly = [o["hourly_usd"] for o in (d["chosen"], *d["alternatives"])]
        assert hourly == sorted(hourly)


def test_explain_lists_the_rejected_options(dev_plan: dict[str, Any]) -> None:
    rejected = dev_plan["deployments"][0]["rejected"]
    assert rejected
    assert {r["kind"] for r in rejected} <= {"does-not-fit", "slo", "replicas", "pruned"}
    done = gpufleet("plan", "-s", "dev", "--explain", "-C", str(REPO))
    assert done.returncode == 0, done.stderr
    plain = gpufleet("plan", "-s", "dev", "-C", str(REPO))
    assert "options not chosen" in done.stdout
    assert "options not chosen" not in plain.stdout
    for r in rejected:
        assert r["option"] in done.stdout
        assert r["option"] not in plain.stdout


def infeasible_project(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURE, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "stacks" / "Pulumi.k8s.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["config"]["gpufleet:deployments"][0]["slo"].update(ttftP95Ms=5, tpotP95Ms=1)
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return tmp_path


def test_an_infeasible_stack_exits_2_with_the_reason(tmp_path: Path) -> None:
    project = infeasible_project(tmp_path)
    done = gpufleet("plan", "-s", "k8s", "-C", str(project))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr + done.stdout
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr
    assert "deployment 'assistant'" in errors[0]
    assert "no option meets its SLO" in errors[0]
    assert "loosen the SLO" in errors[0]


def test_an_infeasible_stack_still_prints_its_json_with_the_reasons(tmp_path: Path) -> None:
    project = infeasible_project(tmp_path)
    done = gpufleet("plan", "-s", "k8s", "--json", "-C", str(project))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    doc = json.loads(done.stdout)
    assert doc["feasible"] is False
    assert doc["problems"]
    (deployment,) = doc["deployments"]
    assert deployment["chosen"] is None
    assert deployment["hints"]
    slo_rejections = [r for r in deployment["rejected"] if r["kind"] == "slo"]
    assert slo_rejections
    assert all("> 5 ms" in r["reason"] and "> 1 ms" in r["reason"] for r in slo_rejections)


# ------------------------------------------------------------------------------------------ engines

ENGINE_KEYS = {"name", "version", "throughputFactor", "calibrated", "source"}


def test_every_deployment_names_its_engine(dev_plan: dict[str, Any]) -> None:
    """vLLM, calibrated: the catalog's record, and the text output carries no estimate mark."""
    vllm = load_catalog().engines["vllm"]
    for d in dev_plan["deployments"]:
        assert set(d["engine"]) == ENGINE_KEYS
        assert d["engine"] == {
            "name": "vllm",
            "version": vllm.version,
            "throughputFactor": 1.0,
            "calibrated": True,
            "source": {"url": vllm.throughput.source.url, "asOf": str(vllm.throughput.source.as_of)},
        }
    plain = gpufleet("plan", "-s", "dev", "-C", str(REPO))
    assert plain.returncode == 0, plain.stderr
    assert "≈" not in plain.stdout
    assert "estimate:" not in plain.stdout


def engine_project(tmp_path: Path, engine: str) -> Path:
    shutil.copytree(FIXTURE, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "stacks" / "models" / "chat-8b.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    on_engine(doc, engine)
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return tmp_path


def test_an_uncalibrated_engine_is_marked_as_an_estimate(tmp_path: Path) -> None:
    project = engine_project(tmp_path, "llamacpp")
    llamacpp = load_catalog().engines["llamacpp"]
    done = gpufleet("plan", "-s", "k8s", "--json", "-C", str(project))
    assert done.returncode == 0, done.stderr
    (deployment,) = json.loads(done.stdout)["deployments"]
    assert deployment["engine"] == {
        "name": "llamacpp",
        "version": llamacpp.version,
        "throughputFactor": llamacpp.throughput.factor,
        "calibrated": False,
        "source": {"url": llamacpp.throughput.source.url, "asOf": str(llamacpp.throughput.source.as_of)},
    }
    assert set(deployment["chosen"]) >= CHOSEN_FIELDS  # the rest of the document is unchanged

    text = gpufleet("plan", "-s", "k8s", "-C", str(project))
    assert text.returncode == 0, text.stderr
    assert "≈ llama.cpp" in text.stdout  # the table's title (rich may wrap it)
    (row,) = [line for line in text.stdout.splitlines() if "✔" in line]
    cells = [cell.strip() for cell in row.strip("│ ").split("│")]
    assert len(cells) == 9  # replica, machine, then the seven figures, every one marked
    assert all(cell.startswith("≈") for cell in cells[2:]), cells
    assert cells[2] == f"≈{deployment['chosen']['replicas']}"
    (note,) = [line for line in text.stdout.splitlines() if "note: ≈ estimate" in line]
    assert f"llama.cpp {llamacpp.version}" in note
    assert f"{llamacpp.throughput.factor:g}×" in note
    assert llamacpp.throughput.source.url in note


def test_an_engine_at_factor_one_is_still_an_estimate(tmp_path: Path) -> None:
    """SGLang's factor is 1.0, but nothing was measured on SGLang: the same figures as vLLM's, marked."""
    project = engine_project(tmp_path, "sglang")
    done = gpufleet("plan", "-s", "k8s", "--json", "-C", str(project))
    vllm = gpufleet("plan", "-s", "k8s", "--json", "-C", str(FIXTURE))
    assert done.returncode == vllm.returncode == 0, done.stderr + vllm.stderr
    (sglang_d,), (vllm_d,) = json.loads(done.stdout)["deployments"], json.loads(vllm.stdout)["deployments"]
    assert sglang_d["engine"]["calibrated"] is False
    assert sglang_d["chosen"] == vllm_d["chosen"]
    text = gpufleet("plan", "-s", "k8s", "-C", str(project))
    assert "note: ≈ estimate" in text.stdout
