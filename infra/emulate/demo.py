"""`make demo`: a rendered stack on loopback — emulated vLLM replicas behind the real Nginx load balancer,
with Prometheus and Alertmanager — until Ctrl-C. Prints the URLs and a request to try.

    python -m infra.emulate.demo [-s STACK] [--replicas N] [--time-scale X]
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
from pathlib import Path

from infra.emulate.loopback import LoopbackFleet, LoopbackOptions
from infra.emulate.processes import MissingProgram
from infra.plan.optimize import plan_stack
from infra.spec.issues import SpecError
from infra.spec.load import Project, load_stack

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    parser.add_argument("-s", "--stack", default="dev")
    parser.add_argument("-C", "--project-dir", type=Path, default=ROOT)
    parser.add_argument("--replicas", type=int, default=None, help="emulated replicas per deployment")
    parser.add_argument("--time-scale", type=float, default=1.0, help="emulated step times × this")
    args = parser.parse_args(argv)
    try:
        plan = plan_stack(load_stack(Project(args.project_dir), args.stack))
    except SpecError as error:
        print(error, file=sys.stderr)
        return 2
    if plan.problems():
        print("\n".join(plan.problems()), file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with tempfile.TemporaryDirectory(prefix=f"gpufleet-demo-{args.stack}-") as folder:
        options = LoopbackOptions(replicas=args.replicas, time_scale=args.time_scale)
        try:
            fleet = LoopbackFleet(plan, args.project_dir, Path(folder), options).__enter__()
        except MissingProgram as error:
            print(error, file=sys.stderr)
            return 2
        try:
            print_urls(fleet)
            stop.wait()
        except KeyboardInterrupt:
            pass
        finally:
            fleet.stop()
    return 0


def print_urls(fleet: LoopbackFleet) -> None:
    plan = fleet.plan
    model = plan.deployments[0].profile.resolved_served_name
    print(f"gpufleet demo of stack '{plan.stack}' (files and logs in {fleet.root})")
    print(f"  load balancer  {fleet.lb_url}   (API key: {fleet.options.api_key})")
    for d in plan.deployments:
        addresses = ", ".join(r.address for r in fleet.replicas_of(d.deployment.name))
        print(f"  {d.deployment.name:<14} {d.profile.resolved_served_name}: emulated replicas {addresses}")
    print(f"  Prometheus     {fleet.prometheus_url}")
    print(f"  Alertmanager   {fleet.alertmanager_url}")
    insecure = "-k " if fleet.tls else ""
    print("Try:")
    print(f"  curl -sN {insecure}{fleet.lb_url}/v1/chat/completions -H 'Authorization: Bearer {fleet.options.api_key}' "
          f"-H 'Content-Type: application/json' -d '{{\"model\": \"{model}\", \"stream\": true, "
          f"\"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}], \"max_tokens\": 20}}'")
    print(f"  gpufleet bench {insecure}--endpoint {fleet.lb_url} -s {plan.stack} "
          f"-d {plan.deployments[0].deployment.name} --api-key {fleet.options.api_key} --rate 2 --duration 30")
    print("Ctrl-C stops everything.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
