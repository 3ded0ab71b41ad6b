"""What runs one replica of a deployment, whatever its engine: image, command, environment, port, probes.

Every renderer that starts a replica (systemd unit, compose service, cloud-init, Kubernetes Deployment, the
hostagent's health check, the scrape targets) reads an :class:`EngineLaunch` instead of knowing an engine.
Each engine's builder (``infra/render/engines/<engine>.py``, and :func:`infra.render.vllm.vllm_launch`) turns
the same profile and plan — tensor parallelism, context length, batching limits, memory fraction, precision —
into that engine's arguments; the facts (image, port, paths) come from ``infra/catalog/data/engines.yaml``.

The API key: an engine that reads it from an environment variable gets that variable from the deploy-time
env file (never rendered). SGLang takes it only as a command-line flag (visible in ``ps`` on the host), Ollama
and TensorRT-LLM take none: their replicas run without a key, and the load balancer (which checks every
request's key) and the host firewall (only the LB reaches a replica's port) are the gate.
"""

from __future__ import annotations

from dataclasses import dataclass

from infra.catalog.schema import InferenceEngine
from infra.render.artifacts import Artifact
from infra.render.hostlayout import CONTAINER_CONFIG

# The env file's variable when the engine reads no key from the environment: the file keeps one shape for
# every replica (provisioning writes it, the unit reads it), and nothing hands it to the container.
UNUSED_KEY_VAR = "GPUFLEET_API_KEY"


@dataclass(frozen=True)
class EngineLaunch:
    engine: InferenceEngine
    image: str
    """The engine's pinned upstream image (vLLM: the project's image built on it, when the program passes it)."""
    entrypoint: str | None
    """Overrides the image's entrypoint; None: the image's own (vLLM: ``vllm serve``)."""
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    """Non-secret environment of the container."""
    api_key_env: str | None
    """The variable the engine reads the API key from; None: the engine gets no key."""
    ready_path: str
    files: tuple[Artifact, ...]
    """The deployment's rendered engine files (configs under CONFIG_DIR; the argv record)."""

    @property
    def port(self) -> int:
        return self.engine.port

    @property
    def health_path(self) -> str:
        return self.engine.health.path

    @property
    def metrics_path(self) -> str | None:
        return self.engine.metrics.path

    @property
    def key_file_var(self) -> str:
        """The variable of the deploy-time env file."""
        return self.api_key_env or UNUSED_KEY_VAR

    @property
    def config_files(self) -> tuple[Artifact, ...]:
        """The files a replica reads at start (installed under CONFIG_DIR on a host, a ConfigMap on EKS)."""
        return tuple(a for a in self.files if a.kind in ("vllm-config", "engine-config"))

    def image_or(self, built: str | None) -> str:
        """The image a replica runs: the program's build of images/vllm for vLLM deployments, else the pin."""
        return built if built is not None and self.engine.name == "vllm" else self.image


def container_config_path(relative: str) -> str:
    """Where a rendered engine file (``engines/<d>.<ext>``) is inside the container."""
    return f"{CONTAINER_CONFIG}/{relative}"
