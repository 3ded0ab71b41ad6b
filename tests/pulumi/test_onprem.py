"""The on-prem target under mocks: the site playbook as one local.Command per play, each re-run exactly when
what its play reads changes. The captured commands are run through the real ansible-playbook
(--syntax-check, --list-hosts) against the render the program wrote."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Any

import pulumi
import pytest

from infra import program
from infra.render.vllm import VLLM_VERSION
from infra.spec.load import Project
from tests.pulumi.mocks import RecordingMocks, ensure_event_loop, run_program
from tests.pulumi.snapshots import assert_snapshot
from tests.pulumi.stacks import edited_project
from tests.tooling import require_tool

ROOT = Path(__file__).resolve().parents[2]
STACK = "onprem-a800"
COMMAND = "command:local:Command"
PLAYS = ["firewall", "gpu", "lb", "monitoring"]  # site.yml's order


def project_copy(tmp_path: Path, edit: tuple[str, str] | None = None) -> Project:
    """The example stacks in a temporary project, with one text replacement in the on-prem stack file."""
    return edited_project(tmp_path / "project", STACK, edit)


def converge(project: Project, render_dir: Path) -> RecordingMocks:
    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(mocks, project="gpufleet", stack=STACK, preview=False)
    run_program(lambda: program.run(STACK, project, render_dir=str(render_dir)))
    return mocks


def commands(mocks: RecordingMocks) -> dict[str, dict[str, Any]]:
    return {r.name.removeprefix(f"{STACK}-"): r.inputs for r in mocks.of_type(COMMAND)}


def triggers(mocks: RecordingMocks) -> dict[str, list[str]]:
    return {play: inputs["triggers"] for play, inputs in commands(mocks).items()}


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> tuple[RecordingMocks, Path]:
    ensure_event_loop()
    render = tmp_path_factory.mktemp("render")
    return converge(Project(ROOT), render), render


def test_resource_graph(example: tuple[RecordingMocks, Path]) -> None:
    mocks, render = example
    assert [(r.type, r.name) for r in mocks.resources] == [("gpufleet:onprem:Fleet", STACK)] + [
        (COMMAND, f"{STACK}-{play}") for play in PLAYS]
    for play, inputs in commands(mocks).items():
        assert shlex.split(inputs["create"]) == [
            "ansible-playbook", "-i", f"{render}/ansible/inventory.yml", "ansible/playbooks/site.yml", "--tags", play]
        assert "delete" not in inputs  # destroying the stack leaves the hosts as they are
        assert inputs["environment"]["ANSIBLE_CONFIG"] == "ansible/ansible.cfg"
        assert len(inputs["triggers"]) == 4 and all(len(t) == 64 for t in inputs["triggers"][:3])
        assert inputs["triggers"][3] == "{}"  # no extra variables: the upstream image is pulled
    assert (render / "ansible/inventory.yml").is_file() and (render / "manifest.json").is_file()


EXPECTED_HOSTS = {
    "firewall": {"gpu-a800-01", "gpu-a800-02", "lb-01", "mon-01"},
    "gpu": {"gpu-a800-01", "gpu-a800-02"},
    "lb": {"lb-01"},
    "monitoring": {"mon-01"},
}


@pytest.mark.parametrize("play", PLAYS)
def test_captured_command_is_a_valid_playbook_run(example: tuple[RecordingMocks, Path], play: str) -> None:
    """The exact command Pulumi would run, run by the real ansible-playbook from the project directory with
    the captured environment: the syntax check passes and the play targets the planned hosts."""
    mocks, _ = example
    inputs = commands(mocks)[play]
    argv = shlex.split(inputs["create"])
    argv[0] = require_tool("ansible-playbook")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(ROOT), **inputs["environment"]}
    for check in ("--syntax-check", "--list-hosts"):
        proc = subprocess.run([*argv, check], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                              check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert hosts_of_tagged_plays(proc.stdout, play) == EXPECTED_HOSTS[play], proc.stdout


def hosts_of_tagged_plays(listing: str, tag: str) -> set[str]:
    """Hosts of the plays carrying ``tag`` in `ansible-playbook --list-hosts` output (it lists every play;
    --tags selects which plays' tasks run)."""
    hosts: set[str] = set()
    for block in listing.split("play #")[1:]:
        head, *rest = block.splitlines()
        if f"TAGS: [{tag}]" in head:
            hosts |= {line.strip() for line in rest if line.startswith("      ") and line.strip()}
    return hosts


@pytest.mark.parametrize(("edit", "rerun"), [
    # Nothing changes: nothing runs.
    (None, set()),
    # Who may call the API: nginx.conf only.
    (("allowedClientCidrs: [10.20.0.0/16]", "allowedClientCidrs: [10.20.0.0/16, 10.30.0.0/16]"), {"lb"}),
    # Operators' networks: group_vars, which every play reads.
    (("adminCidrs: [10.20.0.0/24]", "adminCidrs: [10.20.0.0/24, 10.21.0.0/24]"), set(PLAYS)),
])
def test_plays_rerun_when_what_they_read_changes(example: tuple[RecordingMocks, Path], tmp_path: Path,
                                                 edit: tuple[str, str] | None, rerun: set[str]) -> None:
    before = triggers(example[0])
    after = triggers(converge(project_copy(tmp_path, edit), tmp_path / "render"))
    assert {play for play in PLAYS if after[play] != before[play]} == rerun


def test_vars_files_are_passed_and_rerun_every_play(tmp_path: Path) -> None:
    project = project_copy(tmp_path, ("    # varsFiles: [ansible/vault/onprem-a800.yml]",
                                      "    varsFiles: [secrets/vault.yml]"))
    vault = project.root / "secrets/vault.yml"
    vault.parent.mkdir()
    vault.write_text("$ANSIBLE_VAULT;1.1;AES256\n6162\n", encoding="utf-8")
    first = converge(project, tmp_path / "render")
    for inputs in commands(first).values():
        assert shlex.split(inputs["create"])[-2:] == ["-e", "@secrets/vault.yml"]
    vault.write_text("$ANSIBLE_VAULT;1.1;AES256\n6364\n", encoding="utf-8")  # a secret was rotated
    second = converge(project, tmp_path / "render")
    assert all(triggers(first)[p][2] != triggers(second)[p][2] for p in PLAYS)
    assert all(triggers(first)[p][:2] == triggers(second)[p][:2] for p in PLAYS)
    assert all(triggers(first)[p][3] == triggers(second)[p][3] for p in PLAYS)


class ImageMocks(RecordingMocks):
    """docker-build's Image answers with its ref (the local tag when nothing is pushed) and a digest."""

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        rid, outputs = super().new_resource(args)
        if args.typ == "docker-build:index:Image":
            outputs = {**outputs, "ref": args.inputs["tags"][0], "digest": "sha256:" + "0" * 64}
        return rid, outputs


def test_archive_delivery_builds_the_vllm_image_for_the_gpu_play(tmp_path: Path) -> None:
    """imageDelivery: archive (sites without registry access): pulumi up builds images/vllm into a tar archive,
    and the GPU play, and only it, gets the image's name and archive (the vllm role loads it)."""
    project = project_copy(tmp_path, ("    adminCidrs: [10.20.0.0/24]", "    adminCidrs: [10.20.0.0/24]\n"
                                      "    imageDelivery: archive"))
    render = tmp_path / "render"
    mocks = ImageMocks()
    pulumi.runtime.set_mocks(mocks, project="gpufleet", stack=STACK, preview=False)
    run_program(lambda: program.run(STACK, project, render_dir=str(render)))
    (image,) = mocks.of_type("docker-build:index:Image")  # vllm only: on-prem LBs run Debian's nginx
    tag = image.inputs["tags"][0]
    assert tag.startswith(f"gpufleet-vllm:v{VLLM_VERSION}-") and not image.inputs["push"]
    archive = f"{render}/images/vllm.tar"
    (export,) = image.inputs["exports"]
    assert (export["docker"]["dest"], export["docker"]["tar"]) == (archive, True)
    plays = commands(mocks)
    gpu = shlex.split(plays["gpu"]["create"])
    assert gpu[-4:] == ["-e", f"gpufleet_vllm_image={tag}", "-e", f"gpufleet_vllm_image_archive={archive}"]
    assert all("-e" not in shlex.split(plays[p]["create"]) for p in PLAYS if p != "gpu")
    argv = [require_tool("ansible-playbook"), *gpu[1:], "--syntax-check"]
    proc = subprocess.run(argv, cwd=ROOT, env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT),
                                                **plays["gpu"]["environment"]},
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_resource_graph_matches_the_reviewed_snapshot(example: tuple[RecordingMocks, Path]) -> None:
    assert_snapshot("onprem-a800", example[0].resources)
