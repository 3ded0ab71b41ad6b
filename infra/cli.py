"""The ``gpufleet`` command line.

User errors (bad specs) exit 2 with ``file:line:col: path: message`` lines and no traceback; a
traceback means a bug in gpufleet.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from infra.bench.cli import bench_command
from infra.calibrate.cli import calibrate_command
from infra.catalog import load_catalog
from infra.catalog.schema import Architecture, InferenceEngine
from infra.cli_common import fail, find_project
from infra.emulate.cli import emulate_command
from infra.plan.estimate import Load, estimate_json, run
from infra.plan.optimize import plan_stack
from infra.plan.perf import GpuLink
from infra.plan.replica import DoesNotFit, Precision, Replica, build_replica, resolve_limits
from infra.plan.serialize import fleet_json
from infra.plan.show import estimate_note, print_plan
from infra.render.artifacts import MANIFEST, write_artifacts
from infra.render.stack import NotRenderable, render_fleet
from infra.report.cli import report_command
from infra.report.diff_cli import diff_command
from infra.spec.checks import resolve_architecture
from infra.spec.issues import SpecError, SpecIssue
from infra.spec.jsonschema import stale_schemas, write_schemas
from infra.spec.load import LoadedStack, Project, load_calibration, load_profile, load_stack
from infra.spec.pydantic_issues import did_you_mean

app = typer.Typer(
    help="Plan, render and provision LLM inference fleets from typed YAML.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

ProjectDir = Annotated[
    Path | None,
    typer.Option("--project-dir", "-C", help="Project root (the folder with Pulumi.yaml). Default: search upward."),
]


@app.command()
def validate(
    stack: Annotated[list[str] | None, typer.Option("--stack", "-s", help="Stack name (repeatable).")] = None,
    all_stacks: Annotated[bool, typer.Option("--all", help="Validate every stacks/Pulumi.*.yaml.")] = False,
    project_dir: ProjectDir = None,
) -> None:
    """Check stack specs and the model profiles they use; write nothing."""
    project = find_project(project_dir)
    names = project.stack_names() if all_stacks else list(stack or [])
    if not names:
        fail(
            [
                "error: name a stack with -s STACK, or use --all"
                + ("" if all_stacks else f" (stacks: {', '.join(project.stack_names()) or 'none found'})")
            ]
        )
    errors: list[str] = []
    for name in names:
        try:
            loaded = load_stack(project, name)
        except SpecError as exc:
            errors.extend(issue.format() for issue in exc.issues)
            continue
        for warning in loaded.warnings:
            typer.echo(warning.format(), err=True)
        typer.echo(_summary(loaded))
    if errors:
        errors.append(f"{len(errors)} error(s); nothing was changed.")
        fail(errors)


def _summary(loaded: LoadedStack) -> str:
    spec = loaded.spec
    deployments = ", ".join(f"{d.name} ({d.model})" for d in spec.deployments)
    return f"ok  {loaded.name}: target {spec.target}, {len(spec.deployments)} deployment(s): {deployments}"


@app.command()
def schemas(
    check: Annotated[bool, typer.Option("--check", help="Exit 1 if the checked-in schemas are stale.")] = False,
    project_dir: ProjectDir = None,
) -> None:
    """Write JSON Schemas of model profiles and stack files to schemas/ (for editors and CI)."""
    project = find_project(project_dir)
    if check:
        stale = stale_schemas(project.root / "schemas")
        if stale:
            typer.echo(f"stale: {', '.join(stale)}; run `gpufleet schemas`", err=True)
            raise typer.Exit(1)
        typer.echo("schemas are up to date")
        return
    for path in write_schemas(project.root / "schemas"):
        typer.echo(f"wrote {project.shown(path)}")


@app.command()
def plan(
    stack: Annotated[list[str] | None, typer.Option("--stack", "-s", help="Stack name (repeatable).")] = None,
    all_stacks: Annotated[bool, typer.Option("--all", help="Plan every stacks/Pulumi.*.yaml.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
    explain: Annotated[bool, typer.Option("--explain", help="Also list every rejected option and why.")] = False,
    project_dir: ProjectDir = None,
) -> None:
    """Choose GPU, instance, tensor parallelism, replicas and engine limits per deployment, with costs."""
    project = find_project(project_dir)
    names = project.stack_names() if all_stacks else list(stack or [])
    if not names:
        fail(["error: name a stack with -s STACK, or use --all"])
    console = Console(width=160)
    problems: list[str] = []
    documents = []
    for name in names:
        try:
            loaded = load_stack(project, name)
        except SpecError as exc:
            fail([*(issue.format() for issue in exc.issues), f"{len(exc.issues)} error(s); nothing was planned."])
        fleet = plan_stack(loaded)
        problems.extend(f"{name}: {problem}" for problem in fleet.problems())
        if as_json:
            documents.append(fleet_json(fleet))
        else:
            print_plan(fleet, console, explain)
    if as_json:
        typer.echo(json.dumps(documents[0] if len(documents) == 1 else documents, indent=2))
    if problems:
        fail([f"error: {problem}" for problem in problems])


@app.command()
def render(
    stack: Annotated[str, typer.Option("--stack", "-s", help="Stack name.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (created; stale files removed).")],
    project_dir: ProjectDir = None,
) -> None:
    """Plan the stack and write every artifact plus manifest.json to OUT (byte-identical on re-run)."""
    project = find_project(project_dir)
    try:
        loaded = load_stack(project, stack)
    except SpecError as exc:
        fail([*(issue.format() for issue in exc.issues), f"{len(exc.issues)} error(s); nothing was written."])
    try:
        artifacts = render_fleet(plan_stack(loaded))
    except NotRenderable as exc:
        fail([f"error: {stack}: {exc}", "nothing was written."])
    write_artifacts(artifacts, out)
    typer.echo(f"wrote {len(artifacts)} artifacts and {MANIFEST} to {out}")


def _architecture(model: str, project: Project) -> tuple[Architecture, Precision, int | None, InferenceEngine]:
    """A catalog model (on vLLM), or a profile of this project (with its precision, max length and engine)."""
    catalog = load_catalog()
    if model in catalog.models:
        return catalog.models[model].architecture, Precision(), None, catalog.engines["vllm"]
    if model in project.profile_names():
        issues: list[SpecIssue] = []
        loaded = load_profile(project, model, issues)
        if loaded is None or issues:
            fail([issue.format() for issue in issues])
        assert loaded is not None
        profile = loaded.profile
        arch = resolve_architecture(profile, catalog)
        if arch is None:
            fail([f"error: profile '{model}': unknown baseModel"])
        assert arch is not None
        method = catalog.quantization.get(profile.quantization)
        precision = Precision(profile.dtype, method, profile.weight_bits, profile.kv_cache_dtype)
        return arch, precision, profile.max_model_len, catalog.engines[profile.engine]
    names = [*catalog.models, *project.profile_names()]
    fail([f"error: --model: unknown model '{model}' ({did_you_mean(model, names)})"])
    raise AssertionError("unreachable")


@app.command()
def estimate(
    model: Annotated[str, typer.Option("--model", help="Catalog model (llama-3.1-8b) or a profile in stacks/models.")],
    gpu: Annotated[str, typer.Option("--gpu", help="GPU type, e.g. H100-SXM.")],
    input_tokens: Annotated[int, typer.Option("--input-tokens", min=1, help="Prompt length (fixed).")],
    output_tokens: Annotated[int, typer.Option("--output-tokens", min=1, help="Completion length (fixed, no EOS).")],
    tp: Annotated[int, typer.Option("--tp", min=1, max=8, help="Tensor-parallel degree.")] = 1,
    rate: Annotated[float | None, typer.Option("--rate", min=0.0001, help="Poisson arrivals, req/s.")] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", min=1, help="Closed-loop clients.")] = None,
    offline_requests: Annotated[
        int | None, typer.Option("--offline", min=1, help="Requests submitted at once.")
    ] = None,
    max_num_seqs: Annotated[int | None, typer.Option("--max-num-seqs", min=1)] = None,
    max_num_batched_tokens: Annotated[int | None, typer.Option("--max-num-batched-tokens", min=1)] = None,
    gpu_memory_utilization: Annotated[float | None, typer.Option("--gpu-memory-utilization", min=0.05, max=1.0)] = None,
    max_model_len: Annotated[int | None, typer.Option("--max-model-len", min=16)] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help="bfloat16 | float16 | float32")] = None,
    quantization: Annotated[str | None, typer.Option("--quantization", help="none | fp8 | awq | gptq | ...")] = None,
    kv_cache_dtype: Annotated[str | None, typer.Option("--kv-cache-dtype", help="auto | fp8 | ...")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (the contract) instead of a table.")] = False,
    project_dir: ProjectDir = None,
) -> None:
    """Predict one configuration's throughput and latency by simulating its replica (vLLM's model; a profile's
    other engine at its catalog throughput factor, an estimate)."""
    loads = [
        (m, v)
        for m, v in (("rate", rate), ("concurrency", concurrency), ("offline", offline_requests))
        if v is not None
    ]
    if len(loads) != 1:
        fail(["error: give exactly one of --rate, --concurrency or --offline"])
    mode, value = loads[0]
    catalog = load_catalog()
    gpu_record = catalog.gpu(gpu)
    if gpu_record is None:
        fail([f"error: --gpu: unknown GPU '{gpu}' ({did_you_mean(gpu, catalog.gpus)})"])
    assert gpu_record is not None
    project = find_project(project_dir)
    arch, precision, profile_len, engine = _architecture(model, project)
    precision = _override_precision(precision, dtype, quantization, kv_cache_dtype)
    issues: list[SpecIssue] = []
    calibration = load_calibration(project, issues)  # stacks/calibration.yaml, as `plan` uses it
    if issues:
        fail([*(issue.format() for issue in issues), f"{len(issues)} error(s)."])
    load = Load(mode, float(value), input_tokens, output_tokens, seed)  # type: ignore[arg-type]
    link: GpuLink = "pcie" if gpu_record.interconnect.kind == "pcie" else "nvswitch"
    # vLLM's default max_model_len is the model's context; where that much KV cache does not fit (vLLM
    # would refuse to start), fall back to what this workload needs, as `--max-model-len auto` would.
    lengths = [max_model_len or profile_len or arch.max_context]
    if max_model_len is None and profile_len is None and lengths[0] > input_tokens + output_tokens:
        lengths.append(input_tokens + output_tokens)
    for attempt, length in enumerate(lengths):
        limits = resolve_limits(
            arch,
            gpu_record,
            entry_point=load.entry_point,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=length,
        )
        try:
            replica = build_replica(arch, gpu_record, tp=tp, link=link, precision=precision, limits=limits,
                                    calibration=calibration, engine=engine)
            break
        except DoesNotFit as exc:
            if attempt == len(lengths) - 1:
                fail([f"error: {model} on {tp}× {gpu_record.name} does not start: {exc}"])
    if length != lengths[0]:
        typer.echo(
            f"note: the model's context ({lengths[0]}) does not fit the KV cache; max_model_len={length}", err=True
        )
    if input_tokens + output_tokens > limits.max_model_len:
        fail(
            [
                f"error: --input-tokens + --output-tokens ({input_tokens + output_tokens}) exceed max_model_len "
                f"{limits.max_model_len}"
            ]
        )
    result = run(replica, load)
    document = estimate_json(replica, result)
    if as_json:
        typer.echo(json.dumps(document, indent=2))
        return
    for key, val in document.items():
        typer.echo(f"{key:>24}: {val}")
    for note in _estimate_notes(replica):
        typer.echo(f"note: {note}")


def _estimate_notes(replica: Replica) -> list[str]:
    """What the figures are not fitted to: the GPU architecture's measurements, the engine's own."""
    notes = []
    if not replica.calibrated:
        notes.append(f"no calibration data for {replica.gpu.architecture} GPUs; efficiencies are borrowed")
    if replica.engine is not None and replica.engine_estimate:
        notes.append(estimate_note(replica.engine))
    return notes


def _override_precision(
    precision: Precision, dtype: str | None, quantization: str | None, kv_cache_dtype: str | None
) -> Precision:
    catalog = load_catalog()
    method = precision.quantization
    if quantization is not None:
        method = catalog.quantization.get(quantization)
        if method is None:
            fail(
                [
                    f"error: --quantization: unknown method '{quantization}' "
                    f"({did_you_mean(quantization, catalog.quantization)})"
                ]
            )
    for flag, val, allowed in (
        ("--dtype", dtype, ("bfloat16", "float16", "float32")),
        ("--kv-cache-dtype", kv_cache_dtype, ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")),
    ):
        if val is not None and val not in allowed:
            fail([f"error: {flag}: '{val}' is not one of {', '.join(allowed)}"])
    return Precision(
        dtype or precision.dtype, method, precision.weight_bits, kv_cache_dtype or precision.kv_cache_dtype
    )


app.command("bench")(bench_command)
app.command("emulate")(emulate_command)
app.command("calibrate")(calibrate_command)
app.command("report")(report_command)
app.command("diff")(diff_command)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
