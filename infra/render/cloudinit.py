"""cloud-init user data of the GPU instances of an aws-ec2 stack: ``cloud-init/<deployment>.yaml``.

One ``#cloud-config`` document per deployment, for an AWS GPU AMI (Deep Learning AMI / GPU AMI: NVIDIA
driver, container toolkit, docker and the AWS CLI preinstalled). eks stacks get Kubernetes manifests and
onprem stacks Ansible instead, so other targets render nothing here.

Self-contained and exactly what was reviewed: ``write_files`` embeds, byte for byte, the artifacts the other
renderers produce for the deployment — its vLLM config (``render_vllm``) at ``/etc/gpufleet/vllm/<d>.yaml``
and its systemd template unit and slot drop-ins (``render_vllm_units``) and the exporter units
(``render_gpu_exporter_units``) under ``/etc/systemd/system/`` —
all mode 0644, plus small ``set -euo pipefail`` scripts (templates/cloud-init/) under
``/usr/local/lib/gpufleet/``. ``runcmd`` runs only ``bootstrap.sh``, which runs the steps in order and stops
at the first failure, printing it to the console (EC2 "Get system log") and cloud-init-output.log:

1. ``verify-host.sh`` — ``nvidia-smi`` shows the planned GPU count of the instance type; ``nvidia-ctk``
   exists; docker runs and has the ``nvidia`` runtime.
2. ``fetch-api-key.sh`` — writes the env file (``VLLM_API_KEY=…``, mode 0600, root) from the stack's secret
   in AWS Secrets Manager or SSM Parameter Store with the instance role. The user data names the secret,
   never holds its value.
3. ``sync-weights.sh`` (only when the profile's weights or adapters are in S3) — ``aws s3 sync`` into the
   model cache at the paths the vLLM config names (``/models/<profile>`` in the container).
4. ``start-vllm.sh`` — ``docker pull`` of the pinned image, ``systemctl daemon-reload``, enable and start
   the host's exporters (dcgm-exporter, node_exporter: the monitoring host's jobs ``dcgm`` and ``node``) and
   the ``gpu_count // tp`` slots one machine holds (``--no-block``: health is the unit's job).

IMDSv2 only: nothing here reads instance metadata itself; the region is rendered in, and the AWS CLI gets
role credentials via IMDSv2 tokens with the IMDSv1 fallback disabled (``AWS_EC2_METADATA_V1_DISABLED``).
``package_update``/``package_upgrade`` are off so boot never swaps the AMI's NVIDIA driver.

Deterministic: sorted inputs, no timestamps; multi-line contents are YAML literal blocks for review.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any

import yaml

from infra.plan.optimize import DeploymentPlan, FleetPlan
from infra.render.artifacts import Artifact
from infra.render.engines import engine_launch
from infra.render.hostlayout import CONFIG_DIR, CONTAINER_MODELS, MODEL_CACHE, adapter_dir, weights_dir
from infra.render.systemd import (
    EXPORTER_UNITS,
    env_file,
    instance_name,
    render_gpu_exporter_units,
    render_vllm_units,
    slots_per_machine,
)
from infra.render.templating import render_template
from infra.spec.profile import ModelProfile, S3Weights

SYSTEMD_DIR = "/etc/systemd/system"
SCRIPT_DIR = "/usr/local/lib/gpufleet"
BOOTSTRAP = f"{SCRIPT_DIR}/bootstrap.sh"
BOOT_SECRET_SOURCES = ("aws-secrets-manager", "aws-ssm-parameter")
SECRET_NAME = re.compile(r"^[A-Za-z0-9/_+=.@:-]+$")  # Secrets Manager names/ARNs, SSM parameter names
USER_DATA_LIMIT = 16384  # bytes: EC2 rejects larger (uncompressed, before base64) user data


class UnsupportedSecret(ValueError):
    """The API key's store cannot be read by an EC2 instance at boot."""


def user_data_path(deployment: str) -> str:
    return f"cloud-init/{deployment}.yaml"


def host_path(artifact: Artifact) -> str:
    """Where an embedded artifact lands on the GPU host."""
    if artifact.kind in ("vllm-config", "engine-config"):
        return f"{CONFIG_DIR}/{artifact.path}"
    if artifact.kind == "systemd-unit" and artifact.path.startswith("systemd/"):
        return f"{SYSTEMD_DIR}/{artifact.path.removeprefix('systemd/')}"
    raise ValueError(f"no host path for {artifact.kind} artifact {artifact.path}")


def host_models_path(container_path: str) -> str:
    assert container_path.startswith(CONTAINER_MODELS + "/")
    return MODEL_CACHE + container_path.removeprefix(CONTAINER_MODELS)


@dataclass(frozen=True)
class S3Sync:
    uri_arg: str
    """The s3:// URI, shell-quoted."""
    target: str
    """Host directory in the model cache."""
    marker: str
    """A file the synced checkpoint must hold."""


def s3_syncs(profile: ModelProfile) -> list[S3Sync]:
    """S3 weights and S3 LoRA adapters of a profile (Hub ones are downloaded by vLLM itself)."""
    syncs = []
    if isinstance(profile.weights, S3Weights):
        syncs.append(S3Sync(shlex.quote(profile.weights.uri), host_models_path(weights_dir(profile.name)),
                            "config.json"))
    for adapter in profile.lora_adapters:
        if isinstance(adapter.weights, S3Weights):
            syncs.append(S3Sync(shlex.quote(adapter.weights.uri),
                                host_models_path(adapter_dir(profile.name, adapter.name)),
                                "adapter_config.json"))
    return syncs


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def cloud_config(config: dict[str, Any]) -> str:
    """The YAML body of a #cloud-config: keys in the given order, multi-line strings as literal blocks."""
    return yaml.dump(config, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000,
                     allow_unicode=True)


def _file(path: str, content: str, permissions: str) -> dict[str, Any]:
    return {"path": path, "owner": "root:root", "permissions": permissions, "content": content}


def embedded_artifacts(plan: DeploymentPlan, image: str | None = None) -> list[Artifact]:
    """The engine's config files and systemd units of the deployment and the host's exporter units, exactly as
    the other renderers produce them."""
    return sorted([*engine_launch(plan).config_files, *render_vllm_units(plan, image), *render_gpu_exporter_units()])


def render_user_data(fleet: FleetPlan, plan: DeploymentPlan, image: str | None = None) -> Artifact:
    """``image``: as in render_vllm_units (the program passes the vLLM image it built and pushed)."""
    assert plan.chosen is not None  # render runs on feasible plans only
    name = plan.deployment.name
    spec = fleet.spec
    secret = spec.api_key
    if secret.source not in BOOT_SECRET_SOURCES:
        raise UnsupportedSecret(
            f"apiKey.source {secret.source} cannot be read by an EC2 instance at boot; "
            f"use one of {', '.join(BOOT_SECRET_SOURCES)} for target aws-ec2"
        )
    if not SECRET_NAME.match(secret.name):
        raise UnsupportedSecret(f"apiKey.name {secret.name!r} is not a Secrets Manager or SSM parameter name")
    if spec.region is None:
        raise ValueError("target aws-ec2 needs a region")
    instance = plan.chosen.machine.instance
    tp = plan.chosen.config.tp
    slots = [instance_name(name, slot) for slot in range(slots_per_machine(plan))]
    syncs = s3_syncs(plan.profile)
    common = {"deployment": name, "region": spec.region}

    scripts: dict[str, str] = {
        "verify-host.sh": render_template(
            "cloud-init/verify-host.sh.j2", **common, gpu_count=instance.gpu_count,
            instance_type=instance.name,
        ),
        "fetch-api-key.sh": render_template(
            "cloud-init/fetch-api-key.sh.j2", **common, source=secret.source, secret_name=secret.name,
            secret_arg=shlex.quote(secret.name), env_file=env_file(name),
            env_dir=env_file(name).rsplit("/", 1)[0], api_key_env=engine_launch(plan).key_file_var,
        ),
    }
    if syncs:
        scripts["sync-weights.sh"] = render_template(
            "cloud-init/sync-weights.sh.j2", **common, profile=plan.profile.name, syncs=syncs,
            model_cache=MODEL_CACHE,
        )
    scripts["start-vllm.sh"] = render_template(
        "cloud-init/start-vllm.sh.j2", **common, image=engine_launch(plan).image_or(image), units=" ".join(slots),
        slot_count=len(slots), gpu_count=instance.gpu_count, tp=tp, exporters=" ".join(EXPORTER_UNITS),
    )
    scripts["bootstrap.sh"] = render_template(
        "cloud-init/bootstrap.sh.j2", **common, directories=[MODEL_CACHE],
        steps=[f"{SCRIPT_DIR}/{script}" for script in scripts],
    )

    files = [_file(host_path(a), a.content, "0644") for a in embedded_artifacts(plan, image)]
    files += [_file(f"{SCRIPT_DIR}/{script}", text, "0755") for script, text in sorted(scripts.items())]
    config = {
        "package_update": False,
        "package_upgrade": False,
        "write_files": files,
        "runcmd": [[BOOTSTRAP]],
    }
    header = (
        "#cloud-config\n"
        f"# User data of the GPU instances ({instance.name}) of deployment '{name}' (rendered by gpufleet;\n"
        f"# do not edit). {len(slots)} {engine_launch(plan).engine.title} slot(s) per instance; the API key is read\n"
        f"# at boot from {secret.source}, never stored here.\n"
    )
    text = header + cloud_config(config)
    if len(text.encode()) > USER_DATA_LIMIT:
        raise ValueError(f"user data of {name} is {len(text.encode())} bytes, over EC2's {USER_DATA_LIMIT}")
    return Artifact(user_data_path(name), "cloud-init", name, text)


def render_cloudinit(fleet: FleetPlan) -> list[Artifact]:
    if fleet.spec.target != "aws-ec2":
        return []
    return [render_user_data(fleet, deployment) for deployment in fleet.deployments]
