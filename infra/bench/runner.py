"""Drive the load: an open loop (Poisson arrivals at a fixed rate) or a closed loop (N clients, zero think time).

The open loop never waits for responses: a slow server makes requests pile up, as real traffic would, so the
connection pool is unbounded. The closed loop sends a client's next request the moment its previous one
ended (``vllm bench serve --max-concurrency`` without a rate), so exactly N requests are in flight.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp

from infra.bench.client import Api, Outcome, Unreachable, preflight, request_body, send
from infra.bench.workload import LengthSource, poisson_gaps, synthetic_prompt

Mode = Literal["poisson", "concurrency"]


# Tokens a chat template adds around one user message (Llama 3: begin-of-text, user and assistant headers,
# end-of-turn: 10; Qwen 2.5 with its default system prompt: more). 16 covers the usual templates without
# a tokenizer at hand; the server's usage.prompt_tokens is what gets recorded.
CHAT_TEMPLATE_TOKENS = 16


@dataclass(frozen=True)
class BenchConfig:
    base_url: str
    """Scheme, host, port and any path prefix before ``/v1`` (e.g. ``http://lb:8080/support``)."""
    model: str | None
    """None: the first model GET /v1/models lists."""
    api: Api
    stream: bool
    mode: Mode
    rate: float | None
    concurrency: int | None
    requests: int | None
    duration_s: float | None
    lengths: LengthSource
    timeout_s: float = 600.0
    connect_timeout_s: float = 10.0
    api_key: str | None = None
    seed: int = 0
    verify_tls: bool = True


@dataclass(frozen=True)
class RunResult:
    model: str
    outcomes: list[Outcome]
    """In the order the requests were created (send order for the open loop)."""
    started_at: datetime
    duration_s: float
    """From the first send to the last response."""


def _session(config: BenchConfig) -> aiohttp.ClientSession:
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    # limit=0: no pool limit for the open loop (a limit would silently turn it into a closed loop); the closed
    # loop never has more than N requests out, so N connections suffice.
    limit = (config.concurrency or 0) if config.mode == "concurrency" else 0
    return aiohttp.ClientSession(
        headers=headers,
        # ssl=False skips certificate checks (--insecure); True is aiohttp's default verification.
        connector=aiohttp.TCPConnector(limit=limit, ssl=config.verify_tls),
        timeout=aiohttp.ClientTimeout(total=config.timeout_s, sock_connect=config.connect_timeout_s),
    )


async def run(config: BenchConfig, on_done: Callable[[Outcome], None] | None = None) -> RunResult:
    """Check the endpoint (raises :class:`Unreachable`), then run the load and return every outcome."""
    async with _session(config) as session:
        names = await preflight(session, config.base_url, config.connect_timeout_s)
        model = config.model or (names[0] if names else None)
        if model is None:
            raise Unreachable(f"{config.base_url}/v1/models lists no model; name one with --model")
        prompts = random.Random(config.seed + 1)  # its own stream: the arrival pattern depends on the seed only
        outcomes: dict[int, Outcome] = {}
        t0 = time.perf_counter()
        started_at = datetime.now(UTC)

        def prepare(index: int) -> tuple[Outcome, dict[str, Any]]:
            n_in, n_out = config.lengths(index)
            # The chat template wraps the message in role markers the server counts as prompt tokens: leave
            # them room, or a draw at max_model_len (prompt + max_tokens) is refused with a 400.
            words = max(1, n_in - CHAT_TEMPLATE_TOKENS) if config.api == "chat" else n_in
            body = request_body(config.api, model, synthetic_prompt(words, prompts, index), n_out, config.stream)
            return Outcome(sent_s=0.0, requested_input=n_in, requested_output=n_out), body

        async def one(index: int, outcome: Outcome, body: dict[str, Any]) -> None:
            outcomes[index] = outcome
            outcome.sent_s = time.perf_counter() - t0
            await send(session, config.base_url, config.api, body, outcome)
            if on_done is not None:
                on_done(outcome)

        if config.mode == "poisson":
            assert config.rate is not None
            await _open_loop(config, config.rate, t0, prepare, one)
        else:
            assert config.concurrency is not None
            await _closed_loop(config, config.concurrency, t0, prepare, one)
        duration = time.perf_counter() - t0
    return RunResult(model, [outcomes[i] for i in sorted(outcomes)], started_at, duration)


Prepare = Callable[[int], tuple[Outcome, dict[str, Any]]]
One = Callable[[int, Outcome, dict[str, Any]], Any]


async def _open_loop(config: BenchConfig, rate: float, t0: float, prepare: Prepare, one: One) -> None:
    """Poisson arrivals, the first at t=0, gaps from ``random.Random(seed)`` as the planner's ``poisson``."""
    rng = random.Random(config.seed)
    tasks: list[asyncio.Task[Any]] = []
    at = 0.0
    for index in itertools.count():
        if config.requests is not None and index >= config.requests:
            break
        if config.duration_s is not None and at >= config.duration_s:
            break
        outcome, body = prepare(index)  # before the wait: building a long prompt must not delay the send
        delay = t0 + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index, outcome, body)))
        at += poisson_gaps(rate, rng)
    await asyncio.gather(*tasks)


async def _closed_loop(config: BenchConfig, clients: int, t0: float, prepare: Prepare, one: One) -> None:
    """``clients`` loops; each sends its next request as soon as the previous one ended. New requests stop at
    ``--requests`` or after ``--duration``; the ones in flight then finish."""
    counter = itertools.count()
    stop = t0 + config.duration_s if config.duration_s is not None else None

    async def client() -> None:
        while True:
            if stop is not None and time.perf_counter() >= stop:
                return
            index = next(counter)
            if config.requests is not None and index >= config.requests:
                return
            await one(index, *prepare(index))

    await asyncio.gather(*(client() for _ in range(clients)))
