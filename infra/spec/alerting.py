"""Where alerts go: the optional ``gpufleet:alerting`` section of a stack.

The Prometheus rules (infra/render/prometheus_rules.py) label every alert ``severity`` ``critical`` (pages)
or ``warning`` (tickets), and ``deployment`` where it belongs to one deployment. This section names the
receivers (PagerDuty, Slack, a webhook, email) and which of them get each severity, for the whole stack
and, optionally, per deployment. infra/render/alertmanager.py turns it into Alertmanager's config.

Receivers hold no secret: a webhook URL is plain configuration (Alertmanager 0.25 has no ``url_file``),
everything secret (Slack's webhook URL, PagerDuty's routing key, a bearer token, an SMTP password) is a
``SecretRef`` that provisioning writes to a file Alertmanager reads. Without this section every alert
still reaches Alertmanager and shows in its UI, but nobody is notified.

Cross-field rules (receiver names that exist and are unique, deployment names of the stack) are checked in
infra/spec/checks.py, where the error can point at the exact line.
"""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, model_validator

from infra.spec.base import DNS_LABEL, SpecModel
from infra.spec.secrets import SecretRef

SEVERITIES = ("critical", "warning")
"""The values of the ``severity`` label the rules put on every alert."""
RECEIVER_KINDS = ("pagerduty", "slack", "webhook", "email")

_EMAIL = re.compile(r"^[^@\s,<>\"']+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
_SMARTHOST = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?):(?P<port>\d{1,5})$")
_SLACK_CHANNEL = re.compile(r"^[#@][a-z0-9][-a-z0-9._]{0,79}$")


def _email(value: str) -> str:
    if not _EMAIL.fullmatch(value):
        raise ValueError(f"{value!r} is not an email address (like oncall@example.com)")
    return value


def _smarthost(value: str) -> str:
    match = _SMARTHOST.fullmatch(value)
    if match is None or not 0 < int(match["port"]) < 65536:
        raise ValueError(f"{value!r} is not host:port (like smtp.example.com:587)")
    return value


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError("not an http(s) URL (like https://hooks.example.com/alertmanager)")
    if parts.username is not None or parts.password is not None:
        raise ValueError("the URL carries credentials, and it is rendered in clear: use bearerToken (a secret)")
    return value


def _slack_channel(value: str) -> str:
    if not _SLACK_CHANNEL.fullmatch(value):
        raise ValueError(f"{value!r} is not a Slack channel (like #ml-alerts) or user (like @alice)")
    return value


EmailAddress = Annotated[str, AfterValidator(_email)]
ReceiverName = Annotated[str, Field(pattern=DNS_LABEL)]


class PagerDutyReceiver(SpecModel):
    routing_key: SecretRef
    """The Events API v2 integration key of a PagerDuty service."""


class SlackReceiver(SpecModel):
    api_url: SecretRef
    """The incoming-webhook URL (it is the credential: anyone who has it can post)."""
    channel: Annotated[str, AfterValidator(_slack_channel)] | None = None
    """Channel (#name) or user (@name) to post to; default: the webhook's own channel."""


class WebhookReceiver(SpecModel):
    url: Annotated[str, AfterValidator(_http_url)]
    """Where Alertmanager POSTs its JSON payload. Plain configuration, rendered in clear: put no token in it."""
    bearer_token: SecretRef | None = None
    """Sent as `Authorization: Bearer ...` when given."""


class EmailReceiver(SpecModel):
    to: list[EmailAddress] = Field(min_length=1)
    """Recipients."""
    from_: EmailAddress = Field(alias="from")
    """Sender address."""
    smarthost: Annotated[str, AfterValidator(_smarthost)]
    """SMTP relay as host:port, e.g. smtp.example.com:587."""
    auth_username: str | None = Field(default=None, min_length=1)
    """SMTP login; none: send without authentication."""
    auth_password: SecretRef | None = None
    """SMTP password (needs authUsername)."""
    require_tls: bool = True
    """Refuse to send unless the relay offers STARTTLS (Alertmanager's default)."""

    @model_validator(mode="after")
    def _password_needs_user(self) -> EmailReceiver:
        if self.auth_password is not None and self.auth_username is None:
            raise ValueError("authPassword needs authUsername: without a login the password is never sent")
        return self


class Receiver(SpecModel):
    """One named notification target; exactly one of pagerduty, slack, webhook or email."""

    name: ReceiverName
    """Used in routes and in the names of its secret files."""
    pagerduty: PagerDutyReceiver | None = None
    slack: SlackReceiver | None = None
    webhook: WebhookReceiver | None = None
    email: EmailReceiver | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Receiver:
        given = [kind for kind in RECEIVER_KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            found = f"got {' and '.join(given)}" if given else "got none"
            raise ValueError(f"a receiver is exactly one of pagerduty, slack, webhook or email ({found}); "
                             "list several receivers to notify several ways")
        return self

    @property
    def kind(self) -> str:
        return next(kind for kind in RECEIVER_KINDS if getattr(self, kind) is not None)


def _unique_names(names: list[str]) -> list[str]:
    if len(set(names)) != len(names):
        raise ValueError("a receiver is listed twice")
    return names


ReceiverNames = Annotated[list[ReceiverName], AfterValidator(_unique_names)]


class SeverityRoutes(SpecModel):
    """Which receivers get the stack's alerts, by severity. Both keys are required, so that warnings never
    page by accident; an empty list means: shown in Alertmanager's UI only."""

    critical: ReceiverNames
    """Receivers of critical alerts (an outage or a fault that needs someone now: they page)."""
    warning: ReceiverNames
    """Receivers of warnings (and of any alert whose severity is not critical: nothing is dropped)."""


class DeploymentRoutes(SpecModel):
    """Receivers for one deployment's alerts; a severity left out uses the stack's routes."""

    critical: ReceiverNames | None = None
    """Receivers of this deployment's critical alerts, instead of routes.critical."""
    warning: ReceiverNames | None = None
    """Receivers of this deployment's other alerts, instead of routes.warning."""

    @model_validator(mode="after")
    def _something(self) -> DeploymentRoutes:
        if self.critical is None and self.warning is None:
            raise ValueError("give critical, warning or both (an override that overrides nothing)")
        return self


class Alerting(SpecModel):
    receivers: list[Receiver] = Field(min_length=1)
    """Notification targets, each named once."""
    routes: SeverityRoutes | None = None
    """Receivers by severity; default: every receiver gets every alert."""
    deployments: dict[str, DeploymentRoutes] = Field(default_factory=dict)
    """Per-deployment overrides, by deployment name (e.g. the team that owns one model gets its alerts).
    Fleet-wide alerts (load balancer, GPUs of shared hosts) carry no deployment and use routes."""

    def receivers_for(self, severity: str, deployment: str | None = None) -> list[str]:
        """The receiver names that get alerts of this severity (and deployment)."""
        override = self.deployments.get(deployment) if deployment is not None else None
        if override is not None:
            chosen = override.critical if severity == "critical" else override.warning
            if chosen is not None:
                return list(chosen)
        if self.routes is None:
            return [receiver.name for receiver in self.receivers]
        return list(self.routes.critical if severity == "critical" else self.routes.warning)
