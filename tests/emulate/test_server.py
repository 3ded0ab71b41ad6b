"""The emulator's HTTP API over real loopback sockets (aiohttp client): OpenAI streaming and non-streaming
bodies, vLLM's errors and API-key rule, the model listing, /metrics consistent with the requests served, and
client disconnects."""

from __future__ import annotations

import asyncio
import csv
import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from infra.emulate.faults import FaultPlan
from infra.emulate.server import Emulator
from infra.plan.optimize import DeploymentPlan
from infra.render.vllm import VLLM_VERSION

ROOT = Path(__file__).resolve().parents[2]
METRICS_TSV = ROOT.parent / "shared" / "reference" / "vllm-0.33-metrics.tsv"
KEY = "sk-emulated-test-key"
FAST = 0.01  # time_scale: a 60 ms L4 step takes 0.6 ms


@asynccontextmanager
async def serving(plan: DeploymentPlan, *, time_scale: float = FAST, api_key: str | None = None,
                  faults: FaultPlan | None = None) -> AsyncIterator[tuple[Emulator, aiohttp.ClientSession]]:
    emulator = Emulator.for_deployment(plan, time_scale=time_scale, api_key=api_key, faults=faults)
    url = await emulator.start("127.0.0.1", 0)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with aiohttp.ClientSession(url, headers=headers) as session:
            yield emulator, session
    finally:
        await emulator.stop()


async def sse_events(resp: aiohttp.ClientResponse, loop: asyncio.AbstractEventLoop) -> list[tuple[float, str]]:
    """(arrival time, data) of every server-sent event, in order."""
    events: list[tuple[float, str]] = []
    buffer = b""
    async for chunk in resp.content.iter_any():
        buffer += chunk
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            assert event.startswith(b"data: "), event
            events.append((loop.time(), event[len(b"data: "):].decode()))
    assert buffer == b""
    return events


def scrape(text: str) -> dict[str, list[Sample]]:
    samples: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    matching = [s.value for s in samples[name] if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(matching) == 1, (name, labels, samples.get(name))
    return matching[0]


# -------------------------------------------------------------------------------------------- completions


def test_stream_arrives_token_by_token_with_usage_and_done(dev_chat: DeploymentPlan) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        async with serving(dev_chat, time_scale=0.05) as (_, http):
            body = {"model": "qwen2.5-7b-instruct", "messages": [{"role": "user", "content": "word " * 100}],
                    "max_tokens": 20, "stream": True, "stream_options": {"include_usage": True}}
            async with http.post("/v1/chat/completions", json=body) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                events = await sse_events(resp, loop)
        assert events[-1][1] == "[DONE]"
        chunks = [json.loads(data) for _, data in events[:-1]]
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        tokens = [c for c in chunks[1:] if c["choices"]]
        assert len(tokens) == 20 and all(c["object"] == "chat.completion.chunk" for c in tokens)
        assert [c["choices"][0]["finish_reason"] for c in tokens] == [None] * 19 + ["length"]
        assert all(c["choices"][0]["delta"]["content"] for c in tokens)
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"] == {"prompt_tokens": 100 + 4 + 3, "completion_tokens": 20, "total_tokens": 127,
                                       "prompt_tokens_details": None}
        # Incremental: a ~60 ms L4 decode step at time_scale 0.05 is ~3 ms; 19 gaps span well over 20 ms.
        token_times = [t for (t, data) in events[1:21]]
        assert token_times[-1] - token_times[0] > 0.02
        assert len({round(t, 4) for t in token_times}) > 10

    asyncio.run(scenario())


def test_non_streaming_bodies_and_lengths(dev_chat: DeploymentPlan) -> None:
    async def scenario() -> None:
        async with serving(dev_chat) as (_, http):
            async with http.post("/v1/completions", json={"prompt": list(range(77)), "max_tokens": 9}) as resp:
                doc = await resp.json()
            assert resp.status == 200 and doc["object"] == "text_completion"
            assert doc["model"] == "qwen2.5-7b-instruct"
            assert doc["usage"] == {"prompt_tokens": 77, "completion_tokens": 9, "total_tokens": 86,
                                    "prompt_tokens_details": None}
            assert doc["choices"][0]["finish_reason"] == "length" and len(doc["choices"][0]["text"].split()) == 9
            # No max_tokens: the emulated model stops after the deployment's mean output length (200).
            body = {"messages": [{"role": "user", "content": "hello"}], "max_completion_tokens": None}
            async with http.post("/v1/chat/completions", json=body) as resp:
                doc = await resp.json()
            assert doc["choices"][0]["finish_reason"] == "stop"
            assert doc["choices"][0]["message"]["role"] == "assistant"
            assert doc["usage"]["completion_tokens"] == 200
            async with http.post("/v1/completions", json={"prompt": " ".join(["abcd"] * 10), "max_completion_tokens": 5,
                                                          "max_tokens": 3, "ignore_eos": True}) as resp:
                doc = await resp.json()
            assert doc["usage"]["prompt_tokens"] == 10 and doc["usage"]["completion_tokens"] == 3

    asyncio.run(scenario())


def test_errors_in_vllm_format(dev_chat: DeploymentPlan) -> None:
    async def scenario() -> None:
        async with serving(dev_chat) as (emulator, http):
            async with http.post("/v1/completions", json={"model": "gpt-4", "prompt": "hi"}) as resp:
                assert resp.status == 404
                assert await resp.json() == {"error": {"message": "The model `gpt-4` does not exist.",
                                                       "type": "NotFoundError", "param": "model", "code": 404}}
            too_long = {"prompt": list(range(32000)), "max_tokens": 1000}
            async with http.post("/v1/completions", json=too_long) as resp:
                assert resp.status == 400
                error = (await resp.json())["error"]
            assert error["type"] == "BadRequestError" and error["code"] == 400
            assert "maximum context length is 32768 tokens" in error["message"] and "33000" in error["message"]
            async with http.post("/v1/completions", data=b"{not json") as resp:
                assert resp.status == 400 and (await resp.json())["error"]["code"] == 400
            async with http.post("/v1/chat/completions", json={"messages": []}) as resp:
                assert resp.status == 400 and (await resp.json())["error"]["param"] == "messages"
            async with http.post("/v1/completions", json={"prompt": "hi", "n": 2}) as resp:
                assert resp.status == 400
            async with http.get("/metrics") as resp:
                samples = scrape(await resp.text())
            assert value(samples, "vllm:admission_rejections_total", reason="max_model_len_exceeded") == 1
            assert emulator.engine.steps == 0  # nothing reached the engine

    asyncio.run(scenario())


def test_api_key_protects_v1_only(dev_chat: DeploymentPlan) -> None:
    async def scenario() -> None:
        async with serving(dev_chat, api_key=KEY) as (emulator, http):
            async with http.get("/v1/models") as resp:
                assert resp.status == 200
            async with aiohttp.ClientSession(emulator.url) as anonymous:
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
                    async with anonymous.post("/v1/completions", json={"prompt": "hi"}, headers=headers) as resp:
                        assert resp.status == 401
                        assert await resp.json() == {"error": "Unauthorized"}
                for path in ("/metrics", "/health", "/ping", "/version"):
                    async with anonymous.get(path) as resp:
                        assert resp.status == 200, path
                async with anonymous.post("/_emulator/faults", json={"mode": "crash"}) as resp:
                    assert resp.status == 401  # the test hook needs the key too
            assert emulator.faults.mode == "none"

    asyncio.run(scenario())


def test_models_health_version_load(staging_support: DeploymentPlan) -> None:
    async def scenario() -> None:
        async with serving(staging_support) as (_, http):
            async with http.get("/v1/models") as resp:
                listing = await resp.json()
            assert listing["object"] == "list"
            cards = {c["id"]: c for c in listing["data"]}
            assert list(cards) == ["support-chat", "support-chat-billing", "support-chat-devices"]
            base = cards["support-chat"]
            assert (base["owned_by"], base["parent"], base["max_model_len"]) == ("vllm", None, 8192)
            assert base["root"] == "s3://acme-ml-models/support-chat-8b/v3/"
            assert cards["support-chat-billing"]["parent"] == "support-chat"
            assert cards["support-chat-billing"]["root"].endswith("/adapters/billing-v2/")
            assert cards["support-chat-billing"]["permission"][0]["object"] == "model_permission"
            async with http.post("/v1/completions", json={"model": "support-chat-devices", "prompt": "hi",
                                                          "max_tokens": 2}) as resp:
                assert resp.status == 200 and (await resp.json())["model"] == "support-chat-devices"
            async with http.get("/health") as resp:
                assert resp.status == 200 and await resp.text() == ""
            async with http.post("/ping") as resp:
                assert resp.status == 200
            async with http.get("/version") as resp:
                assert await resp.json() == {"version": VLLM_VERSION}
            async with http.get("/load") as resp:
                assert await resp.json() == {"server_load": 0}
            async with http.get("/metrics") as resp:
                samples = scrape(await resp.text())
            info = samples["vllm:cache_config_info"][0].labels
            assert info["cache_dtype"] == "fp8" and info["engine"] == "0" and info["block_size"] == "16"
            lora = samples["vllm:lora_requests_info"]
            assert {s.labels["running_lora_adapters"] for s in lora} >= {"", "support-chat-devices"}

    asyncio.run(scenario())


# -------------------------------------------------------------------------------------------- metrics


def pinned_default_families() -> list[tuple[str, str, tuple[str, ...], tuple[str, ...]]]:
    with METRICS_TSV.open(encoding="utf-8") as f:
        return [(row["name"], row["type"], tuple(row["labels"].split(",")), tuple(row["exposed_samples"].split(",")))
                for row in csv.DictReader(f, delimiter="\t") if row["default"] == "True"]


def test_metrics_follow_the_requests_served(dev_chat: DeploymentPlan) -> None:
    lengths = [(list(range(50 + 13 * i)), 5 + 3 * i) for i in range(8)]

    async def one(http: aiohttp.ClientSession, prompt: list[int], max_tokens: int, stream: bool) -> dict[str, Any]:
        body = {"prompt": prompt, "max_tokens": max_tokens, "stream": stream,
                "stream_options": {"include_usage": True}}
        async with http.post("/v1/completions", json=body) as resp:
            assert resp.status == 200
            if not stream:
                return dict(await resp.json())
            events = await sse_events(resp, asyncio.get_running_loop())
            return dict(json.loads(events[-2][1]))  # the usage chunk

    async def scenario() -> tuple[str, list[dict[str, Any]]]:
        async with serving(dev_chat) as (emulator, http):
            docs = await asyncio.gather(*(one(http, p, m, i % 2 == 0) for i, (p, m) in enumerate(lengths)))
            async with http.get("/metrics", headers={"Accept": "text/plain"}) as resp:
                assert resp.headers["Content-Type"].startswith("text/plain")
                text = await resp.text()
            assert emulator.engine.num_running == 0
        return text, list(docs)

    text, docs = asyncio.run(scenario())
    assert "vllm:generation_tokens_total{" in text  # colons intact (prometheus_client 0.22.1)
    samples = scrape(text)
    model = {"model_name": "qwen2.5-7b-instruct", "engine": "0"}
    for name, kind, labels, exposed in pinned_default_families():
        for sample_name in exposed:
            assert sample_name in samples, (name, sample_name)
        extra = set(labels) - {"(CacheConfig fields)"}
        for sample in samples[exposed[0]]:
            assert extra <= set(sample.labels), (name, sample.labels)
        assert kind in ("counter", "gauge", "histogram")
    completion = sum(d["usage"]["completion_tokens"] for d in docs)
    prompt = sum(d["usage"]["prompt_tokens"] for d in docs)
    assert completion == sum(m for _, m in lengths)
    assert value(samples, "vllm:generation_tokens_total", **model) == completion
    assert value(samples, "vllm:prompt_tokens_total", **model) == prompt
    assert value(samples, "vllm:prompt_tokens_by_source_total", **model, source="local_compute") == prompt
    assert value(samples, "vllm:request_success_total", **model, finished_reason="length") == len(lengths)
    for reason in ("stop", "abort", "error"):
        assert value(samples, "vllm:request_success_total", **model, finished_reason=reason) == 0
    for hist in ("e2e_request_latency_seconds", "time_to_first_token_seconds", "request_queue_time_seconds",
                 "request_prompt_tokens", "request_generation_tokens", "request_params_max_tokens"):
        assert value(samples, f"vllm:{hist}_count", **model) == len(lengths), hist
    assert value(samples, "vllm:request_generation_tokens_sum", **model) == completion
    assert value(samples, "vllm:request_prompt_tokens_sum", **model) == prompt
    assert value(samples, "vllm:inter_token_latency_seconds_count", **model) == completion - len(lengths)
    # Every computed token went through an engine step: prompts once (no preemption here) + generated ones
    # except each request's last (sampled, never fed back).
    assert value(samples, "vllm:iteration_tokens_total_sum", **model) == prompt + completion - len(lengths)
    assert value(samples, "vllm:num_preemptions_total", **model) == 0
    assert value(samples, "vllm:num_requests_running", **model) == 0
    assert value(samples, "vllm:kv_cache_usage_perc", **model) == 0
    assert value(samples, "vllm:prefix_cache_queries_total", **model) == prompt
    assert value(samples, "vllm:prefix_cache_hits_total", **model) == 0
    assert value(samples, "vllm:estimated_flops_per_gpu_total", **model) > 0
    buckets = [s for s in samples["vllm:time_to_first_token_seconds_bucket"] if s.labels["le"] == "+Inf"]
    assert buckets[0].value == len(lengths)
    assert not any(math.isnan(s.value) for ss in samples.values() for s in ss)


def test_client_disconnect_aborts_the_request(dev_chat: DeploymentPlan) -> None:
    async def scenario() -> None:
        async with serving(dev_chat, time_scale=0.05) as (emulator, http):
            body = {"prompt": "hi", "max_tokens": 5000, "stream": True}
            async with http.post("/v1/completions", json=body) as resp:
                await resp.content.readline()  # the first token arrived
                assert emulator.engine.num_running == 1
            # Leaving the block closes the connection: the handler is cancelled, the request aborted.
            for _ in range(100):
                if emulator.engine.num_running == 0:
                    break
                await asyncio.sleep(0.01)
            assert emulator.engine.num_running == emulator.engine.num_waiting == 0
            # A non-streaming request whose client gives up (timeout) is aborted as well.
            timeout = aiohttp.ClientTimeout(total=0.2)
            with pytest.raises(asyncio.TimeoutError):
                await http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 5000}, timeout=timeout)
            for _ in range(100):
                if emulator.engine.num_running == 0:
                    break
                await asyncio.sleep(0.01)
            assert emulator.engine.num_running == 0
            async with http.get("/metrics") as resp:
                samples = scrape(await resp.text())
            assert value(samples, "vllm:request_success_total", finished_reason="abort") == 2
            generated = value(samples, "vllm:generation_tokens_total")
            assert 1 <= generated < 10000

    asyncio.run(scenario())
