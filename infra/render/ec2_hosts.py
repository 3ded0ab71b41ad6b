"""The LB and monitoring hosts of an aws-ec2 stack: what converges them (Ansible inputs of the config bundle)
and how they boot (cloud-init user data). The contract with the hosts is infra/hostagent/layout.py.

Rendered files (aws-ec2 stacks only):

- ``ansible/inventory.yml`` — one host per role, ``gpufleet-lb`` in ``load_balancers`` and
  ``gpufleet-monitoring`` in ``monitoring``, both ``ansible_connection: local``: every LB host (and the
  monitoring host) runs the bundle's ``site.yml`` on itself (``hostagent.sync``, ``--limit`` its name).
- ``ansible/group_vars/all.yml`` — the on-prem variables (infra/render/ansible.py ``group_vars``), with every
  secret as ``{{ gpufleet_secrets['<key>'] }}``: sync fetches the values the ``gpufleet_aws_secrets`` table
  names with the host's instance role, into extra vars on tmpfs. Plus ``gpufleet_discovery``, the discovery
  agent's configuration, and the switches that leave the deploy-time files to that agent.
- ``nginx/upstreams/<deployment>.conf`` and ``prometheus/targets/*.json`` — the deploy-time files as they are
  before discovery has run (no replica: the ``down`` server line; no target: ``[]``). The roles install them
  only where the file is missing, so nginx.conf validates on a new host and discovery owns them afterwards.
- ``cloud-init/roles/<role>.yaml`` — the hosts' user data (a subdirectory: deployment names cannot hold a
  ``/``, so no deployment's ``cloud-init/<deployment>.yaml`` collides): host.json, the hostagent package,
  the sync timer and a bootstrap that installs the SSM agent and the pinned ansible-core, then syncs.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any

from infra.hostagent import layout
from infra.hostagent.formats import file_sd, upstream_conf
from infra.plan.optimize import DeploymentPlan, FleetPlan
from infra.render.alertmanager import secret_files
from infra.render.ansible import dump_vars, group_vars
from infra.render.artifacts import Artifact
from infra.render.cloudinit import USER_DATA_LIMIT, cloud_config
from infra.render.engines import engine_launch
from infra.render.hostlayout import VLLM_PORT
from infra.render.nginx import NginxLayout
from infra.render.prometheus_config import PrometheusLayout, deployment_labels, targets_file
from infra.render.systemd import slot_port, slots_per_machine
from infra.render.telemetry import (
    DCGM_EXPORTER_PORT,
    DCGM_JOB,
    ENGINE_JOB,
    MTAIL_PORT,
    NGINX_EXPORTER_PORT,
    NGINX_JOB,
    NGINX_LOG_JOB,
    NODE_EXPORTER_PORT,
    NODE_JOB,
)
from infra.render.templating import render_template
from infra.spec.secrets import SecretRef
from infra.spec.stack import FileCertificate, StackSpec

AGENT_SOURCE = Path(layout.__file__).resolve().parent
BOOT_MODULES = ("__init__.py", "layout.py", "sync.py")  # what `python3 -m hostagent.sync` imports
# Inventory group of each host role (the groups of ansible/playbooks/site.yml).
ROLE_GROUPS: dict[layout.Role, str] = {"lb": "load_balancers", "monitoring": "monitoring"}
HOST_ROLES: tuple[layout.Role, ...] = tuple(ROLE_GROUPS)
LB_UNIT = "gpufleet-lb"  # systemd/gpufleet-lb.service (infra/render/systemd.py), what nginx_lb runs
SYNC_UNIT = "gpufleet-sync"
BOOTSTRAP = f"{layout.AGENT_DIR}/bootstrap-host.sh"
# Prometheus jobs discovery writes: (job, roles of the instances scraped, port; None = the replicas' ports).
HOST_JOBS: tuple[tuple[str, tuple[layout.Role, ...], int], ...] = (
    (NODE_JOB, layout.ROLES, NODE_EXPORTER_PORT),
    (NGINX_JOB, ("lb",), NGINX_EXPORTER_PORT),
    (NGINX_LOG_JOB, ("lb",), MTAIL_PORT),
)
DEPLOYMENT_JOBS: tuple[tuple[str, int | None], ...] = ((DCGM_JOB, DCGM_EXPORTER_PORT), (ENGINE_JOB, None))


class SecretKeys:
    """Turns secret references into ``{{ gpufleet_secrets['<key>'] }}`` and remembers which store holds each
    key (the ``gpufleet_aws_secrets`` table sync reads)."""

    def __init__(self) -> None:
        self.refs: dict[str, SecretRef] = {}

    def __call__(self, ref: SecretRef) -> str:
        key = re.sub(r"[^a-z0-9]+", "_", ref.name.lower()).strip("_")
        known = self.refs.setdefault(key, ref)
        if known != ref:
            raise ValueError(f"secrets {known.name!r} and {ref.name!r} map to one variable name {key!r}: "
                             "rename one")
        return "{{ gpufleet_secrets['" + key + "'] }}"

    def table(self, refs: list[SecretRef]) -> dict[str, dict[str, str]]:
        """``refs`` by key: the store and name of each, as sync fetches them."""
        return {key: {"source": ref.source, "name": ref.name}
                for key, ref in sorted(self.refs.items()) if ref in refs}


def role_secrets(spec: StackSpec, role: layout.Role) -> list[SecretRef]:
    """The secrets a host role reads, and nothing else (its instance profile grants exactly these): the LB
    the API key and a file certificate, the monitoring host the Alertmanager receivers' secrets."""
    if role == "lb":
        tls = spec.network.tls
        return [spec.api_key, *((tls.cert, tls.key) if isinstance(tls, FileCertificate) else ())]
    if role == "monitoring":
        return [ref for _, ref in secret_files(spec)]
    raise ValueError(f"the {role} hosts are not converged by the config bundle")


def replica_ports(plan: DeploymentPlan) -> list[int]:
    return [slot_port(slot) for slot in range(slots_per_machine(plan))]


def target_jobs() -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = [
        {"file": targets_file(job), "roles": list(roles), "port": port, "per_deployment": False}
        for job, roles, port in HOST_JOBS
    ]
    jobs += [{"file": targets_file(job, "{deployment}"), "roles": ["gpu"], "port": port, "per_deployment": True}
             for job, port in DEPLOYMENT_JOBS]
    return jobs


def discovery(plan: FleetPlan, nginx: NginxLayout | None = None,
              prometheus: PrometheusLayout | None = None) -> dict[str, Any]:
    """The discovery agent's configuration (layout.DISCOVERY_CONFIG) for both roles; the ec2_agent role
    keeps ``upstreams`` on LB hosts and ``targets`` on the monitoring host."""
    nginx = nginx or NginxLayout()
    prometheus = prometheus or PrometheusLayout()
    conf = f"{nginx.config_dir}/nginx.conf"
    return {
        "stack": plan.stack,
        "region": plan.spec.region,
        "deployments": {d.deployment.name: {"ports": replica_ports(d), "labels": deployment_labels(d),
                                            "health_path": engine_launch(d).ready_path}
                        for d in plan.deployments},
        "health": layout.DISCOVERY_HEALTH,
        "upstreams": {"dir": nginx.upstream_dir, "check": ["nginx", "-t", "-q", "-c", conf],
                      "reload": ["systemctl", "reload", LB_UNIT]},
        "targets": {"dir": prometheus.targets_dir, "jobs": target_jobs()},
        "state_file": layout.DISCOVERY_STATE,
    }


def inventory() -> dict[str, Any]:
    return {"all": {
        # Modules run with Debian's python3: it has python3-apt, which the apt module needs (the venv that
        # holds ansible-core does not).
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3"},
        "children": {group: {"hosts": {layout.inventory_host(role): {}}} for role, group in ROLE_GROUPS.items()},
    }}


def ec2_group_vars(plan: FleetPlan) -> dict[str, Any]:
    secrets = SecretKeys()
    variables = group_vars(plan, secrets)
    variables["firewall_admin_cidrs"] = []  # security groups are the firewall (sync skips the firewall play)
    variables.update({
        "gpufleet_service_manager": "systemd",
        # Per role: a host fetches only what its instance profile may read.
        "gpufleet_aws_secrets": {role: secrets.table(role_secrets(plan.spec, role)) for role in HOST_ROLES},
        "gpufleet_discovery": discovery(plan),
        # Discovery writes the upstreams and scrape targets from the running instances: the roles install
        # the render's "nothing yet" files only where none exists, and never overwrite discovery's.
        "nginx_lb_upstreams_from_render": False,
        "monitoring_targets_from_render": False,
    })
    return variables


def before_discovery_files(plan: FleetPlan) -> list[Artifact]:
    """The deploy-time files before discovery has found anything."""
    artifacts = [Artifact(f"nginx/upstreams/{d.deployment.name}.conf", "nginx-conf", d.deployment.name,
                          upstream_conf(d.deployment.name, [], VLLM_PORT, allow_empty=True))
                 for d in plan.deployments]
    names = [targets_file(job) for job, _, _ in HOST_JOBS]
    names += [targets_file(job, d.deployment.name) for job, _ in DEPLOYMENT_JOBS for d in plan.deployments]
    artifacts += [Artifact(f"prometheus/targets/{name}", "prometheus-config", None, file_sd([], {}, 0))
                  for name in sorted(names)]
    return artifacts


# -- user data ---------------------------------------------------------------------------------------------

def packed_user_data(text: str) -> bytes:
    """What the launch template sends: the user data gzipped (no name, no time: deterministic). cloud-init
    unpacks gzipped user data itself (cloud-init docs, "User-data formats": compressed content), and EC2's
    16 KiB limit applies to these bytes, so the render can embed the agent's sources as plain, reviewable text."""
    return gzip.compress(text.encode(), compresslevel=9, mtime=0)


def agent_files() -> list[dict[str, Any]]:
    """The part of the hostagent package the first sync runs. The first converge installs the whole package
    from the bundle (ec2_agent role), discover with it."""
    return [{"path": f"{layout.AGENT_DIR}/{layout.BUNDLE_AGENT}/{name}", "owner": "root:root",
             "permissions": "0644", "content": (AGENT_SOURCE / name).read_text(encoding="utf-8")}
            for name in BOOT_MODULES]


def host_config(plan: FleetPlan, role: layout.Role) -> str:
    """layout.HOST_CONFIG: what sync needs to find this host's bundle."""
    document = {"role": role, "stack": plan.stack, "region": plan.spec.region,
                "parameter": layout.bundle_parameter(plan.stack)}
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def render_host_user_data(plan: FleetPlan, role: layout.Role) -> Artifact:
    region = plan.spec.region
    if region is None:
        raise ValueError("target aws-ec2 needs a region")
    common = {"role": role, "stack": plan.stack, "agent_dir": layout.AGENT_DIR, "sync_unit": SYNC_UNIT}
    files = [
        {"path": layout.HOST_CONFIG, "owner": "root:root", "permissions": "0644",
         "content": host_config(plan, role)},
        *agent_files(),
        {"path": f"/etc/systemd/system/{SYNC_UNIT}.service", "owner": "root:root", "permissions": "0644",
         "content": render_template("systemd/sync.service.j2", **common, host_config=layout.HOST_CONFIG)},
        {"path": f"/etc/systemd/system/{SYNC_UNIT}.timer", "owner": "root:root", "permissions": "0644",
         "content": render_template("systemd/sync.timer.j2", **common)},
        {"path": BOOTSTRAP, "owner": "root:root", "permissions": "0755",
         "content": render_template("cloud-init/bootstrap-host.sh.j2", **common, region=region,
                                    ansible_venv=layout.ANSIBLE_VENV, ansible_core=layout.ANSIBLE_CORE)},
    ]
    config = {
        # Debian's cloud image has no boto3 or venv module; the LB and monitoring hosts have no GPU driver to
        # protect, so boot may refresh the package lists.
        "package_update": True,
        "package_upgrade": False,
        "packages": ["python3-boto3", "python3-yaml", "python3-venv", "curl"],
        "write_files": files,
        "runcmd": [[BOOTSTRAP]],
    }
    header = (
        "#cloud-config\n"
        f"# User data of the {role} hosts of stack {plan.stack} (rendered by gpufleet; do not edit). Converged by\n"
        f"# the config bundle named in SSM parameter {layout.bundle_parameter(plan.stack)}. Sent gzipped.\n"
    )
    text = header + cloud_config(config)
    size = len(packed_user_data(text))
    if size > USER_DATA_LIMIT:
        raise ValueError(f"user data of the {role} hosts is {size} bytes gzipped, over EC2's {USER_DATA_LIMIT}")
    return Artifact(host_user_data_path(role), "cloud-init", None, text)


def host_user_data_path(role: layout.Role) -> str:
    return f"cloud-init/roles/{role}.yaml"


def render_ec2_hosts(plan: FleetPlan) -> list[Artifact]:
    if plan.spec.target != "aws-ec2":
        return []
    artifacts = [
        Artifact("ansible/inventory.yml", "ansible-vars", None, dump_vars(plan.stack, inventory())),
        Artifact("ansible/group_vars/all.yml", "ansible-vars", None, dump_vars(plan.stack, ec2_group_vars(plan))),
        *before_discovery_files(plan),
    ]
    artifacts += [render_host_user_data(plan, role) for role in HOST_ROLES]
    return artifacts
