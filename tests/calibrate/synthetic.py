"""Synthetic bench results: an example deployment's replica simulated with known efficiency scales."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

from infra.calibrate.fit import least_conn
from infra.catalog import load_catalog
from infra.plan.capacity import Traffic
from infra.plan.optimize import ReplicaConfig, profile_replica
from infra.plan.perf import StepTimeModel
from infra.plan.replica import Replica, api_overhead_s
from infra.plan.simulate import poisson, simulate, trace
from infra.spec.checks import resolve_architecture
from infra.spec.load import LoadedStack

REPO = Path(__file__).resolve().parents[2]


def replica_for(loaded: LoadedStack, deployment: str, gpu: str, tp: int = 1) -> Replica:
    catalog = load_catalog()
    d = next(d for d in loaded.spec.deployments if d.name == deployment)
    profile = loaded.profiles[d.model]
    arch = resolve_architecture(profile, catalog)
    assert arch is not None
    record = catalog.gpu(gpu)
    assert record is not None
    config = ReplicaConfig(record, tp, "nvswitch", catalog.quantization[profile.quantization])
    return profile_replica(profile, arch, config)


def bench_document(
    loaded: LoadedStack,
    deployment: str,
    *,
    gpu: str = "L40S",
    instance_type: str = "g6e.xlarge",
    replicas: int = 3,
    rate: float = 4.0,
    requests: int = 600,
    compute_scale: float = 1.0,
    bandwidth_scale: float = 1.0,
    noise: float = 0.03,
    seed: int = 0,
    stream: bool = True,
    split: str = "least-conn",
) -> dict[str, Any]:
    """A ``gpufleet-bench/1`` document: Poisson arrivals at ``rate`` over the fleet, lengths drawn from the
    deployment's traffic, latencies jittered by lognormal ``noise``.

    ``split`` says how the load balancer dealt the requests: ``least-conn`` (Nginx's choice given the simulated
    completions, iterated to a fixed point), ``round-robin`` or ``random`` (a balancer the fit does not model).
    """
    d = next(d for d in loaded.spec.deployments if d.name == deployment)
    replica = replica_for(loaded, deployment, gpu)
    step = StepTimeModel(replica.step.shape, replica.step.eff.scaled(compute_scale, bandwidth_scale))
    traffic = Traffic.draw(d.traffic.input_tokens, d.traffic.output_tokens, replica.limits.max_model_len, seed=seed)
    ins, outs = traffic.cycled(requests)
    arrivals = poisson(rate, requests, 1, 1, seed=seed).arrivals_s
    rng = random.Random(seed + 1)
    engine = replica.engine_config(api_overhead_s())

    def run(share: list[int]) -> tuple[list[float], list[float]]:
        ttft, e2e = [math.nan] * requests, [math.nan] * requests
        for r in range(replicas):
            mine = [i for i in range(requests) if share[i] == r]
            workload = trace([arrivals[i] for i in mine], [ins[i] for i in mine], [outs[i] for i in mine])
            result = simulate(workload, engine, step)
            for j, i in enumerate(mine):
                ttft[i], e2e[i] = result.ttft_s[j], result.e2e_s[j]
        return ttft, e2e

    if split == "random":
        ttft, e2e = run([rng.randrange(replicas) for _ in range(requests)])
    else:
        ttft, e2e = run([i % replicas for i in range(requests)])
        # Least-conn depends on completions, which depend on the split: iterate to a consistent split.
        for _ in range(4 if split == "least-conn" else 0):
            ttft, e2e = run(least_conn(arrivals, [a + e for a, e in zip(arrivals, e2e, strict=True)], replicas))
    rows = []
    for i in range(requests):
        first = ttft[i] * math.exp(rng.gauss(0, noise))
        rest = (e2e[i] - ttft[i]) * math.exp(rng.gauss(0, noise))
        rows.append({"sent_s": round(arrivals[i], 6), "prompt_tokens": ins[i], "output_tokens": outs[i],
                     "ttft_s": round(first, 6) if stream else None, "e2e_s": round(first + rest, 6),
                     "status": 200, "error": None})
    return {
        "format": "gpufleet-bench/1",
        "endpoint": "https://llm.staging.acme.example/v1",
        "model": loaded.profiles[d.model].resolved_served_name,
        "api": "chat",
        "stream": stream,
        "mode": "poisson",
        "rate_rps": rate,
        "concurrency": None,
        "started_at": "2026-11-20T10:00:00+00:00",
        "duration_s": round(arrivals[-1], 3),
        "target": {"stack": loaded.name, "deployment": deployment, "gpu": gpu, "tp": 1, "replicas": replicas,
                   "instance_type": instance_type},
        "requests": rows,
        "summary": {},
        "prediction": None,
    }


def write_bench(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(json.dumps(document, indent=1), encoding="utf-8")
    return path
