#!/usr/bin/env python3
"""`make e2e`: the data plane on loopback under load and faults, as a table.

Brings up the stack of tests/e2e/fixture (emulated vLLM replicas behind the real Nginx with its rendered
config) and measures: the LB's added TTFT against direct requests, a `gpufleet bench` run against the plan's
prediction, the spread over replicas, 500 concurrent streams, a replica killed mid-load and a hung replica.
tests/e2e asserts the same behaviours; this prints the figures (these machines are noisy: compare within
one run)."""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infra.bench.client import Outcome, request_body, send  # noqa: E402
from infra.emulate.loopback import LoopbackFleet, LoopbackOptions  # noqa: E402
from infra.emulate.processes import http_get  # noqa: E402
from infra.plan.optimize import plan_stack  # noqa: E402
from infra.spec.load import Project, load_stack  # noqa: E402

FIXTURE = ROOT / "tests" / "e2e" / "fixture"
STACK, DEPLOYMENT = "loopback", "chat"
Row = tuple[str, str, str, str]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def client(fleet: LoopbackFleet, timeout_s: float = 180) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(headers={"Authorization": f"Bearer {fleet.options.api_key}"},
                                 connector=aiohttp.TCPConnector(limit=0),
                                 timeout=aiohttp.ClientTimeout(total=timeout_s))


async def chat(session: aiohttp.ClientSession, base: str, model: str, tokens: int, sent_s: float = 0) -> Outcome:
    body = request_body("chat", model, "Tell me about load balancing.", tokens, True)
    return await send(session, base, "chat", body, Outcome(sent_s, 0, tokens))


def served(fleet: LoopbackFleet) -> list[int]:
    counts = []
    for replica in fleet.replicas_of(DEPLOYMENT):
        body = http_get(f"http://{replica.address}/metrics")[1].decode()
        counts.append(int(sum(s.value for f in text_string_to_metric_families(body) for s in f.samples
                              if s.name == "vllm:request_success_total")))
    return counts


def lb_overhead(fleet: LoopbackFleet, model: str) -> list[Row]:
    direct_url = f"http://{fleet.replicas_of(DEPLOYMENT)[0].address}"

    async def pairs() -> tuple[list[float], list[float]]:
        direct, lb = [], []
        async with client(fleet) as session:
            for _ in range(100):
                direct.append((await chat(session, direct_url, model, 16)).ttft_s or 0)
                lb.append((await chat(session, fleet.lb_url, model, 16)).ttft_s or 0)
        return direct, lb
    direct, lb = asyncio.run(pairs())
    added = statistics.median(lb) - statistics.median(direct)
    return [("LB overhead (100 pairs, one at a time)", "TTFT p50 direct / via LB",
             f"{ms(statistics.median(direct))} / {ms(statistics.median(lb))}", ""),
            ("", "added TTFT p50", ms(added), "< 5 ms")]


def bench_vs_plan(fleet: LoopbackFleet, folder: Path) -> list[Row]:
    out = folder / "bench.json"
    subprocess.run([sys.executable, "-m", "infra.cli", "bench", "--endpoint", fleet.lb_url, "-C", str(FIXTURE),
                    "-s", STACK, "-d", DEPLOYMENT, "--replicas", str(len(fleet.replicas_of(DEPLOYMENT))),
                    "--api-key", fleet.options.api_key, "--rate", "30", "--duration", "20", "-q", "-o", str(out)],
                   check=True, capture_output=True)
    document = json.loads(out.read_text())
    summary, prediction = document["summary"], document["prediction"]
    rows: list[Row] = [("gpufleet bench, 30 req/s Poisson for 20 s", "requests / errors",
                        f"{summary['completed']} / {summary['errors']}", "0 errors")]
    for metric in ("ttft_s", "tpot_s", "e2e_s"):
        measured, predicted = summary[metric], prediction[metric]
        rows.append(("", f"{metric[:-2].upper()} p50 / p95 measured",
                     f"{ms(measured['p50'])} / {ms(measured['p95'])}",
                     f"plan: {ms(predicted['p50'])} / {ms(predicted['p95'])}"))
    return rows


def spread(fleet: LoopbackFleet, before: list[int]) -> list[Row]:
    delta = [after - b for after, b in zip(served(fleet), before, strict=True)]
    return [("least_conn spread over the bench run", "requests per replica", " / ".join(map(str, delta)),
             f"max/min {max(delta) / max(1, min(delta)):.2f} (≤ 1.5)")]


def nginx_rss_mib(fleet: LoopbackFleet) -> float:
    [master] = [s for s in fleet.services if s.name == "nginx"]
    assert master.process is not None
    pids = [master.process.pid] + [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/stat")
                                   if _ppid(p) == master.process.pid]
    return sum(_rss_kib(pid) for pid in pids) / 1024


def _ppid(stat: Path) -> int:
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError):
        return -1


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def concurrent_streams(fleet: LoopbackFleet, model: str) -> list[Row]:
    async def streams() -> list[Outcome]:
        async with client(fleet) as session:
            return list(await asyncio.gather(*(chat(session, fleet.lb_url, model, 32) for _ in range(500))))
    rss_before = nginx_rss_mib(fleet)
    started = time.monotonic()
    outcomes = asyncio.run(streams())
    elapsed = time.monotonic() - started
    ok = [o for o in outcomes if o.ok]
    return [("500 concurrent streams through the LB", "errors", str(len(outcomes) - len(ok)), "0"),
            ("", "TTFT p50 / p95", f"{ms(statistics.median(o.ttft_s or 0 for o in ok))} / "
             f"{ms(statistics.quantiles([o.ttft_s or 0 for o in ok], n=20)[-1])}", f"all done in {elapsed:.1f} s"),
            ("", "nginx RSS before / after", f"{rss_before:.1f} / {nginx_rss_mib(fleet):.1f} MiB", "bounded")]


def killed_replica(fleet: LoopbackFleet, model: str) -> list[Row]:
    kill_at, rate, seconds = 4.0, 20, 12.0

    async def load(start: float) -> list[Outcome]:
        async with client(fleet) as session:
            tasks = []
            for index in range(int(rate * seconds)):
                await asyncio.sleep(max(0.0, start + index / rate - time.monotonic()))
                tasks.append(asyncio.create_task(chat(session, fleet.lb_url, model, 64, time.monotonic() - start)))
            return list(await asyncio.gather(*tasks))
    start = time.monotonic()
    timer = threading.Timer(kill_at, fleet.kill_replica, args=(DEPLOYMENT, 0))
    timer.start()
    outcomes = asyncio.run(load(start))
    failed = [o for o in outcomes if not o.ok]
    after = [o for o in outcomes if o.sent_s > kill_at + 0.5]
    restarted = time.monotonic()
    fleet.restart_replica(DEPLOYMENT, 0)
    while served(fleet)[0] == 0:
        asyncio.run(concurrent_burst(fleet, model))
    kinds = ", ".join(sorted({o.error or "" for o in failed}))
    return [("replica killed (SIGKILL) at 4 s of a 20 req/s load",
             "failed requests", f"{len(failed)} of {len(outcomes)} ({kinds})",
             "only streams in flight on it"),
            ("", "failures among requests sent > 0.5 s after the kill",
             str(sum(not o.ok for o in after)), "0"),
            ("", "restarted replica serving again after", f"{time.monotonic() - restarted:.1f} s",
             "≈ fail_timeout (10 s)")]


async def concurrent_burst(fleet: LoopbackFleet, model: str) -> None:
    async with client(fleet) as session:
        await asyncio.gather(*(chat(session, fleet.lb_url, model, 4) for _ in range(12)))
    await asyncio.sleep(0.5)


def hung_replica(fleet: LoopbackFleet, model: str) -> list[Row]:
    replica = fleet.replicas_of(DEPLOYMENT)[1]

    def fault(mode: str) -> None:
        request = urllib.request.Request(f"http://{replica.address}/_emulator/faults",
                                         data=json.dumps({"mode": mode}).encode(), method="POST",
                                         headers={"Authorization": f"Bearer {fleet.options.api_key}",
                                                  "Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10).close()

    async def twelve() -> list[Outcome]:
        async with client(fleet) as session:
            return list(await asyncio.gather(*(chat(session, fleet.lb_url, model, 8) for _ in range(12))))
    fault("hang")
    started = time.monotonic()
    outcomes = asyncio.run(twelve())
    elapsed = time.monotonic() - started
    fault("none")
    cut = [o for o in outcomes if not o.ok]
    return [("one replica hung (accepts, never answers)", "requests cut off / answered",
             f"{len(cut)} / {len(outcomes) - len(cut)}", "cut by proxy_read_timeout"),
            ("", "cut off after", f"{elapsed:.1f} s", "rendered read timeout: 60 s")]


def main() -> int:
    plan = plan_stack(load_stack(Project(FIXTURE), STACK))
    [chat_plan] = [d for d in plan.deployments if d.deployment.name == DEPLOYMENT]
    model = chat_plan.profile.resolved_served_name
    console = Console()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gpufleet-e2e-") as folder, \
            LoopbackFleet(plan, FIXTURE, Path(folder), LoopbackOptions(monitoring=False)) as fleet:
        console.print(f"loopback fleet of {STACK}: LB {fleet.lb_url}, "
                      f"{len(fleet.replicas_of(DEPLOYMENT))} emulated {DEPLOYMENT} replicas")
        rows += lb_overhead(fleet, model)
        before = served(fleet)
        rows += bench_vs_plan(fleet, Path(folder))
        rows += spread(fleet, before)
        rows += concurrent_streams(fleet, model)
        rows += killed_replica(fleet, model)
        rows += hung_replica(fleet, model)
    table = Table(title="gpufleet data plane on loopback")
    for column in ("scenario", "measure", "value", "expected / reference"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
