"""The plan as plain data: what `plan --json` prints and what render, report and diff consume."""

from __future__ import annotations

from typing import Any

from infra.calibrate.model import GpuCalibration
from infra.catalog.schema import InferenceEngine
from infra.plan.capacity import Latency
from infra.plan.optimize import DeploymentPlan, FleetPlan, Option


def _r(value: float, digits: int = 3) -> float:
    return round(value, digits)


def latency_json(latency: Latency | None) -> dict[str, float] | None:
    if latency is None:
        return None
    return {
        "ttft_p95_ms": _r(latency.ttft_ms, 1),
        "tpot_p95_ms": _r(latency.tpot_ms, 2),
        "e2e_p95_ms": _r(latency.e2e_ms, 1),
    }


def option_json(option: Option) -> dict[str, Any]:
    replica = option.replica
    return {
        "gpu": option.config.gpu.name,
        "gpus_per_replica": option.config.tp,
        "tensor_parallel_size": option.config.tp,
        "quantization": option.config.quantization.name,
        "instance_type": option.machine.instance.name,
        "market": option.machine.price.market,
        "price_note": option.machine.price.note,
        "replicas": option.replicas,
        "machines": option.machines,
        "engine": {
            "max_num_seqs": replica.limits.max_num_seqs,
            "max_num_batched_tokens": replica.limits.max_num_batched_tokens,
            "gpu_memory_utilization": replica.limits.gpu_memory_utilization,
            "max_model_len": replica.limits.max_model_len,
            "kv_cache_dtype": replica.precision.kv_cache_dtype,
            "dtype": replica.precision.dtype,
            "kv_cache_tokens": replica.kv_cache_tokens,
            "weights_gib": _r(replica.weights_gib, 2),
        },
        "capacity_qps_per_replica": _r(option.capacity.max_qps),
        "target_qps_per_replica": _r(option.target_qps_per_replica),
        "saturation_qps_per_replica": _r(option.capacity.saturation_qps),
        "predicted_at_peak": latency_json(option.predicted),
        "best_case": latency_json(option.capacity.floor),
        "hourly_usd": _r(option.hourly_usd, 4),
        "monthly_usd": _r(option.monthly_usd, 2),
        "usd_per_1m_input_tokens": _r(option.usd_per_m_input, 4),
        "usd_per_1m_output_tokens": _r(option.usd_per_m_output, 4),
        "utilisation": _r(option.utilisation),
        "peak_utilisation": _r(option.peak_utilisation),
        "calibrated": replica.calibrated,
        "calibration": calibration_json(replica.calibration),
    }


def calibration_json(entry: GpuCalibration | None) -> dict[str, Any] | None:
    """The bench calibration the option's step times use (``stacks/calibration.yaml``), or None."""
    if entry is None:
        return None
    return {
        "source": "bench",
        "date": entry.date.isoformat(),
        "requests": entry.requests,
        "compute_scale": entry.compute_scale,
        "bandwidth_scale": entry.bandwidth_scale,
        "files": [f.file for f in entry.fitted_from],
    }


def engine_json(engine: InferenceEngine) -> dict[str, Any]:
    """The engine a deployment's figures are for: the capacity model is vLLM's; an engine that is not
    ``calibrated`` gets vLLM's step times divided by ``throughputFactor`` (an estimate, from ``source``)."""
    throughput = engine.throughput
    return {
        "name": engine.name,
        "version": engine.version,
        "throughputFactor": throughput.factor,
        "calibrated": throughput.calibrated,
        "source": {"url": throughput.source.url, "asOf": str(throughput.source.as_of)},
    }


def deployment_json(plan: DeploymentPlan) -> dict[str, Any]:
    d = plan.deployment
    return {
        "name": d.name,
        "profile": plan.profile.name,
        "served_model_name": plan.profile.resolved_served_name,
        "engine": engine_json(plan.engine),
        "traffic": {"qps": d.traffic.qps, "peak_qps": d.traffic.peak_qps},
        "slo": {
            "ttft_p95_ms": d.slo.ttft_p95_ms,
            "tpot_p95_ms": d.slo.tpot_p95_ms,
            "e2e_p95_ms": d.slo.e2e_p95_ms,
            "redundancy": d.slo.redundancy,
        },
        "chosen": option_json(plan.chosen) if plan.chosen else None,
        "alternatives": [option_json(o) for o in plan.alternatives],
        "rejected": [{"option": r.label, "kind": r.kind, "reason": r.reason} for r in plan.rejected],
        "hints": plan.hints,
    }


def fleet_json(plan: FleetPlan) -> dict[str, Any]:
    return {
        "stack": plan.stack,
        "target": plan.spec.target,
        "monthly_usd": _r(plan.monthly_usd, 2),
        "budget_usd": plan.spec.monthly_budget_usd,
        "feasible": plan.feasible,
        "problems": plan.problems(),
        "deployments": [deployment_json(d) for d in plan.deployments],
    }
