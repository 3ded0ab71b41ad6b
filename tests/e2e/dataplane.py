"""Shared pieces of the data-plane tests: the loopback fleet of tests/e2e/fixture (emulated replicas behind
the real Nginx with its rendered config, real Prometheus and Alertmanager), an aiohttp client through
infra.bench, and per-replica request counts read from each replica's /metrics."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from infra.bench.client import Outcome, request_body, send
from infra.emulate.loopback import LoopbackFleet, LoopbackOptions
from infra.emulate.processes import http_get
from infra.plan.optimize import FleetPlan, plan_stack
from infra.spec.load import Project, load_stack
from tests.tooling import require_tool

FIXTURE = Path(__file__).resolve().parent / "fixture"
STACK = "loopback"
TOOLS = ("nginx", "openssl", "prometheus", "prometheus-alertmanager", "prometheus-nginx-exporter", "mtail")


def fixture_plan() -> FleetPlan:
    return plan_stack(load_stack(Project(FIXTURE), STACK))


@contextmanager
def loopback_fleet(root: Path, webhook_url: str | None = None, **options: Any) -> Iterator[LoopbackFleet]:
    for tool in TOOLS:
        require_tool(tool)
    opts = LoopbackOptions(scrape_interval="1s", webhook_url=webhook_url, **options)
    with LoopbackFleet(fixture_plan(), FIXTURE, root, opts) as fleet:
        yield fleet


def model_of(fleet: LoopbackFleet, deployment: str) -> str:
    [d] = [d for d in fleet.plan.deployments if d.deployment.name == deployment]
    return d.profile.resolved_served_name


def served_counts(fleet: LoopbackFleet, deployment: str) -> list[int]:
    """Requests each replica of `deployment` finished, by its own vllm:request_success_total."""
    counts = []
    for replica in fleet.replicas_of(deployment):
        status, body = http_get(f"http://{replica.address}/metrics")
        assert status == 200
        total = sum(sample.value for family in text_string_to_metric_families(body.decode())
                    for sample in family.samples if sample.name == "vllm:request_success_total")
        counts.append(int(total))
    return counts


def session(fleet: LoopbackFleet, *, headers: dict[str, str] | None = None, key: str | None = None,
            limit: int = 0, timeout_s: float = 120) -> aiohttp.ClientSession:
    """A client of the fleet: its API key (or `key`), and `headers` on every request (e.g. a session id)."""
    auth = {"Authorization": f"Bearer {key or fleet.options.api_key}"}
    return aiohttp.ClientSession(headers={**auth, **(headers or {})},
                                 connector=aiohttp.TCPConnector(limit=limit),
                                 timeout=aiohttp.ClientTimeout(total=timeout_s, sock_connect=10))


async def one(client: aiohttp.ClientSession, base_url: str, model: str, *, max_tokens: int = 8,
              stream: bool = True, sent_s: float = 0.0) -> Outcome:
    """One chat completion, measured by gpufleet bench's client (TTFT, gaps, usage, error class)."""
    body = request_body("chat", model, "Say something about load balancers.", max_tokens, stream)
    outcome = Outcome(sent_s=sent_s, requested_input=0, requested_output=max_tokens)
    return await send(client, base_url, "chat", body, outcome)


async def many(fleet: LoopbackFleet, model: str, n: int, *, max_tokens: int = 16,
               concurrency: int | None = None) -> list[Outcome]:
    """`n` streamed requests through the LB, at most `concurrency` at a time (default: all at once)."""
    gate = asyncio.Semaphore(concurrency or n)

    async def limited(client: aiohttp.ClientSession) -> Outcome:
        async with gate:
            return await one(client, fleet.lb_url, model, max_tokens=max_tokens)
    async with session(fleet) as client:
        return list(await asyncio.gather(*(limited(client) for _ in range(n))))


def errors(outcomes: Sequence[Outcome]) -> dict[str, int]:
    found: dict[str, int] = {}
    for o in outcomes:
        if o.error is not None:
            found[o.error] = found.get(o.error, 0) + 1
    return found


def set_fault(fleet: LoopbackFleet, deployment: str, index: int, plan: dict[str, Any]) -> None:
    """The emulator's fault hook (POST /_emulator/faults) on one replica."""
    replica = fleet.replicas_of(deployment)[index]
    request = urllib.request.Request(f"http://{replica.address}/_emulator/faults", data=json.dumps(plan).encode(),
                                     headers={"Authorization": f"Bearer {fleet.options.api_key}",
                                              "Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def nginx_rss_kib(fleet: LoopbackFleet) -> int:
    """Resident memory of the LB: its master and every worker."""
    [master] = [s for s in fleet.services if s.name == "nginx"]
    assert master.process is not None
    pids = [master.process.pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master.process.pid:
            pids.append(int(stat.parent.name))
    return sum(rss_kib(pid) for pid in pids)

