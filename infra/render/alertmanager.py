"""Alertmanager's configuration from the stack's ``gpufleet:alerting`` section (kind ``alertmanager-config``).

Rendered file (installed as ``/etc/gpufleet/alertmanager/alertmanager.yml``), validated by
``amtool check-config`` and routed alert by alert with ``amtool config routes test`` in the tests:

- ``alertmanager/alertmanager.yml`` — one Alertmanager per stack. Alerts are grouped by ``alertname`` and
  ``deployment`` (the labels of infra/render/prometheus_rules.py). Routes, first match wins: each
  per-deployment override (``deployment="x"`` and the severity), then the stack's routes by severity.
  ``severity="critical"`` pages; everything else (``warning``, and any alert without a known severity, so
  nothing is dropped) is routed as a warning. A route to several receivers is one child route per receiver,
  all but the last with ``continue: true``, so each receiver is notified independently. Without an alerting
  section, or for an empty receiver list, alerts go to :data:`UI_ONLY`, a receiver without integrations:
  they show in Alertmanager's UI and API, and nobody is notified.
- Inhibition: a deployment's critical alert silences the same deployment's warnings (e.g.
  GpufleetAllBackendsDown silences GpufleetBackendDown, GpufleetErrorBudgetFastBurn silences
  GpufleetErrorBudgetSlowBurn); GpufleetLoadBalancerDown silences every deployment's warnings (no request
  reaches a deployment, so its latency and load warnings say nothing); a GPU's XID error silences that
  GPU's temperature and memory warnings. GPU warnings are never silenced by a deployment's alert: they may
  be its cause.

Written at deploy time, never rendered (the render holds no secret), each file containing only the
secret's value (no trailing newline needed), readable by the Alertmanager user only (Debian: ``prometheus``,
mode 0400 or 0440 with that group):

- ``<secrets dir>/<receiver>-<field>`` (secrets dir ``/etc/gpufleet/alertmanager/secrets``; on eks the operator's
  mount of Secret :data:`K8S_RECEIVERS_SECRET`), one per
  secret of a receiver: ``routing-key`` (PagerDuty, ``routing_key_file``), ``api-url`` (Slack,
  ``api_url_file``), ``bearer-token`` (webhook, ``http_config.authorization.credentials_file``),
  ``auth-password`` (email, ``auth_password_file``). :func:`secret_files` lists them with the
  ``SecretRef`` each is read from, so every target's provisioner (cloud-init, the Kubernetes Secret
  mounted at the secrets dir, the Ansible role) writes the same files before Alertmanager starts or reloads.
  A missing file is not a config error: Alertmanager fails when it tries to notify that receiver, and logs it.

The config is built as data and written with PyYAML's safe dumper, not a Jinja template: the receivers'
message templates are Go templates whose ``{{ }}`` would collide with Jinja's, and safe_dump quotes matchers
and templates correctly whatever they contain. The "why" of each timer is in the file's header.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml

from infra.plan.optimize import FleetPlan
from infra.render.artifacts import Artifact
from infra.render.hostlayout import CONFIG_DIR
from infra.render.prometheus_rules import deployment_alerts, fleet_alerts
from infra.render.telemetry import DEPLOYMENT_LABEL
from infra.spec.alerting import Alerting, Receiver
from infra.spec.secrets import SecretRef
from infra.spec.stack import StackSpec

CONFIG_PATH = "alertmanager/alertmanager.yml"
UI_ONLY = "gpufleet.ui-only"
"""The receiver without integrations. The dot keeps it apart from spec receiver names (DNS labels)."""
GROUP_BY = ["alertname", DEPLOYMENT_LABEL]
LB_DOWN = "GpufleetLoadBalancerDown"
XID_ERROR = "GpufleetGpuXidError"


@dataclass(frozen=True)
class Timers:
    group_wait: str
    group_interval: str
    repeat_interval: str
    why: str

    def as_route(self) -> dict[str, str]:
        return {"group_wait": self.group_wait, "group_interval": self.group_interval,
                "repeat_interval": self.repeat_interval}


CRITICAL = Timers(
    "10s", "1m", "1h",
    "critical pages: wait only 10s to batch the alerts of one incident (all backends down + error burn), "
    "tell about new ones within a minute, remind hourly until resolved (PagerDuty deduplicates).")
WARNING = Timers(
    "1m", "5m", "12h",
    "warnings are tickets: wait 1m so a flapping condition settles, remind twice a day, not every hour.")
DEFAULT = Timers(
    "30s", "5m", "4h",
    "the root (Alertmanager's defaults) takes every alert when the stack has no alerting section.")


@dataclass(frozen=True)
class AlertmanagerLayout:
    """Where the deploy-time secret files live. The default is the production host; tests use a temporary
    folder so that the rendered config points at files they created."""

    secrets_dir: str = f"{CONFIG_DIR}/alertmanager/secrets"

    def secret_file(self, receiver: str, field: str) -> str:
        return f"{self.secrets_dir}/{receiver}-{field}"


# On eks, Alertmanager is kube-prometheus-stack's: the Prometheus operator mounts each Secret named in
# ``alertmanagerSpec.secrets`` at /etc/alertmanager/secrets/<secret name> (prometheus-operator API docs,
# AlertmanagerSpec.secrets). The provisioner writes this Secret, one key per file of :func:`secret_files`.
K8S_RECEIVERS_SECRET = "gpufleet-alertmanager-receivers"
K8S_LAYOUT = AlertmanagerLayout(secrets_dir=f"/etc/alertmanager/secrets/{K8S_RECEIVERS_SECRET}")


def target_layout(spec: StackSpec) -> AlertmanagerLayout:
    """Where the stack's target keeps the secret files: the operator's mount on eks, /etc/gpufleet elsewhere."""
    return K8S_LAYOUT if spec.target == "eks" else AlertmanagerLayout()


def _secrets(receiver: Receiver) -> list[tuple[str, SecretRef]]:
    """(field, reference) of each secret of one receiver."""
    if receiver.pagerduty is not None:
        return [("routing-key", receiver.pagerduty.routing_key)]
    if receiver.slack is not None:
        return [("api-url", receiver.slack.api_url)]
    if receiver.webhook is not None and receiver.webhook.bearer_token is not None:
        return [("bearer-token", receiver.webhook.bearer_token)]
    if receiver.email is not None and receiver.email.auth_password is not None:
        return [("auth-password", receiver.email.auth_password)]
    return []


def secret_files(spec: StackSpec, layout: AlertmanagerLayout | None = None) -> list[tuple[str, SecretRef]]:
    """Every file the rendered config reads a secret from, with the secret to write into it, in receiver
    order. Empty without an alerting section."""
    layout = layout or target_layout(spec)
    if spec.alerting is None:
        return []
    return [(layout.secret_file(receiver.name, field), ref)
            for receiver in spec.alerting.receivers for field, ref in _secrets(receiver)]


# -- message templates (Go templates, Alertmanager's notification data) ------------------------------------
TITLE = ('[{{ .Status | toUpper }}{{ if eq .Status "firing" }}:{{ .Alerts.Firing | len }}{{ end }}] '
         "{{ .CommonLabels.alertname }}{{ with .CommonLabels.deployment }} ({{ . }}){{ end }}")
SUMMARY = ("{{ with .CommonAnnotations.summary }}{{ . }}{{ else }}"
           "{{ (index .Alerts 0).Annotations.summary }}{{ end }}")
BODY = ('{{ range .Alerts }}{{ if eq .Status "resolved" }}[RESOLVED] {{ end }}{{ .Annotations.summary }}\n'
        "{{ .Annotations.description }}\n"
        "Runbook: {{ .Annotations.runbook }}\n"
        "{{ with .Labels.instance }}Instance: {{ . }}\n{{ end }}\n{{ end }}")


def _integration(receiver: Receiver, layout: AlertmanagerLayout) -> dict[str, Any]:
    """The Alertmanager receiver of one spec receiver (exactly one integration)."""
    def secret(field: str) -> str:
        return layout.secret_file(receiver.name, field)

    out: dict[str, Any] = {"name": receiver.name}
    if receiver.pagerduty is not None:
        out["pagerduty_configs"] = [{
            "send_resolved": True,
            "routing_key_file": secret("routing-key"),
            "description": f"{{{{ .CommonLabels.alertname }}}}: {SUMMARY}",
            "details": {"alerts": BODY, "deployment": "{{ .CommonLabels.deployment }}"},
        }]
    elif receiver.slack is not None:
        slack: dict[str, Any] = {"send_resolved": True, "api_url_file": secret("api-url")}
        if receiver.slack.channel is not None:
            slack["channel"] = receiver.slack.channel
        slack |= {"title": TITLE, "text": BODY}
        out["slack_configs"] = [slack]
    elif receiver.webhook is not None:
        # The JSON payload carries every label and annotation: receivers format it themselves.
        hook: dict[str, Any] = {"send_resolved": True, "url": receiver.webhook.url}
        if receiver.webhook.bearer_token is not None:
            hook["http_config"] = {"authorization": {"type": "Bearer",
                                                     "credentials_file": secret("bearer-token")}}
        out["webhook_configs"] = [hook]
    elif receiver.email is not None:
        email = receiver.email
        mail: dict[str, Any] = {"send_resolved": True, "to": ", ".join(email.to), "from": email.from_,
                                "smarthost": email.smarthost, "require_tls": email.require_tls}
        if email.auth_username is not None:
            mail["auth_username"] = email.auth_username
        if email.auth_password is not None:
            mail["auth_password_file"] = secret("auth-password")
        mail |= {"headers": {"Subject": TITLE}, "text": BODY, "html": ""}  # plain text: no HTML part
        out["email_configs"] = [mail]
    return out


def _route(matchers: list[str], receivers: list[str], timers: Timers) -> dict[str, Any]:
    route: dict[str, Any] = {"matchers": matchers}
    if len(receivers) <= 1:
        route["receiver"] = receivers[0] if receivers else UI_ONLY
        route |= timers.as_route()
        return route
    route |= timers.as_route()
    route["routes"] = [{"receiver": name, "continue": index < len(receivers) - 1}
                       for index, name in enumerate(receivers)]
    return route


def _severity(severity: str) -> str:
    return 'severity="critical"' if severity == "critical" else 'severity!="critical"'


def routes(alerting: Alerting | None) -> list[dict[str, Any]]:
    """The root route's children: per-deployment overrides first, then the stack's routes by severity."""
    if alerting is None:
        return []
    out = []
    for deployment, override in alerting.deployments.items():
        for severity, chosen, timers in (("critical", override.critical, CRITICAL),
                                         ("warning", override.warning, WARNING)):
            if chosen is not None:
                out.append(_route([f'{DEPLOYMENT_LABEL}="{deployment}"', _severity(severity)], chosen, timers))
    out.append(_route([_severity("critical")], alerting.receivers_for("critical"), CRITICAL))
    out.append(_route([_severity("warning")], alerting.receivers_for("warning"), WARNING))
    return out


def _any_of(names: Iterable[str]) -> str:
    return "|".join(sorted(set(names)))


def inhibit_rules(plan: FleetPlan) -> list[dict[str, Any]]:
    """Which firing alert silences which: the cause's alert silences its symptoms' (see the module doc)."""
    planned = [d for d in plan.deployments if d.chosen is not None]
    per_deployment = _any_of(rule["alert"] for d in planned for rule in deployment_alerts(d)
                             if rule["labels"]["severity"] == "warning")
    gpu = _any_of(rule["alert"] for rule in fleet_alerts()
                  if rule["labels"]["severity"] == "warning" and rule["alert"].startswith("GpufleetGpu"))
    rules: list[dict[str, Any]] = []
    if per_deployment:
        rules.append({"source_matchers": ['severity="critical"', f'{DEPLOYMENT_LABEL}=~".+"'],
                      "target_matchers": ['severity="warning"', f'alertname=~"{per_deployment}"'],
                      "equal": [DEPLOYMENT_LABEL]})
        rules.append({"source_matchers": [f'alertname="{LB_DOWN}"'],
                      "target_matchers": ['severity="warning"', f'alertname=~"{per_deployment}"']})
    rules.append({"source_matchers": [f'alertname="{XID_ERROR}"'],
                  "target_matchers": ['severity="warning"', f'alertname=~"{gpu}"'],
                  "equal": ["instance", "gpu"]})
    return rules


def config_document(plan: FleetPlan, layout: AlertmanagerLayout | None = None) -> dict[str, Any]:
    layout = layout or target_layout(plan.spec)
    alerting = plan.spec.alerting
    receivers = [{"name": UI_ONLY}]
    if alerting is not None:
        receivers += [_integration(receiver, layout) for receiver in alerting.receivers]
    root: dict[str, Any] = {"receiver": UI_ONLY, "group_by": GROUP_BY, **DEFAULT.as_route()}
    children = routes(alerting)
    if children:
        root["routes"] = children
    return {"route": root, "receivers": receivers, "inhibit_rules": inhibit_rules(plan)}


def _header(plan: FleetPlan) -> str:
    lines = [f"Generated by gpufleet from stack {plan.stack}: do not edit (infra/render/alertmanager.py).",
             "Secrets are read from the *_file paths provisioning writes; none is in this file."]
    if plan.spec.alerting is None:
        lines += ["The stack has no gpufleet:alerting section: every alert goes to the receiver",
                  f"{UI_ONLY}, shown in Alertmanager's UI only; nobody is notified."]
    lines.append("Timers:")
    for name, timers in (("critical", CRITICAL), ("warning", WARNING), ("root", DEFAULT)):
        lines.append(f"  {name}: group_wait {timers.group_wait}, group_interval {timers.group_interval}, "
                     f"repeat_interval {timers.repeat_interval}")
        lines += textwrap.wrap(timers.why, width=100, initial_indent="    ", subsequent_indent="    ")
    return "".join(f"# {line}\n" for line in lines)


class _Dumper(yaml.SafeDumper):
    """safe_dump, with multi-line strings (the message templates) as literal blocks, written as read."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)


def render_alertmanager(plan: FleetPlan, layout: AlertmanagerLayout | None = None) -> list[Artifact]:
    text = yaml.dump(config_document(plan, layout), Dumper=_Dumper, sort_keys=False, width=1000,
                     allow_unicode=True)
    return [Artifact(CONFIG_PATH, "alertmanager-config", None, _header(plan) + text)]
