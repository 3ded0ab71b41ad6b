"""emulate → bench → calibrate, with the real commands: an emulated replica that is slower than the capacity
model says (compute ×0.8, bandwidth ×0.7) is benchmarked at two loads, and calibrate recovers the factors.

The emulator runs at --time-scale 0.25 (every step 4× shorter) so the test takes a minute, not four. The bench
files are then rescaled to real time (send times and latencies ÷ 0.25) before calibrating: what a run
at --time-scale 1 would have written, give or take timer jitter.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infra.emulate.processes import Service, free_port

ROOT = Path(__file__).resolve().parents[2]
STACK, DEPLOYMENT = "staging", "support"
TIME_SCALE = 0.25
COMPUTE, BANDWIDTH = 0.8, 0.7
REAL_RATES = (0.7, 2.0)  # requests/s of the real-time replica: light, then busier (pins compute)
REQUESTS = 150
CLI = [sys.executable, "-m", "infra.cli"]


def gpufleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args, "-C", str(ROOT)], capture_output=True, text=True, timeout=600, check=False)


def to_real_time(bench: Path) -> None:
    document = json.loads(bench.read_text())
    for request in document["requests"]:
        for key in ("sent_s", "ttft_s", "e2e_s"):
            if request[key] is not None:
                request[key] /= TIME_SCALE
    document["duration_s"] /= TIME_SCALE
    document["rate_rps"] *= TIME_SCALE
    bench.write_text(json.dumps(document))


@pytest.fixture
def slow_replica(tmp_path: Path) -> object:
    port = free_port()
    replica = Service("emulate", (*CLI, "emulate", "-C", str(ROOT), "-s", STACK, "-d", DEPLOYMENT,
                                  "--port", str(port), "--time-scale", str(TIME_SCALE),
                                  "--compute-scale", str(COMPUTE), "--bandwidth-scale", str(BANDWIDTH)),
                      tmp_path / "emulate.log").start()
    try:
        replica.wait_ready(f"http://127.0.0.1:{port}/health")
        yield f"http://127.0.0.1:{port}"
    finally:
        replica.stop()


def test_calibrate_recovers_the_emulated_gpu(slow_replica: str, tmp_path: Path) -> None:
    benches = []
    for index, rate in enumerate(REAL_RATES):
        bench = tmp_path / f"bench-{index}.json"
        result = gpufleet("bench", "--endpoint", slow_replica, "-s", STACK, "-d", DEPLOYMENT, "--replicas", "1",
                          "--rate", str(rate / TIME_SCALE), "--requests", str(REQUESTS), "--seed", str(index),
                          "-q", "-o", str(bench))
        assert result.returncode == 0, result.stdout + result.stderr
        assert json.loads(bench.read_text())["summary"]["errors"] == 0
        to_real_time(bench)
        benches.append(str(bench))
    out = tmp_path / "calibration.yaml"
    result = gpufleet("calibrate", "-s", STACK, "-d", DEPLOYMENT, *benches, "-o", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    print(result.stdout)
    [entry] = yaml.safe_load(out.read_text())["gpus"]
    assert entry["computeScale"] == pytest.approx(COMPUTE, rel=0.12)
    assert entry["bandwidthScale"] == pytest.approx(BANDWIDTH, rel=0.08)
