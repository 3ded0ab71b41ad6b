"""``gpufleet emulate``: serve one deployment's planned replica as an emulated server (registered in
infra/cli.py). The profile's engine decides its health, readiness and metrics endpoints and its metric names
(vLLM's full set, or another engine's catalog signals); there is no flag to override it, since the plan (and
its capacity) is for that engine.

User errors (unknown stack or deployment, bad flags, a port that cannot be bound) exit 2 with ``error: ...``
lines and no traceback. SIGTERM and SIGINT stop the server cleanly (exit 0); the "crash" fault exits 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, cast

import typer

from infra.cli_common import fail, planned_deployment
from infra.emulate.faults import FAULT_MODES, FaultMode, FaultPlan
from infra.emulate.server import Emulator

CRASH_EXIT_CODE = 1


def _crash_exit() -> None:
    """The "crash" fault in a process: the listener is closed; die like a crashed server, no cleanup."""
    typer.echo("emulator: injected crash, exiting", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(CRASH_EXIT_CODE)


async def _serve(emulator: Emulator, host: str, port: int, banner: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        url = await emulator.start(host, port)
    except OSError as exc:
        await emulator.stop()
        fail([f"error: --port: cannot listen on {host}:{port}: {exc.strerror or exc}"])
    typer.echo(f"{banner} on {url}")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await emulator.stop()


def emulate_command(  # noqa: PLR0917 - a typer command: one parameter per option (as infra/cli.py's commands)
    stack: Annotated[str, typer.Option("--stack", "-s", help="Stack name.")],
    deployment: Annotated[str, typer.Option("--deployment", "-d", help="Deployment of the stack to emulate.")],
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port (0: any free port).")] = 8000,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="VLLM_API_KEY", show_default=False,
                                                help="Require 'Authorization: Bearer KEY' on /v1 (as vLLM).")] = None,
    time_scale: Annotated[float, typer.Option("--time-scale", min=0.0001, help="Multiply every step's sleep: 0.1 runs "
                                              "ten times faster than the GPU (latencies shrink alike).")] = 1.0,
    compute_scale: Annotated[float, typer.Option("--compute-scale", min=0.01, max=100.0, help="Emulate a GPU "
                                                 "reaching this fraction of the planned compute efficiency.")] = 1.0,
    bandwidth_scale: Annotated[float, typer.Option("--bandwidth-scale", min=0.01, max=100.0, help="Same for memory "
                                                   "bandwidth efficiency.")] = 1.0,
    fault: Annotated[str, typer.Option("--fault", help=f"Injected fault: {' | '.join(FAULT_MODES)} (changeable at "
                                       "run time: POST /_emulator/faults).")] = "none",
    fault_rate: Annotated[float, typer.Option("--fault-rate", min=0.0, max=1.0, help="Fraction of requests the "
                                              "fault hits (crash, error, drop).")] = 1.0,
    slowdown: Annotated[float, typer.Option("--slowdown", min=1.0, help="Step-time multiplier of --fault slow.")] = 2.0,
    project_dir: Annotated[Path | None, typer.Option("--project-dir", "-C", help="Project root (default: search "
                                                     "upward).")] = None,
) -> None:
    """Serve a deployment's planned replica as an OpenAI-compatible emulator (tests, demos): the planner's
    scheduler and step times in real time, the profile's engine's health and metrics endpoints (vLLM's by
    default), injectable faults."""
    if fault not in FAULT_MODES:
        fail([f"error: --fault: '{fault}' is not one of {', '.join(FAULT_MODES)}"])
    plan = planned_deployment(stack, deployment, project_dir)
    assert plan.chosen is not None
    faults = FaultPlan(mode=cast(FaultMode, fault), rate=fault_rate, slowdown=slowdown)  # checked above
    chosen = plan.chosen
    banner = (f"gpufleet emulate: {stack}/{deployment} ({plan.profile.resolved_served_name} on "
              f"{chosen.config.tp}× {chosen.config.gpu.name}) serving")

    async def main() -> None:
        emulator = Emulator.for_deployment(
            plan, time_scale=time_scale, compute_scale=compute_scale, bandwidth_scale=bandwidth_scale,
            api_key=api_key or None, faults=faults, on_crash=_crash_exit,
        )
        await _serve(emulator, host, port, banner)

    asyncio.run(main())
