"""``gpufleet calibrate -s STACK -d DEPLOYMENT BENCH.json ...``: fit a GPU's efficiency scales to bench
results and store them in the project's calibration file, which ``plan`` then uses.

The stack and deployment give the replica the bench ran against (model profile, precision, engine
limits, as ``plan`` would build it); the bench's ``target`` gives the GPU, tensor parallelism, replicas
and instance type, and must agree with them. User errors exit 2 and write nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table

from infra.calibrate.fit import Balancing, Bench, BenchError, Fit, Replay, fit_scales, read_bench
from infra.calibrate.model import Calibration, GpuCalibration, write_calibration
from infra.catalog import Catalog, load_catalog
from infra.catalog.schema import Gpu
from infra.cli_common import deployment_or_fail, fail, find_project, load_or_fail
from infra.plan.optimize import ReplicaConfig, profile_replica
from infra.plan.perf import GpuLink
from infra.plan.replica import DoesNotFit, Replica
from infra.spec.checks import resolve_architecture
from infra.spec.issues import SpecIssue
from infra.spec.load import LoadedStack, Project, load_calibration
from infra.spec.profile import ModelProfile
from infra.spec.pydantic_issues import did_you_mean
from infra.spec.stack import Deployment


@dataclass(frozen=True)
class _Shape:
    gpu: Gpu
    tp: int
    replicas: int
    link: GpuLink


def _shape(
    bench: Bench, shown: str, catalog: Catalog, *, gpu: str | None, tp: int | None, replicas: int | None,
    problems: list[str],
) -> _Shape | None:
    """The fleet a bench ran against, from its target, the options filling in (and agreeing with) it."""
    target = bench.target
    given = {"gpu": gpu, "tp": tp, "replicas": replicas}
    if target is None:
        missing = [f"--{k}" for k, v in given.items() if v is None]
        if missing:
            problems.append(f"error: {shown}: the bench has no target; give {', '.join(missing)}")
            return None
    else:
        for key, value in given.items():
            theirs = getattr(target, key)
            same = value is None or (
                catalog.gpu(str(value)) == catalog.gpu(theirs) if key == "gpu" else value == theirs
            )
            if not same:
                problems.append(f"error: {shown}: --{key} {value} disagrees with the bench's target.{key} {theirs}")
                return None
    name = target.gpu if target is not None else str(gpu)
    record = catalog.gpu(name)
    if record is None:
        problems.append(f"error: {shown}: unknown GPU '{name}' ({did_you_mean(name, catalog.gpus)})")
        return None
    link: GpuLink = "pcie" if record.interconnect.kind == "pcie" else "nvswitch"
    n_tp = target.tp if target is not None else int(tp or 1)
    n_replicas = target.replicas if target is not None else int(replicas or 1)
    if n_tp < 1 or n_replicas < 1:
        problems.append(f"error: {shown}: target.tp and target.replicas must be >= 1")
        return None
    if target is not None:
        instance = catalog.instances.get(target.instance_type)
        if instance is not None and instance.gpu != record.name:
            problems.append(
                f"error: {shown}: target.instance_type {instance.name} carries {instance.gpu} GPUs, "
                f"not {record.name}"
            )
            return None
        if instance is not None and n_tp > 1:
            link = instance.gpu_link
    return _Shape(record, n_tp, n_replicas, link)


def _served_names(profile: ModelProfile) -> set[str]:
    return {profile.resolved_served_name, profile.name, *(a.name for a in profile.lora_adapters)}


def _load(
    loaded: LoadedStack, deployment: Deployment, paths: list[Path], project: Project, *,
    gpu: str | None, tp: int | None, replicas: int | None,
) -> list[Replay]:
    catalog = load_catalog()
    profile = loaded.profiles[deployment.model]
    arch = resolve_architecture(profile, catalog)
    assert arch is not None  # validated with the stack
    allowed = [g.name for name in deployment.gpus if (g := catalog.gpu(name)) is not None]
    problems: list[str] = []
    replays: list[Replay] = []
    replicas_built: dict[tuple[str, int, str], Replica] = {}
    for path in paths:
        shown = project.shown(path)
        try:
            bench = read_bench(path)
        except BenchError as exc:
            problems.append(f"error: {shown}: {exc}")
            continue
        target = bench.target
        if target is not None and (target.stack, target.deployment) != (loaded.name, deployment.name):
            problems.append(
                f"error: {shown}: the bench ran against {target.stack}/{target.deployment}, not "
                f"{loaded.name}/{deployment.name} (its target says so)"
            )
            continue
        if bench.model not in _served_names(profile):
            problems.append(
                f"error: {shown}: the bench requested model '{bench.model}', deployment '{deployment.name}' "
                f"serves '{profile.resolved_served_name}'"
            )
            continue
        shape = _shape(bench, shown, catalog, gpu=gpu, tp=tp, replicas=replicas, problems=problems)
        if shape is None:
            continue
        if shape.gpu.name not in allowed:
            problems.append(
                f"error: {shown}: the bench ran on {shape.gpu.name}, deployment '{deployment.name}' runs on "
                f"{', '.join(allowed)} (its gpus)"
            )
            continue
        key = (shape.gpu.name, shape.tp, shape.link)
        if key not in replicas_built:
            quantization = catalog.quantization[profile.quantization]
            try:
                replicas_built[key] = profile_replica(profile, arch, ReplicaConfig(shape.gpu, shape.tp, shape.link,
                                                                                  quantization))
            except DoesNotFit as exc:
                problems.append(f"error: {shown}: {profile.name} on {shape.tp}× {shape.gpu.name} does not start: {exc}")
                continue
        balancing: Balancing = "least-conn" if deployment.load_balancing.policy == "least-conn" else "round-robin"
        replays.append(Replay(bench, replicas_built[key], shape.replicas, balancing))
    gpus = sorted({r.replica.gpu.name for r in replays})
    if len(gpus) > 1:
        problems.append(f"error: the benches ran on different GPUs ({', '.join(gpus)}); calibrate one GPU at a time")
    if problems:
        fail([*problems, "nothing was written."])
    return replays


def _ms(value: float) -> str:
    return f"{value * 1000:,.1f}"


def _report(replays: list[Replay], fit: Fit, project: Project, console: Console) -> None:
    table = Table(title="measured vs model (ms)", title_justify="left")
    for header in ("bench", "metric", "statistic", "measured", "model", "error", "calibrated", "error "):
        table.add_column(header, justify="left" if header in ("bench", "metric", "statistic") else "right")
    for replay, before, after in zip(replays, fit.before, fit.after, strict=True):
        shown = project.shown(replay.bench.path)
        for b, a in zip(before, after, strict=True):
            fitted = "" if b.weight else " (shown)"
            table.add_row(shown, b.metric.upper(), b.label + fitted, _ms(b.measured), _ms(b.simulated),
                          f"{b.error_pct:+.1f}%", _ms(a.simulated), f"{a.error_pct:+.1f}%")
            shown = ""
    console.print(table)


def _entry(replays: list[Replay], fit: Fit, project: Project, stack: str, deployment: str) -> GpuCalibration:
    def errors(which: Literal["before", "after"]) -> dict[str, float | None]:
        return {"ttftPct": fit.errors(which, "ttft"), "tpotPct": fit.errors(which, "tpot"),
                "e2ePct": fit.errors(which, "e2e")}

    sources = [
        {
            "file": project.shown(r.bench.path),
            "sha256": r.bench.sha256[:16],
            "stack": stack,
            "deployment": deployment,
            "model": r.bench.model,
            "tp": r.replica.tp,
            "replicas": r.replicas,
            "requests": len(r.bench.requests),
            "measuredAt": r.bench.started_at.isoformat(),
        }
        for r in replays
    ]
    return GpuCalibration.model_validate(
        {
            "gpu": replays[0].replica.gpu.name,
            "computeScale": round(fit.compute_scale, 3),
            "bandwidthScale": round(fit.bandwidth_scale, 3),
            "date": max(r.bench.started_at for r in replays).date(),
            "fittedFrom": sources,
            "errorsBefore": errors("before"),
            "errorsAfter": errors("after"),
        }
    )


def calibrate_command(  # noqa: PLR0917 -- a typer command: one parameter per command-line option
    benches: Annotated[list[Path], typer.Argument(help="Bench result files (gpufleet bench).", show_default=False)],
    stack: Annotated[str, typer.Option("--stack", "-s", help="Stack the bench ran against.")],
    deployment: Annotated[str, typer.Option("--deployment", "-d", help="Deployment the bench ran against.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Calibration file to update. Default: stacks/calibration.yaml.")
    ] = None,
    gpu: Annotated[str | None, typer.Option("--gpu", help="GPU, for benches without a target.")] = None,
    tp: Annotated[int | None, typer.Option("--tp", min=1, max=64, help="Tensor parallelism (no target).")] = None,
    replicas: Annotated[
        int | None, typer.Option("--replicas", min=1, help="Replicas behind the endpoint (no target).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Fit and report; write nothing.")] = False,
    project_dir: Annotated[
        Path | None,
        typer.Option("--project-dir", "-C", help="Project root (the folder with Pulumi.yaml). Default: search upward."),
    ] = None,
) -> None:
    """Fit a GPU's compute and bandwidth efficiency scales to bench results; plan then uses them."""
    project = find_project(project_dir)
    loaded = load_or_fail(project, stack, "nothing was written")
    target = deployment_or_fail(loaded, deployment)
    replays = _load(loaded, target, benches, project, gpu=gpu, tp=tp, replicas=replicas)
    path = out if out is not None else project.calibration_file
    issues: list[SpecIssue] = []
    existing = load_calibration(project, issues, path)
    if issues:
        fail([*(issue.format() for issue in issues), f"fix or remove {project.shown(path)}; nothing was written."])

    console = Console(width=160)
    fit = fit_scales(replays)
    _report(replays, fit, project, console)
    entry = _entry(replays, fit, project, loaded.name, target.name)
    requests = sum(len(r.bench.requests) for r in replays)
    console.print(
        f"{entry.gpu}: compute ×{entry.compute_scale:.3f}, bandwidth ×{entry.bandwidth_scale:.3f} "
        f"(fitted to {requests:,} requests in {len(replays)} file(s), {fit.evaluations} simulations)"
    )
    if not fit.compute_fitted:
        console.print(
            "warning: no bench streamed, so TTFT is unknown and compute cannot be told from bandwidth: the compute "
            "scale stays 1 (bench with streaming to fit it)"
        )
    for name in fit.at_bound:
        console.print(
            f"warning: the {name} scale is at its bound: the model misses more than an efficiency (was the bench "
            "run against this stack's configuration, on an otherwise idle fleet?)"
        )
    if dry_run:
        console.print("--dry-run: nothing written")
        return
    calibration = (existing or Calibration.model_validate({"gpus": []})).with_entry(entry)
    write_calibration(calibration, path)
    console.print(f"wrote {project.shown(path)}")
