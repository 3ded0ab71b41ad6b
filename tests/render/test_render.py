"""`gpufleet render`: golden files per example stack, determinism, manifest contract, no partial writes."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
STACKS = ["dev", "staging", "prod", "onprem-a800", "engines"]
KINDS = {"vllm-config", "vllm-args", "nginx-conf", "systemd-unit", "cloud-init", "dockerfile", "k8s-manifest",
         "prometheus-config", "prometheus-rules", "alertmanager-config", "grafana-dashboard", "ansible-vars",
         "compose"}
UPDATE = os.environ.get("GPUFLEET_UPDATE_GOLDEN") == "1"  # set deliberately to accept a changed render


def render(stack: str, out: Path, project: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", "render", "-s", stack, "-o", str(out), "-C", str(project)],
        capture_output=True, text=True, check=False,
    )


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("stack", STACKS)
def test_render_matches_the_golden_files(stack: str, tmp_path: Path) -> None:
    result = render(stack, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    golden = GOLDEN / stack
    if UPDATE:
        shutil.rmtree(golden, ignore_errors=True)
        shutil.copytree(tmp_path / "out", golden)
    comparison = filecmp.dircmp(tmp_path / "out", golden)
    assert tree(tmp_path / "out") == tree(golden), (
        f"render of {stack} changed: {comparison.diff_files or comparison.left_only or comparison.right_only}; "
        "if intended, rerun with GPUFLEET_UPDATE_GOLDEN=1 and review the diff"
    )


@pytest.mark.parametrize("stack", ["prod", "onprem-a800"])
def test_render_is_byte_identical_on_rerun_and_manifest_lists_every_file(stack: str, tmp_path: Path) -> None:
    assert render(stack, tmp_path / "a").returncode == 0
    assert render(stack, tmp_path / "b").returncode == 0
    assert tree(tmp_path / "a") == tree(tmp_path / "b")
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    listed = {entry["path"] for entry in manifest}
    on_disk = set(tree(tmp_path / "a")) - {"manifest.json"}
    assert listed == on_disk
    assert all(set(entry) == {"path", "kind", "deployment"} for entry in manifest)
    assert {entry["kind"] for entry in manifest} <= KINDS


def test_rerender_into_the_same_directory_removes_stale_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert render("prod", out).returncode == 0
    stale = out / "vllm" / "old-deployment.yaml"
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.append({"path": "vllm/old-deployment.yaml", "kind": "vllm-config", "deployment": "old-deployment"})
    (out / "manifest.json").write_text(json.dumps(manifest))
    stale.write_text("from an earlier render\n")
    assert render("prod", out).returncode == 0
    assert not stale.exists()


def test_vllm_config_and_argument_list_say_the_same(tmp_path: Path) -> None:
    assert render("prod", tmp_path).returncode == 0
    for entry in json.loads((tmp_path / "manifest.json").read_text()):
        if entry["kind"] != "vllm-config":
            continue
        config = yaml.safe_load((tmp_path / entry["path"]).read_text())
        argv = json.loads((tmp_path / entry["path"].replace(".yaml", ".args.json")).read_text())
        assert argv[:2] == ["vllm", "serve"]
        flags = [a[2:] for a in argv[3:] if a.startswith("--")]
        assert sorted(flags) == sorted(k if v is not False else f"no-{k}" for k, v in config.items())
        assert "api-key" not in config, "the API key must come from the environment, never a file"
        assert config["served-model-name"] and config["tensor-parallel-size"] >= 1


def test_an_infeasible_stack_renders_nothing(tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(ROOT / "stacks", project / "stacks")
    shutil.copy(ROOT / "Pulumi.yaml", project / "Pulumi.yaml")
    stack = project / "stacks" / "Pulumi.dev.yaml"
    stack.write_text(stack.read_text().replace("ttftP95Ms: 2000", "ttftP95Ms: 50"))
    result = render("dev", tmp_path / "out", project)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "no option meets its SLO" in result.stderr
    assert not (tmp_path / "out").exists()
