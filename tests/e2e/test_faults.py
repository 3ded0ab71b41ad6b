"""Faults on the loopback fleet (tests/e2e/fixture): a replica killed mid-load, and a hung replica.

These take minutes of wall-clock time because the rendered timings are real: the backend-down alert waits
`for: 2m` and Alertmanager groups warnings for 1 m; the LB's read timeout is 60 s. Each test runs its own
fleet in its own xdist group, so the two run side by side with the rest of the suite.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from infra.bench.client import Outcome
from infra.emulate.loopback import LoopbackFleet
from tests.e2e import services
from tests.e2e.dataplane import errors, loopback_fleet, many, model_of, one, served_counts, session, set_fault

ALERT_TIMEOUT_S = 300
LOAD_RATE = 20  # requests/s through the LB
LOAD_S = 12.0
KILL_AT_S = 4.0


@pytest.fixture(scope="module")
def webhook() -> Iterator[services.WebhookReceiver]:
    with services.WebhookReceiver() as receiver:
        yield receiver


async def open_loop(fleet: LoopbackFleet, model: str, on_start: float) -> list[Outcome]:
    """Poisson-free steady load: one request every 1/LOAD_RATE s for LOAD_S s, each streaming 64 tokens."""
    async with session(fleet) as client:
        tasks = []
        for index in range(int(LOAD_RATE * LOAD_S)):
            delay = on_start + index / LOAD_RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(client, fleet.lb_url, model, max_tokens=64,
                                                 sent_s=time.monotonic() - on_start)))
        return list(await asyncio.gather(*tasks))


@pytest.mark.xdist_group("faults-kill")
def test_a_killed_replica_costs_only_its_streams_pages_and_rejoins(
        tmp_path_factory: pytest.TempPathFactory, webhook: services.WebhookReceiver) -> None:
    with loopback_fleet(tmp_path_factory.mktemp("kill"), webhook_url=webhook.url) as fleet:
        fleet.wait_for_targets()
        model = model_of(fleet, "chat")
        start = time.monotonic()
        killer = threading.Timer(KILL_AT_S, fleet.kill_replica, args=("chat", 0))
        killer.start()
        outcomes = asyncio.run(open_loop(fleet, model, start))
        killer.join()
        failed = [o for o in outcomes if not o.ok]
        print(f"{len(outcomes)} requests, {len(failed)} failed: {errors(outcomes)} "
              f"(sent at {[round(o.sent_s, 2) for o in failed]} s; kill at {KILL_AT_S} s)")
        # Only streams the killed replica was serving fail (Nginx cannot retry once bytes went out);
        # requests sent after the kill go on to the next replica (proxy_next_upstream error).
        assert all(KILL_AT_S - 5 <= o.sent_s <= KILL_AT_S + 0.5 for o in failed)
        assert {o.error for o in failed} <= {"stream_cut", "http_5xx"}
        assert len(failed) <= len(outcomes) // 10

        def backend_down() -> bool:
            return any(a["labels"]["alertname"] == "GpufleetBackendDown" and a["status"] == "firing"
                       and a["labels"]["deployment"] == "chat" for a in webhook.alerts())
        services.wait_until(backend_down, ALERT_TIMEOUT_S, "GpufleetBackendDown at the webhook", interval_s=2)

        fleet.restart_replica("chat", 0)

        def rejoined() -> bool:  # Nginx tries the replica again once fail_timeout (10 s) has passed
            assert errors(asyncio.run(many(fleet, model, 30, concurrency=6))) == {}
            return served_counts(fleet, "chat")[0] > 0  # a new process: its counters start at 0
        services.wait_until(rejoined, 60, "the restarted replica serving again", interval_s=1)


@pytest.mark.xdist_group("faults-hang")
def test_a_hung_replica_is_cut_off_by_the_read_timeout(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A replica that accepts connections and never answers: the LB's proxy_read_timeout (rendered: 60 s
    for this stack) ends the requests it holds with a JSON 5xx; the other replicas answer meanwhile."""
    with loopback_fleet(tmp_path_factory.mktemp("hang"), monitoring=False) as fleet:
        model = model_of(fleet, "chat")
        set_fault(fleet, "chat", 1, {"mode": "hang"})
        before = served_counts(fleet, "chat")

        async def load() -> list[Outcome]:
            async with session(fleet, timeout_s=180) as client:
                return list(await asyncio.gather(*(one(client, fleet.lb_url, model, max_tokens=8)
                                                   for _ in range(12))))
        started = time.monotonic()
        outcomes = asyncio.run(load())
        elapsed = time.monotonic() - started
        cut = [o for o in outcomes if not o.ok]
        served = [after - b for after, b in zip(served_counts(fleet, "chat"), before, strict=True)]
        print(f"{len(cut)} of {len(outcomes)} cut off ({errors(outcomes)}), served per replica {served}, "
              f"{elapsed:.1f} s")
        assert cut, "no request reached the hung replica"
        assert {o.error for o in cut} == {"http_5xx"}
        assert served[1] == 0 and sum(served) == len(outcomes) - len(cut)
        assert 55 <= elapsed <= 90  # the read timeout, not the client's own 180 s
        set_fault(fleet, "chat", 1, {"mode": "none"})
