"""The engineArgs that pin a value the planner otherwise chooses, per engine.

A profile may fix a scheduler limit or the tensor-parallel degree through its engine's own flag (vLLM
``max-num-seqs``, SGLang ``max-running-requests``, ...). The planner must then plan with that value, because
the renderer writes engineArgs over the planned flags: the table below names, per engine, the flags each
renderer (``infra/render/engines/``) writes for each planned limit. ``tests/render/test_engines.py`` checks
the two agree. Names are written with '-' (TensorRT-LLM's '_' options are matched with either).
"""

from __future__ import annotations

from typing import Literal

PlannedLimit = Literal["max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization", "tensor_parallel_size"]

LIMIT_FLAGS: dict[str, dict[PlannedLimit, tuple[str, ...]]] = {
    "vllm": {
        "max_num_seqs": ("max-num-seqs",),
        "max_num_batched_tokens": ("max-num-batched-tokens",),
        "gpu_memory_utilization": ("gpu-memory-utilization",),
        "tensor_parallel_size": ("tensor-parallel-size", "tp"),
    },
    "sglang": {
        "max_num_seqs": ("max-running-requests",),
        "max_num_batched_tokens": ("chunked-prefill-size",),
        "gpu_memory_utilization": ("mem-fraction-static",),
        "tensor_parallel_size": ("tp-size", "tensor-parallel-size"),
    },
    "tgi": {
        "max_num_batched_tokens": ("max-batch-prefill-tokens",),
        "gpu_memory_utilization": ("cuda-memory-fraction",),
        "tensor_parallel_size": ("num-shard",),
    },
    "llamacpp": {
        "max_num_seqs": ("parallel",),
        "max_num_batched_tokens": ("batch-size",),
    },
    "ollama": {
        "max_num_seqs": ("num-parallel",),  # OLLAMA_NUM_PARALLEL
    },
    "trtllm": {
        "max_num_seqs": ("max-batch-size",),
        "max_num_batched_tokens": ("max-num-tokens",),
        "tensor_parallel_size": ("tp-size",),
    },
}


def pinned_flag(engine: str, engine_args: dict[str, object], limit: PlannedLimit) -> tuple[str, object] | None:
    """The engineArgs key (as the user wrote it) and value that pin ``limit`` on ``engine``, if any."""
    names = LIMIT_FLAGS[engine].get(limit, ())
    for key, value in engine_args.items():
        if key.replace("_", "-") in names:
            return key, value
    return None


def max_tensor_parallel(deployment_max: int, tensor_parallel: Literal["yes", "experimental", "no"]) -> int:
    """The deployment's maxTensorParallel, 1 on an engine without (or with only experimental) tensor
    parallelism: llama.cpp's tensor split is experimental upstream, and Ollama spreads layers, not tensors."""
    return deployment_max if tensor_parallel == "yes" else 1
