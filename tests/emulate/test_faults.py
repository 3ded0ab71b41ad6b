"""Injected faults, set through the admin endpoint of an in-process emulator on a loopback port: error
rate, dropped streams, a hang, slow steps and an engine crash (the crash of the ``gpufleet emulate`` process
is in test_cli.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from infra.emulate.faults import FaultPlan
from infra.plan.optimize import DeploymentPlan
from tests.emulate.test_server import scrape, serving, value

SHORT = aiohttp.ClientTimeout(total=0.3)


async def set_faults(http: aiohttp.ClientSession, **plan: Any) -> dict[str, Any]:
    async with http.post("/_emulator/faults", json=plan) as resp:
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())


async def lines_until_silent(resp: aiohttp.ClientResponse, quiet_s: float) -> int:
    """Lines read until none arrives for ``quiet_s``."""
    lines = 0
    while True:
        try:
            await asyncio.wait_for(resp.content.readline(), quiet_s)
        except TimeoutError:
            return lines
        lines += 1


def test_admin_endpoint_validates_and_reports(dev_chat: DeploymentPlan) -> None:
    async def scenario() -> None:
        async with serving(dev_chat) as (emulator, http):
            async with http.get("/_emulator/faults") as resp:
                assert (await resp.json())["mode"] == "none"
            for bad in ({"mode": "explode"}, {"rate": 2}, {"slowdown": "x"}, {"colour": 1}, [1]):
                async with http.post("/_emulator/faults", json=bad) as resp:
                    assert resp.status == 400, bad
                    assert (await resp.json())["error"]["type"] == "BadRequestError"
            doc = await set_faults(http, mode="error", rate=0.25)
            assert doc == {"mode": "error", "rate": 0.25, "slowdown": 2.0, "drop_after": 1, "linger_s": 0.0}
            assert emulator.faults == FaultPlan(mode="error", rate=0.25)

    asyncio.run(scenario())


def test_error_fault_answers_500_for_a_fraction(dev_chat: DeploymentPlan) -> None:
    async def status(http: aiohttp.ClientSession) -> int:
        async with http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2}) as resp:
            if resp.status == 500:
                error = (await resp.json())["error"]
                assert error["code"] == 500 and error["type"] == "InternalServerError"
            return resp.status

    async def scenario() -> None:
        async with serving(dev_chat, faults=FaultPlan(mode="error", rate=1.0)) as (_, http):
            assert {await status(http) for _ in range(3)} == {500}
            await set_faults(http, mode="error", rate=0.5)
            statuses = [await status(http) for _ in range(40)]
            assert 8 <= statuses.count(500) <= 32 and statuses.count(200) == 40 - statuses.count(500)
            async with http.get("/metrics") as resp:
                samples = scrape(await resp.text())
            errors = 3 + statuses.count(500)
            assert value(samples, "vllm:request_success_total", finished_reason="error") == errors
            assert value(samples, "vllm:request_success_total", finished_reason="length") == 40 - statuses.count(500)

    asyncio.run(scenario())


def test_drop_fault_truncates_streams(dev_chat: DeploymentPlan) -> None:
    async def scenario() -> None:
        async with serving(dev_chat) as (emulator, http):
            await set_faults(http, mode="drop", drop_after=3)
            received = b""
            with pytest.raises(aiohttp.ClientPayloadError):
                async with http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 50,
                                                              "stream": True}) as resp:
                    assert resp.status == 200
                    async for chunk in resp.content.iter_any():
                        received += chunk
            events = [e for e in received.split(b"\n\n") if e]
            assert len(events) == 3 and b"[DONE]" not in received
            assert [json.loads(e[6:])["choices"][0]["finish_reason"] for e in events] == [None] * 3
            with pytest.raises(aiohttp.ServerDisconnectedError):
                await http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 50})
            await set_faults(http, mode="none")
            async with http.get("/metrics") as resp:
                samples = scrape(await resp.text())
            assert value(samples, "vllm:request_success_total", finished_reason="abort") == 2
            assert emulator.engine.num_running == 0

    asyncio.run(scenario())


def test_hang_fault_never_answers_until_cleared(dev_chat: DeploymentPlan) -> None:
    async def scenario() -> None:
        async with serving(dev_chat, time_scale=0.05) as (_, http):
            stream = await http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2000, "stream": True})
            await stream.content.readline()
            await set_faults(http, mode="hang")
            for method, path, body in (("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2}),
                                       ("GET", "/health", None), ("GET", "/ping", None)):
                with pytest.raises(asyncio.TimeoutError):
                    await http.request(method, path, json=body, timeout=SHORT)
            # The engine is frozen too: beyond what was already on its way, the stream in flight gets nothing
            # (unfrozen, its 2000 tokens would keep coming every ~3 ms for 6 s).
            assert await lines_until_silent(stream, 0.3) < 20
            async with http.get("/metrics") as resp:  # the API server itself still answers
                assert resp.status == 200
            async with http.get("/v1/models") as resp:
                assert resp.status == 200
            await set_faults(http, mode="none")
            async with http.get("/health", timeout=SHORT) as resp:
                assert resp.status == 200
            assert (await asyncio.wait_for(stream.content.readline(), 1.0)).startswith(b"data: ")
            stream.close()

    asyncio.run(scenario())


def test_slow_fault_multiplies_step_time(dev_chat: DeploymentPlan) -> None:
    async def decode_seconds(http: aiohttp.ClientSession) -> float:
        loop = asyncio.get_running_loop()
        times: list[float] = []
        async with http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 41, "stream": True}) as resp:
            async for _ in resp.content:
                times.append(loop.time())
        return times[-3] - times[0]  # token 1 .. token 41 (the last two lines are [DONE] and its blank line)

    async def scenario() -> None:
        async with serving(dev_chat, time_scale=0.05) as (_, http):
            normal = await decode_seconds(http)
            await set_faults(http, mode="slow", slowdown=4)
            slow = await decode_seconds(http)
        assert slow / normal == pytest.approx(4.0, rel=0.2)

    asyncio.run(scenario())


def test_crash_fault_kills_the_engine_then_stops_accepting(dev_chat: DeploymentPlan) -> None:
    async def scenario() -> None:
        async with serving(dev_chat, time_scale=0.05) as (emulator, http):
            stream = await http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2000, "stream": True})
            await stream.content.readline()
            await set_faults(http, mode="crash", linger_s=0.5)
            async with http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}) as r:
                assert r.status == 500
                assert "EngineCore encountered an issue" in (await r.json())["error"]["message"]
            rest = await stream.content.read()  # vLLM reports the failure as one more event, then [DONE]
            assert b'"code":500' in rest and rest.endswith(b"data: [DONE]\n\n")
            async with http.get("/health") as resp:
                assert resp.status == 503
            async with http.get("/metrics") as resp:
                samples = scrape(await resp.text())
            assert value(samples, "vllm:request_success_total", finished_reason="error") == 1
            await asyncio.sleep(0.7)
            with pytest.raises(aiohttp.ClientConnectorError):
                async with aiohttp.ClientSession() as fresh:
                    await fresh.get(f"{emulator.url}/health", timeout=SHORT)

    asyncio.run(scenario())
