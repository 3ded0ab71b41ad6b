"""One request against an OpenAI-compatible server (vLLM, the Nginx LB, the emulator) and what it measured.

Streaming responses are Server-Sent Events: ``data: {json}`` events separated by blank lines, ending with
``data: [DONE]``. TTFT is the arrival of the first event that carries text (vLLM's first chat chunk only
announces the role, with empty content); every later text event gives one inter-token gap. With
``stream_options.include_usage`` the last event before ``[DONE]`` has ``usage`` and no choices.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

Api = Literal["chat", "completions"]
# Error classes, as recorded in the JSON document (``requests[].error``).
ERROR_CLASSES = ("connect", "timeout", "http_4xx", "http_5xx", "http_other", "stream_cut", "stream_error",
                 "bad_response")


@dataclass
class Outcome:
    """What one request measured; times in seconds, ``sent_s`` relative to the run's start."""

    sent_s: float
    requested_input: int
    requested_output: int
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    ttft_s: float | None = None
    e2e_s: float | None = None
    status: int | None = None
    error: str | None = None
    gaps_s: list[float] = field(default_factory=list)
    """Inter-token gaps: between consecutive text events (one event may carry several tokens)."""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def tpot_s(self) -> float | None:
        """(E2E - TTFT) / (output tokens - 1), as vLLM's benchmark defines it; None when undefined."""
        if self.ttft_s is None or self.e2e_s is None or self.output_tokens is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


def request_body(api: Api, model: str, prompt: str, max_tokens: int, stream: bool) -> dict[str, Any]:
    """The JSON body: exactly ``max_tokens`` tokens (``ignore_eos`` is a vLLM extension; OpenAI ignores it)."""
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.0,
                            "stream": stream}
    if api == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def path_of(api: Api) -> str:
    return "/v1/chat/completions" if api == "chat" else "/v1/completions"


def status_class(status: int) -> str:
    if 400 <= status < 500:
        return "http_4xx"
    if status >= 500:
        return "http_5xx"
    return "http_other"


def chunk_text(chunk: dict[str, Any]) -> str:
    """The text a streamed chunk carries (completions: ``text``; chat: ``delta.content`` or reasoning)."""
    out = []
    for choice in chunk.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        text = choice.get("text")
        delta = choice.get("delta")
        if isinstance(delta, dict):
            text = delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(text, str):
            out.append(text)
    return "".join(out)


async def sse_events(content: aiohttp.StreamReader) -> AsyncIterator[str]:
    """The ``data`` payloads of an SSE stream (multi-line data joined with newlines, comments skipped)."""
    data: list[str] = []
    async for raw in content:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        # other fields (event:, id:, retry:) and ":" comments carry nothing we measure
    if data:
        yield "\n".join(data)


def _usage(document: dict[str, Any], outcome: Outcome) -> None:
    usage = document.get("usage")
    if isinstance(usage, dict):
        if isinstance(usage.get("prompt_tokens"), int):
            outcome.prompt_tokens = usage["prompt_tokens"]
        if isinstance(usage.get("completion_tokens"), int):
            outcome.output_tokens = usage["completion_tokens"]


async def _read_stream(response: aiohttp.ClientResponse, outcome: Outcome, start: float) -> None:
    """Fill ``outcome`` from an SSE body; sets ``error`` for a cut stream or an error event."""
    events = 0
    last: float | None = None
    done = False
    async for payload in sse_events(response.content):
        now = time.perf_counter()
        if payload.strip() == "[DONE]":
            done = True
            break
        try:
            chunk = json.loads(payload)
        except json.JSONDecodeError:
            outcome.error = "bad_response"
            return
        if not isinstance(chunk, dict):
            outcome.error = "bad_response"
            return
        if "error" in chunk:  # vLLM reports a failure after the 200 header as an error event
            outcome.error = "stream_error"
            return
        _usage(chunk, outcome)
        if chunk_text(chunk):
            events += 1
            if last is None:
                outcome.ttft_s = now - start
            else:
                outcome.gaps_s.append(now - last)
            last = now
    if not done:
        outcome.error = "stream_cut"
        return
    outcome.e2e_s = time.perf_counter() - start
    if outcome.output_tokens is None:
        outcome.output_tokens = events  # no usage event: one token per text event (vLLM streams them so)


async def send(
    session: aiohttp.ClientSession,
    base_url: str,
    api: Api,
    body: dict[str, Any],
    outcome: Outcome,
) -> Outcome:
    """Send one request and fill ``outcome``; never raises for network or server failures."""
    start = time.perf_counter()
    try:
        async with session.post(base_url + path_of(api), json=body) as response:
            outcome.status = response.status
            if response.status != 200:
                await response.read()
                outcome.error = status_class(response.status)
                return outcome
            try:
                if body.get("stream"):
                    await _read_stream(response, outcome, start)
                else:
                    document = await response.json(content_type=None)
                    outcome.e2e_s = time.perf_counter() - start
                    if not isinstance(document, dict) or "choices" not in document:
                        outcome.error = "bad_response"
                    else:
                        _usage(document, outcome)
            except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, ConnectionResetError):
                outcome.error = "stream_cut"
            except (json.JSONDecodeError, UnicodeDecodeError):
                outcome.error = "bad_response"
    except TimeoutError:  # aiohttp's timeouts are asyncio.TimeoutError, i.e. TimeoutError since 3.11
        outcome.error = "timeout"
    except aiohttp.ClientResponseError as exc:
        outcome.status = exc.status or outcome.status
        outcome.error = "bad_response"
    except (aiohttp.ClientError, OSError):
        # No response yet: refused, DNS, TLS, or the server hung up before answering.
        outcome.error = "connect" if outcome.status is None else "stream_cut"
    if outcome.error is not None:
        outcome.ttft_s = outcome.e2e_s = None
    return outcome


class Unreachable(Exception):
    """The endpoint cannot be used at all (before any request): the message is for the user."""


async def preflight(session: aiohttp.ClientSession, base_url: str, timeout_s: float) -> list[str]:
    """GET /v1/models: that the endpoint answers at all, and the model names it serves (maybe none).

    Raises :class:`Unreachable` when nothing answers or the API key is refused; any other answer (404 from a
    server without /v1/models, say) counts as reachable, with no names.
    """
    try:
        async with session.get(base_url + "/v1/models", timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            if response.status in (401, 403):
                raise Unreachable(f"{base_url} refused the API key (HTTP {response.status}); give --api-key or set "
                                  "GPUFLEET_API_KEY / OPENAI_API_KEY")
            if response.status != 200:
                return []
            document = await response.json(content_type=None)
    except TimeoutError:
        raise Unreachable(f"{base_url} did not answer GET /v1/models within {timeout_s:g} s") from None
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        raise Unreachable(f"cannot reach {base_url}: {exc}") from None
    data = document.get("data") if isinstance(document, dict) else None
    return [m["id"] for m in data or () if isinstance(m, dict) and isinstance(m.get("id"), str)]
