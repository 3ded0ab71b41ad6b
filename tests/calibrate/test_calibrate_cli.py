"""`gpufleet calibrate` end to end in a copy of the example project: it writes the calibration file, `plan`
shows and uses it, and bad inputs exit 2 with a clear message and write nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.spec.load import Project, load_stack
from tests.calibrate.synthetic import REPO, bench_document, write_bench


def gpufleet(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args, "-C", str(project)],
        capture_output=True, text=True, cwd=project, timeout=300, check=False,
    )


@pytest.fixture(scope="module")
def good_bench(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 300-request bench of staging/support on a somewhat slower L40S fleet."""
    loaded = load_stack(Project(REPO), "staging")
    return bench_document(loaded, "support", compute_scale=0.9, bandwidth_scale=0.85, rate=1.5, requests=300)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copy(REPO / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    shutil.copytree(REPO / "stacks", tmp_path / "stacks")
    (tmp_path / "stacks" / "calibration.yaml").unlink(missing_ok=True)
    return tmp_path


def test_calibrate_writes_the_file_and_plan_shows_it(project: Path, good_bench: dict[str, Any]) -> None:
    write_bench(project / "bench.json", good_bench)
    other = {"gpu": "H100-SXM", "computeScale": 1.1, "bandwidthScale": 0.95, "date": "2026-10-01",
             "fittedFrom": [{"file": "old.json", "sha256": "00112233445566ff", "stack": "prod", "deployment": "chat",
                             "model": "llama", "tp": 2, "replicas": 4, "requests": 500,
                             "measuredAt": "2026-10-01T00:00:00Z"}],
             "errorsBefore": {"ttftPct": 9.0}, "errorsAfter": {"ttftPct": 2.0}}
    (project / "stacks" / "calibration.yaml").write_text(yaml.safe_dump({"gpus": [other]}), encoding="utf-8")
    before = gpufleet(project, "plan", "-s", "staging", "--json")
    assert before.returncode == 0, before.stderr

    done = gpufleet(project, "calibrate", "-s", "staging", "-d", "support", "bench.json")
    assert done.returncode == 0, done.stderr
    assert "measured vs model" in done.stdout and "wrote stacks/calibration.yaml" in done.stdout
    assert "L40S: compute ×" in done.stdout
    written = yaml.safe_load((project / "stacks" / "calibration.yaml").read_text(encoding="utf-8"))
    assert [e["gpu"] for e in written["gpus"]] == ["H100-SXM", "L40S"]  # the other GPU's entry is kept
    entry = written["gpus"][1]
    assert entry["computeScale"] == pytest.approx(0.9, rel=0.1)
    assert entry["bandwidthScale"] == pytest.approx(0.85, rel=0.05)
    assert entry["date"] == "2026-11-20"
    assert entry["fittedFrom"][0]["file"] == "bench.json" and entry["fittedFrom"][0]["requests"] == 300
    assert entry["errorsAfter"]["tpotPct"] < entry["errorsBefore"]["tpotPct"]

    shown = gpufleet(project, "plan", "-s", "staging")
    assert "note: L40S calibrated from bench (2026-11-20, 300 requests" in shown.stdout, shown.stdout
    after = gpufleet(project, "plan", "-s", "staging", "--json")
    assert "Traceback" not in after.stderr
    plan, base = json.loads(after.stdout), json.loads(before.stdout)
    options = [plan["deployments"][0]["chosen"], *plan["deployments"][0]["alternatives"]]
    l40s = [o for o in options if o["gpu"] == "L40S"]
    assert l40s and all(o["calibration"]["source"] == "bench" and o["calibrated"] for o in l40s)
    assert l40s[0]["calibration"]["requests"] == 300
    assert all(o["calibration"] is None for o in options if o["gpu"] != "L40S")
    old = {o["instance_type"]: o for o in [base["deployments"][0]["chosen"], *base["deployments"][0]["alternatives"]]}
    slower = [o for o in l40s if o["instance_type"] in old]
    assert slower, "the L40S option should still be offered"
    for option in slower:  # slower GPU: less capacity per replica
        assert option["capacity_qps_per_replica"] < old[option["instance_type"]]["capacity_qps_per_replica"]

    dry = gpufleet(project, "calibrate", "-s", "staging", "-d", "support", "bench.json", "--dry-run",
                   "-o", "elsewhere.yaml")
    assert dry.returncode == 0, dry.stderr
    assert not (project / "elsewhere.yaml").exists()


def mutate(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(doc))
    for key, value in changes.items():
        if key.startswith("target_"):
            out["target"][key[len("target_"):]] = value
        else:
            out[key] = value
    return out


@pytest.mark.parametrize(
    ("change", "extra", "fragment"),
    [
        (lambda d: mutate(d, format="other/1"), (), "not a gpufleet bench result (format 'other/1'"),
        (lambda d: mutate(d, requests=[{**r, "status": 503, "error": "overloaded"} for r in d["requests"]]), (),
         "no successful requests with token counts (300 sent; first failure: overloaded)"),
        (lambda d: mutate(d, target_gpu="H100-SXM", target_instance_type="p5.48xlarge"), (),
         "the bench ran on H100-SXM, deployment 'support' runs on L40S, L4, A10G"),
        (lambda d: mutate(d, target_instance_type="g6.xlarge"), (), "g6.xlarge carries L4 GPUs, not L40S"),
        (lambda d: mutate(d, target_stack="prod"), (), "the bench ran against prod/support, not staging/support"),
        (lambda d: mutate(d, model="llama-3.1-70b"), (), "requested model 'llama-3.1-70b'"),
        (lambda d: mutate(d, target=None), ("--replicas", "3"), "the bench has no target; give --gpu, --tp"),
        (lambda d: d, ("--gpu", "L4"), "--gpu L4 disagrees with the bench's target.gpu L40S"),
    ],
)
def test_bad_inputs_exit_2_and_write_nothing(
    project: Path, good_bench: dict[str, Any], change: Any, extra: tuple[str, ...], fragment: str
) -> None:
    write_bench(project / "bench.json", change(good_bench))
    done = gpufleet(project, "calibrate", "-s", "staging", "-d", "support", "bench.json", *extra)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    assert fragment in done.stderr, done.stderr
    assert done.stderr.strip().endswith("nothing was written.")
    assert not (project / "stacks" / "calibration.yaml").exists()


def test_unknown_deployment_and_missing_file(project: Path) -> None:
    done = gpufleet(project, "calibrate", "-s", "staging", "-d", "suport", "nope.json")
    assert done.returncode == 2 and "no deployment 'suport'" in done.stderr and "support" in done.stderr
    done = gpufleet(project, "calibrate", "-s", "staging", "-d", "support", "nope.json")
    assert done.returncode == 2 and "nope.json: cannot read the file" in done.stderr
    assert not (project / "stacks" / "calibration.yaml").exists()
