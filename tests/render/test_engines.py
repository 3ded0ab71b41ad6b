"""Every engine rendered from the same plan: arguments, images, probes, keys, pinned limits, and the mixed-engine
fleets on EKS and in one compose file checked by the real validators."""

from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from infra.catalog import load_catalog
from infra.plan.optimize import DeploymentPlan, EngineOverrides, FleetPlan, plan_stack
from infra.render.compose import COMPOSE_FILE, render_compose
from infra.render.engines import BUILDERS, EngineLaunch, engine_launch, sglang
from infra.render.engines.common import with_engine_args
from infra.render.k8s_workloads import render_k8s_workloads
from infra.render.prometheus_config import engine_relabelings, render_kubernetes_monitors
from infra.render.systemd import render_vllm_units
from infra.render.vllm_flags import load_engine_schema, validate_engine_args
from infra.spec.engine_limits import LIMIT_FLAGS, PlannedLimit
from infra.spec.load import Project, load_stack
from tests.tooling import require_tool

ROOT = Path(__file__).resolve().parents[2]
ENGINES = sorted(load_catalog().engines)
K8S_VERSION = "1.33.0"


@cache
def fleet(stack: str = "engines") -> FleetPlan:
    return plan_stack(load_stack(Project(ROOT), stack))


def on(engine: str) -> DeploymentPlan:
    (plan,) = [d for d in fleet().deployments if d.profile.engine == engine]
    return plan


def with_engine(plan: DeploymentPlan, engine: str) -> DeploymentPlan:
    """A deployment of another stack moved to ``engine`` (same plan), without what only vLLM takes (its flags,
    LoRA adapters), as validate requires."""
    profile = plan.profile.model_copy(update={"engine": engine, "engine_args": {}, "lora_adapters": []})
    return dataclasses.replace(plan, profile=profile)


def argv(launch: EngineLaunch) -> list[str]:
    (record,) = [a for a in launch.files if a.kind in ("vllm-args", "engine-args")]
    return list(json.loads(record.content))


def option(tokens: list[str], name: str) -> str:
    return tokens[tokens.index(name) + 1]


def test_the_engines_stack_runs_every_engine() -> None:
    assert sorted(d.profile.engine for d in fleet().deployments) == ENGINES
    assert set(BUILDERS) == set(ENGINES)


@pytest.mark.parametrize("engine", ENGINES)
def test_launch_uses_the_catalog_pin_port_and_paths(engine: str) -> None:
    plan, record = on(engine), load_catalog().engines[engine]
    launch = engine_launch(plan)
    assert launch.image == record.image.pinned and launch.port == record.port
    assert launch.health_path == record.health.path
    assert launch.ready_path == record.health.ready_for(plan.profile.resolved_served_name)
    assert launch.metrics_path == record.metrics.path
    assert (launch.api_key_env is not None) == (record.capabilities.api_key == "env")


def test_sglang_arguments_come_from_the_plan_and_parse() -> None:
    plan = on("sglang")
    assert plan.chosen is not None
    tokens = argv(engine_launch(plan))
    assert tokens[:3] == ["python3", "-m", "sglang.launch_server"]
    limits = plan.chosen.replica.limits
    assert option(tokens, "--tp-size") == str(plan.chosen.config.tp)
    assert option(tokens, "--context-length") == str(limits.max_model_len)
    assert option(tokens, "--max-running-requests") == str(limits.max_num_seqs)
    assert option(tokens, "--chunked-prefill-size") == str(limits.max_num_batched_tokens)
    assert "--enable-metrics" in tokens and "--api-key" not in tokens  # no key on the command line
    assert option(tokens, "--schedule-policy") == "lpm"  # the profile's engineArgs
    schema = load_engine_schema("sglang")
    assert schema is not None
    flags = with_engine_args(sglang.planned_flags(plan, load_catalog().engines["sglang"]), plan.profile)
    assert validate_engine_args(flags, schema) == []  # SGLang 0.5.21's own parser accepts every flag


def test_tgi_arguments_come_from_the_plan() -> None:
    plan = on("tgi")
    assert plan.chosen is not None
    tokens, limits = argv(engine_launch(plan)), plan.chosen.replica.limits
    assert tokens[0] == "text-generation-launcher"
    assert option(tokens, "--num-shard") == str(plan.chosen.config.tp)
    assert option(tokens, "--max-total-tokens") == str(limits.max_model_len)
    assert option(tokens, "--max-input-tokens") == str(limits.max_model_len - 1)
    # TGI refuses to start when one prefill batch cannot hold the longest prompt.
    assert int(option(tokens, "--max-batch-prefill-tokens")) >= limits.max_model_len - 1
    assert engine_launch(plan).api_key_env == "API_KEY"


def test_llamacpp_downloads_the_pinned_revision_onto_the_gpu() -> None:
    plan = on("llamacpp")
    assert plan.chosen is not None
    tokens = argv(engine_launch(plan))
    weights = plan.profile.weights
    assert option(tokens, "--model-url") == (f"https://huggingface.co/{weights.repo}/resolve/"  # type: ignore[union-attr]
                                             f"{weights.revision}/{weights.file}")  # type: ignore[union-attr]
    assert option(tokens, "--n-gpu-layers") == "999" and "--metrics" in tokens and "--kv-unified" in tokens
    assert option(tokens, "--ctx-size") == str(plan.chosen.replica.memory.kv_capacity_tokens)
    assert option(tokens, "--parallel") == str(plan.chosen.replica.limits.max_num_seqs)
    assert plan.chosen.config.tp == 1


def test_ollama_start_script_is_valid_shell_and_creates_the_served_model(tmp_path: Path) -> None:
    plan = on("ollama")
    launch = engine_launch(plan)
    files = {a.path: a.content for a in launch.config_files}
    script = files["engines/ollama-dev.ollama.sh"]
    (tmp_path / "start.sh").write_text(script)
    for check in ([require_tool("sh"), "-n"], [require_tool("shellcheck"), "--shell=sh"]):
        result = subprocess.run([*check, str(tmp_path / "start.sh")], capture_output=True, text=True, timeout=60,
                                check=False)
        assert result.returncode == 0, result.stdout + result.stderr
    served = plan.profile.resolved_served_name
    assert f"/bin/ollama create {served} -f /etc/gpufleet/engines/ollama-dev.Modelfile" in script
    assert "/bin/ollama pull hf.co/bartowski/Meta-Llama-3.1-8B-Instruct-GGUF:Q4_K_M" in script
    modelfile = files["engines/ollama-dev.Modelfile"].splitlines()
    assert "FROM hf.co/bartowski/Meta-Llama-3.1-8B-Instruct-GGUF:Q4_K_M" in modelfile
    env = dict(launch.env)
    assert env["OLLAMA_NUM_PARALLEL"] == str(plan.chosen.replica.limits.max_num_seqs)  # type: ignore[union-attr]
    assert env["OLLAMA_KEEP_ALIVE"] == "-1" and launch.api_key_env is None
    assert launch.ready_path == f"/v1/models/{served}"


def test_trtllm_turns_on_its_prometheus_endpoint() -> None:
    plan = on("trtllm")
    launch = engine_launch(plan)
    tokens = argv(launch)
    options_file = option(tokens, "--extra_llm_api_options")
    (config,) = launch.config_files
    assert options_file == f"/etc/gpufleet/{config.path}"
    assert yaml.safe_load(config.content)["return_perf_metrics"] is True
    assert option(tokens, "--tp_size") == str(plan.chosen.config.tp)  # type: ignore[union-attr]
    assert ({"source_labels": ["inference_engine"], "regex": "trtllm", "target_label": "__metrics_path__",
             "replacement": "/prometheus/metrics"} in engine_relabelings())


# -- pinned limits: the planner reads the flags the renderer writes --------------------------------------------

LIMIT_VALUES: dict[PlannedLimit, int | float] = {
    "max_num_seqs": 24, "max_num_batched_tokens": 4096, "gpu_memory_utilization": 0.8, "tensor_parallel_size": 1,
}


def rendered_tokens(launch: EngineLaunch) -> list[str]:
    return [*argv(launch), *(f"{name}={value}" for name, value in launch.env)]


@pytest.mark.parametrize(("engine", "limit"), [(e, limit) for e in ENGINES for limit in LIMIT_FLAGS[e]])
def test_a_pinned_limit_is_planned_and_rendered_once(engine: str, limit: PlannedLimit) -> None:
    plan = on(engine)
    flag = LIMIT_FLAGS[engine][limit][0]
    written = flag.replace("-", "_") if engine == "trtllm" else flag
    value = LIMIT_VALUES[limit]
    profile = plan.profile.model_copy(update={"engine_args": {**plan.profile.engine_args, written: value}})
    assert getattr(EngineOverrides.of(profile), limit) == value
    tokens = rendered_tokens(engine_launch(dataclasses.replace(plan, profile=profile)))
    if engine == "ollama":
        assert f"OLLAMA_{written.replace('-', '_').upper()}={value}" in tokens
    else:
        assert tokens.count(f"--{written}") == 1 and option(tokens, f"--{written}") == str(value)


# -- the unit: image, entrypoint, port, key, readiness ----------------------------------------------------------

@pytest.mark.parametrize("engine", ENGINES)
def test_unit_runs_the_engine(engine: str) -> None:
    plan = on(engine)
    launch = engine_launch(plan)
    (unit,) = [a for a in render_vllm_units(plan) if a.path.endswith("@.service")]
    text = unit.content.replace("\\\n", " ")
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    words = shlex.split(exec_start.removeprefix("ExecStart="))
    assert launch.image in words and f"${{GPUFLEET_PORT}}:{launch.port}" in words
    assert ("--entrypoint" in words) == (launch.entrypoint is not None)
    assert ("VLLM_API_KEY" in words or "API_KEY" in words or "LLAMA_API_KEY" in words) == (launch.api_key_env
                                                                                           is not None)
    assert f"http://127.0.0.1:${{GPUFLEET_PORT}}{launch.ready_path}" in text
    assert words[words.index(launch.image) + 1:] == list(launch.args)


def test_the_program_image_replaces_only_vllm() -> None:
    built = "123456789012.dkr.ecr.us-east-1.amazonaws.com/gpufleet-vllm@sha256:" + "0" * 64
    for engine in ENGINES:
        launch = engine_launch(on(engine))
        assert launch.image_or(built) == (built if engine == "vllm" else launch.image)


# -- mixed fleets through the real validators -----------------------------------------------------------------

@cache
def mixed_eks() -> FleetPlan:
    """prod's deployments on every engine: its two as they are on vLLM and SGLang/TGI/TRT-LLM, and copies of its
    support deployment serving the engines stack's GGUF profiles (llama.cpp, Ollama)."""
    prod = fleet("prod")
    chat, support = prod.deployments
    deployments = [chat, *(dataclasses.replace(with_engine(support, e), deployment=support.deployment.model_copy(
        update={"name": f"support-{e}"})) for e in ("sglang", "tgi", "trtllm"))]
    for engine in ("llamacpp", "ollama"):
        gguf = on(engine).profile.model_copy(update={"served_model_name": f"support-{engine}"})
        deployments.append(dataclasses.replace(support, profile=gguf, deployment=support.deployment.model_copy(
            update={"name": f"support-{engine}"})))
    return dataclasses.replace(prod, deployments=deployments)


def k8s_docs(artifacts: list[Any]) -> list[dict[str, Any]]:
    return [doc for a in artifacts for doc in yaml.safe_load_all(a.content) if doc]


def test_mixed_eks_workloads_pass_strict_validation() -> None:
    docs = k8s_docs(render_k8s_workloads(mixed_eks()))
    for doc in docs:
        if doc["kind"] != "ScaledObject":  # a CRD: its schema is checked in test_k8s_workloads
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    by_deployment = {d.deployment.name: d for d in mixed_eks().deployments}
    for doc in docs:
        if doc["kind"] != "Deployment":
            continue
        plan = by_deployment[doc["metadata"]["labels"]["gpufleet.dev/deployment"]]
        launch = engine_launch(plan)
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        assert container["image"] == launch.image and container["args"] == list(launch.args)
        assert container["readinessProbe"]["httpGet"]["path"] == launch.ready_path
        assert container["ports"][0]["containerPort"] == launch.port
        # Ollama has no queue metric for KEDA: the Deployment holds the plan's count itself.
        assert ("replicas" in doc["spec"]) == (plan.profile.engine == "ollama")
    scaled = {doc["metadata"]["name"] for doc in docs if doc["kind"] == "ScaledObject"}
    ollama = {f"gpufleet-vllm-{d.deployment.name}" for d in mixed_eks().deployments if d.profile.engine == "ollama"}
    assert ollama and not scaled & ollama


def test_mixed_eks_monitors_scrape_each_engine_on_its_path() -> None:
    artifacts = render_kubernetes_monitors(mixed_eks())
    monitors = [doc for doc in k8s_docs(artifacts) if doc["kind"] == "ServiceMonitor"]
    paths = {m["metadata"]["name"]: m["spec"]["endpoints"][0]["path"] for m in monitors}
    for d in mixed_eks().deployments:
        path = load_catalog().engines[d.profile.engine].metrics.path
        assert paths.get(f"gpufleet-vllm-{d.deployment.name}") == path  # none for Ollama


def test_mixed_compose_file_passes_the_compose_schema(tmp_path: Path) -> None:
    dev = fleet("dev")
    (chat,) = dev.deployments
    mixed = dataclasses.replace(dev, deployments=[with_engine(chat, "sglang")])
    artifacts = {a.path: a for a in render_compose(mixed)}
    path = tmp_path / "docker-compose.yaml"
    path.write_text(artifacts[COMPOSE_FILE].content)
    result = subprocess.run([require_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
                            capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    service = yaml.safe_load(path.read_text())["services"]["vllm-chat-0"]
    launch = engine_launch(mixed.deployments[0])
    assert service["entrypoint"] == ["python3"] and service["command"] == list(launch.args)
    assert "env_file" not in service  # SGLang reads no key variable
    assert launch.ready_path in " ".join(service["healthcheck"]["test"])
