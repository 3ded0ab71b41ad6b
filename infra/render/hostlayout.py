"""Where things live on a GPU host and inside the vLLM container (one place, used by every renderer)."""

from __future__ import annotations

VLLM_PORT = 8000  # vLLM's default `--port`
CONFIG_DIR = "/etc/gpufleet"  # rendered configs on the host
MODEL_CACHE = "/var/lib/gpufleet/models"  # weights synced from S3 / local mirrors, and the HF cache
CONTAINER_MODELS = "/models"  # MODEL_CACHE mounted here in the vLLM container
CONTAINER_HF_HOME = "/models/huggingface"  # HF_HOME inside the container: downloads persist on the host
CONTAINER_CONFIG = "/etc/gpufleet"  # CONFIG_DIR mounted read-only
# The user the project's vLLM image runs as (images/vllm/Dockerfile `ARG VLLM_UID`/`VLLM_GID`; a test checks
# they agree): the model cache must be writable by it, or vLLM cannot download weights from the Hub.
VLLM_UID = 10001


def weights_dir(profile: str) -> str:
    """Container path of weights that are not pulled from the Hugging Face Hub by vLLM itself."""
    return f"{CONTAINER_MODELS}/{profile}"


def adapter_dir(profile: str, adapter: str) -> str:
    return f"{CONTAINER_MODELS}/{profile}/adapters/{adapter}"
