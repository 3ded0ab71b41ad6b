"""What a change to the specs does to each stack: plan, cost and rendered files, base against working tree.

Pure: every function takes the two sides as data (``plan --json``'s document from :func:`fleet_json` and the
rendered files) and returns data or text; infra/report/diff_cli.py materialises the base ref, plans and
renders. Numbers are ``fleet_json``'s, rounded as there, so the comment, ``plan --json`` and the JSON
summary never disagree.

Risks are what turns a harmless-looking diff into an outage or a bill (what infra/provision does with it):

- **GPU or instance type** (``gpu-type``, ``instance-type``): aws-ec2 changes the deployment's launch
  template, whose instance refresh replaces every instance (infra/provision/aws/gpu.py); eks names node
  groups after instance type and market, so a new group replaces the old one (infra/provision/aws/eks.py).
  Either way every replica cold-starts: weights downloaded and loaded again.
- **Capacity type** (``capacity-type``): spot, on-demand and Capacity Blocks are the node group's capacity
  type on eks (a replacement) and the launch template's market options on aws-ec2 (an instance refresh).
- **User data** (``instance-refresh``, aws-ec2): ``cloud-init/<deployment>.yaml`` is the launch template's
  user data byte for byte, so any change to it (a vLLM flag, a replica slot) refreshes every instance.
- **Shrinking** (``replicas-decrease``, ``capacity-below-traffic``): fewer replicas, or an SLO capacity
  (replicas × the replica's capacity at the SLO) below the peak traffic (qps × peakFactor) of either side.
- **Removal** (``deployment-removed``, ``stack-removed``): clients of the served model name get errors; a
  deleted stack file leaves its resources running with no config to destroy them.
- **Cost** (``cost-increase``): a rise above ``--max-increase-percent``.

An infeasible new plan (render refused) is *blocking*, not a warning: the PR cannot be deployed as is.
"""

from __future__ import annotations

import difflib
import html
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Literal

from infra.render.artifacts import MANIFEST
from infra.render.cloudinit import user_data_path

GITHUB_COMMENT_LIMIT = 65536
"""GitHub refuses a comment body longer than this (in UTF-16 code units, as its API counts)."""
DEFAULT_DIFF_LINES = 200
MARKER = "<!-- gpufleet-diff -->"
"""First line of the comment, so a workflow finds and updates its previous comment instead of adding one."""

SideStatus = Literal["ok", "infeasible", "invalid", "absent"]
StackStatus = Literal["new", "removed", "blocked", "changed", "unchanged"]
DeploymentStatus = Literal["added", "removed", "changed", "unchanged", "unknown"]
"""unknown: the base has no plan to compare with (its spec does not validate)."""
ArtifactChange = Literal["added", "removed", "modified"]
RiskKind = Literal[
    "gpu-type",
    "instance-type",
    "capacity-type",
    "instance-refresh",
    "replicas-decrease",
    "capacity-below-traffic",
    "deployment-removed",
    "stack-removed",
    "cost-increase",
]
# The chosen option's fields the plan table compares (``option_json``'s names), with their column titles.
PLAN_FIELDS = {
    "gpu": "GPU",
    "tensor_parallel_size": "TP",
    "quantization": "Quantization",
    "instance_type": "Instance",
    "market": "Market",
    "replicas": "Replicas",
    "machines": "Machines",
}
REPLACEMENT = {
    "aws-ec2": "the launch template changes and the Auto Scaling group's instance refresh replaces every instance",
    "eks": "EKS creates a new GPU node group and deletes the old one",
    "onprem": "the replicas move to other GPU servers",
}
COLD_START = "every replica cold-starts (weights downloaded and loaded again)"
NOT_PROGRAM_INPUTS = ("stacks/", "tests/", "benchmarks/", "scripts/", "schemas/", "docs/", ".github/", ".ci/")
"""Project folders the Pulumi program does not read (stacks/ is compared as plans and renders). A changed
file anywhere else (infra/, templates/, ansible/, images/, policy/, Pulumi.yaml, pyproject.toml, ...) can
change what ``pulumi up`` does to any stack's resources, which plans and rendered files do not show."""
NOT_PROGRAM_FILES = frozenset({"Makefile", ".gitignore", ".yamllint.yaml", ".ansible-lint", "LICENSE"})


# -- the two sides ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """One stack on one side of the diff: planned and rendered, or why not."""

    status: SideStatus
    plan: dict[str, Any] | None = None
    """``fleet_json`` of the plan (also when the render refused an infeasible plan)."""
    artifacts: Mapping[str, str] = field(default_factory=dict)
    """Rendered files by path (empty unless ``ok``)."""
    errors: tuple[str, ...] = ()
    """Spec errors (``invalid``) or why the render refused (``infeasible``)."""

    @property
    def known(self) -> bool:
        """Whether the side has a plan (absent counts: a stack that does not exist plans nothing)."""
        return self.status == "absent" or self.plan is not None

    @property
    def monthly_usd(self) -> float | None:
        if self.status == "absent":
            return 0.0
        return None if self.plan is None else float(self.plan["monthly_usd"])

    def deployments(self) -> dict[str, DeploymentSide]:
        if self.plan is None:
            return {}
        return {d["name"]: DeploymentSide.of(d) for d in self.plan["deployments"]}


@dataclass(frozen=True)
class Chosen:
    """The plan's chosen option for a deployment, as far as the diff compares it."""

    fields: dict[str, Any]
    """The :data:`PLAN_FIELDS` values."""
    monthly_usd: float
    usd_per_1m_output_tokens: float
    capacity_qps: float
    """What all replicas carry within the SLO: replicas × capacity_qps_per_replica."""


@dataclass(frozen=True)
class DeploymentSide:
    name: str
    served_model_name: str
    peak_qps: float
    chosen: Chosen | None
    """None: no option met the SLO and limits."""

    @classmethod
    def of(cls, document: dict[str, Any]) -> DeploymentSide:
        option = document["chosen"]
        chosen = None
        if option is not None:
            chosen = Chosen(
                fields={key: option[key] for key in PLAN_FIELDS},
                monthly_usd=float(option["monthly_usd"]),
                usd_per_1m_output_tokens=float(option["usd_per_1m_output_tokens"]),
                capacity_qps=option["replicas"] * option["capacity_qps_per_replica"],
            )
        return cls(document["name"], document["served_model_name"], float(document["traffic"]["peak_qps"]), chosen)


# -- what changed ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeploymentChange:
    name: str
    before: DeploymentSide | None
    after: DeploymentSide | None
    base_known: bool = True
    """False when the base's spec does not validate: a missing ``before`` then means "not known", not "added"."""

    def value(self, side: DeploymentSide | None, key: str) -> Any:
        if side is None or side.chosen is None:
            return None
        return side.chosen.fields[key]

    @property
    def status(self) -> DeploymentStatus:
        if not self.base_known:
            return "unknown"
        if self.before is None:
            return "added"
        if self.after is None:
            return "removed"
        same = self.before.chosen == self.after.chosen
        return "unchanged" if same and self.before.peak_qps == self.after.peak_qps else "changed"

    def changed(self, key: str) -> bool:
        """Whether a plan field differs between two plans that both chose an option."""
        before, after = self.value(self.before, key), self.value(self.after, key)
        return before is not None and after is not None and before != after

    @property
    def monthly_before(self) -> float | None:
        return _monthly(self.before)

    @property
    def monthly_after(self) -> float | None:
        return _monthly(self.after)


def _monthly(side: DeploymentSide | None) -> float | None:
    if side is None:
        return 0.0
    return side.chosen.monthly_usd if side.chosen else None


@dataclass(frozen=True)
class ArtifactDiff:
    path: str
    change: ArtifactChange
    lines: tuple[str, ...]
    """The unified diff, ``---``/``+++`` header first."""

    @property
    def added(self) -> int:
        return sum(1 for line in self.lines[2:] if line.startswith("+"))

    @property
    def removed(self) -> int:
        return sum(1 for line in self.lines[2:] if line.startswith("-"))


@dataclass(frozen=True)
class Risk:
    kind: RiskKind
    message: str
    deployment: str | None = None

    def json(self) -> dict[str, Any]:
        return {"kind": self.kind, "deployment": self.deployment, "message": self.message}


@dataclass(frozen=True)
class StackDiff:
    name: str
    before: Side
    after: Side
    deployments: tuple[DeploymentChange, ...]
    artifacts: tuple[ArtifactDiff, ...]
    risks: tuple[Risk, ...]
    blocking: tuple[str, ...]

    @property
    def status(self) -> StackStatus:
        if self.after.status == "absent":
            return "removed"
        if self.after.status != "ok":
            return "blocked"
        if self.before.status == "absent":
            return "new"
        unchanged = all(d.status == "unchanged" for d in self.deployments) and not self.artifacts
        return "unchanged" if unchanged and self.before.status == "ok" else "changed"

    @property
    def delta_usd(self) -> float | None:
        return _delta(self.before.monthly_usd, self.after.monthly_usd)

    @property
    def delta_percent(self) -> float | None:
        return _percent(self.before.monthly_usd, self.after.monthly_usd)

    @property
    def target(self) -> str | None:
        plan = self.after.plan or self.before.plan
        return None if plan is None else str(plan["target"])

    @property
    def budget_usd(self) -> float | None:
        plan = self.after.plan
        return None if plan is None else float(plan["budget_usd"])

    @property
    def over_budget(self) -> bool:
        after, budget = self.after.monthly_usd, self.budget_usd
        return after is not None and budget is not None and after > budget


def _delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else round(after - before, 2)


def _percent(before: float | None, after: float | None) -> float | None:
    if before is None or after is None or before == 0:
        return None  # a new fleet has no percentage: its $ delta says it
    return round((after - before) / before * 100, 1)


@dataclass(frozen=True)
class BaseRef:
    ref: str
    """As given on the command line."""
    commit: str


@dataclass(frozen=True)
class BaseCode:
    """Which gpufleet planned and rendered the base side."""

    own: bool
    """True: the base's own code (its templates, catalog and model); False: the working tree's."""
    why_not: str = ""
    """Why the base's own code was not used (when ``own`` is False)."""


@dataclass(frozen=True)
class DiffReport:
    base: BaseRef
    stacks: tuple[StackDiff, ...]
    max_increase_percent: float | None = None
    changed_paths: tuple[str, ...] = ()
    """Project files that differ between the base and the working tree (relative to the project root)."""
    base_code: BaseCode = BaseCode(own=False, why_not="not given")

    def known(self) -> list[StackDiff]:
        """Stacks whose cost is known on both sides (a base that does not validate has none)."""
        return [s for s in self.stacks if s.before.known and s.after.known]

    @property
    def monthly_before(self) -> float:
        return round(sum(s.before.monthly_usd or 0.0 for s in self.known()), 2)

    @property
    def monthly_after(self) -> float:
        return round(sum(s.after.monthly_usd or 0.0 for s in self.known()), 2)

    @property
    def delta_percent(self) -> float | None:
        return _percent(self.monthly_before, self.monthly_after)

    @property
    def risks(self) -> tuple[Risk, ...]:
        """Fleet-wide risks (the total's cost increase); the stacks' own are on each stack."""
        return tuple(_cost_risk("the fleet", self.delta_percent, self.max_increase_percent))

    @property
    def changed(self) -> bool:
        return any(s.status != "unchanged" for s in self.stacks)

    @property
    def code_paths(self) -> tuple[str, ...]:
        """Changed files the Pulumi program reads besides the stacks (see :data:`NOT_PROGRAM_INPUTS`)."""
        return tuple(p for p in self.changed_paths if is_program_input(p))

    def preview_stacks(self) -> list[StackDiff]:
        """The stacks whose ``pulumi preview`` (or ``up``) can differ: changed ones, every one when code changed.

        Left out: stacks deleted in the working tree (nothing to preview) and blocked ones (the program stops
        with the same message the comment shows).
        """
        return [
            s
            for s in self.stacks
            if s.after.status == "ok" and (s.status != "unchanged" or self.code_paths)
        ]


def is_program_input(path: str) -> bool:
    return not path.startswith(NOT_PROGRAM_INPUTS) and path not in NOT_PROGRAM_FILES and not path.endswith(".md")


# -- comparing ------------------------------------------------------------------------------------------


def compare_stack(name: str, before: Side, after: Side, max_increase_percent: float | None = None) -> StackDiff:
    """The diff of one stack between its two sides."""
    old, new = before.deployments(), after.deployments()
    known = before.status != "invalid"
    changes = tuple(DeploymentChange(d, old.get(d), new.get(d), known) for d in _ordered(old, new))
    # Files are compared only between two renders: against a side that could not render (invalid or
    # infeasible), "every file added/removed" would say nothing about the change.
    rendered = before.status in ("ok", "absent") and after.status in ("ok", "absent")
    artifacts = artifact_diffs(before.artifacts, after.artifacts) if rendered else ()
    diff = StackDiff(name, before, after, changes, artifacts, (), blocking(after))
    return replace(diff, risks=stack_risks(diff, max_increase_percent))


def _ordered(old: Mapping[str, object], new: Mapping[str, object]) -> list[str]:
    """Deployments in the working tree's order, removed ones after."""
    return [*new, *(d for d in old if d not in new)]


def blocking(after: Side) -> tuple[str, ...]:
    """Why the working tree's stack cannot be deployed."""
    if after.status == "invalid":
        return after.errors
    if after.status != "infeasible":
        return ()
    problems = tuple(after.plan["problems"]) if after.plan else ()
    return problems or after.errors  # a render can refuse a plan without problems (on-prem placement)


def artifact_diffs(before: Mapping[str, str], after: Mapping[str, str]) -> tuple[ArtifactDiff, ...]:
    """Unified diffs of the rendered files that differ, by path (the manifest only lists them)."""
    out = []
    for path in sorted(set(before) | set(after)):
        old, new = before.get(path), after.get(path)
        if path == MANIFEST or old == new:
            continue
        lines = difflib.unified_diff(
            (old or "").splitlines(),
            (new or "").splitlines(),
            fromfile="/dev/null" if old is None else f"a/{path}",
            tofile="/dev/null" if new is None else f"b/{path}",
            lineterm="",
        )
        change: ArtifactChange = "added" if old is None else "removed" if new is None else "modified"
        out.append(ArtifactDiff(path, change, tuple(lines)))
    return tuple(out)


def stack_risks(diff: StackDiff, max_increase_percent: float | None) -> tuple[Risk, ...]:
    risks: list[Risk] = []
    if diff.after.status == "absent" and diff.before.status != "absent":
        cost = diff.before.monthly_usd
        bill = f" (${cost:,.2f}/month)" if cost else ""
        risks.append(Risk("stack-removed", f"the stack file is deleted: run `pulumi destroy -s {diff.name}` before "
                                           f"merging, or its resources keep running{bill} with no config to manage "
                                           "them"))
    target = diff.target or ""
    for change in diff.deployments:
        risks.extend(deployment_risks(change, target))
    if target == "aws-ec2":
        risks.extend(refresh_risks(diff))
    risks.extend(_cost_risk(f"stack `{diff.name}`", diff.delta_percent, max_increase_percent))
    return tuple(risks)


def deployment_risks(change: DeploymentChange, target: str) -> list[Risk]:
    """What the change of one deployment's plan does to the running fleet."""
    name = change.name
    if change.status == "removed":
        assert change.before is not None
        return [Risk("deployment-removed", f"deployment removed: requests for model "
                                           f"`{change.before.served_model_name}` will fail", name)]
    risks = _replacement_risks(change, target)
    before, after = change.value(change.before, "replicas"), change.value(change.after, "replicas")
    if change.changed("replicas") and after < before:
        risks.append(Risk("replicas-decrease", f"replicas {before} → {after}", name))
    risks.extend(_capacity_risks(change))
    return risks


def _replacement_risks(change: DeploymentChange, target: str) -> list[Risk]:
    consequence = f"{REPLACEMENT.get(target, 'the machines are replaced')}; {COLD_START}"
    risks = []
    instance = _arrow(change, "instance_type")
    if change.changed("gpu"):
        also = f" (instance {instance})" if change.changed("instance_type") else ""
        risks.append(Risk("gpu-type", f"GPU {_arrow(change, 'gpu')}{also}: {consequence}", change.name))
    elif change.changed("instance_type"):
        risks.append(Risk("instance-type", f"instance type {instance}: {consequence}", change.name))
    if change.changed("market"):
        # Said once per deployment: the same replacement, whatever caused it.
        why = "the same replacement" if risks else consequence
        risks.append(Risk("capacity-type", f"capacity type {_arrow(change, 'market')}: {why}", change.name))
    return risks


def _capacity_risks(change: DeploymentChange) -> list[Risk]:
    after = change.after
    if after is None or after.chosen is None:
        return []
    capacity = after.chosen.capacity_qps
    risks = []
    if capacity < after.peak_qps:
        risks.append(Risk("capacity-below-traffic", f"the planned capacity at the SLO, {capacity:.2f} req/s, is "
                                                    f"below the peak traffic of {after.peak_qps:.2f} req/s",
                          change.name))
    elif change.before is not None and capacity < change.before.peak_qps:
        # The new plan fits the new traffic figure; if the traffic has not actually dropped yet, it misses the SLO.
        risks.append(Risk("capacity-below-traffic", f"the planned capacity at the SLO, {capacity:.2f} req/s, is "
                                                    f"below the peak traffic the base plans for "
                                                    f"({change.before.peak_qps:.2f} req/s): merge once the "
                                                    "traffic has dropped", change.name))
    return risks


def refresh_risks(diff: StackDiff) -> list[Risk]:
    """aws-ec2: a changed user data refreshes the group's instances, unless a replacement is reported already."""
    modified = {a.path for a in diff.artifacts if a.change == "modified"}
    out = []
    for change in diff.deployments:
        if user_data_path(change.name) not in modified or _replacement_risks(change, "aws-ec2"):
            continue
        machines = change.value(change.after, "machines")
        out.append(Risk("instance-refresh", f"`{user_data_path(change.name)}` (the instances' user data) changes: "
                                            f"the instance refresh replaces all {machines} instance(s) one by one; "
                                            f"{COLD_START}", change.name))
    return out


def _cost_risk(what: str, percent: float | None, limit: float | None) -> list[Risk]:
    if limit is None or percent is None or percent <= limit:
        return []
    return [Risk("cost-increase", f"{what} costs {percent:+.1f}% per month, above the allowed +{limit:g}%")]


def _arrow(change: DeploymentChange, key: str) -> str:
    return f"{change.value(change.before, key)} → {change.value(change.after, key)}"


# -- the JSON summary -----------------------------------------------------------------------------------


def summary_json(report: DiffReport) -> dict[str, Any]:
    """``--json``: per stack and in total, the costs, the risks and what blocks (the PR workflow's input)."""
    risks = [*report.risks, *(r for s in report.stacks for r in s.risks)]
    return {
        "format": "gpufleet-diff/1",
        "base": {"ref": report.base.ref, "commit": report.base.commit, "own_code": report.base_code.own,
                 "why_not_own_code": report.base_code.why_not or None},
        "changed": report.changed,
        "stacks": {s.name: stack_json(s) for s in report.stacks},
        "total": {
            "monthly_usd_before": report.monthly_before,
            "monthly_usd_after": report.monthly_after,
            "delta_usd": _delta(report.monthly_before, report.monthly_after),
            "delta_percent": report.delta_percent,
            "warnings": [r.json() for r in report.risks],
            "warning_count": len(risks),
            "blocking": [s.name for s in report.stacks if s.blocking],
            "excluded": [s.name for s in report.stacks if s not in report.known()],
            "max_increase_percent": report.max_increase_percent,
            "exceeds_max_increase": any(r.kind == "cost-increase" for r in risks),
        },
        "code_paths": list(report.code_paths),
        # The workflows' matrix: one Pulumi preview (pull requests) or up (main) per entry.
        "preview": [{"stack": s.name, "target": s.target} for s in report.preview_stacks()],
    }


def stack_json(diff: StackDiff) -> dict[str, Any]:
    return {
        "status": diff.status,
        "before": diff.before.status,
        "after": diff.after.status,
        "target": diff.target,
        "monthly_usd_before": diff.before.monthly_usd,
        "monthly_usd_after": diff.after.monthly_usd,
        "delta_usd": diff.delta_usd,
        "delta_percent": diff.delta_percent,
        "budget_usd": diff.budget_usd,
        "over_budget": diff.over_budget,
        "warnings": [r.json() for r in diff.risks],
        "blocking": list(diff.blocking),
        "base_errors": list(diff.before.errors),
        "deployments": {d.name: deployment_change_json(d) for d in diff.deployments},
        "artifacts": {kind: [a.path for a in diff.artifacts if a.change == kind]
                      for kind in ("added", "removed", "modified")},
    }


def deployment_change_json(change: DeploymentChange) -> dict[str, Any]:
    return {
        "status": change.status,
        "before": _deployment_side_json(change.before),
        "after": _deployment_side_json(change.after),
        "monthly_usd_before": change.monthly_before,
        "monthly_usd_after": change.monthly_after,
        "delta_usd": _delta(change.monthly_before, change.monthly_after),
        "delta_percent": _percent(change.monthly_before, change.monthly_after),
    }


def _deployment_side_json(side: DeploymentSide | None) -> dict[str, Any] | None:
    if side is None:
        return None
    chosen = side.chosen
    if chosen is None:
        return {"feasible": False, "peak_qps": side.peak_qps}
    return {
        "feasible": True,
        **chosen.fields,
        "monthly_usd": chosen.monthly_usd,
        "usd_per_1m_output_tokens": chosen.usd_per_1m_output_tokens,
        "capacity_qps": round(chosen.capacity_qps, 3),
        "peak_qps": side.peak_qps,
    }


# -- the Markdown comment -------------------------------------------------------------------------------

Piece = str | ArtifactDiff
"""A block of the comment: text, or a rendered file's diff (shown, or listed when the comment is full)."""


@dataclass(frozen=True)
class Limits:
    diff_lines: int = DEFAULT_DIFF_LINES
    """Lines of one file's diff shown before it is cut."""
    chars: int = GITHUB_COMMENT_LIMIT
    """Size of the whole comment."""


def markdown(report: DiffReport, limits: Limits | None = None) -> str:
    """The pull-request comment."""
    limits = limits or Limits()
    pieces: list[Piece] = [_headline(report), *_overview(report)]
    for stack in report.stacks:
        if stack.status != "unchanged":
            pieces.extend(stack_section(stack))
    return fit(pieces, _footer(report, limits, omitted=False), _footer(report, limits, omitted=True), limits)


def _headline(report: DiffReport) -> str:
    return f"{MARKER}\n## gpufleet diff: `{report.base.ref}` (`{report.base.commit[:12]}`) → working tree\n"


def _overview(report: DiffReport) -> list[str]:
    names = ", ".join(f"`{s.name}`" for s in report.stacks) or "none"
    code = _code_note(report)
    if not report.changed:
        return [f"**No changes**: the stacks ({names}) plan and render the same on both sides.\n", *code]
    rows = [
        "| Stack | Change | $/month before | $/month after | Δ $/month | Δ % | Budget $/month | Warnings |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in report.stacks:
        budget = _usd(s.budget_usd) if s.budget_usd is not None else "—"
        rows.append(f"| `{s.name}` | {_status_cell(s)} | {_usd(s.before.monthly_usd)} | {_usd(s.after.monthly_usd)} | "
                    f"{_signed_usd(s.delta_usd)} | {_signed_percent(s.delta_percent)} | {budget} | {len(s.risks)} |")
    total_delta = _delta(report.monthly_before, report.monthly_after)
    rows.append(f"| **Total** | | {_usd(report.monthly_before)} | {_usd(report.monthly_after)} | "
                f"{_signed_usd(total_delta)} | {_signed_percent(report.delta_percent)} | | "
                f"{len(report.risks) + sum(len(s.risks) for s in report.stacks)} |")
    out = ["\n".join(rows) + "\n"]
    excluded = [f"`{s.name}`" for s in report.stacks if s not in report.known()]
    if excluded:
        out.append(f"The total leaves out {', '.join(excluded)}: no plan on one side.\n")
    out.extend(f"⚠ {r.message}\n" for r in report.risks)
    blocked = [f"`{s.name}`" for s in report.stacks if s.blocking]
    if blocked:
        out.append(f"⛔ **Blocking**: {', '.join(blocked)} cannot be deployed as changed (see below).\n")
    unchanged = [f"`{s.name}`" for s in report.stacks if s.status == "unchanged"]
    if unchanged:
        out.append(f"Unchanged: {', '.join(unchanged)}.\n")
    return [*out, *code]


def _code_note(report: DiffReport) -> list[str]:
    paths = report.code_paths
    if not paths:
        return []
    shown = ", ".join(f"`{p}`" for p in paths[:10]) + (f" and {len(paths) - 10} more" if len(paths) > 10 else "")
    if report.base_code.own:
        effect = ("its effect on the plans and the rendered files is in this diff; what it does to the resources "
                  "is in the Pulumi previews, run for every stack.")
    else:
        effect = ("this diff ran the working tree's code on both sides, so it shows what the specs change; the "
                  "Pulumi previews of every stack show what the code changes.")
    return [f"🛠 **Code changed** ({shown}): {effect}\n"]


def _status_cell(diff: StackDiff) -> str:
    return "**blocked**" if diff.status == "blocked" else diff.status


def stack_section(diff: StackDiff) -> list[Piece]:
    target = f" ({diff.target})" if diff.target else ""
    pieces: list[Piece] = [f"### `{diff.name}`: {diff.status}{target}\n"]
    pieces.extend(_base_notes(diff))
    if diff.blocking:
        pieces.append("⛔ **Blocking: the working tree's plan cannot be rendered**\n\n"
                      + "".join(f"- {problem}\n" for problem in diff.blocking))
    if diff.risks:
        pieces.append("**Warnings**\n\n" + "".join(f"- ⚠ {_risk_line(r)}\n" for r in diff.risks))
    if diff.deployments:
        pieces.append(plan_table(diff.deployments))
    pieces.append(_cost_line(diff))
    pieces.extend(_artifact_pieces(diff))
    return pieces


def _base_notes(diff: StackDiff) -> list[str]:
    before = diff.before
    if before.status == "invalid":
        return ["The base's spec does not validate, so there is no plan to compare against:\n\n```text\n"
                + "\n".join(before.errors) + "\n```\n"]
    if before.status == "infeasible":
        return ["At the base the plan was infeasible (nothing was rendered):\n\n"
                + "".join(f"- {problem}\n" for problem in blocking(before))]
    return []


def _risk_line(risk: Risk) -> str:
    return f"`{risk.deployment}`: {risk.message}" if risk.deployment else risk.message


def plan_table(changes: Iterable[DeploymentChange]) -> str:
    head = ["Deployment", "Change", *PLAN_FIELDS.values(), "$/month", "Δ $/month", "$/1M output tokens"]
    rows = ["| " + " | ".join(head) + " |", "|---|---|" + "---|" * len(PLAN_FIELDS) + "---:|---:|---:|"]
    for change in changes:
        cells = [f"`{change.name}`", change.status]
        cells += [_cell(change, partial(_field, key=key)) for key in PLAN_FIELDS]
        cells += [_cell(change, _monthly_text), _delta_text(change), _cell(change, _output_price)]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def _field(side: DeploymentSide | None, key: str) -> str:
    if side is None:
        return "—"
    return "no feasible option" if side.chosen is None else str(side.chosen.fields[key])


def _monthly_text(side: DeploymentSide | None) -> str:
    return "—" if side is None else _usd(_monthly(side))


def _output_price(side: DeploymentSide | None) -> str:
    return "—" if side is None or side.chosen is None else f"${side.chosen.usd_per_1m_output_tokens:.4f}"


def _delta_text(change: DeploymentChange) -> str:
    delta = _delta(change.monthly_before, change.monthly_after)
    if delta == 0:
        return ""
    percent = _percent(change.monthly_before, change.monthly_after)
    return _signed_usd(delta) + ("" if percent is None else f" ({_signed_percent(percent)})")


def _cell(change: DeploymentChange, show: Callable[[DeploymentSide | None], str]) -> str:
    """One value, or ``**before → after**`` when it changed (an added or removed deployment has one side)."""
    if change.status in ("added", "unknown"):
        return str(show(change.after))
    if change.status == "removed":
        return str(show(change.before))
    before, after = show(change.before), show(change.after)
    return str(after) if before == after else f"**{before} → {after}**"


def _cost_line(diff: StackDiff) -> str:
    before, after = diff.before.monthly_usd, diff.after.monthly_usd
    change = ""
    if diff.delta_usd is not None:
        percent = f", {_signed_percent(diff.delta_percent)}" if diff.delta_percent is not None else ""
        change = f" ({_signed_usd(diff.delta_usd)}{percent})"
    line = f"Cost: {_usd(before)} → {_usd(after)} per month{change}"
    budget = diff.budget_usd
    if budget is None or after is None:
        return line + ".\n"
    used = f"{after / budget:.0%} of it" if budget else "all of it"
    verdict = "**over budget**" if diff.over_budget else "within budget"
    return line + f"; budget {_usd(budget)}/month: {verdict} ({used}).\n"


def _artifact_pieces(diff: StackDiff) -> list[Piece]:
    if diff.after.status not in ("ok", "absent"):
        return ["**Rendered files**: not compared (the working tree's plan was not rendered).\n"]
    if diff.before.status not in ("ok", "absent"):
        return ["**Rendered files**: not compared (the base was not rendered).\n"]
    if not diff.artifacts:
        return ["**Rendered files**: no changes.\n"]
    counts = [f"{n} {kind}" for kind in ("added", "removed", "modified")
              if (n := sum(1 for a in diff.artifacts if a.change == kind))]
    return [f"**Rendered files**: {', '.join(counts)}\n", *diff.artifacts]


def _footer(report: DiffReport, limits: Limits, *, omitted: bool) -> str:
    note = ""
    if omitted:
        note = (f" Diffs listed without their text were left out to keep the comment within {limits.chars:,} "
                f"characters: `gpufleet diff --base {report.base.ref} --max-chars 10000000 -o diff.md` shows "
                "them all.")
    return f"---\n<sub>{_planned_by(report)} A file's diff shows at most {limits.diff_lines} lines.{note}</sub>\n"


def _planned_by(report: DiffReport) -> str:
    ref = f"`{report.base.ref}`"
    if report.base_code.own:
        return (f"Each side is planned and rendered by its own gpufleet (code, catalog, prices, capacity model and "
                f"templates): {ref} by the code at {ref}, the working tree by the working tree's, so this diff "
                "shows what merging changes.")
    return (f"Both sides are planned and rendered by the working tree's gpufleet ({report.base_code.why_not}): "
            f"the base's specs under today's code, so this diff shows what the spec change does, not what changed "
            f"since {ref}.")


def diff_block(diff: ArtifactDiff, max_lines: int) -> str:
    """A file's diff, collapsed: ``<details>`` with the path and line counts, the diff fenced inside."""
    shown = diff.lines[:max_lines]
    # A fence longer than any run of backticks in the text: a rendered file may contain ``` itself.
    fence = "`" * max(3, _longest_backticks(shown) + 1)
    parts = [f"<details><summary>{html.escape(_summary(diff))}</summary>", "", f"{fence}diff", *shown, fence]
    if len(diff.lines) > max_lines:
        parts.append(f"… {len(diff.lines) - max_lines} more line(s) of this diff not shown")
    if len(diff.lines) <= 2:
        parts.append("(no line differs: only whitespace at the end of the file)")
    return "\n".join([*parts, "", "</details>"]) + "\n"


def _longest_backticks(lines: Iterable[str]) -> int:
    longest = 0
    for line in lines:
        run = 0
        for char in line:
            run = run + 1 if char == "`" else 0
            longest = max(longest, run)
    return longest


def _summary(diff: ArtifactDiff) -> str:
    kind = {"added": " — new file", "removed": " — deleted", "modified": ""}[diff.change]
    return f"{diff.path} (+{diff.added} −{diff.removed}){kind}"


def _stub(diff: ArtifactDiff) -> str:
    return f"- `{_summary(diff)}`: diff not shown (comment size limit)\n"


def fit(pieces: list[Piece], footer: str, footer_omitted: str, limits: Limits) -> str:
    """Join the pieces within ``limits.chars``: every file's diff that fits is shown, the others are listed.

    Starts from every diff listed (the smallest comment that names them all) and shows diffs in document
    order while the comment stays within the limit, so a huge diff does not hide the small ones after it.
    """
    texts = [_stub(p) if isinstance(p, ArtifactDiff) else p for p in pieces]
    size = sum(_size(t) + 1 for t in texts) + _size(footer_omitted)
    for index, piece in enumerate(pieces):
        if isinstance(piece, ArtifactDiff):
            block = diff_block(piece, limits.diff_lines)
            grown = size - _size(texts[index]) + _size(block)
            if grown <= limits.chars:
                texts[index], size = block, grown
    omitted = any(isinstance(p, ArtifactDiff) and t == _stub(p) for p, t in zip(pieces, texts, strict=True))
    text = "\n".join([*texts, footer_omitted if omitted else footer])
    return text if _size(text) <= limits.chars else truncate(text, limits.chars)


TRUNCATED = "\n…(truncated: the comment reached its size limit; run `gpufleet diff` locally for the rest)\n"


def truncate(text: str, limit: int) -> str:
    """Whole lines of ``text`` within ``limit`` with the truncation note (and a code fence it cut closed)."""
    budget = limit - _size(TRUNCATED) - _size("```\n")
    kept: list[str] = []
    for line in text.splitlines(keepends=True):
        if _size(line) > budget:
            break
        kept.append(line)
        budget -= _size(line)
    fences = sum(1 for line in kept if line.startswith("```"))
    closing = "```\n" if fences % 2 else ""
    return "".join(kept) + closing + TRUNCATED


def _size(text: str) -> int:
    """Length as GitHub counts it: UTF-16 code units (a character outside the BMP counts twice)."""
    return len(text.encode("utf-16-le")) // 2


def _usd(value: float | None) -> str:
    return "?" if value is None else f"${value:,.2f}"


def _signed_usd(value: float | None) -> str:
    if value is None:
        return "?"
    sign = "-" if value < 0 else "+"
    return f"{sign}${abs(value):,.2f}"


def _signed_percent(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:+.1f}%"
