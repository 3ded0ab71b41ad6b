"""pytest-testinfra specs of deployed gpufleet hosts (load balancers, monitoring).

They check a converged host, never a render, so they run only when asked to (``--hosts``):

    # every host of an on-prem stack, groups from the inventory (operators, after ansible-playbook):
    pytest tests/infra --hosts='ansible://all' --ansible-inventory=out/onprem-a800/ansible/inventory.yml --sudo
    # this machine, playing the groups named by --infra-groups (tests/ansible, a developer's machine):
    pytest tests/infra --hosts=local:// --infra-groups=load_balancers,monitoring

A spec module names the inventory group it describes with ``pytestmark = pytest.mark.infra_group(NAME)``;
a host outside that group skips it. On the ansible backend the groups are the host's ``group_names``; on any
other backend (local://, ssh://, docker://) they are ``--infra-groups``. Every check runs on the host itself
(``host.run``), so nothing needs to reach the host's ports from where pytest runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

GROUPS = ("gpu_servers", "load_balancers", "monitoring")
HERE = Path(__file__).parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--infra-groups",
        default=None,
        help="comma-separated inventory groups the host(s) play on non-ansible backends, e.g. "
             "load_balancers,monitoring (on ansible://, the inventory's groups are used)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "infra_group(name): spec of the hosts in that inventory group")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The suite's plain `pytest` run collects this directory too: without --hosts there is no deployed host,
    # so the specs are deselected (not skipped: the suite's report has no skips). tests/ansible runs them
    # with --hosts against what its plays converged on the CI machine.
    if config.getoption("hosts", default=None):
        return
    specs = [item for item in items if HERE in item.path.parents]
    if specs:
        config.hook.pytest_deselected(items=specs)
        items[:] = [item for item in items if HERE not in item.path.parents]


def host_groups(host, config: pytest.Config) -> set[str]:
    if host.backend.NAME == "ansible":
        return set(host.ansible.get_variables().get("group_names", []))
    option = config.getoption("--infra-groups", default=None)
    if not option:
        pytest.skip(f"which groups does {host.backend.get_hostname()} play? pass --infra-groups "
                    f"(any of {', '.join(GROUPS)}) or use --hosts=ansible://... with an inventory")
    groups = {g.strip() for g in option.split(",") if g.strip()}
    unknown = groups - set(GROUPS)
    if unknown:
        raise pytest.UsageError(f"--infra-groups: unknown group(s) {', '.join(sorted(unknown))}; "
                                f"known: {', '.join(GROUPS)}")
    return groups


@pytest.fixture(autouse=True)
def _select_by_group(request: pytest.FixtureRequest) -> None:
    marker = request.node.get_closest_marker("infra_group")
    if marker is None or "host" not in request.fixturenames:
        return
    host = request.getfixturevalue("host")
    if marker.args[0] not in host_groups(host, request.config):
        pytest.skip(f"{host.backend.get_hostname()} is not in group {marker.args[0]}")
