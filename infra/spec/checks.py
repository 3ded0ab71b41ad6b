"""Cross-field checks: what no single field can know — catalogs, targets, profiles and memory.

Each check yields ``SpecIssue``s located in the file the user has to edit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infra.catalog import Catalog, load_catalog
from infra.catalog.schema import Architecture, Gpu
from infra.plan.memory import GIB, ReplicaMemory, replica_memory, tensor_parallel_problem
from infra.render.vllm_flags import validate_engine_args
from infra.spec.alerting import Alerting
from infra.spec.engine_checks import check_engine
from infra.spec.engine_limits import max_tensor_parallel, pinned_flag
from infra.spec.issues import SpecIssue
from infra.spec.locate import Locator
from infra.spec.profile import BaseModelArchitecture, HuggingFaceWeights, ModelProfile
from infra.spec.pydantic_issues import did_you_mean
from infra.spec.secrets import SecretRef
from infra.spec.stack import Deployment, StackSpec

if TYPE_CHECKING:
    from infra.spec.load import LoadedProfile

TP_DEGREES = (1, 2, 4, 8)  # GPU counts of the instance and server types in the catalog
# Secrets the instance role can fetch at boot (the cloud-init user data does, infra/render/cloudinit.py).
EC2_READABLE_SECRETS = ("aws-secrets-manager", "aws-ssm-parameter")
# Ansible resolves on-prem secrets on the machine that runs it (infra/render/ansible.py secret_expression).
ONPREM_READABLE_SECRETS = ("ansible-vault", "env")
# On eks, `pulumi up` reads every secret on the deploying machine and writes it into a Kubernetes Secret
# (infra/provision/k8s.py SECRET_READERS).
EKS_READABLE_SECRETS = ("aws-secrets-manager", "aws-ssm-parameter", "pulumi-config")
UNPINNED_REVISIONS = {"main", "master", "head"}


def check_stack(
    spec: StackSpec, provider_config: dict[str, Any], locator: Locator, profiles: dict[str, LoadedProfile]
) -> Iterator[SpecIssue]:
    catalog = load_catalog()
    yield from _check_target(spec, provider_config, locator, catalog)
    yield from _check_names(spec, locator, profiles)
    yield from _check_pricing(spec, locator, catalog)
    yield from _check_alerting(spec, locator)
    yield from check_profiles(profiles)
    for index, deployment in enumerate(spec.deployments):
        yield from _check_gpus(spec, index, deployment, locator, catalog)
        yield from _check_redundancy(index, deployment, locator)
        profile = profiles[deployment.model].profile if deployment.model in profiles else None
        arch = resolve_architecture(profile, catalog) if profile else None
        if profile is None or arch is None or _max_model_len_problem(profile, arch):
            continue  # the fit needs a known architecture and a valid maxModelLen (the profile's errors)
        yield from _check_deployment_fit(
            index, deployment=deployment, profile=profile, arch=arch, locator=locator, spec=spec, catalog=catalog
        )


def check_project_files(spec: StackSpec, root: Path, locator: Locator) -> Iterator[SpecIssue]:
    """Files the stack names relative to the project: they must be there (a deploy would fail later)."""
    if spec.onprem is None:
        return
    for index, name in enumerate(spec.onprem.vars_files):
        path = (root / name).resolve()
        if not path.is_relative_to(root.resolve()) or not path.is_file():
            yield locator.issue(("onprem", "varsFiles", index), f"no file '{name}' in the project",
                                "paths are relative to the directory of Pulumi.yaml, e.g. ansible/vault/STACK.yml "
                                "(create it with ansible-vault create)")


def resolve_architecture(profile: ModelProfile, catalog: Catalog) -> Architecture | None:
    if isinstance(profile.architecture, BaseModelArchitecture):
        base = catalog.models.get(profile.architecture.base_model)
        return base.architecture if base else None
    return profile.architecture


def check_profiles(profiles: dict[str, LoadedProfile]) -> Iterator[SpecIssue]:
    """Each profile's own checks; also run when the stack file itself does not validate."""
    catalog = load_catalog()
    for loaded in profiles.values():
        yield from check_profile(loaded.profile, loaded.locator, catalog)


def max_model_len(profile: ModelProfile, arch: Architecture) -> int:
    return profile.max_model_len or arch.max_context


def _max_model_len_problem(profile: ModelProfile, arch: Architecture) -> str | None:
    if profile.max_model_len is not None and profile.max_model_len > arch.max_context:
        return f"{profile.max_model_len} exceeds the model's context of {arch.max_context} tokens"
    return None


def _either(values: list[str]) -> str:
    """['4', '8'] -> '4 or 8'."""
    return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} or {values[-1]}"


def _check_allowed_quantization(profile: ModelProfile, locator: Locator, catalog: Catalog) -> Iterator[SpecIssue]:
    """Alternatives the planner may pick must load from the profile's own weights."""
    for index, name in enumerate(profile.allowed_quantization):
        alternative = catalog.quantization.get(name)
        if alternative is None:
            yield locator.issue(("allowedQuantization", index), f"unknown quantization method '{name}'",
                                did_you_mean(name, catalog.quantization))
        elif alternative.needs_prequantized_weights and name != profile.quantization:
            yield locator.issue(("allowedQuantization", index),
                                f"{name} needs a checkpoint quantized with {name}, not these weights",
                                "make a profile for the quantized checkpoint instead")


def _check_engine_args(profile: ModelProfile, locator: Locator) -> Iterator[SpecIssue]:
    """vLLM's engineArgs against the flag schema of the pinned vLLM version (names, types, choices); other
    engines' in infra/spec/engine_checks.py."""
    if profile.engine != "vllm":
        return
    problems = validate_engine_args(profile.engine_args)
    for problem in problems:
        yield locator.issue(("engineArgs", problem.flag), problem.message, problem.hint,
                            at_key=problem.message.startswith("unknown"), severity=problem.severity)
    if not problems:
        yield from _check_batch_limits(profile, locator)


def _check_batch_limits(profile: ModelProfile, locator: Locator) -> Iterator[SpecIssue]:
    """vLLM refuses to start when max_num_batched_tokens < max_num_seqs (SchedulerConfig)."""
    args = {name.replace("_", "-"): (name, value) for name, value in profile.engine_args.items()}
    if "max-num-batched-tokens" in args and "max-num-seqs" in args:
        (tokens_key, tokens), (_, seqs) = args["max-num-batched-tokens"], args["max-num-seqs"]
        if isinstance(tokens, int) and isinstance(seqs, int) and tokens < seqs:
            yield locator.issue(("engineArgs", tokens_key), f"{tokens} is below max-num-seqs ({seqs}): vLLM "
                                "refuses to start", f"allowed range: >= {seqs}")


def check_profile(profile: ModelProfile, locator: Locator, catalog: Catalog) -> Iterator[SpecIssue]:
    if isinstance(profile.architecture, BaseModelArchitecture):
        base = profile.architecture.base_model
        if base not in catalog.models:
            yield locator.issue(("architecture", "baseModel"), f"unknown catalog model '{base}'",
                                did_you_mean(base, catalog.models))
    yield from _check_allowed_quantization(profile, locator, catalog)
    yield from _check_engine_args(profile, locator)
    yield from check_engine(profile, locator, catalog)
    method = catalog.quantization.get(profile.quantization)
    if method is None:
        yield locator.issue(("quantization",), f"unknown quantization method '{profile.quantization}'",
                            did_you_mean(profile.quantization, catalog.quantization))
    elif profile.weight_bits is not None and profile.weight_bits not in method.weight_bits:
        allowed = _either([str(bits) for bits in method.weight_bits])
        yield locator.issue(("weightBits",), f"{method.name} weights are {allowed} bits, not {profile.weight_bits}",
                            f"set weightBits to {allowed}, or leave it out for {method.weight_bits[0]}")
    arch = resolve_architecture(profile, catalog)
    problem = _max_model_len_problem(profile, arch) if arch is not None else None
    if arch is not None and problem is not None:
        yield locator.issue(("maxModelLen",), problem, f"allowed range: <= {arch.max_context}")
    pinned = _pinned_tp(profile)
    if arch is not None and pinned is not None:
        tp, flag = pinned
        problem = tensor_parallel_problem(arch, tp)
        if problem:
            yield locator.issue(("engineArgs", flag), problem, _tp_hint(arch))
    if isinstance(profile.weights, HuggingFaceWeights) and profile.weights.revision.lower() in UNPINNED_REVISIONS:
        hint = ("Ollama cannot pin one: download the file and use source: local for fixed weights"
                if profile.engine == "ollama" else "pin a commit SHA so every replica serves the same weights")
        yield locator.issue(("weights", "revision"), f"'{profile.weights.revision}' moves with every push", hint,
                            severity="warning")
    names = [adapter.name for adapter in profile.lora_adapters]
    for index, name in enumerate(names):
        if name in names[:index] or name == profile.resolved_served_name:
            yield locator.issue(("loraAdapters", index, "name"), f"'{name}' is already a served model name")


def _pinned_tp(profile: ModelProfile) -> tuple[int, str] | None:
    pinned = pinned_flag(profile.engine, dict(profile.engine_args), "tensor_parallel_size")
    if pinned is not None and isinstance(pinned[1], int) and not isinstance(pinned[1], bool):
        return pinned[1], pinned[0]
    return None


def _tp_hint(arch: Architecture) -> str:
    valid = [tp for tp in TP_DEGREES if tensor_parallel_problem(arch, tp) is None]
    return f"valid tensor-parallel degrees: {', '.join(map(str, valid))}"


def _check_target(
    spec: StackSpec, provider_config: dict[str, Any], locator: Locator, catalog: Catalog
) -> Iterator[SpecIssue]:
    cloud = spec.target in ("aws-ec2", "eks")
    aws_region = provider_config.get("aws:region")
    if cloud and spec.region is None:
        example = aws_region if isinstance(aws_region, str) else "us-east-1"
        yield locator.issue(("region",), f"target {spec.target} needs an AWS region",
                            f"add {locator.shown(('region',))}: {example}", at_key=True)
    if cloud and spec.region and aws_region and aws_region != spec.region:
        yield locator.issue(("region",), f"'{spec.region}' differs from aws:region '{aws_region}'",
                            "the AWS provider deploys to aws:region; make them equal")
    for index, zone in enumerate(spec.zones):
        if spec.region and not zone.startswith(spec.region):
            yield locator.issue(("zones", index), f"'{zone}' is not a zone of {spec.region}",
                                f"zones of {spec.region} are named {spec.region}a, {spec.region}b, ...")
    if spec.target == "onprem":
        yield from _check_onprem(spec, locator, catalog)
    else:
        if spec.onprem is not None:
            yield locator.issue(("onprem",), "only the onprem target uses onprem hosts", at_key=True)
        if spec.pricing.onprem is not None:
            yield locator.issue(("pricing", "onprem"), "only the onprem target uses on-prem pricing",
                                "AWS targets are priced from the catalog (and pricing.instancePrices)",
                                at_key=True)
    yield from _check_ec2_secrets(spec, locator)
    yield from _check_eks_secrets(spec, locator)
    yield from _check_eks(spec, locator)
    yield from _check_reservations(spec, locator)
    if spec.network.tls.source == "acm" and not cloud:
        yield locator.issue(("network", "tls", "source"), "ACM certificates exist only on AWS",
                            "use file (cert + key secrets) or self-signed")
    if spec.network.tls.source == "none" and any(c.endswith("/0") for c in spec.network.allowed_client_cidrs):
        yield locator.issue(("network", "tls"), "the API is open to the internet without TLS: keys travel in clear",
                            "use tls.source acm or file", severity="warning", at_key=True)


def _check_ec2_secrets(spec: StackSpec, locator: Locator) -> Iterator[SpecIssue]:
    """The GPU instances read the API key at boot, the LB and monitoring hosts every secret when they converge
    (infra/hostagent/sync.py): all of them with their instance role."""
    if spec.target != "aws-ec2":
        return
    for path, ref in _secret_refs(spec):
        if ref.source not in EC2_READABLE_SECRETS:
            yield locator.issue((*path, "source"), f"an EC2 instance cannot read secrets from {ref.source}",
                                f"use {' or '.join(EC2_READABLE_SECRETS)}")


def _check_eks_secrets(spec: StackSpec, locator: Locator) -> Iterator[SpecIssue]:
    if spec.target != "eks":
        return
    for path, ref in _secret_refs(spec):
        if ref.source not in EKS_READABLE_SECRETS:
            yield locator.issue((*path, "source"), f"`pulumi up` cannot read secrets from {ref.source} for eks",
                                f"use {', '.join(EKS_READABLE_SECRETS[:-1])} or {EKS_READABLE_SECRETS[-1]} "
                                "(`pulumi config set --secret`)")


def _check_reservations(spec: StackSpec, locator: Locator) -> Iterator[SpecIssue]:
    """A capacity reservation is an AWS one, in a zone the fleet's subnets cover."""
    zones = spec.zones or ([f"{spec.region}a", f"{spec.region}b"] if spec.region else [])
    for index, deployment in enumerate(spec.deployments):
        reservation = deployment.capacity_reservation
        if reservation is None:
            continue
        path = ("deployments", index, "capacityReservation")
        if spec.target == "onprem":
            yield locator.issue(path, "capacity reservations are an AWS offer, not on-prem", at_key=True)
        elif reservation.zone not in zones:
            yield locator.issue((*path, "zone"), f"'{reservation.zone}' is not one of the stack's zones",
                                f"the fleet has subnets in {', '.join(zones)}: add the zone to zones, or use a "
                                "reservation in one of them")


# On eks TLS ends on the NLB of the LB's LoadBalancer Service (infra/render/k8s_lb.py), or nowhere.
EKS_TLS_SOURCES = ("acm", "none")


def _check_eks(spec: StackSpec, locator: Locator) -> Iterator[SpecIssue]:
    if spec.eks is not None and spec.target != "eks":
        yield locator.issue(("eks",), "only the eks target uses eks settings", at_key=True)
    if spec.target == "eks" and spec.network.tls.source not in EKS_TLS_SOURCES:
        yield locator.issue(("network", "tls", "source"),
                            f"on eks, TLS ends on the network load balancer, not in Nginx ({spec.network.tls.source})",
                            "use source: acm with the certificate's arn (or none inside a private network)")
    kubeconfig = spec.eks.existing_kubeconfig if spec.eks else None
    if kubeconfig is not None and kubeconfig.source != "pulumi-config":
        yield locator.issue(("eks", "existingKubeconfig", "source"),
                            f"the kubeconfig of an existing cluster cannot come from {kubeconfig.source}",
                            "store it with `pulumi config set --secret gpufleet:kubeconfig < kubeconfig` and use "
                            "source: pulumi-config, name: gpufleet:kubeconfig")


def _check_onprem(spec: StackSpec, locator: Locator, catalog: Catalog) -> Iterator[SpecIssue]:
    if spec.onprem is None:
        yield locator.issue(("onprem",), "the onprem target needs its hosts (gpuServers, loadBalancers, monitoring)",
                            at_key=True)
    if spec.pricing.onprem is None:
        yield locator.issue(("pricing", "onprem"), "the onprem target needs serverHourUsd or amortisation",
                            "serverHourUsd is the all-in $/hour of one server; amortisation derives it from "
                            "capexUsd, years, powerKw and usdPerKwh", at_key=True)
    if spec.pricing.spot_allowed:
        yield locator.issue(("pricing", "spotAllowed"), "spot capacity is an AWS offer, not on-prem")
    if spec.pricing.capacity_blocks_allowed:
        yield locator.issue(("pricing", "capacityBlocksAllowed"), "capacity blocks are an AWS offer, not on-prem")
    if spec.onprem is None:
        return
    onprem_types = [name for name, it in catalog.instances.items() if it.provider == "onprem"]
    for index, server in enumerate(spec.onprem.gpu_servers):
        instance = catalog.instances.get(server.server_type)
        if instance is None or instance.provider != "onprem":
            yield locator.issue(("onprem", "gpuServers", index, "serverType"),
                                f"unknown on-prem server type '{server.server_type}'",
                                did_you_mean(server.server_type, onprem_types))
    hosts = [
        *((("onprem", "gpuServers", i), host) for i, host in enumerate(spec.onprem.gpu_servers)),
        *((("onprem", "loadBalancers", i), host) for i, host in enumerate(spec.onprem.load_balancers)),
        (("onprem", "monitoring"), spec.onprem.monitoring),
    ]
    first: dict[str, tuple[str | int, ...]] = {}
    for path, host in hosts:
        if host.name in first:
            yield locator.issue((*path, "name"),
                                f"host name '{host.name}' is already used by {locator.shown(first[host.name])}",
                                "inventory hostnames must be unique")
        first.setdefault(host.name, path)
    for path, ref in _secret_refs(spec):
        if ref.source not in ONPREM_READABLE_SECRETS:
            yield locator.issue((*path, "source"), f"Ansible cannot read secrets from {ref.source} on-prem",
                                f"use {' or '.join(ONPREM_READABLE_SECRETS)} (a variable of the machine that runs "
                                "Ansible)")


def _secret_refs(spec: StackSpec) -> Iterator[tuple[tuple[str | int, ...], SecretRef]]:
    """Every secret the stack's deploy reads, with its path in the spec."""
    yield ("apiKey",), spec.api_key
    tls = spec.network.tls
    if tls.source == "file":
        yield ("network", "tls", "cert"), tls.cert
        yield ("network", "tls", "key"), tls.key
    if spec.alerting is None:
        return
    fields = {"pagerduty": ("routing_key", "routingKey"), "slack": ("api_url", "apiUrl"),
              "webhook": ("bearer_token", "bearerToken"), "email": ("auth_password", "authPassword")}
    for index, receiver in enumerate(spec.alerting.receivers):
        attribute, key = fields[receiver.kind]
        ref = getattr(getattr(receiver, receiver.kind), attribute)
        if ref is not None:
            yield ("alerting", "receivers", index, receiver.kind, key), ref


def _check_names(spec: StackSpec, locator: Locator, profiles: dict[str, LoadedProfile]) -> Iterator[SpecIssue]:
    names: set[str] = set()
    served: dict[str, str] = {}
    for index, deployment in enumerate(spec.deployments):
        if deployment.name in names:
            yield locator.issue(("deployments", index, "name"), f"deployment '{deployment.name}' is defined twice")
        names.add(deployment.name)
        loaded = profiles.get(deployment.model)
        if loaded is None:
            continue
        profile = loaded.profile
        for model_name in (profile.resolved_served_name, *(a.name for a in profile.lora_adapters)):
            other = served.get(model_name)
            if other is not None and other != deployment.name:
                yield locator.issue(("deployments", index, "model"),
                                    f"model name '{model_name}' is also served by deployment '{other}'",
                                    "the load balancer routes by model name: give one of them another "
                                    "servedModelName")
            served[model_name] = deployment.name


def _check_pricing(spec: StackSpec, locator: Locator, catalog: Catalog) -> Iterator[SpecIssue]:
    for name in spec.pricing.instance_prices:
        if name not in catalog.instances:
            yield locator.issue(("pricing", "instancePrices", name), f"unknown instance type '{name}'",
                                did_you_mean(name, catalog.instances), at_key=True)


def _check_alerting(spec: StackSpec, locator: Locator) -> Iterator[SpecIssue]:
    """Receiver names are unique and exist; overrides name deployments of this stack."""
    alerting = spec.alerting
    if alerting is None:
        return
    names: dict[str, int] = {}
    for index, receiver in enumerate(alerting.receivers):
        if receiver.name in names:
            yield locator.issue(("alerting", "receivers", index, "name"),
                                f"receiver '{receiver.name}' is already defined as receivers[{names[receiver.name]}]",
                                "receiver names must be unique: rename one")
        names.setdefault(receiver.name, index)
    deployments = [deployment.name for deployment in spec.deployments]
    for name in alerting.deployments:
        if name not in deployments:
            yield locator.issue(("alerting", "deployments", name), f"no deployment '{name}' in this stack",
                                did_you_mean(name, deployments), at_key=True)
    used: set[str] = set()
    for path, chosen in _alerting_routes(alerting):
        used.update(chosen)
        for index, name in enumerate(chosen):
            if name not in names:
                yield locator.issue((*path, index), f"unknown receiver '{name}'", did_you_mean(name, names))
    for name, index in names.items():
        if alerting.routes is not None and name not in used:
            yield locator.issue(("alerting", "receivers", index, "name"),
                                f"receiver '{name}' is in no route: it never gets an alert",
                                "add it to routes.critical or routes.warning, or remove it", severity="warning")


def _alerting_routes(alerting: Alerting) -> Iterator[tuple[tuple[str | int, ...], list[str]]]:
    """Every list of receiver names in the alerting section, with its path."""
    if alerting.routes is not None:
        yield ("alerting", "routes", "critical"), alerting.routes.critical
        yield ("alerting", "routes", "warning"), alerting.routes.warning
    for name, override in alerting.deployments.items():
        for severity, chosen in (("critical", override.critical), ("warning", override.warning)):
            if chosen is not None:
                yield ("alerting", "deployments", name, severity), chosen


def _offered_gpus(spec: StackSpec, catalog: Catalog) -> dict[str, int]:
    """GPU name -> most GPUs one machine of this target has (the tensor-parallel ceiling)."""
    offered: dict[str, int] = {}
    if spec.target == "onprem":
        types = [s.server_type for s in spec.onprem.gpu_servers] if spec.onprem else []
        machines = [catalog.instances[t] for t in types if t in catalog.instances]
    else:
        machines = [it for it in catalog.instances.values() if it.provider == "aws"]
    for machine in machines:
        offered[machine.gpu] = max(offered.get(machine.gpu, 0), machine.gpu_count)
    return offered


def _check_gpus(
    spec: StackSpec, index: int, deployment: Deployment, locator: Locator, catalog: Catalog
) -> Iterator[SpecIssue]:
    offered = _offered_gpus(spec, catalog)
    for gpu_index, name in enumerate(deployment.gpus):
        path = ("deployments", index, "gpus", gpu_index)
        gpu = catalog.gpu(name)
        if gpu is None:
            yield locator.issue(path, f"unknown GPU '{name}'", did_you_mean(name, catalog.gpus))
        elif gpu.name not in offered:
            where = "the site's gpuServers" if spec.target == "onprem" else "AWS (in the catalog)"
            carriers = [it for it in catalog.instances.values() if it.gpu == gpu.name]
            if spec.target != "onprem" and carriers and all(it.provider == "onprem" for it in carriers):
                names = ", ".join(sorted(it.name for it in carriers))
                hint = f"only on-prem servers carry it ({names}): use the onprem target"
            else:
                hint = f"offered: {', '.join(sorted(offered))}"
            yield locator.issue(path, f"{gpu.name} is not offered by {where}", hint)


def _check_redundancy(index: int, deployment: Deployment, locator: Locator) -> Iterator[SpecIssue]:
    if deployment.slo.redundancy == "n+1" and deployment.replicas.max < 2:
        yield locator.issue(("deployments", index, "replicas", "max"),
                            "n+1 redundancy needs room for at least 2 replicas",
                            "set replicas.max to 2 or more, or slo.redundancy: none")


def _check_deployment_fit(
    index: int,
    *,
    deployment: Deployment,
    profile: ModelProfile,
    arch: Architecture,
    locator: Locator,
    spec: StackSpec,
    catalog: Catalog,
) -> Iterator[SpecIssue]:
    context = max_model_len(profile, arch)
    needed = deployment.traffic.input_tokens.p95_tokens + deployment.traffic.output_tokens.p95_tokens
    if needed > context:
        yield locator.issue(("deployments", index, "traffic"),
                            f"p95 input + p95 output = {needed} tokens exceeds maxModelLen {context} of "
                            f"profile '{profile.name}'; such requests would be rejected",
                            "raise the profile's maxModelLen or shorten the requests", at_key=True)
    method = catalog.quantization.get(profile.quantization)
    if method is None:
        return
    offered = _offered_gpus(spec, catalog)
    gpus = [g for g in (catalog.gpu(n) for n in deployment.gpus) if g is not None and g.name in offered]
    if not gpus:
        return
    weight_bits = profile.weight_bits or (method.weight_bits[0] if method.name != "none" else
                                          8 * _dtype_bytes(profile.dtype))
    max_tp = max_tensor_parallel(deployment.max_tensor_parallel,
                                 catalog.engines[profile.engine].capabilities.tensor_parallel)
    options = _fit_options(arch, gpus=gpus, offered=offered, max_tp=max_tp, profile=profile, weight_bits=weight_bits)
    if not any(option.fits(context) for option in options):
        yield locator.issue(("deployments", index, "gpus"), _no_fit_message(profile, options, context),
                            _no_fit_hint(arch, deployment, profile=profile, options=options, offered=offered,
                                         weight_bits=weight_bits, catalog=catalog),
                            at_key=True)


def _dtype_bytes(dtype: str) -> int:
    return 4 if dtype == "float32" else 2


@dataclass(frozen=True)
class _FitOption:
    """One (GPU, tensor-parallel degree) the planner could use, and its memory per GPU."""

    gpu: Gpu
    tp: int
    memory: ReplicaMemory

    def fits(self, context: int) -> bool:
        return self.memory.weights_fit and self.memory.kv_capacity_tokens >= context

    def closeness(self) -> tuple[bool, float]:
        """Larger is closer to fitting: first whatever holds the weights, then the most KV cache."""
        memory = self.memory
        if memory.weights_fit:
            return True, float(memory.kv_capacity_tokens)
        return False, -(memory.weights + memory.reserve) / memory.budget

    def why_not(self, context: int) -> str:
        memory = self.memory
        if not memory.weights_fit:
            need = (memory.weights + memory.reserve) / GIB
            return (f"{self.gpu.name}×{self.tp}: weights+runtime {need:.1f} GiB/GPU > "
                    f"{memory.budget / GIB:.1f} GiB usable")
        return f"{self.gpu.name}×{self.tp}: KV cache holds {memory.kv_capacity_tokens} tokens < maxModelLen {context}"


def _fit_options(
    arch: Architecture,
    *,
    gpus: list[Gpu],
    offered: dict[str, int],
    max_tp: int,
    profile: ModelProfile,
    weight_bits: int,
) -> list[_FitOption]:
    """Every (GPU, tp) the planner could use for this deployment."""
    options = []
    for gpu in gpus:
        for tp in TP_DEGREES:
            if tp > min(max_tp, offered[gpu.name]) or tensor_parallel_problem(arch, tp):
                continue
            memory = replica_memory(arch, gpu=gpu, tp=tp, weight_bits=weight_bits, dtype=profile.dtype,
                                    kv_cache_dtype=profile.kv_cache_dtype)
            options.append(_FitOption(gpu, tp, memory))
    return options


def _no_fit_message(profile: ModelProfile, options: list[_FitOption], context: int) -> str:
    if not options:
        return f"no tensor-parallel degree is possible for '{profile.name}' on the allowed GPUs"
    closest = max(options, key=_FitOption.closeness)
    return (f"'{profile.name}' (maxModelLen {context}) fits no allowed GPU and tensor-parallel option; "
            f"closest: {closest.why_not(context)}")


def _no_fit_hint(
    arch: Architecture,
    deployment: Deployment,
    *,
    profile: ModelProfile,
    options: list[_FitOption],
    offered: dict[str, int],
    weight_bits: int,
    catalog: Catalog,
) -> str:
    """What would make it fit, most direct first; only remedies this deployment has not used yet."""
    gpus_per_machine = max((offered[g] for g in {o.gpu.name for o in options}), default=1)
    larger_tp = [tp for tp in TP_DEGREES if deployment.max_tensor_parallel < tp <= gpus_per_machine
                 and tensor_parallel_problem(arch, tp) is None]
    remedies = []
    if options and max(options, key=_FitOption.closeness).memory.weights_fit:
        best = max(option.memory.kv_capacity_tokens for option in options)
        remedies.append(f"lower the profile's maxModelLen to {best} or less")
        if profile.kv_cache_dtype == "auto":
            remedies.append("use kvCacheDtype fp8")
    else:
        remedies.append("allow a GPU with more memory")
        smaller = [name for name, m in catalog.quantization.items() if min(m.weight_bits) < weight_bits]
        if smaller:
            remedies.append(f"quantize the weights ({', '.join(smaller[:2])})")
    if larger_tp:
        remedies.append(f"raise maxTensorParallel (now {deployment.max_tensor_parallel}) to "
                        f"{_either([str(tp) for tp in larger_tp])}")
    return _either(remedies)
