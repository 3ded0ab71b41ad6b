"""The calibration fit (infra/calibrate/fit.py): it recovers known efficiency scales from synthetic bench
results of an example deployment (staging/support on L40S, three replicas behind least-conn), and reads
bench files strictly."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from infra.calibrate.fit import BenchError, Fit, Replay, fit_scales, least_conn, read_bench
from infra.calibrate.model import Calibration
from infra.catalog import load_catalog
from infra.plan.perf import efficiency_for
from infra.spec.load import LoadedStack, Project, load_stack
from tests.calibrate.synthetic import REPO, bench_document, replica_for, write_bench


@pytest.fixture(scope="module")
def staging() -> LoadedStack:
    return load_stack(Project(REPO), "staging")


def fit_synthetic(loaded: LoadedStack, folder: Path, compute: float, bandwidth: float, **kw: Any) -> Fit:
    """Fit two benches of the deployment, a light (1 req/s) and a busier (3 req/s) one, as an operator would."""
    replica = replica_for(loaded, "support", "L40S")
    replays = []
    for rate, seed in ((1.0, 1), (3.0, 2)):
        doc = bench_document(loaded, "support", compute_scale=compute, bandwidth_scale=bandwidth, rate=rate,
                             requests=800, seed=seed, **kw)
        bench = read_bench(write_bench(folder / f"bench-{rate}.json", doc))
        replays.append(Replay(bench, replica, 3))
    return fit_scales(replays)


def test_recovers_a_slower_gpu(staging: LoadedStack, tmp_path: Path) -> None:
    fit = fit_synthetic(staging, tmp_path, 0.8, 0.7)
    assert fit.compute_scale == pytest.approx(0.8, rel=0.05)
    assert fit.bandwidth_scale == pytest.approx(0.7, rel=0.05)
    assert not fit.at_bound
    before, after = fit.errors("before", "ttft"), fit.errors("after", "ttft")
    assert before is not None and after is not None and before > 20 and after < 3
    before, after = fit.errors("before", "tpot"), fit.errors("after", "tpot")
    assert before is not None and after is not None and before > 25 and after < 2
    assert fit.loss_after < fit.loss_before / 100


def test_unperturbed_fleet_fits_one(staging: LoadedStack, tmp_path: Path) -> None:
    fit = fit_synthetic(staging, tmp_path, 1.0, 1.0)
    assert fit.compute_scale == pytest.approx(1.0, rel=0.05)
    assert fit.bandwidth_scale == pytest.approx(1.0, rel=0.03)


def test_non_streaming_bench_fits_end_to_end_latency(staging: LoadedStack, tmp_path: Path) -> None:
    doc = bench_document(staging, "support", bandwidth_scale=0.7, rate=1.0, requests=300, stream=False)
    bench = read_bench(write_bench(tmp_path / "b.json", doc))
    assert bench.metrics == ("e2e",)
    fit = fit_scales([Replay(bench, replica_for(staging, "support", "L40S"), 3)])
    # Without TTFT compute and bandwidth cannot be told apart: compute stays 1, bandwidth is fitted.
    assert not fit.compute_fitted and fit.compute_scale == 1.0
    assert fit.bandwidth_scale == pytest.approx(0.7, rel=0.05)
    assert fit.errors("after", "e2e") is not None
    assert fit.errors("after", "ttft") is None


def test_least_conn_picks_fewest_in_flight_then_in_turn() -> None:
    # 0 -> r0; 1 -> r1 (r0 busy); 2 -> r1 (its request ended at 0.15); 3: tie, r0's turn; 4: r1 has fewer.
    assert least_conn([0, 0.1, 0.2, 0.3, 0.4], [1, 0.15, 5, 5, 5], 2) == [0, 1, 1, 0, 1]
    assert least_conn([0, 0, 0, 0], [9, 9, 9, 9], 3) == [0, 1, 2, 0]


def test_scaled_efficiency_and_calibrated_efficiency_for() -> None:
    gpu = load_catalog().gpu("L40S")
    assert gpu is not None
    base = efficiency_for(gpu)
    scaled = base.scaled(0.5, 0.25)
    assert scaled.compute == base.compute * 0.5 and scaled.attention_compute == base.attention_compute * 0.5
    assert scaled.bandwidth == base.bandwidth * 0.25
    assert scaled.attention_bandwidth == base.attention_bandwidth * 0.25
    assert replace(scaled, compute=base.compute, attention_compute=base.attention_compute,
                   bandwidth=base.bandwidth, attention_bandwidth=base.attention_bandwidth) == base
    calibration = Calibration.model_validate({"gpus": [{
        "gpu": "L40S", "computeScale": 0.5, "bandwidthScale": 0.25, "date": "2026-11-20",
        "fittedFrom": [{"file": "b.json", "sha256": "0" * 16, "stack": "staging", "deployment": "support",
                        "model": "support-chat", "tp": 1, "replicas": 3, "requests": 100,
                        "measuredAt": "2026-11-20T10:00:00+00:00"}],
        "errorsBefore": {"ttftPct": 30.0}, "errorsAfter": {"ttftPct": 1.0},
    }]})
    calibrated = efficiency_for(gpu, calibration)
    assert calibrated.calibrated and not base.calibrated  # Ada borrows Ampere's constants until calibrated
    assert calibrated.compute == scaled.compute and calibrated.bandwidth == scaled.bandwidth
    assert "calibrated from bench (2026-11-20, 100 requests" in calibrated.source
    other = load_catalog().gpu("L4")
    assert other is not None and efficiency_for(other, calibration) == efficiency_for(other)


# ------------------------------------------------------------------------------------------- reading


def minimal(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "format": "gpufleet-bench/1", "endpoint": "http://x/v1", "model": "m", "api": "chat", "stream": True,
        "mode": "poisson", "rate_rps": 1.0, "concurrency": None, "started_at": "2026-11-20T10:00:00Z",
        "duration_s": 10.0, "target": None, "summary": {}, "prediction": None,
        "requests": [{"sent_s": i * 0.5, "prompt_tokens": 100, "output_tokens": 20, "ttft_s": 0.05, "e2e_s": 0.5,
                      "status": 200, "error": None} for i in range(20)],
    }
    doc.update(changes)
    return doc


def read(tmp_path: Path, doc: Any) -> Any:
    path = tmp_path / "bench.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    return read_bench(path)


def test_reads_a_minimal_bench(tmp_path: Path) -> None:
    failed = {"sent_s": 11.0, "prompt_tokens": None, "output_tokens": None, "ttft_s": None, "e2e_s": None,
              "status": None, "error": "timeout"}
    bench = read(tmp_path, minimal(requests=[*minimal()["requests"], failed]))
    assert bench.sent == 21 and len(bench.requests) == 20
    assert bench.metrics == ("ttft", "tpot")
    assert bench.measured()["tpot"][0] == pytest.approx(0.45 / 19)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("{not json", "not JSON"),
        (minimal(format="vllm-bench/1"), "not a gpufleet bench result (format 'vllm-bench/1'"),
        ([], "not a gpufleet bench result"),
        (minimal(started_at="yesterday"), "started_at: not an ISO 8601 time"),
        (minimal(requests="many"), "requests: expected list"),
        (minimal(requests=[{"sent_s": 0, "status": 500, "error": "boom"}]), "no successful requests"),
        (minimal(requests=minimal()["requests"][:5]), "only 5 successful requests"),
        (minimal(requests=[{"sent_s": "0"}]), "requests[0].sent_s: expected int or float"),
        (minimal(target={"stack": "s"}), "target.deployment: expected str"),
        (minimal(stream="yes"), "stream: expected bool"),
    ],
)
def test_rejects_bad_bench_files(tmp_path: Path, doc: Any, message: str) -> None:
    with pytest.raises(BenchError, match=None) as caught:
        read(tmp_path, doc)
    assert message in str(caught.value)
