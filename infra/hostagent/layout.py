"""What the aws-ec2 hosts and the program that provisions them agree on: tags, paths, file shapes.

The aws-ec2 target runs three kinds of host (tag :data:`ROLE_TAG`): ``gpu`` (vLLM replicas, configured by
their cloud-init user data), ``lb`` (Nginx behind the NLB) and ``monitoring`` (Prometheus, Alertmanager,
Grafana). The ``lb`` and ``monitoring`` hosts are converged by the same Ansible roles as on-prem, from a
*config bundle* the program uploads, and they find the others by their tags:

- **Config bundle**: a deterministic ``.tar.gz`` (infra/provision/aws/bundle.py) holding ``render/`` (the
  stack's render directory, with an aws-ec2 ``ansible/inventory.yml`` and ``group_vars`` of its own),
  ``ansible/`` (``playbooks/``, ``roles/``, ``ansible.cfg`` of this repository) and ``hostagent/`` (this
  package). Stored in the stack's config bucket under a content-addressed key; the SSM parameter
  :func:`bundle_parameter` holds a JSON :data:`BundlePointer` naming it. Deterministic parameter name: a
  second fleet with the same stack name in the same account and region fails at ``pulumi up`` (the
  parameter exists), so the ``gpufleet:stack`` tag identifies one fleet there.
- **sync** (:mod:`infra.hostagent.sync`, a systemd timer on ``lb`` and ``monitoring`` hosts): reads the
  pointer, and when it names a bundle this host has not converged, downloads it, checks its sha256,
  unpacks it, fetches the secrets the bundle's group_vars list (``gpufleet_aws_secrets``) into a 0600
  extra-vars file on tmpfs, and runs the bundle's ``site.yml`` for this host's role (``--limit``
  :func:`inventory_host`, ``--skip-tags firewall``: security groups are the firewall on AWS).
- **discover** (:mod:`infra.hostagent.discover`, a systemd timer installed by the ``ec2_agent`` Ansible
  role): lists the running instances of the fleet by tag and writes the Nginx upstreams (``lb``: replicas
  that answer ``/health``) and the Prometheus file_sd targets (``monitoring``: every running instance), in
  the formats of :mod:`infra.hostagent.formats`, exactly what an on-prem render writes.

Shapes (JSON):

- :data:`HOST_CONFIG` (written by cloud-init, read by sync)::

    {"role": "lb" | "monitoring", "stack": "dev", "region": "us-east-1",
     "parameter": "/gpufleet/dev/config-bundle"}

- the SSM parameter's value (:data:`BundlePointer`)::

    {"bucket": "gpufleet-dev-config-...", "key": "bundles/<sha256>.tar.gz", "sha256": "<hex>"}

- :data:`DISCOVERY_CONFIG` (written by the ``ec2_agent`` role from the group_vars ``gpufleet_discovery``
  and the host's role, read by discover)::

    {"stack": "dev", "region": "us-east-1", "endpoint_url": null,
     "deployments": {"chat": {"ports": [8000, 8001],
                              "labels": {"deployment": "chat", "model": "...", "gpu_type": "L4", ...},
                              "health_path": "/health"}},
     "health": {"path": "/health", "timeout_s": 2.0, "failures_to_remove": 3},
     "upstreams": {"dir": "/etc/gpufleet/nginx/upstreams",
                   "check": ["nginx", "-t", "-q", "-c", "/etc/gpufleet/nginx/nginx.conf"],
                   "reload": ["systemctl", "reload", "gpufleet-lb"]} | null,
     "targets": {"dir": "/etc/gpufleet/prometheus/targets",
                 "jobs": [{"file": "node.json", "roles": ["gpu", "lb", "monitoring"], "port": 9100,
                           "per_deployment": false},
                          {"file": "engine-{deployment}.json", "roles": ["gpu"], "port": null,
                           "per_deployment": true}, ...]} | null,
     "state_file": "/var/lib/gpufleet/discovery-state.json"}

  ``endpoint_url``: optional (tests). A job's ``port`` null: the deployment's ``ports``; ``per_deployment``:
  a file per deployment with its ``labels`` (others: no labels), as the on-prem render writes them.
"""

from __future__ import annotations

from typing import Literal, TypedDict

# -- tags every instance of an aws-ec2 fleet carries (the cost tags of infra/provision/aws/tags.py plus the
# role); discovery filters on them.
STACK_TAG = "gpufleet:stack"
DEPLOYMENT_TAG = "gpufleet:deployment"
ROLE_TAG = "gpufleet:role"
Role = Literal["gpu", "lb", "monitoring"]
ROLES: tuple[Role, ...] = ("gpu", "lb", "monitoring")

# -- paths on the lb and monitoring hosts
HOST_CONFIG = "/etc/gpufleet/host.json"
DISCOVERY_CONFIG = "/etc/gpufleet/discovery.json"
AGENT_DIR = "/usr/local/lib/gpufleet"  # the hostagent package lives in AGENT_DIR/hostagent
STATE_DIR = "/var/lib/gpufleet"
BUNDLES_DIR = f"{STATE_DIR}/bundles"  # one directory per unpacked bundle (its sha256), `current` -> the last good
DISCOVERY_STATE = f"{STATE_DIR}/discovery-state.json"
SECRETS_DIR = "/run/gpufleet"  # tmpfs: the extra-vars file with secret values never reaches a disk
ANSIBLE_VENV = "/opt/gpufleet/ansible"  # ansible-core, pinned to the version the tests run (ANSIBLE_CORE)
# The ansible-core the roles are tested with (pyproject's onprem extra; tests check the two agree).
ANSIBLE_CORE = "2.19.14"

# -- discovery's active health check of a replica (DISCOVERY_CONFIG "health"; also its defaults). vLLM's
# /health answers 200 once the engine is up. Three misses at the discover timer's 20 s take a dead replica
# out within a minute; nginx's passive check (formats.MAX_FAILS) covers the seconds in between.
DISCOVERY_HEALTH = {"path": "/health", "timeout_s": 2.0, "failures_to_remove": 3}

# -- bundle layout (top-level directories of the archive)
BUNDLE_RENDER = "render"
BUNDLE_ANSIBLE = "ansible"
BUNDLE_AGENT = "hostagent"


class BundlePointer(TypedDict):
    bucket: str
    key: str
    sha256: str


def inventory_host(role: Role) -> str:
    """The host's name in the bundle's aws-ec2 inventory (``gpufleet-lb`` in group ``load_balancers``,
    ``gpufleet-monitoring`` in ``monitoring``; both ``ansible_connection: local``). Not the role itself: a
    host named like a group (``monitoring``) makes Ansible warn, and ``--limit`` must pick one host."""
    return f"gpufleet-{role}"


def bundle_parameter(stack: str) -> str:
    """The SSM parameter that names the stack's current config bundle."""
    return f"/gpufleet/{stack}/config-bundle"


BUNDLES_PREFIX = "bundles/"  # the config bucket's key prefix of bundles (the hosts may read only these)


def bundle_key(sha256: str) -> str:
    """Content-addressed: a new bundle is a new object, never an overwrite of the one hosts are reading."""
    return f"{BUNDLES_PREFIX}{sha256}.tar.gz"
