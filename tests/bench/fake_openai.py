"""A fake OpenAI-compatible server on loopback for the bench tests, run in a thread with its own event loop
(so both ``asyncio.run`` inside the CLI and plain test code can talk to it).

Streaming answers mimic vLLM: a role-only chat chunk at once (empty content), the first token after
``ttft_s``, one token per event every ``token_s``, a usage event, ``[DONE]``. ``fail(i)`` picks a
misbehaviour for the i-th request: ``500``, ``400``, ``cut`` (connection dropped mid-stream), ``hang``
(never answers), ``error_event`` (an error event after the 200), ``no_usage``, ``bad_json``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

MODEL = "fake-model"


@dataclass
class Behaviour:
    ttft_s: float = 0.0
    token_s: float = 0.0
    fail: Callable[[int], str | None] = lambda _i: None
    crlf: bool = False


@dataclass
class Record:
    index: int
    arrived: float
    in_flight: int
    body: dict[str, Any]
    headers: dict[str, str]
    token_times: list[float] = field(default_factory=list)
    """When each content event was written (perf_counter: the tests share the process's clock)."""


@dataclass
class FakeOpenAI:
    behaviour: Behaviour = field(default_factory=Behaviour)
    records: list[Record] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    changes: list[tuple[float, int]] = field(default_factory=list)
    """(time, requests in flight from then on), at every arrival and departure."""
    url: str = ""

    # ----------------------------------------------------------------------------------- handlers
    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        index = len(self.records)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.changes.append((time.perf_counter(), self.in_flight))
        record = Record(index, time.perf_counter(), self.in_flight, body, dict(request.headers))
        self.records.append(record)
        counted = [True]

        def leave() -> None:
            if counted[0]:
                self.in_flight -= 1
                self.changes.append((time.perf_counter(), self.in_flight))
                counted[0] = False

        try:
            return await self._answer(request, record, self.behaviour.fail(index), leave)
        finally:
            leave()

    async def _answer(
        self, request: web.Request, record: Record, action: str | None, leave: Callable[[], None]
    ) -> web.StreamResponse:
        b, body = self.behaviour, record.body
        if action == "500":
            return web.json_response({"error": {"message": "boom"}}, status=500)
        if action == "400":
            return web.json_response({"error": {"message": "bad"}}, status=400)
        if action == "hang":
            await asyncio.sleep(3)
            return web.json_response({}, status=504)
        chat = request.path.endswith("/chat/completions")
        prompt = body["messages"][0]["content"] if chat else body["prompt"]
        prompt_tokens = len(prompt.split()) + (7 if chat else 0)  # a fake chat template
        n = int(body["max_tokens"])
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}
        if not body.get("stream"):
            await asyncio.sleep(b.ttft_s + b.token_s * (n - 1))
            choice = {"index": 0, "message": {"role": "assistant", "content": "x " * n}} if chat else {
                "index": 0, "text": "x " * n}
            return web.json_response({"id": "c", "choices": [choice], "usage": usage})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        end = "\r\n" if b.crlf else "\n"

        async def event(payload: Any) -> None:
            text = payload if isinstance(payload, str) else json.dumps(payload)
            await response.write(f"data: {text}{end}{end}".encode())

        if chat:
            await event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        await response.write(f": a comment line{end}{end}".encode())
        await asyncio.sleep(b.ttft_s)
        for k in range(n):
            if k:
                await asyncio.sleep(b.token_s)
            if action == "cut" and k == n // 2:
                assert request.transport is not None
                request.transport.close()  # the connection drops mid-stream (a crashed replica)
                return response
            if action == "error_event" and k == n // 2:
                await event({"error": {"message": "engine died", "code": 500}})
                await event("[DONE]")
                return response
            if action == "bad_json" and k == n // 2:
                await event("{not json")
            piece = {"index": 0, "delta": {"content": "x "}} if chat else {"index": 0, "text": "x "}
            record.token_times.append(time.perf_counter())
            await event({"choices": [piece]})
        if action != "no_usage":
            await event({"choices": [], "usage": usage})
        leave()  # before [DONE]: a closed-loop client cannot have sent its next request yet
        await event("[DONE]")
        await response.write_eof()
        return response

    # ----------------------------------------------------------------------------------- lifecycle
    def start(self) -> FakeOpenAI:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.completions)
        self._loop = asyncio.new_event_loop()
        # handler_cancellation: a hanging handler ends when the client gives up (so shutdown is quick).
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            self._loop.run_until_complete(site.start())
            host, port = self._runner.addresses[0][:2]
            self.url = f"http://{host}:{port}"
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        assert ready.wait(5)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def reset(self, behaviour: Behaviour | None = None) -> None:
        self.behaviour = behaviour or Behaviour()
        self.records = []
        self.changes = []
        self.in_flight = self.max_in_flight = 0
