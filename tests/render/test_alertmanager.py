"""Alertmanager config: `amtool check-config` on every example stack, routing of every alert the Prometheus rules
can fire checked with `amtool config routes test`, the inhibit rules evaluated on the rules' real label sets,
the deploy-time secret files, and determinism.

amtool is required (Debian's `prometheus-alertmanager`, installed by scripts/install-system-deps.sh): a missing
tool is a failure, never a skip.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.plan.optimize import FleetPlan, plan_stack
from infra.render.alertmanager import CONFIG_PATH, UI_ONLY, AlertmanagerLayout, render_alertmanager, secret_files
from infra.render.prometheus_rules import rules_document
from infra.spec.alerting import Alerting
from infra.spec.load import Project, load_stack
from infra.spec.secrets import SecretRef
from tests.tooling import require_tool

ROOT = Path(__file__).resolve().parents[2]
STACKS = ["dev", "staging", "prod", "onprem-a800"]
TIMEOUT_S = 60

# Who gets what, written out by hand from the example stacks (not computed by the code under test):
# stack -> (deployment or None for fleet-wide alerts, severity) -> receivers in notification order.
EXPECTED_ROUTES: dict[str, dict[tuple[str | None, str], str]] = {
    "dev": {(None, "critical"): UI_ONLY, (None, "warning"): UI_ONLY,
            ("chat", "critical"): UI_ONLY, ("chat", "warning"): UI_ONLY},
    "staging": {(None, "critical"): "release-bot", (None, "warning"): "release-bot",
                ("support", "critical"): "release-bot", ("support", "warning"): "release-bot"},
    "prod": {(None, "critical"): "oncall,ml-platform", (None, "warning"): "ml-platform",
             ("chat-70b", "critical"): "oncall,ml-platform", ("chat-70b", "warning"): "ml-platform",
             # the override: the support team owns its deployment
             ("support", "critical"): "oncall,support-team", ("support", "warning"): "support-team"},
    "onprem-a800": {(None, "critical"): "oncall", (None, "warning"): "ml-platform-cn",
                    ("chat-72b", "critical"): "oncall", ("chat-72b", "warning"): "ml-platform-cn",
                    ("support", "critical"): "oncall", ("support", "warning"): "ml-platform-cn"},
}


@cache
def plan_for(stack: str) -> FleetPlan:
    return plan_stack(load_stack(Project(ROOT), stack))


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("amtool"), *args], check=False, capture_output=True, text=True,
                          timeout=TIMEOUT_S)


def write_config(plan: FleetPlan, folder: Path) -> Path:
    """Render with the secrets in ``folder/secrets``, create every secret file it names, write the config."""
    layout = AlertmanagerLayout(secrets_dir=str(folder / "secrets"))
    (folder / "secrets").mkdir(exist_ok=True)
    for path, ref in secret_files(plan.spec, layout):
        Path(path).write_text(f"test value of {ref.source}:{ref.name}", encoding="utf-8")
    [artifact] = render_alertmanager(plan, layout)
    config = folder / "alertmanager.yml"
    config.write_text(artifact.content, encoding="utf-8")
    return config


def file_settings(node: Any) -> Iterator[str]:
    """Every `*_file` value of a config document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key.endswith("_file") and isinstance(value, str):
                yield value
            else:
                yield from file_settings(value)
    elif isinstance(node, list):
        for item in node:
            yield from file_settings(item)


def alerts(plan: FleetPlan) -> list[dict[str, Any]]:
    """Every alerting rule the Prometheus rules of this plan define."""
    return [rule for group in rules_document(plan)["groups"] for rule in group["rules"] if "alert" in rule]


def with_alerting(plan: FleetPlan, alerting: dict[str, Any]) -> FleetPlan:
    spec = plan.spec.model_copy(update={"alerting": Alerting.model_validate(alerting)})
    return dataclasses.replace(plan, spec=spec)


# -- amtool check-config ----------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_amtool_check_config(stack: str, tmp_path: Path) -> None:
    config = write_config(plan_for(stack), tmp_path)
    result = amtool("check-config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_receiver_kind_passes_check_config(tmp_path: Path) -> None:
    """The examples use PagerDuty, Slack and a webhook with a token; email and a tokenless webhook too."""
    secret = {"source": "env", "name": "X"}
    plan = with_alerting(plan_for("prod"), {
        "receivers": [
            {"name": "mail", "email": {"to": ["a@example.com", "b@example.com"], "from": "am@example.com",
                                       "smarthost": "smtp.example.com:587", "authUsername": "am",
                                       "authPassword": secret}},
            {"name": "relay", "email": {"to": ["ops@example.com"], "from": "am@example.com",
                                        "smarthost": "[2001:db8::25]:25", "requireTls": False}},
            {"name": "hook", "webhook": {"url": "http://127.0.0.1:9000/hook"}},
            {"name": "chat", "slack": {"apiUrl": secret}},
        ],
        "routes": {"critical": ["mail", "hook"], "warning": []},
        "deployments": {"support": {"warning": ["chat", "relay"]}},
    })
    config = write_config(plan, tmp_path)
    result = amtool("check-config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    doc = yaml.safe_load(config.read_text(encoding="utf-8"))
    by_name = {receiver["name"]: receiver for receiver in doc["receivers"]}
    [mail] = by_name["mail"]["email_configs"]
    assert mail["to"] == "a@example.com, b@example.com"
    assert mail["auth_password_file"] == f"{tmp_path}/secrets/mail-auth-password"
    assert mail["require_tls"] is True
    [hook] = by_name["hook"]["webhook_configs"]
    assert "http_config" not in hook
    # an empty list: shown in the UI only, not notified
    assert routes_test(config, "", {"alertname": "GpufleetBackendDown", "deployment": "chat-70b",
                                     "severity": "warning"}) == UI_ONLY
    assert routes_test(config, "", {"alertname": "GpufleetBackendDown", "deployment": "support",
                                     "severity": "warning"}) == "chat,relay"


# -- routing, with the real tool --------------------------------------------------------------------------


def routes_test(config: Path, expected: str, labels: dict[str, str]) -> str:
    """The receivers amtool resolves for an alert with these labels; with `expected`, amtool verifies them."""
    verify = [f"--verify.receivers={expected}"] if expected else []
    result = amtool("config", "routes", "test", f"--config.file={config}", *verify,
                    *(f"{name}={value}" for name, value in sorted(labels.items())))
    assert result.returncode == 0, f"{labels}: {result.stdout}{result.stderr}"
    return result.stdout.strip()


@pytest.mark.parametrize("stack", STACKS)
def test_every_alert_reaches_its_receivers(stack: str, tmp_path: Path) -> None:
    """Each alert of the stack's rules, with the labels the rule gives it, routed by amtool."""
    plan = plan_for(stack)
    config = write_config(plan, tmp_path)
    expected = EXPECTED_ROUTES[stack]
    seen = set()
    for rule in alerts(plan):
        labels = {"alertname": rule["alert"], **rule["labels"]}
        key = (labels.get("deployment"), labels["severity"])
        seen.add(key)
        assert routes_test(config, expected[key], labels) == expected[key], labels
    assert seen == set(expected), "the table names a deployment or severity no alert has"


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        ({"alertname": "GpufleetAllBackendsDown", "deployment": "chat-70b", "severity": "critical"},
         "oncall,ml-platform"),
        ({"alertname": "GpufleetTtftP95AboveSlo", "deployment": "chat-70b", "severity": "warning"}, "ml-platform"),
        ({"alertname": "GpufleetErrorBudgetFastBurn", "deployment": "support", "severity": "critical"},
         "oncall,support-team"),
        ({"alertname": "GpufleetPreemptions", "deployment": "support", "severity": "warning"}, "support-team"),
        ({"alertname": "GpufleetLoadBalancerDown", "severity": "critical"}, "oncall,ml-platform"),
        ({"alertname": "GpufleetGpuTemperatureHigh", "severity": "warning", "instance": "10.0.0.5:9400"},
         "ml-platform"),
        # a GPU alert of a host dedicated to the support deployment follows the override
        ({"alertname": "GpufleetGpuXidError", "deployment": "support", "severity": "critical"},
         "oncall,support-team"),
        # an alert from another rule file without a known severity is not dropped: routed as a warning
        ({"alertname": "SomethingElse"}, "ml-platform"),
        ({"alertname": "SomethingElse", "severity": "info", "deployment": "support"}, "support-team"),
    ],
)
def test_prod_routing(labels: dict[str, str], receivers: str, tmp_path: Path) -> None:
    config = write_config(plan_for("prod"), tmp_path)
    assert routes_test(config, receivers, labels) == receivers


def test_wrong_receivers_fail_verification(tmp_path: Path) -> None:
    """The routing tests above would notice a wrong route: amtool fails when receivers differ."""
    config = write_config(plan_for("prod"), tmp_path)
    result = amtool("config", "routes", "test", f"--config.file={config}", "--verify.receivers=ml-platform",
                    "alertname=GpufleetAllBackendsDown", "deployment=chat-70b", "severity=critical")
    assert result.returncode != 0


def test_route_tree_shape() -> None:
    doc = yaml.safe_load(render_alertmanager(plan_for("prod"))[0].content)
    route = doc["route"]
    assert route["receiver"] == UI_ONLY
    assert route["group_by"] == ["alertname", "deployment"]
    matchers = [child["matchers"] for child in route["routes"]]
    assert matchers == [['deployment="support"', 'severity="critical"'],
                        ['deployment="support"', 'severity!="critical"'],
                        ['severity="critical"'],
                        ['severity!="critical"']]
    critical, warning = route["routes"][2], route["routes"][3]
    assert (critical["group_wait"], critical["repeat_interval"]) == ("10s", "1h")
    assert (warning["group_wait"], warning["repeat_interval"]) == ("1m", "12h")
    assert [(c["receiver"], c["continue"]) for c in critical["routes"]] == [("oncall", True), ("ml-platform", False)]
    for child in route["routes"]:
        assert "match" not in child and "match_re" not in child  # deprecated forms


def test_without_alerting_every_alert_is_ui_only() -> None:
    plan = plan_for("dev")
    assert plan.spec.alerting is None
    text = render_alertmanager(plan)[0].content
    doc = yaml.safe_load(text)
    assert doc["receivers"] == [{"name": UI_ONLY}]
    assert "routes" not in doc["route"]
    assert "no gpufleet:alerting section" in text


# -- inhibition: the rules, evaluated on the label sets the Prometheus rules produce ------------------------

MATCHER = re.compile(r'^(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)(?P<op>=~|!~|!=|=)"(?P<value>.*)"$')


def matches(matchers: list[str], labels: dict[str, str]) -> bool:
    """Alertmanager's matcher semantics: a missing label is the empty string; regexes are anchored."""
    for matcher in matchers:
        found = MATCHER.match(matcher)
        assert found, f"unexpected matcher syntax {matcher!r}"
        value, op, want = labels.get(found["name"], ""), found["op"], found["value"]
        ok = {"=": value == want, "!=": value != want,
              "=~": re.fullmatch(want, value) is not None, "!~": re.fullmatch(want, value) is None}[op]
        if not ok:
            return False
    return True


def inhibited(rules: list[dict[str, Any]], source: dict[str, str], target: dict[str, str]) -> bool:
    return any(matches(rule["source_matchers"], source) and matches(rule["target_matchers"], target)
               and all(source.get(name, "") == target.get(name, "") for name in rule.get("equal", []))
               for rule in rules)


@cache
def prod_labels() -> dict[tuple[str, str | None], dict[str, str]]:
    """(alertname, deployment) -> the alert's labels, from the prod rules."""
    return {(rule["alert"], rule["labels"].get("deployment")): {"alertname": rule["alert"], **rule["labels"]}
            for rule in alerts(plan_for("prod"))}


def alert(name: str, deployment: str | None = None, **series: str) -> dict[str, str]:
    return {**prod_labels()[(name, deployment)], **series}


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        (("GpufleetAllBackendsDown", "chat-70b"), ("GpufleetBackendDown", "chat-70b"), True),
        (("GpufleetAllBackendsDown", "chat-70b"), ("GpufleetBackendDown", "support"), False),
        (("GpufleetErrorBudgetFastBurn", "support"), ("GpufleetErrorBudgetSlowBurn", "support"), True),
        (("GpufleetErrorBudgetFastBurn", "support"), ("GpufleetTtftP95AboveSlo", "support"), True),
        (("GpufleetErrorBudgetFastBurn", "support"), ("GpufleetErrorBudgetSlowBurn", "chat-70b"), False),
        (("GpufleetLoadBalancerDown", None), ("GpufleetTtftP95AboveSlo", "chat-70b"), True),
        (("GpufleetLoadBalancerDown", None), ("GpufleetLoadAboveCapacity", "support"), True),
        (("GpufleetLoadBalancerDown", None), ("GpufleetGpuTemperatureHigh", None), False),
        # a fleet-wide critical without a deployment label silences no deployment's warnings
        (("GpufleetGpuXidError", None), ("GpufleetBackendDown", "chat-70b"), False),
        # criticals never inhibit criticals
        (("GpufleetLoadBalancerDown", None), ("GpufleetAllBackendsDown", "chat-70b"), False),
    ],
)
def test_inhibit_rules(source: tuple[str, str | None], target: tuple[str, str | None], expected: bool) -> None:
    rules = yaml.safe_load(render_alertmanager(plan_for("prod"))[0].content)["inhibit_rules"]
    src, tgt = alert(*source, instance="10.0.0.1:8000"), alert(*target, instance="10.0.0.2:8000")
    assert inhibited(rules, src, tgt) is expected


def test_gpu_inhibition_stays_on_the_gpu() -> None:
    rules = yaml.safe_load(render_alertmanager(plan_for("prod"))[0].content)["inhibit_rules"]
    xid = alert("GpufleetGpuXidError", instance="10.0.0.1:9400", gpu="3")
    assert inhibited(rules, xid, alert("GpufleetGpuTemperatureHigh", instance="10.0.0.1:9400", gpu="3"))
    assert inhibited(rules, xid, alert("GpufleetGpuMemoryHigh", instance="10.0.0.1:9400", gpu="3"))
    assert not inhibited(rules, xid, alert("GpufleetGpuTemperatureHigh", instance="10.0.0.1:9400", gpu="4"))
    assert not inhibited(rules, xid, alert("GpufleetGpuTemperatureHigh", instance="10.0.0.2:9400", gpu="3"))
    # a GPU warning on a host dedicated to a deployment may be the cause of that deployment's critical
    burn = alert("GpufleetErrorBudgetFastBurn", "support")
    hot = alert("GpufleetGpuTemperatureHigh", instance="10.0.0.1:9400", gpu="3") | {"deployment": "support"}
    assert not inhibited(rules, burn, hot)


def test_inhibit_rules_name_alerts_that_exist() -> None:
    """A renamed alert in prometheus_rules must not silently disable an inhibit rule."""
    names = {name for name, _ in prod_labels()}
    rules = yaml.safe_load(render_alertmanager(plan_for("prod"))[0].content)["inhibit_rules"]
    for rule in rules:
        for matcher in [*rule["source_matchers"], *rule["target_matchers"]]:
            found = MATCHER.match(matcher)
            assert found
            if found["name"] == "alertname":
                assert set(found["value"].split("|")) <= names, matcher
    assert all("source_match" not in rule and "target_match" not in rule for rule in rules)


# -- secrets ------------------------------------------------------------------------------------------------


def test_secret_files_of_prod() -> None:
    """prod is an eks stack: the files are where the Prometheus operator mounts the receivers' Secret."""
    files = secret_files(plan_for("prod").spec)
    mounted = "/etc/alertmanager/secrets/gpufleet-alertmanager-receivers"
    assert files == [
        (f"{mounted}/oncall-routing-key",
         SecretRef(source="aws-secrets-manager", name="gpufleet/prod/pagerduty-routing-key")),
        (f"{mounted}/ml-platform-api-url",
         SecretRef(source="aws-secrets-manager", name="gpufleet/prod/slack-webhook-url")),
        (f"{mounted}/support-team-api-url",
         SecretRef(source="aws-secrets-manager", name="gpufleet/prod/slack-webhook-url-support")),
    ]
    onprem = secret_files(plan_for("onprem-a800").spec)
    assert onprem and all(path.startswith("/etc/gpufleet/alertmanager/secrets/") for path, _ in onprem)
    assert secret_files(plan_for("dev").spec) == []


@pytest.mark.parametrize("stack", STACKS)
def test_config_reads_exactly_the_secret_files(stack: str) -> None:
    plan = plan_for(stack)
    doc = yaml.safe_load(render_alertmanager(plan)[0].content)
    assert sorted(file_settings(doc)) == sorted(path for path, _ in secret_files(plan.spec))


@pytest.mark.parametrize("stack", STACKS)
def test_no_secret_reference_in_the_render(stack: str) -> None:
    """The config names files, never where the secret lives nor (a fortiori) its value."""
    plan = plan_for(stack)
    text = render_alertmanager(plan)[0].content
    for _, ref in secret_files(plan.spec):
        assert ref.name not in text


# -- determinism and artifact contract ----------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_render_is_deterministic(stack: str) -> None:
    first = render_alertmanager(plan_stack(load_stack(Project(ROOT), stack)))
    second = render_alertmanager(plan_stack(load_stack(Project(ROOT), stack)))
    assert first == second
    [artifact] = first
    assert (artifact.path, artifact.kind, artifact.deployment) == (CONFIG_PATH, "alertmanager-config", None)
    assert artifact.content.startswith(f"# Generated by gpufleet from stack {stack}: do not edit")
    assert artifact.content.endswith("\n")
