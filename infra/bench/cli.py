"""``gpufleet bench``: the typer command (registered in infra/cli.py).

User errors (bad flags, unknown stack or deployment, an endpoint that cannot be reached before the first
request) exit 2 with ``error: ...`` lines and no traceback. A run in which no request completed exits 1
after printing and writing what it measured.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from infra.bench.client import Api, Outcome, Unreachable
from infra.bench.compare import Prediction, Target, predict
from infra.bench.report import comparison_headline, comparison_table, document, results_headline, results_table
from infra.bench.runner import BenchConfig, Mode, RunResult, run
from infra.bench.stats import summarise
from infra.bench.workload import UNCAPPED_MODEL_LEN, LengthSource, parse_lengths
from infra.cli_common import fail, planned_deployment
from infra.plan.lengths import TokenLengths
from infra.plan.optimize import DeploymentPlan
from infra.spec.tokens import FixedLengths

DEFAULT_REQUESTS = 100
# Without a deployment or flags: the lengths of `vllm bench serve --dataset-name random` by default.
DEFAULT_INPUT, DEFAULT_OUTPUT = 1024, 128


def base_url(endpoint: str) -> str:
    """``http(s)://host[:port][/prefix]`` without a trailing ``/v1...``: the API paths are appended to it."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        fail([f"error: --endpoint: '{endpoint}' is not an http(s) URL like http://localhost:8000"])
    url = endpoint.rstrip("/")
    for suffix in ("/v1/chat/completions", "/v1/completions", "/v1"):
        if url.endswith(suffix):
            return url[: -len(suffix)]
    return url


@dataclass(frozen=True)
class Planned:
    plan: DeploymentPlan
    target: Target


def _planned(stack: str, deployment: str, replicas: int | None, project_dir: Path | None) -> Planned:
    plan = planned_deployment(stack, deployment, project_dir)
    chosen = plan.chosen
    assert chosen is not None  # planned_deployment exits on an infeasible plan
    target = Target(stack, deployment, chosen.config.gpu.name, chosen.config.tp, replicas or chosen.replicas,
                    chosen.machine.instance.name)
    return Planned(plan, target)


def _lengths(text: str | None, flag: str, fallback: TokenLengths) -> TokenLengths:
    if text is None:
        return fallback
    try:
        return parse_lengths(text, flag)
    except ValueError as exc:
        fail([f"error: {exc}"])


def _run_with_progress(config: BenchConfig, quiet: bool) -> RunResult:
    """Run the load; a progress bar on stderr when it is a terminal and not --quiet."""
    console = Console(stderr=True)
    progress = Progress(
        TextColumn("[bold]bench"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[errors]} errors"),
        TimeElapsedColumn(), console=console, disable=quiet or not console.is_terminal, transient=True,
    )
    # --duration alone: the bar counts seconds, since the number of requests is not known in advance.
    by_time = config.requests is None
    total = config.duration_s if by_time else config.requests
    errors = 0
    with progress:
        task = progress.add_task("bench", total=total, errors=0)

        def on_done(outcome: Outcome) -> None:
            nonlocal errors
            errors += outcome.error is not None
            if by_time:
                progress.update(task, completed=min(progress.tasks[0].elapsed or 0.0, total or 0.0), errors=errors)
            else:
                progress.update(task, advance=1, errors=errors)

        try:
            return asyncio.run(run(config, on_done))
        except Unreachable as exc:
            fail([f"error: {exc}"])


def bench_command(  # noqa: PLR0917 - a typer command: one parameter per option (as infra/cli.py's commands)
    endpoint: Annotated[str, typer.Option("--endpoint", "-e", help="Base URL of the OpenAI-compatible server, "
                                          "e.g. http://localhost:8000 (vLLM, the fleet's load balancer).")],
    rate: Annotated[float | None, typer.Option("--rate", min=0.0001, help="Open loop: Poisson arrivals, req/s.")]
    = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", min=1, help="Closed loop: clients.")] = None,
    requests: Annotated[int | None, typer.Option("--requests", "-n", min=1,
                                                 help=f"Requests to send (default {DEFAULT_REQUESTS} "
                                                 "unless --duration).")] = None,
    duration: Annotated[float | None, typer.Option("--duration", min=0.001,
                                                   help="Stop sending after this many seconds.")] = None,
    input_tokens: Annotated[str | None, typer.Option("--input-tokens", metavar="MEAN[,P95]",
                                                     help="Prompt lengths: fixed MEAN, or log-normal MEAN,P95. "
                                                     "Default: the deployment's traffic, else "
                                                     f"{DEFAULT_INPUT}.")] = None,
    output_tokens: Annotated[str | None, typer.Option("--output-tokens", metavar="MEAN[,P95]",
                                                      help="Completion lengths (max_tokens, EOS ignored). "
                                                      f"Default: the deployment's, else {DEFAULT_OUTPUT}.")] = None,
    stack: Annotated[str | None, typer.Option("--stack", "-s", help="Compare with this stack's plan.")] = None,
    deployment: Annotated[str | None, typer.Option("--deployment", "-d", help="Deployment of --stack.")] = None,
    replicas: Annotated[int | None, typer.Option("--replicas", min=1, help="Replicas behind the endpoint for the "
                                                 "comparison (default: the plan's; 1 for a single vLLM).")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model name to request (default: the deployment's "
                                              "served name, else the first of GET /v1/models).")] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", envvar=["GPUFLEET_API_KEY", "OPENAI_API_KEY"],
                                                show_default=False, show_envvar=True,
                                                help="Bearer token.")] = None,
    chat: Annotated[bool, typer.Option("--chat/--completions", help="/v1/chat/completions or /v1/completions.")] = True,
    stream: Annotated[bool, typer.Option("--stream/--no-stream", help="Stream tokens (needed for TTFT/TPOT).")] = True,
    timeout: Annotated[float, typer.Option("--timeout", min=0.001, help="Seconds per request, in total.")] = 600.0,
    connect_timeout: Annotated[float, typer.Option("--connect-timeout", min=0.001,
                                                   help="Seconds to connect.")] = 10.0,
    seed: Annotated[int, typer.Option("--seed", help="Seeds arrivals, lengths and prompts.")] = 0,
    insecure: Annotated[bool, typer.Option("--insecure", "-k", help="Do not verify the TLS certificate (a "
                                           "self-signed dev LB), like curl -k.")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the gpufleet-bench/1 JSON here.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    project_dir: Annotated[Path | None, typer.Option("--project-dir", "-C", help="Project root (default: search "
                                                     "upward).")] = None,
) -> None:
    """Load an OpenAI-compatible endpoint; report TTFT/TPOT/E2E percentiles and throughput, and with -s/-d
    compare them with what the planner predicts for the same workload."""
    if (rate is None) == (concurrency is None):
        fail(["error: give exactly one of --rate (open loop) or --concurrency (closed loop)"])
    if (stack is None) != (deployment is None):
        fail(["error: --stack and --deployment go together"])
    if output is not None and not output.parent.is_dir():
        fail([f"error: --output: directory '{output.parent}' does not exist"])
    url = base_url(endpoint)
    mode: Mode = "poisson" if rate is not None else "concurrency"
    planned = _planned(stack, deployment, replicas, project_dir) if stack and deployment else None
    inputs: TokenLengths = FixedLengths(distribution="fixed", value=DEFAULT_INPUT)
    outputs: TokenLengths = FixedLengths(distribution="fixed", value=DEFAULT_OUTPUT)
    max_model_len = UNCAPPED_MODEL_LEN
    if planned is not None:
        assert planned.plan.chosen is not None
        inputs = planned.plan.deployment.traffic.input_tokens
        outputs = planned.plan.deployment.traffic.output_tokens
        max_model_len = planned.plan.chosen.replica.limits.max_model_len
        model = model or planned.plan.profile.resolved_served_name
    api: Api = "chat" if chat else "completions"
    config = BenchConfig(
        base_url=url,
        model=model,
        api=api,
        stream=stream,
        mode=mode,
        rate=rate,
        concurrency=concurrency,
        requests=requests if requests is not None or duration is not None else DEFAULT_REQUESTS,
        duration_s=duration,
        lengths=LengthSource(_lengths(input_tokens, "--input-tokens", inputs),
                             _lengths(output_tokens, "--output-tokens", outputs), max_model_len, seed),
        timeout_s=timeout,
        connect_timeout_s=connect_timeout,
        api_key=api_key or None,
        verify_tls=not insecure,
        seed=seed,
    )
    result = _run_with_progress(config, quiet)
    summary = summarise(result.outcomes, result.duration_s)
    prediction: Prediction | None = None
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(results_headline(config, result, summary))
    console.print(results_table(summary))
    if planned is not None and summary.completed:
        assert planned.plan.chosen is not None
        prediction = predict(planned.plan.chosen.replica, result.outcomes, duration_s=result.duration_s, mode=mode,
                             concurrency=concurrency, replicas=planned.target.replicas)
        console.print(comparison_headline(prediction, planned.target))
        console.print(comparison_table(summary, prediction))
        if not stream:
            console.print("note: without streaming only E2E is measured (TTFT and TPOT need --stream)")
    if output is not None:
        doc = document(config, result, summary, planned.target if planned else None, prediction)
        tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        tmp.replace(output)  # atomically: a reader never sees half a document
        console.print(f"wrote {output}")
    if summary.completed == 0:
        typer.echo(f"error: no request completed ({summary.errors} errors)", err=True)
        raise typer.Exit(1)
