"""Datasource, template variables, selectors and panel helpers shared by the three dashboards.

Conventions every dashboard follows (the tests check them):

- every panel and every target uses the ``datasource`` variable (type ``prometheus``), never a fixed uid;
- raw series are selected by job (:mod:`infra.render.telemetry`) and ``deployment=~"$deployment"``, raw
  engine series also by the engine (``inference_engine``) and the target label ``model=~"$model"``;
- the variables read the plan's constant series (``gpufleet:plan_replicas``, ``gpufleet:plan_info``), never an
  engine's own metric, so they list every deployment whatever its engine;
- counters (``*_total``, histogram ``_bucket``/``_count``/``_sum``, stub_status' ``nginx_connections_accepted``
  and ``_handled``) are read only through ``rate()`` over ``$__rate_interval``; quantiles are
  ``histogram_quantile`` over ``sum by (le, …) (rate(…_bucket[$__rate_interval]))``;
- per-deployment aggregates and the plan's constants come from the recording rules of
  :mod:`infra.render.prometheus_rules` (5 m windows), so the fleet overview is cheap and matches the alerts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from infra.render.dashboards.queries import ALL
from infra.render.dashboards.sdk import (
    common_builders,
    common_models,
    dashboard_builders,
    dashboard_models,
    heatmap_builders,
    heatmap_models,
    prometheus_builders,
    prometheus_models,
    stat_builders,
    timeseries_builders,
)
from infra.render.telemetry import DEPLOYMENT_LABEL, ENGINE_JOB, ENGINE_LABEL, MODEL_LABEL

DATASOURCE = common_models.DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"
DEP = f'{DEPLOYMENT_LABEL}=~"$deployment"'
MODEL = f'{MODEL_LABEL}=~"$model"'
VLLM = f'job="{ENGINE_JOB}",{ENGINE_LABEL}="vllm",{DEP},{MODEL}'
"""Label matchers of a raw vLLM series, filtered by both variables."""

SLO_COLOR = "red"
REF_COLOR = "orange"


def sel(job: str, *matchers: str) -> str:
    """The label matchers of a raw series of ``job``, filtered by the deployment variable."""
    return ",".join((f'job="{job}"', DEP, *matchers))


# -- template variables ---------------------------------------------------------------------------------------

def datasource_variable() -> dashboard_builders.DatasourceVariable:
    return (dashboard_builders.DatasourceVariable("datasource").label("Data source").type("prometheus")
            .description("The Prometheus that scrapes the fleet (its rules file is gpufleet.rules.yaml)."))


def deployment_variable() -> dashboard_builders.QueryVariable:
    query = f"label_values(gpufleet:plan_replicas, {DEPLOYMENT_LABEL})"
    return (dashboard_builders.QueryVariable("deployment").label("Deployment").datasource(DATASOURCE)
            .query(query).definition(query).multi(True).include_all(True).all_value(ALL)
            .refresh(dashboard_models.VariableRefresh.ON_DASHBOARD_LOAD)
            .sort(dashboard_models.VariableSort.ALPHABETICAL_ASC)
            .current(dashboard_models.VariableOption(selected=True, text="All", value="$__all"))
            .description("Deployments of the stack's plan (from the gpufleet:plan_replicas recording rule)."))


def model_variable() -> dashboard_builders.QueryVariable:
    query = f'label_values(gpufleet:plan_info{{{DEP}}}, {MODEL_LABEL})'
    return (dashboard_builders.QueryVariable("model").label("Model").datasource(DATASOURCE)
            .query(query).definition(query).multi(True).include_all(True).all_value(ALL)
            .refresh(dashboard_models.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dashboard_models.VariableSort.ALPHABETICAL_ASC)
            .current(dashboard_models.VariableOption(selected=True, text="All", value="$__all"))
            .description("Served model names of the selected deployments, whatever their engine (the plan's "
                         "gpufleet:plan_info; the scrape config sets the same model label on every engine target)."))


# -- queries and panels ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Q:
    """One target: a PromQL expression and its legend. ``line`` styles it as a dashed reference line."""

    expr: str
    legend: str
    line: str | None = None
    """``"slo"`` (red) or ``"ref"`` (orange, e.g. a planned value): the series is drawn dashed and unfilled."""


def _target(query: Q, ref_id: str, *, instant: bool = False, heatmap: bool = False) -> Any:
    target = (prometheus_builders.Dataquery().ref_id(ref_id).datasource(DATASOURCE).expr(query.expr)
              .legend_format(query.legend))
    if heatmap:
        target = target.format(prometheus_models.PromQueryFormat.HEATMAP)
    return target.instant() if instant else target.range()


def _ref(i: int) -> str:
    return chr(ord("A") + i)


def _line_override(color: str) -> list[dashboard_models.DynamicConfigValue]:
    """A dashed, unfilled, fixed-colour line: how an SLO or a planned value is drawn against the measurement."""
    return [
        dashboard_models.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}),
        dashboard_models.DynamicConfigValue(id_val="custom.lineWidth", value=2),
        dashboard_models.DynamicConfigValue(id_val="custom.fillOpacity", value=0),
        dashboard_models.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": color}),
    ]


def _legend(calcs: Sequence[str]) -> common_builders.VizLegendOptions:
    return (common_builders.VizLegendOptions().show_legend(True)
            .display_mode(common_models.LegendDisplayMode.TABLE if calcs else common_models.LegendDisplayMode.LIST)
            .placement(common_models.LegendPlacement.BOTTOM).calcs(list(calcs)))


def timeseries(title: str, description: str, unit: str, queries: Sequence[Q], *, width: int = 12,
               height: int = 8, min_val: float | None = 0, max_val: float | None = None, stack: bool = False,
               calcs: Sequence[str] = ("mean", "max", "lastNotNull")) -> timeseries_builders.Panel:
    panel = (timeseries_builders.Panel().title(title).description(description).datasource(DATASOURCE)
             .unit(unit).span(width).height(height).line_width(1).fill_opacity(10)
             .legend(_legend(calcs))
             .tooltip(common_builders.VizTooltipOptions().mode(common_models.TooltipDisplayMode.MULTI)
                      .sort(common_models.SortOrder.DESCENDING)))
    if min_val is not None:
        panel = panel.min(min_val)
    if max_val is not None:
        panel = panel.max(max_val)
    if stack:
        panel = panel.stacking(common_builders.StackingConfig().mode(common_models.StackingMode.NORMAL))
    for i, query in enumerate(queries):
        panel = panel.with_target(_target(query, _ref(i)))
        if query.line is not None:
            panel = panel.override_by_query(_ref(i), _line_override(SLO_COLOR if query.line == "slo" else REF_COLOR))
    return panel


def stat(title: str, description: str, unit: str, queries: Sequence[Q], *, width: int = 4, height: int = 4,
         decimals: float | None = None, thresholds: Sequence[tuple[float | None, str]] = ()) -> stat_builders.Panel:
    """Instant queries reduced to their last value; ``thresholds`` as ``(from, colour)``, the first from None."""
    panel = (stat_builders.Panel().title(title).description(description).datasource(DATASOURCE).unit(unit)
             .span(width).height(height).graph_mode(common_models.BigValueGraphMode.NONE)
             .color_mode(common_models.BigValueColorMode.VALUE)
             .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))
    if decimals is not None:
        panel = panel.decimals(decimals)
    if thresholds:
        steps = [dashboard_models.Threshold(value=value, color=color) for value, color in thresholds]
        panel = panel.thresholds(dashboard_builders.ThresholdsConfig()
                                 .mode(dashboard_models.ThresholdsMode.ABSOLUTE).steps(steps))
    for i, query in enumerate(queries):
        panel = panel.with_target(_target(query, _ref(i), instant=True))
    return panel


def names(title: str, description: str, queries: Sequence[Q], *, width: int = 6,
          height: int = 8) -> stat_builders.Panel:
    """Instant queries of constant series shown by their legend only (e.g. which engine a deployment runs)."""
    panel = (stat_builders.Panel().title(title).description(description).datasource(DATASOURCE).unit("none")
             .span(width).height(height).graph_mode(common_models.BigValueGraphMode.NONE)
             .color_mode(common_models.BigValueColorMode.NONE).text_mode(common_models.BigValueTextMode.NAME)
             .orientation(common_models.VizOrientation.HORIZONTAL)
             .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))
    for i, query in enumerate(queries):
        panel = panel.with_target(_target(query, _ref(i), instant=True))
    return panel


def heatmap(title: str, description: str, unit: str, bucket_rate: str, *, width: int = 12, height: int = 8,
            cell_unit: str = "reqps") -> heatmap_builders.Panel:
    """A latency heatmap from pre-bucketed data: ``bucket_rate`` is ``sum by (le) (rate(…_bucket[…]))``;
    ``cell_unit`` is what one observation is per second (requests, or tokens for inter-token latency)."""
    return (heatmap_builders.Panel().title(title).description(description).datasource(DATASOURCE)
            .span(width).height(height).calculate(False)
            .with_target(_target(Q(bucket_rate, "{{le}}"), "A", heatmap=True))
            .y_axis(heatmap_builders.YAxisConfig().unit(unit))
            .color(heatmap_builders.HeatmapColorOptions().mode(heatmap_models.HeatmapColorMode.SCHEME)
                   .scheme("Spectral").scale(heatmap_models.HeatmapColorScale.EXPONENTIAL).exponent(0.5))
            .cell_values(heatmap_builders.CellValues().unit(cell_unit))
            .tooltip(heatmap_builders.HeatmapTooltip().mode(common_models.TooltipDisplayMode.SINGLE)
                     .y_histogram(True))
            .show_legend())


# -- dashboard assembly ---------------------------------------------------------------------------------------

Panel = timeseries_builders.Panel | stat_builders.Panel | heatmap_builders.Panel


@dataclass
class Row:
    title: str
    panels: list[Panel]
    collapsed: bool = False


@dataclass
class Board:
    """A dashboard's identity, variables and rows; :meth:`build` numbers every panel (rows included) from 1
    and lets the SDK lay them out left to right, top to bottom."""

    uid: str
    title: str
    description: str
    tags: list[str]
    rows: list[Row]
    with_model: bool = True

    def build(self) -> dashboard_models.Dashboard:
        board = (dashboard_builders.Dashboard(self.title).uid(self.uid).description(self.description)
                 .tags(self.tags).time("now-3h", "now").refresh("1m").timezone("browser").editable()
                 .tooltip(dashboard_models.DashboardCursorSync.CROSSHAIR)
                 .with_variable(datasource_variable()).with_variable(deployment_variable()))
        if self.with_model:
            board = board.with_variable(model_variable())
        others = (dashboard_builders.DashboardLink("gpufleet").type(dashboard_models.DashboardLinkType.DASHBOARDS)
                  .tags(["gpufleet"]).as_dropdown(True).include_vars(True).keep_time(True))
        board = board.link(others)
        next_id = 1
        for row in self.rows:
            row_builder = dashboard_builders.Row(row.title).id(next_id)
            next_id += 1
            numbered = []
            for panel in row.panels:
                numbered.append(panel.id(next_id))
                next_id += 1
            if row.collapsed:
                for panel in numbered:
                    row_builder = row_builder.with_panel(panel)
                board = board.with_row(row_builder)
            else:
                board = board.with_row(row_builder.collapsed(False))
                for panel in numbered:
                    board = board.with_panel(panel)
        return board.build()
