"""A model profile (as parsed YAML) moved to another engine the way a user would have to write it for
validate to accept it: GGUF engines get a GGUF file of the same repository and its quant type, non-vLLM
engines lose vLLM's flags and the LoRA adapters only vLLM serves."""

from __future__ import annotations

from typing import Any

from infra.catalog import load_catalog

GGUF_QUANT = "q8_0"  # 8.5 bits per weight: the GGUF type closest to the unquantized plan


def on_engine(profile: dict[str, Any], engine: str) -> dict[str, Any]:
    """``profile`` edited in place for ``engine`` (and returned)."""
    profile["engine"] = engine
    if engine == "vllm":
        return profile
    profile.pop("engineArgs", None)
    profile.pop("loraAdapters", None)
    profile.pop("allowedQuantization", None)
    if load_catalog().engines[engine].capabilities.weight_formats == ("gguf",):
        weights = profile["weights"]
        assert weights["source"] == "huggingface", "the helper moves Hub weights only"
        weights["file"] = f"{weights['repo'].rsplit('/', 1)[-1]}-{GGUF_QUANT.upper()}.gguf"
        if engine == "ollama":
            weights["revision"] = "main"  # all Ollama can pull
        profile["quantization"] = GGUF_QUANT
        profile.pop("kvCacheDtype", None)
    return profile
