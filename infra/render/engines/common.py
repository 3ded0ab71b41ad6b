"""What the engine builders share: where the weights are, the planned limits, the engineArgs on top."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Mapping

from infra.catalog.schema import InferenceEngine
from infra.plan.optimize import DeploymentPlan, Option
from infra.render.artifacts import Artifact
from infra.render.engines.launch import EngineLaunch
from infra.render.hostlayout import weights_dir
from infra.spec.profile import HuggingFaceWeights, ModelProfile, weights_file

HF_RESOLVE = "https://huggingface.co/{repo}/resolve/{revision}/{file}"


def chosen(plan: DeploymentPlan) -> Option:
    assert plan.chosen is not None  # render runs on feasible plans only
    return plan.chosen


def checkpoint(profile: ModelProfile) -> str:
    """A checkpoint directory engines load themselves: the Hub repo id, or the container path of synced weights."""
    if isinstance(profile.weights, HuggingFaceWeights):
        return profile.weights.repo
    return weights_dir(profile.name)


def gguf_container_path(profile: ModelProfile) -> str:
    """The GGUF file of local weights inside the container (the host's copy under the model cache)."""
    file = weights_file(profile.weights)
    assert file is not None and not isinstance(profile.weights, HuggingFaceWeights)
    return f"{weights_dir(profile.name)}/{file}"


def gguf_url(weights: HuggingFaceWeights) -> str:
    """The Hub URL of a GGUF file at the pinned revision (`resolve/<revision>` pins it; a repo:quant tag does not)."""
    assert weights.file is not None
    return HF_RESOLVE.format(repo=weights.repo, revision=weights.revision, file=weights.file)


def long_options(flags: Mapping[str, object], style: str = "--{}") -> list[str]:
    """``{name: value}`` as command-line tokens: True → the bare flag, False/None → left out, lists repeated."""
    tokens: list[str] = []
    for name, value in flags.items():
        option = style.format(name)
        if value is None or value is False:
            continue
        if value is True:
            tokens.append(option)
        elif isinstance(value, list):
            for item in value:
                tokens += [option, str(item)]
        elif isinstance(value, dict):
            tokens += [option, json.dumps(value, sort_keys=True)]
        else:
            tokens += [option, str(value)]
    return tokens


def with_engine_args(
    planned: Mapping[str, object], profile: ModelProfile, *, separator: str = "-"
) -> dict[str, object]:
    """Planned flags, then the profile's engineArgs on top (``max_x`` and ``max-x`` are one flag), sorted."""
    other = "_" if separator == "-" else "-"
    flags = {name.replace(other, separator): value for name, value in planned.items()}
    for name, value in profile.engine_args.items():
        flags[name.replace(other, separator)] = value
    return dict(sorted(flags.items()))


def args_artifact(deployment: str, argv: Iterable[str]) -> Artifact:
    """The full command of a replica, for review (the vLLM renderer keeps its own ``vllm/<d>.args.json``)."""
    return Artifact(f"engines/{deployment}.args.json", "engine-args", deployment,
                    json.dumps(list(argv), indent=2) + "\n")


def shell_words(argv: Iterable[str]) -> str:
    return " ".join(shlex.quote(token) for token in argv)


def launch_of(
    plan: DeploymentPlan,
    engine: InferenceEngine,
    *,
    program: str | None,
    args: tuple[str, ...],
    env: tuple[tuple[str, str], ...],
    entrypoint: str | None = None,
    api_key_env: str | None = None,
    config_files: tuple[Artifact, ...] = (),
) -> EngineLaunch:
    """An engine's launch with what every builder shares: the pinned image, the readiness path for the served
    name, and the argv record: ``entrypoint`` or ``program`` (what the image's entrypoint runs; None: the
    first argument is the program), then ``args``."""
    head = (entrypoint,) if entrypoint is not None else (program,) if program is not None else ()
    return EngineLaunch(
        engine=engine, image=engine.image.pinned, entrypoint=entrypoint, args=args, env=env,
        api_key_env=api_key_env, ready_path=engine.health.ready_for(plan.profile.resolved_served_name),
        files=(*config_files, args_artifact(plan.deployment.name, (*head, *args))),
    )
