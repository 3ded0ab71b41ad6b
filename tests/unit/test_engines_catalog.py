"""The inference-engine catalog (infra/catalog/data/engines.yaml): every fact sourced and dated, the vLLM
record equal to what the rest of gpufleet pins, and the records' own consistency rules enforced."""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any, get_args

import pytest

from infra.catalog import load_catalog
from infra.catalog.loader import Catalog, CatalogError, check_engine_quantizations, parse_records
from infra.catalog.schema import ENGINE_SIGNALS, InferenceEngine
from infra.render import prometheus_rules, vllm
from infra.render.hostlayout import VLLM_PORT
from infra.spec.profile import EngineName

ROOT = Path(__file__).resolve().parents[2]
VLLM_METRICS_TSV = ROOT.parent / "shared" / "reference" / "vllm-0.33-metrics.tsv"
ENGINES = {"vllm", "sglang", "tgi", "llamacpp", "ollama", "trtllm"}
AS_OF = re.compile(r"^\d{4}-\d{2}(-\d{2})?$")


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def test_the_six_engines(catalog: Catalog) -> None:
    assert set(catalog.engines) == ENGINES
    assert catalog.closest("engine", "sg-lang") == "sglang"


def test_every_fact_has_a_source_and_a_date(catalog: Catalog) -> None:
    for engine in catalog.engines.values():
        parts = [engine.image, engine.health, engine.metrics, engine.capabilities, engine.throughput]
        sources = [part.source for part in parts] + [engine.flags]
        if engine.metrics.outcomes is not None:
            sources.append(engine.metrics.outcomes.source)
        for source in sources:
            assert AS_OF.match(str(source.as_of)), (engine.name, source)
            # A public address, or a file of this repository (a generated flag schema) or of ../shared.
            assert source.url.startswith("https://") or (ROOT / source.url).exists(), (engine.name, source.url)


def test_the_vllm_record_is_what_gpufleet_pins(catalog: Catalog) -> None:
    engine = catalog.engines["vllm"]
    assert engine.version == vllm.VLLM_VERSION
    assert engine.image.reference == f"vllm/vllm-openai:v{vllm.VLLM_VERSION}"
    dockerfile = (ROOT / "images" / "vllm" / "Dockerfile").read_text()
    assert f"ARG VLLM_VERSION={engine.version}" in dockerfile and "FROM vllm/vllm-openai:v${VLLM_VERSION}" in dockerfile
    assert engine.port == VLLM_PORT
    assert engine.capabilities.api_key_env == vllm.API_KEY_ENV
    assert engine.throughput.factor == 1.0 and engine.throughput.calibrated  # the model is fitted to vLLM


def test_vllm_signals_are_the_families_the_rules_read_and_vllm_exposes(catalog: Catalog) -> None:
    signals = catalog.engines["vllm"].metrics.signals
    assert set(signals) == set(ENGINE_SIGNALS)  # vLLM exposes every signal
    used = set(prometheus_rules.VLLM_METRICS_USED)
    assert {metric.name for metric in signals.values()} <= used
    with VLLM_METRICS_TSV.open() as handle:
        exposed = {row["name"]: row for row in csv.DictReader(handle, delimiter="\t")}
    for metric in signals.values():
        assert exposed[metric.name]["type"] == metric.kind, metric.name
        assert exposed[metric.name]["default"] == "True", metric.name  # on without extra flags


def test_only_vllm_is_calibrated(catalog: Catalog) -> None:
    """../shared/calibration holds vLLM measurements only: every other engine's capacity is an estimate."""
    assert [e.name for e in catalog.engines.values() if e.throughput.calibrated] == ["vllm"]


def test_metric_names_carry_their_engines_prefix(catalog: Catalog) -> None:
    prefixes = {"vllm": "vllm:", "sglang": "sglang:", "tgi": "tgi_", "llamacpp": "llamacpp:", "trtllm": "trtllm_"}
    for name, prefix in prefixes.items():
        signals = catalog.engines[name].metrics.signals
        assert signals and all(metric.name.startswith(prefix) for metric in signals.values()), name
    ollama = catalog.engines["ollama"].metrics
    assert ollama.path is None and ollama.signals == {}


def test_gguf_engines_serve_exactly_the_gguf_quant_types(catalog: Catalog) -> None:
    gguf_methods = {name for name, method in catalog.quantization.items() if method.format == "gguf"}
    assert gguf_methods == {"q4_k_m", "q5_k_m", "q6_k", "q8_0", "f16"}
    for engine in catalog.engines.values():
        listed = set(engine.capabilities.quantizations)
        if engine.capabilities.weight_formats == ("gguf",):
            assert listed == gguf_methods, engine.name
        else:
            assert not listed & gguf_methods, engine.name  # gpufleet renders GGUF for llama.cpp/Ollama only
    assert catalog.engines["llamacpp"].capabilities.tensor_parallel == "experimental"
    assert catalog.engines["ollama"].capabilities.tensor_parallel == "no"


# -- the records' rules --------------------------------------------------------------------------------------


def raw(catalog: Catalog, name: str) -> dict[str, Any]:
    return catalog.engines[name].model_dump(by_alias=True, exclude={"name"})


def parse(fields: dict[str, Any]) -> InferenceEngine:
    return parse_records("engines.yaml", {"engines": {"x": fields}}, "engines", InferenceEngine)["x"]


def test_an_engine_without_an_endpoint_has_no_signals(catalog: Catalog) -> None:
    fields = raw(catalog, "sglang")
    fields["metrics"]["path"] = None
    with pytest.raises(CatalogError, match=r"engines\.x: metrics: .*exposes no signals"):
        parse(fields)


def test_an_api_key_env_goes_with_apikey_env(catalog: Catalog) -> None:
    fields = raw(catalog, "sglang")
    fields["capabilities"]["apiKeyEnv"] = "SGLANG_API_KEY"
    with pytest.raises(CatalogError, match="apiKeyEnv names the variable exactly when apiKey is env"):
        parse(fields)


def test_an_unknown_signal_is_rejected(catalog: Catalog) -> None:
    fields = raw(catalog, "vllm")
    fields["metrics"]["signals"]["gpu_temperature"] = {"name": "vllm:x", "kind": "gauge"}
    with pytest.raises(CatalogError, match=r"metrics\.signals\.gpu_temperature"):
        parse(fields)


def test_an_engine_quantization_must_be_a_catalog_method(catalog: Catalog) -> None:
    engine = catalog.engines["sglang"]
    capabilities = engine.capabilities.model_copy(update={"quantizations": ("fp8", "int3")})
    with pytest.raises(CatalogError, match=r"engines\.sglang\.capabilities\.quantizations: 'int3'"):
        check_engine_quantizations({"sglang": engine.model_copy(update={"capabilities": capabilities})},
                                   catalog.quantization)


def test_an_engine_quantization_must_be_in_a_format_it_loads(catalog: Catalog) -> None:
    engine = catalog.engines["trtllm"]  # safetensors only
    capabilities = engine.capabilities.model_copy(update={"quantizations": ("fp8", "q4_k_m")})
    with pytest.raises(CatalogError, match=r"engines\.trtllm\.capabilities\.quantizations: 'q4_k_m' is a gguf"):
        check_engine_quantizations({"trtllm": engine.model_copy(update={"capabilities": capabilities})},
                                   catalog.quantization)


def test_the_profile_engine_names_are_the_catalog_engines(catalog: Catalog) -> None:
    assert set(get_args(EngineName)) == set(catalog.engines)
