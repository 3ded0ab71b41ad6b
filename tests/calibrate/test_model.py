"""The calibration file (infra/calibrate/model.py): deterministic YAML that round-trips, merging by GPU,
and validation with file:line errors when the stack loads it."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.calibrate.model import HEADER, Calibration, dump_calibration, write_calibration
from infra.plan.optimize import plan_stack
from infra.spec.issues import SpecError
from infra.spec.load import Project, load_calibration, load_stack
from tests.calibrate.synthetic import REPO
from tests.tooling import require_tool


def entry(gpu: str = "L40S", compute: float = 0.8, bandwidth: float = 0.7) -> dict[str, Any]:
    return {
        "gpu": gpu, "computeScale": compute, "bandwidthScale": bandwidth, "date": "2026-11-20",
        "fittedFrom": [{"file": "benches/staging.json", "sha256": "0123456789abcdef", "stack": "staging",
                        "deployment": "support", "model": "support-chat", "tp": 1, "replicas": 3,
                        "requests": 800, "measuredAt": "2026-11-20T10:00:00+00:00"}],
        "errorsBefore": {"ttftPct": 25.2, "tpotPct": 30.7}, "errorsAfter": {"ttftPct": 1.2, "tpotPct": 0.3},
    }


def project(tmp_path: Path) -> Project:
    shutil.copy(REPO / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    shutil.copytree(REPO / "stacks", tmp_path / "stacks")
    (tmp_path / "stacks" / "calibration.yaml").unlink(missing_ok=True)
    return Project(tmp_path)


def test_round_trips_and_is_deterministic(tmp_path: Path) -> None:
    proj = project(tmp_path)
    calibration = Calibration.model_validate({"gpus": [entry("L40S"), entry("H100-SXM", 1.05, 0.9)]})
    write_calibration(calibration, proj.calibration_file)
    text = proj.calibration_file.read_text(encoding="utf-8")
    assert text.startswith(HEADER)
    assert [e["gpu"] for e in yaml.safe_load(text)["gpus"]] == ["H100-SXM", "L40S"]  # sorted
    issues: list[Any] = []
    loaded = load_calibration(proj, issues)
    assert not issues and loaded is not None
    assert loaded == Calibration.model_validate({"gpus": sorted(calibration.gpus, key=lambda e: e.gpu)})
    assert dump_calibration(loaded) == text
    assert "ttftPct: 25.2" in text and "e2ePct" not in text  # None left out
    # stacks/ is linted with the project's yamllint rules (Makefile lint).
    command = [require_tool("yamllint"), "-s", "-c", str(REPO / ".yamllint.yaml"), str(proj.calibration_file)]
    lint = subprocess.run(command, capture_output=True, text=True, check=False)
    assert lint.returncode == 0, lint.stdout


def test_with_entry_replaces_that_gpu_and_keeps_others() -> None:
    calibration = Calibration.model_validate({"gpus": [entry("L40S"), entry("H100-SXM", 1.05, 0.9)]})
    new = Calibration.model_validate({"gpus": [entry("L40S", 0.9, 0.95)]}).gpus[0]
    merged = calibration.with_entry(new)
    assert [e.gpu for e in merged.gpus] == ["H100-SXM", "L40S"]
    l40s = merged.for_gpu("L40S")
    assert l40s is not None and l40s.compute_scale == 0.9
    assert merged.for_gpu("H100-SXM") == calibration.for_gpu("H100-SXM")
    assert merged.for_gpu("A10G") is None


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda d: d["gpus"][0].update(gpu="L40"), "gpus[0].gpu: unknown GPU 'L40'"),
        (lambda d: d["gpus"][0].update(gpu="h100"), "gpus[0].gpu: 'h100' is an alias (hint: write the catalog name"),
        (lambda d: d["gpus"][0].update(computeScale=0), "gpus[0].computeScale"),
        (lambda d: d["gpus"][0].update(computeScal=1.0), "gpus[0].computeScal"),
        (lambda d: d["gpus"].append(d["gpus"][0]), "GPU 'L40S' has two entries"),
        (lambda d: d["gpus"][0]["fittedFrom"][0].update(sha256="xyz"), "gpus[0].fittedFrom[0].sha256"),
        (lambda d: d["gpus"][0].update(fittedFrom=[]), "gpus[0].fittedFrom"),
    ],
)
def test_invalid_file_fails_the_stack_with_file_and_line(tmp_path: Path, change: Any, fragment: str) -> None:
    proj = project(tmp_path)
    doc: dict[str, Any] = {"gpus": [entry()]}
    change(doc)
    proj.calibration_file.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    with pytest.raises(SpecError) as caught:
        load_stack(proj, "staging")
    lines = [issue.format() for issue in caught.value.issues]
    assert any(line.startswith("stacks/calibration.yaml:") and fragment in line for line in lines), lines


def test_plan_uses_the_calibration(tmp_path: Path) -> None:
    proj = project(tmp_path)
    baseline = load_stack(proj, "staging")
    assert baseline.calibration is None
    write_calibration(Calibration.model_validate({"gpus": [entry("L40S")]}), proj.calibration_file)
    loaded = load_stack(proj, "staging")
    assert loaded.calibration is not None and loaded.calibration.for_gpu("L40S") is not None
    assert replace(loaded, calibration=None) == baseline
    before, after = plan_stack(baseline).deployments[0], plan_stack(loaded).deployments[0]

    def l40s(plan: Any) -> list[Any]:
        return [o for o in (plan.chosen, *plan.alternatives) if o is not None and o.config.gpu.name == "L40S"]

    assert before.chosen is not None and before.chosen.config.label == "L40S×1"
    assert all(o.replica.calibration is None for o in l40s(before))
    assert l40s(after) and all(o.replica.calibration is not None and o.replica.calibrated for o in l40s(after))
    # A slower L40S: the one-GPU replica no longer carries the traffic within the SLO as cheaply.
    assert after.chosen is not None
    assert after.chosen.monthly_usd > before.chosen.monthly_usd
    others = {o.label: o for o in (before.chosen, *before.alternatives) if o.config.gpu.name != "L40S"}
    for option in (after.chosen, *after.alternatives):  # other GPUs are untouched
        if option.label in others:
            assert option.capacity == others[option.label].capacity
