"""The on-prem target: no cloud resource; the site playbook converges the hosts from the render.

``pulumi up -s onprem-a800`` writes the render where the CLI would (``out/<stack>``: the inventory, group and
host vars and every config the roles copy), then runs ``ansible/playbooks/site.yml`` through pulumi-command's
``local.Command``, one command per play (firewall, GPU servers, load balancers, monitoring) in that order.
Each command is replaced (that is: run again) when the digest of what its play reads changes: the rendered
files of the play, the roles' own files and the stack's vars files (the ansible-vault file holding the
secrets). An unchanged render runs nothing; a changed nginx.conf re-runs the load-balancer play only.

Commands run from the project directory (Pulumi runs the program and its providers there), with the repo's
ansible.cfg; ``ansible-playbook`` comes from PATH (the project's venv: ``pip install -e '.[onprem]'``), and the
vault password from ``ANSIBLE_VAULT_PASSWORD_FILE`` in the environment of ``pulumi up``. Destroying the stack
removes nothing from the hosts (the commands have no delete step): see ansible/README.md.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatch
from functools import partial
from pathlib import Path

import pulumi
from pulumi_command import local

from infra.render.artifacts import Artifact

ROLES_DIR = Path(__file__).resolve().parents[2] / "ansible" / "roles"
SITE = "ansible/playbooks/site.yml"
ANSIBLE_CFG = "ansible/ansible.cfg"


@dataclass(frozen=True)
class Play:
    """One play of site.yml: its tag, the roles it applies and the rendered files it reads (globs)."""

    tag: str
    roles: tuple[str, ...]
    reads: tuple[str, ...]


# Every play reads the inventory and group_vars (addresses, secrets' references, deployments). Globs as
# fnmatch reads them: `*` also matches `/`, so "nginx/*" covers nginx/upstreams/ too.
_VARS = ("ansible/inventory.yml", "ansible/group_vars/*")
PLAYS = (
    Play("firewall", ("firewall",), (*_VARS, "ansible/host_vars/*")),  # host_vars: the vLLM ports to open
    Play("gpu", ("container_runtime", "gpu_host", "vllm"),
         (*_VARS, "ansible/host_vars/*", "vllm/*", "systemd/gpufleet-vllm-*")),
    Play("lb", ("nginx_lb",), (*_VARS, "nginx/*", "nginx/upstreams/*", "systemd/gpufleet-lb.service", "mtail/*")),
    Play("monitoring", ("monitoring",),
         (*_VARS, "prometheus/*", "prometheus/*/*", "alertmanager/*", "grafana/*", "grafana/*/*")),
)


def _digest(chunks: Iterable[tuple[str, bytes]]) -> str:
    """sha256 over (name, content) pairs in name order: the same files give the same digest anywhere."""
    h = hashlib.sha256()
    for name, content in sorted(chunks):
        h.update(name.encode() + b"\0" + hashlib.sha256(content).digest())
    return h.hexdigest()


def play_inputs(play: Play, artifacts: list[Artifact], vars_root: Path, vars_files: list[str]) -> dict[str, str]:
    """What re-runs a play when it changes: digests of its rendered files, its roles (this repository's
    ansible/roles) and the vars files (relative to ``vars_root``, the stacks' project)."""
    rendered = [(a.path, a.content.encode()) for a in artifacts
                if any(fnmatch(a.path, pattern) for pattern in play.reads)]
    roles = [(p.relative_to(ROLES_DIR).as_posix(), p.read_bytes())
             for role in play.roles for p in (ROLES_DIR / role).rglob("*") if p.is_file()]
    extra = [(name, (vars_root / name).read_bytes()) for name in vars_files]
    return {"render": _digest(rendered), "roles": _digest(roles), "vars_files": _digest(extra)}


def playbook_command(render_dir: str, play: Play, vars_files: list[str],
                     extra_vars: dict[str, str] | None = None) -> str:
    args = ["ansible-playbook", "-i", f"{render_dir}/ansible/inventory.yml", SITE, "--tags", play.tag]
    for name in vars_files:
        args += ["-e", f"@{name}"]
    for key, value in sorted((extra_vars or {}).items()):
        args += ["-e", f"{key}={value}"]
    return shlex.join(args)


class OnpremFleet(pulumi.ComponentResource):
    """``gpufleet:onprem:Fleet``: the site playbook, one ``local.Command`` per play, run in site.yml's order."""

    def __init__(self, name: str, *, render_dir: str, artifacts: list[Artifact], vars_root: Path,
                 vars_files: list[str], gpu_vars: pulumi.Input[dict[str, str]] | None = None,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        """``gpu_vars``: extra variables of the GPU play, e.g. the image built for the site
        (``gpufleet_vllm_image`` and ``gpufleet_vllm_image_archive``); a change re-runs that play."""
        super().__init__("gpufleet:onprem:Fleet", name, None, opts)
        previous: list[pulumi.Resource] = []
        self.plays: dict[str, local.Command] = {}
        for play in PLAYS:
            inputs = play_inputs(play, artifacts, vars_root, vars_files)
            extra = gpu_vars if play.tag == "gpu" and gpu_vars is not None else {}
            command = pulumi.Output.from_input(extra).apply(partial(playbook_command, render_dir, play, vars_files))
            self.plays[play.tag] = local.Command(
                f"{name}-{play.tag}",
                create=command,
                # Same digests and extra variables: no run. Any change replaces the command: create runs again.
                triggers=[inputs["render"], inputs["roles"], inputs["vars_files"],
                          pulumi.Output.from_input(extra).apply(lambda v: json.dumps(v, sort_keys=True))],
                environment={"ANSIBLE_CONFIG": ANSIBLE_CFG, "ANSIBLE_NOCOLOR": "1"},
                # The play's log is the output of `pulumi up`; secrets are no_log in the roles.
                logging=local.Logging.STDOUT_AND_STDERR,
                opts=pulumi.ResourceOptions(parent=self, depends_on=previous),
            )
            previous = [self.plays[play.tag]]
        self.inventory = f"{render_dir}/ansible/inventory.yml"
        self.register_outputs({"inventory": self.inventory,
                               "plays": {tag: cmd.id for tag, cmd in self.plays.items()}})

