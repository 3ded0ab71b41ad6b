"""The metrics emulator against what the real exporters expose: names, types, labels, consistency, knobs."""

from __future__ import annotations

import csv
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from infra.catalog import load_catalog
from tests.e2e.metrics_emulator import (
    DCGM_FIELDS,
    Emulator,
    EmulatorConfig,
    EngineReplica,
    GpuHost,
    LoadProfile,
    NginxLb,
    VllmReplica,
    build_1_2_5_buckets,
)
from tests.engine_metrics import assert_catalog_page, promtool_problems

ROOT = Path(__file__).resolve().parents[2]
METRICS_TSV = ROOT.parent / "shared" / "reference" / "vllm-0.33-metrics.tsv"
NGINX_TEMPLATE = ROOT / "templates" / "nginx" / "nginx.conf.j2"
OPENMETRICS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                      "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")  # what Prometheus 2.42 sends
# Short requests at a high rate: many completions per second, so counters move between two scrapes.
FAST = LoadProfile(request_rate=25.0, mean_prompt_tokens=300, mean_output_tokens=30, ttft_s=0.03, tpot_s=0.004)
NGINX_EXPORTER_TYPES = {
    "nginx_connections_accepted": "counter", "nginx_connections_active": "gauge",
    "nginx_connections_handled": "counter", "nginx_connections_reading": "gauge",
    "nginx_connections_waiting": "gauge", "nginx_connections_writing": "gauge",
    "nginx_http_requests_total": "counter", "nginx_up": "gauge",
}


@dataclass(frozen=True)
class Family:
    name: str
    type: str
    labels: tuple[str, ...]
    samples: tuple[str, ...]


def pinned_families() -> list[Family]:
    with METRICS_TSV.open(encoding="utf-8") as f:
        return [Family(row["name"], row["type"], tuple(row["labels"].split(",")),
                       tuple(row["exposed_samples"].split(","))) for row in csv.DictReader(f, delimiter="\t")]


def log_format_keys() -> list[str]:
    text = NGINX_TEMPLATE.read_text(encoding="utf-8")
    block = re.search(r"log_format gpufleet_json escape=json(.*?);\n", text, re.S)
    assert block, "log_format gpufleet_json not found in the Nginx template"
    return re.findall(r'"(\w+)":', block.group(1))


def get(url: str, accept: str | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read().decode()


def scrape(url: str) -> dict[str, Metric]:
    status, _, text = get(url)
    assert status == 200, text
    return {f.name: f for f in text_string_to_metric_families(text)}


def declared_types(url: str) -> dict[str, str]:
    """``# TYPE`` lines as written (the Python parser renames counters' samples, so read them raw)."""
    _, _, text = get(url)
    return {line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE ")}


def value(families: dict[str, Metric], sample: str, **labels: str) -> float:
    """Sum of the samples named ``sample`` whose labels include ``labels``."""
    found = [s.value for f in families.values() for s in f.samples
             if s.name == sample and labels.items() <= s.labels.items()]
    assert found, f"no sample {sample} {labels}"
    return float(sum(found))


def samples(families: dict[str, Metric]) -> Iterator[tuple[str, str, str, dict[str, str], float]]:
    for f in families.values():
        for s in f.samples:
            yield f.name, f.type, s.name, s.labels, float(s.value)


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    log = tmp_path_factory.mktemp("nginx") / "access.log"
    config = EmulatorConfig(
        replicas=(VllmReplica("chat", "llama-3.1-8b-instruct", FAST, max_model_len=4096),
                  VllmReplica("chat", "llama-3.1-8b-instruct", FAST, max_model_len=4096),
                  VllmReplica("code", "qwen2.5-coder-7b", FAST, lora_adapters=("sql-lora",))),
        gpu_hosts=(GpuHost("gpu-a", gpus=2, deployment="chat"), GpuHost("gpu-b", serves=("code-0",))),
        nginx=NginxLb(access_log=log), tick_s=0.1, seed=7,
    )
    with Emulator(config) as emu:
        yield emu


@pytest.fixture(scope="module")
def two_scrapes(emulator: Emulator) -> dict[str, tuple[dict[str, Metric], dict[str, Metric]]]:
    """Every endpoint scraped twice, 1.5 s apart."""
    first = {e.name: scrape(e.url) for e in emulator.endpoints}
    time.sleep(1.5)
    return {e.name: (first[e.name], scrape(e.url)) for e in emulator.endpoints}


def vllm_scrapes(two_scrapes: dict[str, tuple[dict[str, Metric], dict[str, Metric]]]
                 ) -> list[tuple[dict[str, Metric], dict[str, Metric]]]:
    return [pair for name, pair in two_scrapes.items() if name.startswith("vllm/")]


# -- vLLM -----------------------------------------------------------------------------------------------------
def test_endpoints_and_file_sd(emulator: Emulator) -> None:
    jobs = sorted(e.job for e in emulator.endpoints)
    assert jobs == ["dcgm", "dcgm", "engine", "engine", "engine", "nginx"]
    assert emulator.replica_names("chat") == ["chat-0", "chat-1"]
    sd = emulator.file_sd("engine")
    assert sd[0]["labels"] == {"deployment": "chat", "model": "llama-3.1-8b-instruct", "inference_engine": "vllm"}
    assert all(str(t).startswith("127.0.0.1:") for entry in sd for t in entry["targets"])  # type: ignore[attr-defined]
    assert emulator.file_sd("dcgm")[1]["labels"] == {}  # gpu-b is not dedicated to a deployment
    status, _, _ = get(emulator.endpoint("vllm/chat-0").url.replace("/metrics", "/health"))
    assert status == 200


def test_every_pinned_vllm_family_with_its_labels_and_samples(
        two_scrapes: dict[str, tuple[dict[str, Metric], dict[str, Metric]]]) -> None:
    for _, families in vllm_scrapes(two_scrapes):
        names = {s.name for f in families.values() for s in f.samples}
        for pinned in pinned_families():
            family = families.get(pinned.name)
            assert family is not None, f"{pinned.name} missing"
            assert family.type == pinned.type, pinned.name
            assert set(pinned.samples) <= names, f"{pinned.name}: {set(pinned.samples) - names}"
            expected = {label for label in pinned.labels if not label.startswith("(")}
            for sample in family.samples:
                assert expected <= sample.labels.keys(), f"{pinned.name}: {sample.labels}"
                if "(CacheConfig fields)" in pinned.labels:
                    assert len(sample.labels) > 3, sample.labels
                if "model_name" in expected:
                    assert sample.labels["model_name"] in {"llama-3.1-8b-instruct", "qwen2.5-coder-7b"}
                if "engine" in expected:
                    assert sample.labels["engine"] == "0"
        reasons = {s.labels["finished_reason"] for s in families["vllm:request_success"].samples}
        assert reasons == {"stop", "length", "abort", "error"}


def test_openmetrics_negotiation_keeps_the_colons(emulator: Emulator) -> None:
    status, content_type, text = get(emulator.endpoint("vllm/chat-0").url, OPENMETRICS_ACCEPT)
    assert status == 200
    assert content_type.startswith("application/openmetrics-text")
    families = {f.name for f in parse_openmetrics(text)}  # type: ignore[no-untyped-call]
    assert {f.name for f in pinned_families()} <= families
    assert "vllm_request_success" not in text and "vllm:request_success_total{" in text


def test_counters_increase_and_gauges_stay_in_range(
        two_scrapes: dict[str, tuple[dict[str, Metric], dict[str, Metric]]]) -> None:
    for before, after in vllm_scrapes(two_scrapes):
        old = {(name, tuple(sorted(labels.items()))): v for _, _, name, labels, v in samples(before)}
        for _, typ, name, labels, v in samples(after):
            key = (name, tuple(sorted(labels.items())))
            if typ in {"counter", "histogram"} and key in old:
                assert v >= old[key], f"{name} {labels} went down"
        for name in ("vllm:request_success_total", "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
                     "vllm:e2e_request_latency_seconds_count", "vllm:inter_token_latency_seconds_count"):
            assert value(after, name) > value(before, name), f"{name} did not grow"
        assert 0.0 <= value(after, "vllm:kv_cache_usage_perc") <= 1.0
        running, waiting = value(after, "vllm:num_requests_running"), value(after, "vllm:num_requests_waiting")
        assert running >= 0 and waiting >= 0
        assert value(after, "vllm:num_requests_waiting_by_reason") == waiting
        assert value(after, "vllm:engine_sleep_state", sleep_state="awake") == 1
        assert value(after, "vllm:cache_config_info") == 1


def test_histograms_are_cumulative(two_scrapes: dict[str, tuple[dict[str, Metric], dict[str, Metric]]]) -> None:
    for _, families in vllm_scrapes(two_scrapes):
        histograms = [f for f in families.values() if f.type == "histogram"]
        assert len(histograms) == sum(1 for p in pinned_families() if p.type == "histogram")
        for family in histograms:
            buckets = [s for s in family.samples if s.name.endswith("_bucket")]
            bounds = [float(s.labels["le"]) for s in buckets]
            counts = [s.value for s in buckets]
            assert bounds == sorted(bounds) and bounds[-1] == float("inf"), family.name
            assert counts == sorted(counts), f"{family.name} not cumulative"
            assert counts[-1] == value(families, family.name + "_count"), family.name
    ttft = [s for s in vllm_scrapes(two_scrapes)[0][1]["vllm:time_to_first_token_seconds"].samples
            if s.name.endswith("_bucket")]
    assert [s.labels["le"] for s in ttft][:3] == ["0.001", "0.005", "0.01"]
    assert ttft[-2].labels["le"] == "2560.0"
    tokens = [s.labels["le"] for s in vllm_scrapes(two_scrapes)[0][1]["vllm:request_prompt_tokens"].samples
              if s.name.endswith("_bucket")]
    assert tokens == [*(f"{b}.0" for b in build_1_2_5_buckets(4096)), "+Inf"]


def test_consistency_invariants(two_scrapes: dict[str, tuple[dict[str, Metric], dict[str, Metric]]]) -> None:
    for _, m in vllm_scrapes(two_scrapes):
        requests = value(m, "vllm:request_success_total")
        prompt, generated = value(m, "vllm:prompt_tokens_total"), value(m, "vllm:generation_tokens_total")
        assert requests > 0
        for histogram in ("e2e_request_latency_seconds", "time_to_first_token_seconds", "request_prompt_tokens",
                          "request_generation_tokens", "request_queue_time_seconds", "request_prefill_time_seconds",
                          "request_decode_time_seconds", "request_inference_time_seconds",
                          "request_time_per_output_token_seconds", "request_num_preemptions"):
            assert value(m, f"vllm:{histogram}_count") == requests, histogram
        assert value(m, "vllm:request_prompt_tokens_sum") == prompt
        assert value(m, "vllm:request_generation_tokens_sum") == generated
        assert value(m, "vllm:inter_token_latency_seconds_count") == generated - requests
        assert value(m, "vllm:iteration_tokens_total_sum") == prompt + generated
        assert value(m, "vllm:prompt_tokens_by_source_total") == prompt
        cached = value(m, "vllm:prompt_tokens_cached_total")
        assert cached == value(m, "vllm:prompt_tokens_by_source_total", source="local_cache_hit")
        assert cached == value(m, "vllm:prompt_tokens_cached_by_source_total")
        assert value(m, "vllm:request_prefill_kv_computed_tokens_sum") == prompt - cached
        hits, queries = value(m, "vllm:prefix_cache_hits_total"), value(m, "vllm:prefix_cache_queries_total")
        assert queries == prompt and 0.1 < hits / queries < 0.5  # configured hit rate 0.3
        inference = value(m, "vllm:request_inference_time_seconds_sum")
        parts = value(m, "vllm:request_prefill_time_seconds_sum") + value(m, "vllm:request_decode_time_seconds_sum")
        assert inference == pytest.approx(parts)
        assert value(m, "vllm:e2e_request_latency_seconds_sum") > inference
        assert value(m, "vllm:num_preemptions_total") >= value(m, "vllm:request_num_preemptions_sum")


# -- DCGM and Nginx exporters -------------------------------------------------------------------------------------
def test_dcgm_default_counters(emulator: Emulator,
                               two_scrapes: dict[str, tuple[dict[str, Metric], dict[str, Metric]]]) -> None:
    url = emulator.endpoint("dcgm/gpu-a").url
    assert declared_types(url) == {name: typ for name, typ, _ in DCGM_FIELDS}
    before, after = two_scrapes["dcgm/gpu-a"]
    for name, _, _ in DCGM_FIELDS:
        gpus = list(after[name].samples)
        assert len(gpus) == 2, name
        for s in gpus:
            assert set(s.labels) == {"gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname",
                                     "DCGM_FI_DRIVER_VERSION"}
            assert s.labels["device"] == f"nvidia{s.labels['gpu']}"
            assert s.labels["modelName"] == "NVIDIA H100 80GB HBM3" and s.labels["Hostname"] == "gpu-a"
    energy = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"
    assert value(after, energy + "_total") > value(before, energy + "_total")  # the parser appends _total
    assert 50 < value(after, "DCGM_FI_DEV_GPU_UTIL", gpu="0") <= 100  # ~15 requests running
    assert 100 < value(after, "DCGM_FI_DEV_POWER_USAGE", gpu="0") <= 700
    assert 30 < value(after, "DCGM_FI_DEV_GPU_TEMP", gpu="0") < 85
    used, free = value(after, "DCGM_FI_DEV_FB_USED", gpu="0"), value(after, "DCGM_FI_DEV_FB_FREE", gpu="0")
    assert used + free == 81_559 and 0.85 < used / 81_559 < 0.95
    assert value(after, "DCGM_FI_DEV_XID_ERRORS") == 0


def test_nginx_exporter(emulator: Emulator,
                        two_scrapes: dict[str, tuple[dict[str, Metric], dict[str, Metric]]]) -> None:
    assert declared_types(emulator.endpoint("nginx").url) == NGINX_EXPORTER_TYPES
    _, text_type, text = get(emulator.endpoint("nginx").url)
    assert text_type.startswith("text/plain; version=0.0.4")
    assert re.search(r"^nginx_up 1$", text, re.M), "Go exporters write integers without .0"
    before, after = two_scrapes["nginx"]
    for counter in ("nginx_connections_accepted_total", "nginx_connections_handled_total",
                    "nginx_http_requests_total"):
        assert value(after, counter) > value(before, counter), counter
    assert value(after, "nginx_connections_active") == sum(
        value(after, f"nginx_connections_{state}") for state in ("reading", "writing", "waiting"))


def test_access_log_lines(emulator: Emulator) -> None:
    path = emulator.config.nginx.access_log if emulator.config.nginx else None
    assert path is not None
    emulator.tick()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) > 100
    keys = log_format_keys()
    statuses: dict[int, int] = {}
    for line in lines:
        entry = json.loads(line)
        assert list(entry) == keys
        assert isinstance(entry["status"], int) and isinstance(entry["request_time"], float | int)
        assert isinstance(entry["bytes_sent"], int)
        assert all(isinstance(entry[k], str) for k in keys if k.startswith("upstream_"))
        statuses[entry["status"]] = statuses.get(entry["status"], 0) + 1
        if entry["status"] == 200:
            assert entry["deployment"] in {"chat", "code"}
            tries = entry["upstream_addr"].split(", ")  # several when Nginx retried another replica
            assert len(tries) == len(entry["upstream_status"].split(", "))
            assert tries[-1] in {e.address for e in emulator.endpoints if e.job == "engine"}
            assert float(entry["upstream_response_time"].split(", ")[-1]) <= entry["request_time"]
            assert entry["model"] in {"llama-3.1-8b-instruct", "qwen2.5-coder-7b", "sql-lora"}
    assert statuses[200] > 0.9 * len(lines)


# -- knobs --------------------------------------------------------------------------------------------------------
@pytest.fixture
def knob_emulator(tmp_path: Path) -> Iterator[Emulator]:
    config = EmulatorConfig(
        replicas=(VllmReplica("chat", "m", FAST), VllmReplica("chat", "m", FAST)),
        gpu_hosts=(GpuHost("gpu-a", gpus=2, deployment="chat"),),
        nginx=NginxLb(access_log=tmp_path / "access.log", unauthorized_ratio=0, not_found_ratio=0,
                      rate_limited_ratio=0),  # every LB answer then comes from the replicas' state
        tick_s=0.05, seed=3,
    )
    with Emulator(config) as emu:
        yield emu


def test_replica_down_and_up_on_the_same_port(knob_emulator: Emulator) -> None:
    emu = knob_emulator
    endpoint = emu.endpoint("vllm/chat-0")
    emu.set_replica_up("chat-0", False)
    with pytest.raises(urllib.error.URLError) as refused:
        get(endpoint.url)
    assert isinstance(refused.value.reason, ConnectionRefusedError)
    emu.set_replica_up("chat-0", True)
    assert emu.endpoint("vllm/chat-0").port == endpoint.port
    assert get(endpoint.url)[0] == 200

    emu.set_replica_up("chat-1", False, mode="503")
    assert get(emu.endpoint("vllm/chat-1").url)[0] == 503
    emu.set_replica_up("chat-1", True, reset_counters=True)
    assert value(scrape(emu.endpoint("vllm/chat-1").url), "vllm:request_success_total") < 10

    emu.set_replica_up("chat", False)  # the whole deployment: the LB answers 502
    time.sleep(0.3)
    emu.tick()
    log = emu.config.nginx.access_log if emu.config.nginx else None
    assert log is not None
    last = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()[-5:]]
    assert all(e["status"] == 502 and e["deployment"] == "chat" for e in last)
    emu.set_endpoint_up("nginx", False)
    with pytest.raises(urllib.error.URLError):
        get(emu.endpoint("nginx").url)
    emu.set_endpoint_up("nginx", True)
    assert get(emu.endpoint("nginx").url)[0] == 200


def test_error_ratio_kv_floor_preemptions_and_rate(knob_emulator: Emulator) -> None:
    emu = knob_emulator
    url = emu.endpoint("vllm/chat-0").url
    before = scrape(url)
    emu.set_error_ratio("chat", 1.0)
    emu.set_kv_cache_floor("chat-0", 0.96)
    emu.force_preemptions("chat-0", 3)
    wait_for(lambda: value(scrape(url), "vllm:request_success_total", finished_reason="error")
             >= value(before, "vllm:request_success_total", finished_reason="error") + 5)
    after = scrape(url)
    assert value(after, "vllm:kv_cache_usage_perc") >= 0.96
    assert value(after, "vllm:num_preemptions_total") >= value(before, "vllm:num_preemptions_total") + 3
    wait_for(lambda: value(scrape(url), "vllm:num_requests_waiting") > 0)  # full KV cache: the queue grows
    log = emu.config.nginx.access_log if emu.config.nginx else None
    assert log is not None
    assert any(json.loads(line)["status"] == 500 for line in log.read_text(encoding="utf-8").splitlines())

    emu.set_rate_multiplier("chat", 0.0)  # no more arrivals: the replica drains and stays idle
    emu.set_kv_cache_floor("chat", 0.0)

    def drained() -> bool:
        m = scrape(url)  # one scrape: both gauges from the same state
        return value(m, "vllm:num_requests_running") + value(m, "vllm:num_requests_waiting") == 0

    wait_for(drained)
    idle = value(scrape(url), "vllm:request_success_total")
    time.sleep(0.3)
    assert value(scrape(url), "vllm:request_success_total") == idle
    with pytest.raises(KeyError):
        emu.set_error_ratio("nope", 0.1)
    with pytest.raises(ValueError):
        emu.set_kv_cache_floor("chat", 1.5)


def test_gpu_and_nginx_knobs(knob_emulator: Emulator) -> None:
    emu = knob_emulator
    dcgm = emu.endpoint("dcgm/gpu-a").url
    emu.set_gpu_temperature("gpu-a", 91, gpu=1)
    emu.set_gpu_xid("gpu-a", 79, gpu=0)
    emu.set_gpu_fb_used_fraction("gpu-a", 0.97)
    time.sleep(0.15)
    m = scrape(dcgm)
    assert value(m, "DCGM_FI_DEV_GPU_TEMP", gpu="1") == 91
    assert value(m, "DCGM_FI_DEV_XID_ERRORS", gpu="0") == 79 and value(m, "DCGM_FI_DEV_XID_ERRORS", gpu="1") == 0
    used, free = value(m, "DCGM_FI_DEV_FB_USED", gpu="1"), value(m, "DCGM_FI_DEV_FB_FREE", gpu="1")
    assert used / (used + free) == pytest.approx(0.97, abs=1e-4)

    emu.set_nginx_up(False)
    _, _, text = get(emu.endpoint("nginx").url)
    assert [line for line in text.splitlines() if not line.startswith("#")] == ["nginx_up 0"]
    emu.set_nginx_up(True)
    assert value(scrape(emu.endpoint("nginx").url), "nginx_up") == 1


# -- every engine -------------------------------------------------------------------------------------------------
ENGINES = tuple(load_catalog().engines)


@pytest.fixture(scope="module")
def engines_emulator() -> Iterator[Emulator]:
    """One replica of each catalog engine, each in its own deployment (named after the engine)."""
    config = EmulatorConfig(
        replicas=tuple(EngineReplica(f"d-{name}", f"model-{name}", FAST, engine=name) for name in ENGINES),
        nginx=None, tick_s=0.1, seed=11,
    )
    with Emulator(config) as emu:
        yield emu


def test_every_engine_replica_reports_its_endpoint(engines_emulator: Emulator) -> None:
    emu = engines_emulator
    sd = {str(entry["labels"]["inference_engine"]): entry for entry in emu.file_sd("engine")}  # type: ignore[index]
    for name, engine in load_catalog().engines.items():
        info = emu.replica_endpoint(f"d-{name}-0")
        assert info.name == f"{name}/d-{name}-0" and info.job == "engine"
        assert dict(info.labels) == {"deployment": f"d-{name}", "model": f"model-{name}", "inference_engine": name}
        assert info.metrics_path == engine.metrics.path
        assert set(info.health_paths) == {engine.health.path, engine.health.ready_for(f"model-{name}")}
        for path in info.health_paths:
            assert get(f"http://{info.address}{path}")[0] == 200, (name, path)
        if engine.metrics.path is None:  # Ollama: health only, and nothing for Prometheus to scrape
            assert name not in sd
            assert get(f"http://{info.address}/metrics")[0] == 404
            with pytest.raises(ValueError):
                _ = info.url
            continue
        labels = sd[name]["labels"]
        assert isinstance(labels, dict)
        if engine.metrics.path == "/metrics":
            assert "__metrics_path__" not in labels
        else:  # TensorRT-LLM: /prometheus/metrics, the plain /metrics is something else
            assert labels["__metrics_path__"] == engine.metrics.path
            assert get(f"http://{info.address}/metrics")[0] == 404
        assert sd[name]["targets"] == [info.address]


@pytest.mark.parametrize("name", [n for n in ENGINES if load_catalog().engines[n].metrics.path is not None])
def test_every_engine_exposes_its_catalog_signals(engines_emulator: Emulator, name: str) -> None:
    engine = load_catalog().engines[name]
    url = engines_emulator.replica_endpoint(f"d-{name}-0").url
    status, content_type, text = get(url)
    assert status == 200 and content_type.startswith("text/plain")
    assert_catalog_page(engine, text)
    promtool_problems(engine, text)
    signals = engine.metrics.signals
    counter = signals.get("requests_finished") or signals["generation_tokens"]  # llama.cpp counts no requests
    # The Python parser reads a bare counter (TGI) as <name>_total; the samples carry the engine's labels.
    wait_for(lambda: value(scrape(url), f"{counter.name}_total") > 0)
    if name == "sglang":
        for sample in scrape(url)["sglang:num_requests"].samples:
            assert sample.labels == {"model_name": "model-sglang", "engine_type": "unified"}
    if name == "trtllm":
        reasons = {s.labels["finished_reason"] for s in scrape(url)["trtllm_request_success"].samples}
        assert reasons == {"stop", "length", "cancelled"}  # TensorRT-LLM's own values (engines.yaml outcomes)


def test_engine_replica_knobs(engines_emulator: Emulator) -> None:
    emu = engines_emulator
    info = emu.replica_endpoint("d-trtllm-0")
    emu.set_replica_up("d-trtllm-0", False, mode="503")
    assert get(info.url)[0] == 503 and get(info.health_url)[0] == 503
    emu.set_replica_up("d-trtllm-0", True, reset_counters=True)
    assert value(scrape(info.url), "trtllm_request_success_total") < 10
    emu.set_kv_cache_floor("d-sglang-0", 0.96)
    wait_for(lambda: value(scrape(emu.replica_endpoint("d-sglang-0").url), "sglang:token_usage") >= 0.96)
    emu.set_kv_cache_floor("d-sglang-0", 0.0)
    ollama = emu.replica_endpoint("d-ollama-0")
    emu.set_replica_up("d-ollama-0", False)
    with pytest.raises(urllib.error.URLError):
        get(ollama.health_url)
    emu.set_replica_up("d-ollama-0", True)
    assert get(ollama.health_url)[0] == 200
