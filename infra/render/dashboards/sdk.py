"""The one place that imports grafana-foundation-sdk (pinned ``==0.0.21``).

Its v1 dashboard model and builder warn ``DeprecationWarning("Prefer using dashboardv2.Dashboard instead.")``
in their class bodies, i.e. once, at import. We build the v1 JSON model on purpose: it is what Grafana's file
provisioning and the kube-prometheus-stack sidecar load. Only that warning, from that package, is silenced.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Prefer using dashboardv2", category=DeprecationWarning,
                            module=r"grafana_foundation_sdk\.")
    from grafana_foundation_sdk.builders import common as common_builders
    from grafana_foundation_sdk.builders import dashboard as dashboard_builders
    from grafana_foundation_sdk.builders import heatmap as heatmap_builders
    from grafana_foundation_sdk.builders import prometheus as prometheus_builders
    from grafana_foundation_sdk.builders import stat as stat_builders
    from grafana_foundation_sdk.builders import timeseries as timeseries_builders
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common as common_models
    from grafana_foundation_sdk.models import dashboard as dashboard_models
    from grafana_foundation_sdk.models import heatmap as heatmap_models
    from grafana_foundation_sdk.models import prometheus as prometheus_models

__all__ = [
    "JSONEncoder",
    "common_builders",
    "common_models",
    "dashboard_builders",
    "dashboard_models",
    "heatmap_builders",
    "heatmap_models",
    "prometheus_builders",
    "prometheus_models",
    "stat_builders",
    "timeseries_builders",
]
