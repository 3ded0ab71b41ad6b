"""The packaged catalogs load, agree with each other and with the reference figures they were taken from."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from infra.catalog import (
    Catalog,
    CatalogError,
    CatalogLlm,
    Gpu,
    active_parameter_count,
    kv_cache_bytes_per_token,
    load_catalog,
    parameter_count,
)
from infra.catalog.arch_math import BF16_BYTES
from infra.catalog.loader import check_instance_gpus, parse_records
from infra.catalog.schema import InstanceType

KIB = 1024

# shared/reference/hardware-and-prices.md, "KV cache and rooflines".
REFERENCE_KV_KIB_PER_TOKEN_BF16 = {
    "llama-3.1-8b": 128,
    "llama-3.1-70b": 320,
    "qwen2.5-7b": 56,
    "qwen2.5-14b": 192,
    "qwen2.5-32b": 256,
}

# shared/reference/hardware-and-prices.md, "AWS instances (us-east-1, Linux on-demand)".
REFERENCE_ON_DEMAND_US_EAST_1 = {
    "p4d.24xlarge": 32.7726,
    "p4de.24xlarge": 40.96575,
    "p5.48xlarge": 98.32,
    "p5en.48xlarge": 84.80,
    "g5.xlarge": 1.006,
    "g5.12xlarge": 5.672,
    "g6.2xlarge": 0.9776,
    "g6e.24xlarge": 15.06559,
    "g6e.48xlarge": 30.13118,
}

EXPECTED_GPUS = {"A100-40G", "A100-80G", "A800-80G", "H100-SXM", "H100-PCIe", "H200", "L4", "L40S", "A10G"}
EXPECTED_MODELS = {
    "llama-3.1-8b",
    "llama-3.1-70b",
    "qwen2.5-7b",
    "qwen2.5-14b",
    "qwen2.5-32b",
    "qwen2.5-72b",
    "qwen3-8b",
    "qwen3-32b",
    "mistral-7b",
    "mixtral-8x7b",
}
EXPECTED_METHODS = {"none", "fp8", "awq", "gptq", "compressed-tensors", "bitsandbytes",
                    "q4_k_m", "q5_k_m", "q6_k", "q8_0", "f16"}

PARAMETER_TOLERANCE = 0.02

AS_OF_FORMAT = re.compile(r"^\d{4}-\d{2}(-\d{2})?(/\d{4}-\d{2}(-\d{2})?)?$")
"""YYYY-MM-DD, YYYY-MM, or a range of those (a price snapshot of uncertain date)."""


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def _valid_gpu_fields() -> dict[str, Any]:
    return {
        "architecture": "Hopper",
        "computeCapability": "9.0",
        "memoryGiB": 80,
        "memoryType": "HBM3",
        "memoryBandwidthGBps": 3350,
        "bf16Tflops": 989,
        "fp8Tflops": 1979,
        "interconnect": {"kind": "nvlink", "bandwidthGBps": 900, "generation": "NVLink4"},
        "tdpWatts": 700,
        "source": {"url": "https://example.invalid/datasheet", "asOf": "2025-01"},
    }


# ---------------------------------------------------------------------------------------- loading


def test_catalog_loads_every_expected_record(catalog: Catalog) -> None:
    assert set(catalog.gpus) == EXPECTED_GPUS
    assert set(catalog.models) == EXPECTED_MODELS
    assert set(catalog.quantization) == EXPECTED_METHODS
    assert "onprem-8xa800" in catalog.instances


def test_load_catalog_is_cached() -> None:
    assert load_catalog() is load_catalog()


def test_record_names_are_their_keys(catalog: Catalog) -> None:
    for records in (catalog.gpus, catalog.instances, catalog.models, catalog.quantization):
        for key, record in records.items():
            assert record.name == key


def test_every_record_and_price_has_a_source(catalog: Catalog) -> None:
    records: list[Any] = [
        *catalog.gpus.values(),
        *catalog.instances.values(),
        *catalog.models.values(),
        *catalog.quantization.values(),
    ]
    records += [price for instance in catalog.instances.values() for price in instance.prices.values()]
    for record in records:
        assert record.source.url.startswith("https://"), record
        assert AS_OF_FORMAT.match(str(record.source.as_of)), record.source


def test_every_instance_gpu_exists(catalog: Catalog) -> None:
    for instance in catalog.instances.values():
        assert instance.gpu in catalog.gpus, instance.name


# ---------------------------------------------------------------------------------------- GPUs


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("a100-sxm4-80gb", "A100-80G"),
        ("A100-SXM4-80GB", "A100-80G"),
        ("a100-80g", "A100-80G"),
        ("h100", "H100-SXM"),
        ("H100-SXM5-80GB", "H100-SXM"),
        ("a800", "A800-80G"),
        ("l40s", "L40S"),
        ("  NVIDIA L4 ", "L4"),
    ],
)
def test_gpu_lookup_accepts_aliases_case_insensitively(
    catalog: Catalog, spelling: str, canonical: str
) -> None:
    gpu = catalog.gpu(spelling)
    assert gpu is not None
    assert gpu.name == canonical


def test_unknown_gpu_is_none(catalog: Catalog) -> None:
    assert catalog.gpu("B200") is None
    assert catalog.gpu("a100") is None  # ambiguous between 40G and 80G on purpose


def test_gpu_figures_match_reference(catalog: Catalog) -> None:
    h100 = catalog.gpus["H100-SXM"]
    assert (h100.bf16_tflops, h100.fp8_tflops, h100.memory_bandwidth_gbps) == (989, 1979, 3350)
    assert catalog.gpus["A800-80G"].interconnect.bandwidth_gbps == 400
    assert catalog.gpus["A100-80G"].interconnect.bandwidth_gbps == 600
    assert catalog.gpus["H200"].memory_gib == 141


def test_fp8_compute_only_from_ada_on(catalog: Catalog) -> None:
    with_fp8 = {name for name, gpu in catalog.gpus.items() if gpu.supports_fp8_compute}
    assert with_fp8 == {"H100-SXM", "H100-PCIe", "H200", "L4", "L40S"}
    for name in with_fp8:
        assert float(catalog.gpus[name].compute_capability) >= 8.9


def test_pcie_only_gpus_have_pcie_gen4_bandwidth(catalog: Catalog) -> None:
    for name in ("L4", "L40S", "A10G"):
        interconnect = catalog.gpus[name].interconnect
        assert (interconnect.kind, interconnect.bandwidth_gbps) == ("pcie", 64)


def test_a10g_is_marked_unverified(catalog: Catalog) -> None:
    a10g = catalog.gpus["A10G"]
    assert a10g.verified is False
    assert a10g.source.note
    assert all(gpu.verified for name, gpu in catalog.gpus.items() if name != "A10G")


@pytest.mark.parametrize(
    ("misspelling", "suggestion"),
    [("H100-SXM5", "H100-SXM"), ("A10", "A10G"), ("h100-sxm5-80g", "H100-SXM"), ("L40", "L40S")],
)
def test_closest_gpu_suggests_canonical_name(catalog: Catalog, misspelling: str, suggestion: str) -> None:
    assert catalog.closest("gpu", misspelling) == suggestion


def test_closest_other_kinds(catalog: Catalog) -> None:
    assert catalog.closest("model", "llama3.1-8b") == "llama-3.1-8b"
    assert catalog.closest("instance", "p5.48xl") == "p5.48xlarge"
    assert catalog.closest("quantization", "AWQ") == "awq"
    assert catalog.closest("gpu", "quantum-annealer") is None


# ---------------------------------------------------------------------------------------- instances


@pytest.mark.parametrize(("instance", "price"), sorted(REFERENCE_ON_DEMAND_US_EAST_1.items()))
def test_on_demand_prices_equal_reference(catalog: Catalog, instance: str, price: float) -> None:
    assert catalog.instances[instance].prices["us-east-1"].on_demand == price


def test_list_prices_and_spot_ranges_as_in_reference(catalog: Catalog) -> None:
    g5_12 = catalog.instances["g5.12xlarge"].prices["us-east-1"]
    g6_2 = catalog.instances["g6.2xlarge"].prices["us-east-1"]
    p5 = catalog.instances["p5.48xlarge"].prices["us-east-1"]
    assert g5_12.list_price is True
    assert (g6_2.spot_min, g6_2.spot_max, g6_2.list_price) == (0.37, 0.45, False)
    assert (p5.spot_min, p5.spot_max, p5.capacity_block) == (20.99, 30.33, 39.33)
    assert catalog.instances["p4d.24xlarge"].prices["us-east-1"].capacity_block == 14.75


def test_instance_shapes(catalog: Catalog) -> None:
    p5 = catalog.instances["p5.48xlarge"]
    assert (p5.gpu, p5.gpu_count, p5.gpu_link, p5.vcpus, p5.memory_gib) == (
        "H100-SXM",
        8,
        "nvswitch",
        192,
        2048,
    )
    assert catalog.instances["g6e.48xlarge"].memory_gib == 1536
    for instance in catalog.instances.values():
        expected_link = "pcie" if instance.name.startswith("g") else "nvswitch"
        assert instance.gpu_link == expected_link, instance.name


def test_onprem_server_has_no_catalog_price(catalog: Catalog) -> None:
    server = catalog.instances["onprem-8xa800"]
    assert (server.provider, server.gpu, server.gpu_count, server.prices) == ("onprem", "A800-80G", 8, {})
    assert server.vcpus is None
    assert server.memory_gib is None


def test_instances_for_gpu_resolves_alias_and_sorts_by_gpu_count(catalog: Catalog) -> None:
    names = [instance.name for instance in catalog.instances_for_gpu("nvidia a10g")]
    assert names == ["g5.xlarge", "g5.2xlarge", "g5.16xlarge", "g5.12xlarge", "g5.24xlarge", "g5.48xlarge"]
    assert [instance.name for instance in catalog.instances_for_gpu("h100")] == ["p5.48xlarge"]
    assert catalog.instances_for_gpu("H100-PCIe") == []
    assert catalog.instances_for_gpu("unknown") == []


# ---------------------------------------------------------------------------------------- models


@pytest.mark.parametrize("model_name", sorted(EXPECTED_MODELS))
def test_parameter_count_matches_published_total(catalog: Catalog, model_name: str) -> None:
    model = catalog.models[model_name]
    computed_b = parameter_count(model.architecture) / 1e9
    assert computed_b == pytest.approx(model.published_parameters_b, rel=PARAMETER_TOLERANCE)


@pytest.mark.parametrize(("model_name", "kib"), sorted(REFERENCE_KV_KIB_PER_TOKEN_BF16.items()))
def test_kv_bytes_per_token_equal_reference(catalog: Catalog, model_name: str, kib: int) -> None:
    architecture = catalog.models[model_name].architecture
    assert kv_cache_bytes_per_token(architecture, BF16_BYTES) == kib * KIB


def test_kv_cache_scales_with_element_size(catalog: Catalog) -> None:
    architecture = catalog.models["llama-3.1-8b"].architecture
    assert kv_cache_bytes_per_token(architecture, 1) * 2 == kv_cache_bytes_per_token(architecture, BF16_BYTES)
    with pytest.raises(ValueError, match="positive"):
        kv_cache_bytes_per_token(architecture, 0)


def test_mixtral_active_parameters(catalog: Catalog) -> None:
    mixtral = catalog.models["mixtral-8x7b"].architecture
    assert active_parameter_count(mixtral) / 1e9 == pytest.approx(12.9, rel=0.01)
    assert parameter_count(mixtral) > 3 * active_parameter_count(mixtral)


def test_dense_models_use_all_their_parameters(catalog: Catalog) -> None:
    for model in catalog.models.values():
        if not model.architecture.is_moe:
            assert active_parameter_count(model.architecture) == parameter_count(model.architecture)


def test_tied_embeddings_count_once(catalog: Catalog) -> None:
    untied = catalog.models["qwen2.5-7b"].architecture
    tied = untied.model_copy(update={"tied_embeddings": True})
    assert parameter_count(untied) - parameter_count(tied) == untied.vocab_size * untied.hidden_size


def test_only_qwen2_family_has_attention_bias(catalog: Catalog) -> None:
    with_bias = {name for name, model in catalog.models.items() if model.architecture.attention_bias}
    assert with_bias == {"qwen2.5-7b", "qwen2.5-14b", "qwen2.5-32b", "qwen2.5-72b"}


def test_model_sources_point_at_hf_config(catalog: Catalog) -> None:
    for model in catalog.models.values():
        assert model.source.url == f"https://huggingface.co/{model.hf_repo}/blob/main/config.json"


# ---------------------------------------------------------------------------------------- quantization


def test_quantization_methods(catalog: Catalog) -> None:
    methods = catalog.quantization
    assert (methods["none"].weight_bits, methods["none"].vllm_name) == ((16,), None)
    assert methods["fp8"].needs_prequantized_weights is False
    assert methods["gptq"].weight_bits == (4, 8)
    assert methods["compressed-tensors"].weight_bits == (8, 4)
    assert methods["bitsandbytes"].weight_bits[0] == 4  # the only width vLLM quantizes to in flight
    assert methods["awq"].needs_prequantized_weights is True


# ---------------------------------------------------------------------------------------- validation


def test_broken_record_error_names_file_key_and_field() -> None:
    fields = _valid_gpu_fields()
    fields["memoryBandwidthGBps"] = -1
    with pytest.raises(CatalogError, match=r"gpus\.yaml: gpus\.Broken-GPU: memoryBandwidthGBps"):
        parse_records("gpus.yaml", {"gpus": {"Broken-GPU": fields}}, "gpus", Gpu)


def test_unknown_field_is_rejected_with_its_name() -> None:
    fields = {**_valid_gpu_fields(), "bf16TFlops": 1}
    with pytest.raises(CatalogError, match=r"gpus\.Typo-GPU: bf16TFlops"):
        parse_records("gpus.yaml", {"gpus": {"Typo-GPU": fields}}, "gpus", Gpu)


def test_valid_record_gets_its_key_as_name() -> None:
    gpus = parse_records("gpus.yaml", {"gpus": {"Fine-GPU": _valid_gpu_fields()}}, "gpus", Gpu)
    assert gpus["Fine-GPU"].name == "Fine-GPU"


def test_name_contradicting_key_is_rejected() -> None:
    fields = {**_valid_gpu_fields(), "name": "Other"}
    with pytest.raises(CatalogError, match="contradicts the record key"):
        parse_records("gpus.yaml", {"gpus": {"Fine-GPU": fields}}, "gpus", Gpu)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (["not", "a", "mapping"], "expected a mapping"),
        ({"gpu": {}}, "unexpected top-level key"),
        ({"gpus": {}}, "non-empty mapping"),
        ({"gpus": {"Odd": ["a", "list"]}}, r"gpus\.Odd: expected a mapping of fields"),
    ],
)
def test_malformed_documents_are_rejected(document: object, message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        parse_records("gpus.yaml", document, "gpus", Gpu)


def test_model_with_inconsistent_heads_is_rejected(catalog: Catalog) -> None:
    raw = catalog.models["llama-3.1-8b"].model_dump(by_alias=True, exclude={"name"})
    broken = copy.deepcopy(raw)
    broken["architecture"]["kvHeads"] = 5
    with pytest.raises(CatalogError, match=r"models\.yaml: models\.llama-3\.1-8b: architecture"):
        parse_records("models.yaml", {"models": {"llama-3.1-8b": broken}}, "models", CatalogLlm)


def test_instance_with_unknown_gpu_fails_integrity_check(catalog: Catalog) -> None:
    orphan = catalog.instances["g6.xlarge"].model_copy(update={"gpu": "B200"})
    with pytest.raises(CatalogError, match=r"instances\.yaml: instances\.g6\.xlarge\.gpu: 'B200'"):
        check_instance_gpus({"g6.xlarge": orphan}, catalog.gpus)


def test_aws_instance_without_price_is_rejected(catalog: Catalog) -> None:
    raw = catalog.instances["g6.xlarge"].model_dump(by_alias=True, exclude={"name"})
    raw["prices"] = {}
    with pytest.raises(CatalogError, match="needs at least one regional price"):
        parse_records("instances.yaml", {"instances": {"g6.xlarge": raw}}, "instances", InstanceType)


def test_alias_shared_by_two_gpus_is_rejected(catalog: Catalog) -> None:
    clash = catalog.gpus["L4"].model_copy(update={"aliases": ("l40s",)})
    with pytest.raises(CatalogError, match="alias 'l40s' is already used by L40S"):
        Catalog(
            gpus={"L40S": catalog.gpus["L40S"], "L4": clash},
            instances={},
            models={},
            quantization={},
            engines={},
        )
