"""An emulated replica of every catalog engine: its health, readiness and metrics paths, its catalog signals
under its own names and labels (and nothing of vLLM's), with values that follow the requests it served, and
pages that real promtool reads."""

from __future__ import annotations

import asyncio
import dataclasses

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from infra.catalog import load_catalog
from infra.catalog.schema import ENGINE_SIGNALS, EngineSignal, InferenceEngine
from infra.emulate.metrics import ReplicaMetrics
from infra.emulate.server import Emulator
from infra.emulate.signals import (
    ENGINE_SERIES_LABELS,
    FINISHED_REASON,
    SIGNAL_SOURCES,
    EngineSignalMetrics,
    signal_labels,
)
from infra.plan.optimize import DeploymentPlan
from tests.engine_metrics import assert_catalog_page, promtool_problems

ENGINES = tuple(load_catalog().engines)
FAST = 0.01
REQUESTS = 4
MAX_TOKENS = 5


def on_engine(plan: DeploymentPlan, engine: str) -> DeploymentPlan:
    """The same planned replica, its profile run by ``engine``."""
    return dataclasses.replace(plan, profile=plan.profile.model_copy(update={"engine": engine}))


async def served_then_scraped(plan: DeploymentPlan, engine: InferenceEngine) -> tuple[Emulator, dict[str, int], str]:
    """Serve REQUESTS completions, then GET every path of interest; returns statuses and the metrics page."""
    emulator = Emulator.for_deployment(plan, time_scale=FAST)
    url = await emulator.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession(url) as http:
            for i in range(REQUESTS):
                body = {"model": plan.profile.resolved_served_name, "prompt": "word " * 50,
                        "max_tokens": MAX_TOKENS, "stream": bool(i % 2)}
                async with http.post("/v1/completions", json=body) as resp:
                    assert resp.status == 200
                    await resp.read()
            statuses = {}
            ready = engine.health.ready_for(plan.profile.resolved_served_name)
            paths = {engine.health.path, ready, "/metrics", "/prometheus/metrics", "/ping"}
            for path in paths:
                async with http.get(path) as resp:
                    statuses[path] = resp.status
            text = ""
            if engine.metrics.path is not None:
                async with http.get(engine.metrics.path) as resp:
                    text = await resp.text()
    finally:
        await emulator.stop()
    return emulator, statuses, text


def test_the_signal_table_covers_every_signal_and_the_catalog_kinds() -> None:
    assert set(SIGNAL_SOURCES) == set(ENGINE_SIGNALS)
    for engine in load_catalog().engines.values():
        for signal, metric in engine.metrics.signals.items():
            assert metric.kind == SIGNAL_SOURCES[signal].kind, (engine.name, signal)
            assert set(signal_labels(metric)) <= {FINISHED_REASON}
    # The constant labels come from the catalog's notes: SGLang's metrics source names them.
    sglang = load_catalog().engines["sglang"].metrics.source.note or ""
    assert all(label in sglang for label, _ in ENGINE_SERIES_LABELS["sglang"])
    assert set(ENGINE_SERIES_LABELS) <= set(ENGINES)


def assert_values_follow_the_requests(engine: InferenceEngine, text: str) -> None:
    """The same events feed every engine's names: the counts match the REQUESTS served."""
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]

    def total(metric_name: str, **labels: str) -> float:
        return sum(s.value for s in samples if s.name == metric_name and labels.items() <= s.labels.items())

    signals = engine.metrics.signals
    if "generation_tokens" in signals:
        assert total(signals["generation_tokens"].sample()) == REQUESTS * MAX_TOKENS
    if "requests_finished" in signals:
        finished = signals["requests_finished"]
        # The Python parser reads a bare counter (TGI) as <name>_total.
        assert total(f"{finished.name}_total") == REQUESTS
        if signal_labels(finished):
            assert total(f"{finished.name}_total", finished_reason="length") == REQUESTS
    histograms: dict[EngineSignal, int] = {
        "ttft_seconds": REQUESTS, "inter_token_seconds": REQUESTS * (MAX_TOKENS - 1), "e2e_seconds": REQUESTS}
    for signal, count in histograms.items():
        if signal in signals:
            assert total(signals[signal].sample("count")) == count, signal
    if "prompt_tokens" in signals:
        assert total(signals["prompt_tokens"].sample()) > 0
    if "requests_running" in signals:
        assert total(signals["requests_running"].sample()) == 0


@pytest.mark.parametrize("name", ENGINES)
def test_engine_replica_endpoints_and_metrics(dev_chat: DeploymentPlan, name: str) -> None:
    engine = load_catalog().engines[name]
    plan = on_engine(dev_chat, name)
    emulator, statuses, text = asyncio.run(served_then_scraped(plan, engine))
    assert emulator.inference_engine.name == name
    ready = engine.health.ready_for(plan.profile.resolved_served_name)
    assert statuses[engine.health.path] == 200 and statuses[ready] == 200
    assert statuses["/ping"] == (200 if name == "vllm" else 404)  # vLLM's extra endpoints stay vLLM's
    for path in ("/metrics", "/prometheus/metrics"):
        assert statuses[path] == (200 if path == engine.metrics.path else 404), (name, path)
    if engine.metrics.path is None:
        assert text == "" and not any(status == 200 for path, status in statuses.items()
                                      if path in {"/metrics", "/prometheus/metrics"})
        return
    expected_metrics = ReplicaMetrics if name == "vllm" else EngineSignalMetrics
    assert isinstance(emulator.metrics, expected_metrics)
    assert_catalog_page(engine, text)
    promtool_problems(engine, text)
    assert_values_follow_the_requests(engine, text)

    signals, served = engine.metrics.signals, plan.profile.resolved_served_name
    # Labels: the engine's constant ones (SGLang: model_name, engine_type; vLLM: model_name, engine).
    constant = dict(ENGINE_SERIES_LABELS.get(name, ()))
    for family in text_string_to_metric_families(text):
        if family.name not in {m.name for m in signals.values()}:
            continue
        for sample in family.samples:
            for label, value in constant.items():
                assert sample.labels[label] == (served if value is None else value), (family.name, sample)
            if name != "vllm":
                extra = set(sample.labels) - set(constant) - {"le"}
                assert extra <= {FINISHED_REASON}, (family.name, sample.labels)


def test_vllm_page_keeps_every_pinned_family(dev_chat: DeploymentPlan) -> None:
    """vLLM's page is its full family set (the catalog's signals among them), in prometheus_client's format."""
    engine = load_catalog().engines["vllm"]
    _, _, text = asyncio.run(served_then_scraped(dev_chat, engine))
    assert "vllm:prefix_cache_queries_total{" in text and "vllm:cache_config_info{" in text
    assert "vllm:request_success_created{" in text  # prometheus_client's _created samples, as vLLM writes
