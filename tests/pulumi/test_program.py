"""The Pulumi program under mocks: it loads the stack named by Pulumi and exports what it serves."""

from __future__ import annotations

import asyncio
import runpy
import shutil
from pathlib import Path
from typing import Any

import pulumi
import pytest

from infra import program
from infra.spec.load import Project

ROOT = Path(__file__).resolve().parents[2]


class Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        return f"{args.name}-id", dict(args.inputs)

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None


@pytest.fixture(autouse=True)
def event_loop_for_pulumi() -> None:
    """Pulumi's mocks run on the thread's current event loop (asyncio.get_event_loop), and another test of the
    same worker that used asyncio.run() leaves none set: give the thread one. Not closed afterwards: Pulumi
    may still hold RPC coroutines on it."""
    try:
        asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())


@pytest.fixture
def exports(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    captured: dict[str, Any] = {}
    monkeypatch.setattr(pulumi, "export", captured.__setitem__)
    return captured


@pytest.mark.parametrize("stack", ["dev", "prod", "onprem-a800"])
def test_program_exports_the_stack(stack: str, exports: dict[str, Any]) -> None:
    pulumi.runtime.set_mocks(Mocks(), project="gpufleet", stack=stack, preview=False)
    assert pulumi.get_stack() == stack
    loaded = program.run(pulumi.get_stack())
    assert exports["target"] == loaded.spec.target
    assert set(exports["deployments"]) == {d.name for d in loaded.spec.deployments}


def test_main_module_runs_the_program(exports: dict[str, Any]) -> None:
    pulumi.runtime.set_mocks(Mocks(), project="gpufleet", stack="prod", preview=False)
    runpy.run_path(str(ROOT / "infra" / "__main__.py"))
    assert exports["target"] == "eks"
    assert exports["deployments"]["support"]["model"] == "support-chat"


def test_invalid_stack_is_a_run_error_with_locations(tmp_path: Path, exports: dict[str, Any]) -> None:
    shutil.copytree(ROOT / "stacks", tmp_path / "stacks")
    stack_file = tmp_path / "stacks" / "Pulumi.dev.yaml"
    stack_file.write_text(stack_file.read_text().replace("gpus: [L4, A10G]", "gpus: [L5, A10G]"))
    pulumi.runtime.set_mocks(Mocks(), project="gpufleet", stack="dev", preview=False)
    with pytest.raises(pulumi.RunError) as raised:
        program.run("dev", Project(tmp_path))
    message = str(raised.value)
    assert "stacks/Pulumi.dev.yaml:" in message
    assert "gpufleet:deployments[0].gpus[0]: unknown GPU 'L5'" in message
    assert exports == {}
