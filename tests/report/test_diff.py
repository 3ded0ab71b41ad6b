"""`gpufleet diff`: synthetic commits in a temporary git repository holding the dev stack (and its profiles).

Every expected figure is computed independently, by planning and rendering each side with `plan_stack`,
`fleet_json` and `render_fleet`; the comment's table is parsed back, and the warnings must appear exactly
for the risky edits. The command runs in-process through typer's CliRunner on gpufleet's own app.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from infra.cli import app
from infra.plan.optimize import plan_stack
from infra.plan.serialize import fleet_json
from infra.render.stack import render_fleet
from infra.report.diff import (
    GITHUB_COMMENT_LIMIT,
    MARKER,
    BaseRef,
    DiffReport,
    Limits,
    Side,
    artifact_diffs,
    compare_stack,
    diff_block,
    markdown,
    summary_json,
    truncate,
)
from infra.spec.load import Project, load_stack
from tests.gitrepo import DEV, REPO, clone, commit, example_repo, git

PROFILES = ("qwen2.5-7b-instruct", "llama-3.1-8b-instruct")
# A second deployment for the dev stack (a served model name of its own: the LB routes by it).
ASSIST = """\
    - name: assist
      model: llama-3.1-8b-instruct
      traffic:
        qps: 0.3
        inputTokens: {mean: 500, p95: 1500}
        outputTokens: {mean: 150, p95: 400}
      slo:
        ttftP95Ms: 2000
        tpotP95Ms: 80
        redundancy: none
      gpus: [L4]
      replicas: {min: 1, max: 2}
      maxTensorParallel: 1
"""



def edit(root: Path, path: str, old: str, new: str) -> None:
    file = root / path
    text = file.read_text(encoding="utf-8")
    assert old in text, f"{path} no longer contains {old!r}: update the test"
    file.write_text(text.replace(old, new), encoding="utf-8")


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The base repository: Pulumi.yaml, the dev stack and the profiles it and ASSIST use."""
    return example_repo(tmp_path_factory.mktemp("origin"), PROFILES)


@pytest.fixture
def work(origin: Path, tmp_path: Path) -> Path:
    """A clone whose HEAD is the base; tests edit its working tree (or commit a new base first)."""
    return clone(origin, tmp_path / "work")


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    markdown: str
    summary: dict[str, Any]
    stderr: str


def run_diff(root: Path, *args: str, base: str = "HEAD") -> Outcome:
    summary_file = root.parent / "summary.json"
    summary_file.unlink(missing_ok=True)
    result = CliRunner().invoke(app, ["diff", "--base", base, "-C", str(root), "--json", str(summary_file), *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    return Outcome(result.exit_code, result.stdout, summary, result.stderr)


@cache
def _side(root: str, stack: str, content: str) -> tuple[dict[str, Any], dict[str, str]]:
    del content  # part of the cache key only: the same folder is planned again after an edit
    fleet = plan_stack(load_stack(Project(Path(root)), stack))
    return fleet_json(fleet), {a.path: a.content for a in render_fleet(fleet)}


def planned(root: Path, stack: str = "dev") -> tuple[dict[str, Any], dict[str, str]]:
    """``fleet_json`` and the rendered files of a stack, computed without the diff code."""
    content = "".join(p.read_text() for p in sorted((root / "stacks").rglob("*.yaml")))
    return _side(str(root), stack, content)


def chosen(plan: dict[str, Any], deployment: str) -> dict[str, Any]:
    found: dict[str, Any] = next(d for d in plan["deployments"] if d["name"] == deployment)["chosen"]
    return found


def plan_rows(text: str) -> dict[str, dict[str, str]]:
    """The plan table of the comment (one stack), by deployment: column -> cell with the bold removed."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    start = next(i for i, line in enumerate(lines) if line.startswith("| Deployment |"))
    head = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 1 :]:
        cells = [cell.strip().replace("**", "") for cell in line.strip("|").split("|")]
        if not cells[0].startswith("`"):
            break
        rows[cells[0].strip("`")] = dict(zip(head, cells, strict=True))
    return rows


def summaries(text: str) -> set[str]:
    """Paths of the collapsed diffs in the comment."""
    return {m.split(" (")[0] for m in re.findall(r"<details><summary>(.*?)</summary>", text)}


def kinds(outcome: Outcome, stack: str = "dev") -> list[str]:
    return [w["kind"] for w in outcome.summary["stacks"][stack]["warnings"]]


# -- end to end on the dev stack ------------------------------------------------------------------------


def test_identical_trees_report_no_changes(work: Path) -> None:
    outcome = run_diff(work)  # no -s: every stack on either side, here dev
    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.markdown.startswith(MARKER)
    assert "**No changes**" in outcome.markdown and "`dev`" in outcome.markdown
    assert "<details>" not in outcome.markdown and "⚠" not in outcome.markdown
    dev = outcome.summary["stacks"]["dev"]
    assert outcome.summary["changed"] is False
    assert (dev["status"], dev["warnings"], dev["delta_usd"], dev["delta_percent"]) == ("unchanged", [], 0.0, 0.0)
    assert outcome.summary["base"]["commit"] == git(work, "rev-parse", "HEAD").strip()
    assert (outcome.summary["preview"], outcome.summary["code_paths"]) == ([], [])  # nothing for Pulumi to preview


def test_code_changes_preview_every_stack(work: Path) -> None:
    """A file the Pulumi program reads changes what `pulumi up` does, which the spec diff cannot show."""
    (work / "templates").mkdir()
    (work / "templates" / "extra.j2").write_text("untracked\n")  # untracked files count
    edit(work, "Pulumi.yaml", "name: gpufleet", "name: gpufleet  # edited")
    (work / "NOTES.md").write_text("docs do not\n")
    (work / "tests").mkdir()
    (work / "tests" / "test_x.py").write_text("neither do tests\n")
    outcome = run_diff(work)
    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.summary["code_paths"] == ["Pulumi.yaml", "templates/extra.j2"]
    assert outcome.summary["preview"] == [{"stack": "dev", "target": "aws-ec2"}]
    assert outcome.summary["stacks"]["dev"]["status"] == "unchanged"
    assert "**Code changed** (`Pulumi.yaml`, `templates/extra.j2`)" in outcome.markdown


def test_more_traffic_grows_replicas_and_costs_what_the_plans_say(work: Path) -> None:
    before_plan, before_files = planned(work)
    edit(work, DEV, "qps: 0.5", "qps: 1.2")
    after_plan, after_files = planned(work)
    outcome = run_diff(work, "-s", "dev")
    assert outcome.exit_code == 0, outcome.stderr

    old, new = chosen(before_plan, "chat"), chosen(after_plan, "chat")
    assert new["replicas"] > old["replicas"]
    row = plan_rows(outcome.markdown)["chat"]
    assert row["Replicas"] == f"{old['replicas']} → {new['replicas']}"
    assert row["Machines"] == f"{old['machines']} → {new['machines']}"
    assert row["GPU"] == new["gpu"] == old["gpu"]  # unchanged cells show one value
    assert row["$/month"] == f"${old['monthly_usd']:,.2f} → ${new['monthly_usd']:,.2f}"

    dev = outcome.summary["stacks"]["dev"]
    delta = round(after_plan["monthly_usd"] - before_plan["monthly_usd"], 2)
    assert (dev["monthly_usd_before"], dev["monthly_usd_after"]) == (before_plan["monthly_usd"],
                                                                      after_plan["monthly_usd"])
    assert dev["delta_usd"] == delta
    assert outcome.summary["preview"] == [{"stack": "dev", "target": "aws-ec2"}]
    assert outcome.summary["code_paths"] == []
    assert dev["delta_percent"] == round(delta / before_plan["monthly_usd"] * 100, 1)
    assert dev["deployments"]["chat"]["after"]["usd_per_1m_output_tokens"] == new["usd_per_1m_output_tokens"]
    assert outcome.summary["total"]["delta_usd"] == delta
    assert dev["warnings"] == []  # a scale-up on the same machines replaces nothing

    changed = {p for p in before_files.keys() | after_files.keys() if before_files.get(p) != after_files.get(p)}
    assert changed and changed != before_files.keys()
    assert summaries(outcome.markdown) == changed
    assert sorted(changed) == sorted(p for kind in dev["artifacts"].values() for p in kind)


def test_gpu_type_change_warns_of_replacement(work: Path) -> None:
    edit(work, DEV, "gpus: [L4, A10G]", "gpus: [A10G]")
    outcome = run_diff(work, "-s", "dev")
    row = plan_rows(outcome.markdown)["chat"]
    assert row["GPU"] == "L4 → A10G"
    assert " → " in row["Instance"]
    assert kinds(outcome) == ["gpu-type", "capacity-type"]  # the A10G is planned on-demand
    gpu_warning = outcome.summary["stacks"]["dev"]["warnings"][0]
    assert "instance refresh replaces every instance" in gpu_warning["message"]
    assert gpu_warning["deployment"] == "chat"
    assert outcome.markdown.count("⚠") == 2


def test_market_change_alone_is_a_capacity_type_warning(work: Path) -> None:
    edit(work, DEV, "spotAllowed: true ", "spotAllowed: false")
    outcome = run_diff(work, "-s", "dev")
    assert plan_rows(outcome.markdown)["chat"]["Market"] == "spot → on-demand"
    assert "gpu-type" not in kinds(outcome) and "capacity-type" in kinds(outcome)


def test_fewer_replicas_warn_and_capacity_below_todays_traffic(work: Path) -> None:
    edit(work, DEV, "qps: 0.5", "qps: 1.2")
    commit(work, "more traffic")
    edit(work, DEV, "qps: 1.2", "qps: 0.5")
    outcome = run_diff(work, "-s", "dev")
    assert kinds(outcome) == ["replicas-decrease", "capacity-below-traffic"]
    assert plan_rows(outcome.markdown)["chat"]["Replicas"] == "2 → 1"
    assert "below the peak traffic the base plans for (1.20 req/s)" in outcome.markdown


def test_removed_deployment(work: Path) -> None:
    (work / DEV).write_text((work / DEV).read_text() + ASSIST)
    commit(work, "assist")
    base_plan, _ = planned(work)
    (work / DEV).write_text((work / DEV).read_text().replace(ASSIST, ""))
    outcome = run_diff(work, "-s", "dev")
    assert kinds(outcome) == ["deployment-removed"]
    assert "`meta-llama/Llama-3.1-8B-Instruct`" in outcome.markdown  # the model name clients will miss
    rows = plan_rows(outcome.markdown)
    assert (rows["chat"]["Change"], rows["assist"]["Change"]) == ("unchanged", "removed")
    assert rows["assist"]["$/month"] == f"${chosen(base_plan, 'assist')['monthly_usd']:,.2f}"
    assert outcome.summary["stacks"]["dev"]["deployments"]["assist"]["after"] is None
    assert {"vllm/assist.yaml", "cloud-init/assist.yaml"} <= set(
        outcome.summary["stacks"]["dev"]["artifacts"]["removed"])


def test_new_model_revision_refreshes_instances(work: Path) -> None:
    edit(work, "stacks/models/qwen2.5-7b-instruct.yaml", "revision: a09a3545", "revision: b19a3545")
    outcome = run_diff(work, "-s", "dev")
    assert kinds(outcome) == ["instance-refresh"]
    assert "cloud-init/chat.yaml" in summaries(outcome.markdown)
    assert plan_rows(outcome.markdown)["chat"]["Change"] == "unchanged"  # the plan is the same; the files are not


def test_infeasible_plan_is_blocking_not_a_crash(work: Path) -> None:
    edit(work, DEV, "qps: 0.5", "qps: 5")
    outcome = run_diff(work, "-s", "dev")
    assert outcome.exit_code == 0, outcome.stderr
    dev = outcome.summary["stacks"]["dev"]
    assert (dev["status"], dev["after"]) == ("blocked", "infeasible")
    assert "deployment 'chat': no option meets its SLO" in dev["blocking"][0]
    assert outcome.summary["total"]["blocking"] == ["dev"]
    assert outcome.summary["preview"] == []  # the program would stop with the same message
    assert "⛔ **Blocking" in outcome.markdown and "not compared" in outcome.markdown
    assert plan_rows(outcome.markdown)["chat"]["GPU"].endswith("→ no feasible option")


def test_over_budget_is_blocking(work: Path) -> None:
    edit(work, DEV, "monthlyBudgetUsd: 1500", "monthlyBudgetUsd: 200")
    outcome = run_diff(work, "-s", "dev")
    dev = outcome.summary["stacks"]["dev"]
    assert (dev["over_budget"], dev["budget_usd"], dev["status"]) == (True, 200.0, "blocked")
    assert "over the budget of $200" in dev["blocking"][0]
    assert "**over budget**" in outcome.markdown


def test_cost_increase_threshold(work: Path) -> None:
    edit(work, DEV, "qps: 0.5", "qps: 1.2")  # +100 %
    over = run_diff(work, "-s", "dev", "--max-increase-percent", "50")
    assert over.exit_code == 0
    assert kinds(over) == ["cost-increase"]
    assert [w["kind"] for w in over.summary["total"]["warnings"]] == ["cost-increase"]
    assert over.summary["total"]["exceeds_max_increase"] is True
    assert "above the allowed +50%" in over.markdown
    under = run_diff(work, "-s", "dev", "--max-increase-percent", "150")
    assert kinds(under) == [] and under.summary["total"]["exceeds_max_increase"] is False


def test_new_and_removed_stacks_and_the_comment_limit(work: Path) -> None:
    (work / DEV).rename(work / "stacks" / "Pulumi.dev2.yaml")
    outcome = run_diff(work)  # every stack on either side: dev (removed) and dev2 (new)
    stacks = outcome.summary["stacks"]
    assert (stacks["dev"]["status"], stacks["dev2"]["status"]) == ("removed", "new")
    assert [w["kind"] for w in stacks["dev"]["warnings"]] == ["stack-removed", "deployment-removed"]
    assert "pulumi destroy -s dev" in outcome.markdown
    assert stacks["dev2"]["monthly_usd_before"] == 0.0 and stacks["dev2"]["delta_percent"] is None
    assert outcome.summary["total"]["delta_usd"] == 0.0  # the same fleet under another name
    # Every file of dev2 is added and every file of dev removed: far more than GitHub takes in one comment.
    assert len(outcome.markdown.encode("utf-16-le")) // 2 <= GITHUB_COMMENT_LIMIT
    assert "diff not shown (comment size limit)" in outcome.markdown
    assert "--max-chars" in outcome.markdown.split("---\n<sub>")[-1]
    whole = run_diff(work, "--max-chars", "10000000", "--output", str(work.parent / "diff.md"))
    full = (work.parent / "diff.md").read_text(encoding="utf-8")
    assert whole.markdown == "" and "comment size limit" not in full
    assert full.count("<details><summary>") == sum(len(v) for s in stacks.values() for v in s["artifacts"].values())


def test_base_with_an_invalid_spec_is_reported(work: Path) -> None:
    edit(work, DEV, "gpus: [L4, A10G]", "gpus: [L4, A10G, H100-SMX]")
    commit(work, "typo")
    edit(work, DEV, "gpus: [L4, A10G, H100-SMX]", "gpus: [L4, A10G]")
    outcome = run_diff(work, "-s", "dev")
    assert outcome.exit_code == 0, outcome.stderr
    dev = outcome.summary["stacks"]["dev"]
    assert (dev["before"], dev["after"], dev["monthly_usd_before"]) == ("invalid", "ok", None)
    assert any("unknown GPU 'H100-SMX'" in line for line in dev["base_errors"])
    assert outcome.summary["total"]["excluded"] == ["dev"]
    assert "The base's spec does not validate, so there is no plan to compare against" in outcome.markdown
    assert plan_rows(outcome.markdown)["chat"]["Change"] == "unknown"


def test_invalid_working_tree_is_a_user_error(work: Path) -> None:
    edit(work, DEV, "gpus: [L4, A10G]", "gpus: [L4, A10G, H100-SMX]")
    outcome = run_diff(work, "-s", "dev")
    assert outcome.exit_code == 2
    assert re.search(r"stacks/Pulumi\.dev\.yaml:\d+:\d+: .*unknown GPU 'H100-SMX'", outcome.stderr)
    assert "nothing was compared" in outcome.stderr and "Traceback" not in outcome.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--base", "no-such-branch"), "'no-such-branch' is not a commit"),
        (("--base", "--upload-pack=x"), "is not a commit"),  # never read as an option of git
        (("--base", "HEAD", "-s", "prdo"), "no stack 'prdo'"),
    ],
)
def test_user_errors(work: Path, args: tuple[str, ...], message: str) -> None:
    result = CliRunner().invoke(app, ["diff", "-C", str(work), *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.stderr


# -- a base with gpufleet code of its own ---------------------------------------------------------------------

BASE_ONLY = "# rendered by the base's template\n"
NGINX_TEMPLATE = "templates/nginx/nginx.conf.j2"


@pytest.fixture(scope="module")
def coded_origin(tmp_path_factory: pytest.TempPathFactory, origin: Path) -> Path:
    """The base repository with this gpufleet's code, whose Nginx template has one line more than today's."""
    root = tmp_path_factory.mktemp("coded")
    shutil.copytree(origin, root, dirs_exist_ok=True)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("infra", "templates"):
        shutil.copytree(REPO / folder, root / folder, ignore=skip)
    (root / NGINX_TEMPLATE).write_text((REPO / NGINX_TEMPLATE).read_text() + BASE_ONLY)
    commit(root, "gpufleet code")
    return root


@pytest.fixture
def coded_work(coded_origin: Path, tmp_path: Path) -> Path:
    """A clone of ``coded_origin`` whose working tree holds today's template (the code this test runs)."""
    work = clone(coded_origin, tmp_path / "coded-work")
    shutil.copy(REPO / NGINX_TEMPLATE, work / NGINX_TEMPLATE)
    return work


def test_the_base_is_rendered_by_its_own_code(coded_work: Path) -> None:
    """A template change shows in the rendered files; the plan, the same code's, is unchanged."""
    outcome = run_diff(coded_work, "-s", "dev")
    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.summary["base"]["own_code"] is True and outcome.summary["base"]["why_not_own_code"] is None
    dev = outcome.summary["stacks"]["dev"]
    assert dev["status"] == "changed" and dev["artifacts"]["modified"] == ["nginx/nginx.conf"]
    assert dev["delta_usd"] == 0.0 and dev["warnings"] == []
    assert f"\n-{BASE_ONLY}" in outcome.markdown
    assert outcome.summary["code_paths"] == [NGINX_TEMPLATE]
    assert outcome.summary["preview"] == [{"stack": "dev", "target": "aws-ec2"}]
    assert "by the code at `HEAD`, the working tree by the working tree's" in outcome.markdown
    assert "its effect on the plans and the rendered files is in this diff" in outcome.markdown


def test_a_base_whose_code_cannot_run_is_planned_by_todays(coded_work: Path) -> None:
    cli = coded_work / "infra" / "cli.py"
    cli.write_text('raise RuntimeError("broken at the base")\n')
    commit(coded_work, "broken CLI")
    shutil.copy(REPO / "infra" / "cli.py", cli)
    outcome = run_diff(coded_work, "-s", "dev")
    assert outcome.exit_code == 0, outcome.stderr
    why = outcome.summary["base"]["why_not_own_code"]
    assert outcome.summary["base"]["own_code"] is False
    assert why.startswith("the base's gpufleet could not be run here: its `gpufleet plan -s dev --json` exited 1")
    assert why.endswith("RuntimeError: broken at the base")
    # Both sides by today's code: the working tree's template on both, so only the code note tells.
    assert outcome.summary["stacks"]["dev"]["status"] == "unchanged"
    assert f"Both sides are planned and rendered by the working tree's gpufleet ({why})" in outcome.markdown
    assert "this diff ran the working tree's code on both sides" in outcome.markdown


def test_a_base_spec_error_comes_from_the_bases_own_validate(coded_work: Path) -> None:
    edit(coded_work, DEV, "gpus: [L4, A10G]", "gpus: [L4, A10G, H100-SMX]")
    commit(coded_work, "typo")
    edit(coded_work, DEV, "gpus: [L4, A10G, H100-SMX]", "gpus: [L4, A10G]")
    outcome = run_diff(coded_work, "-s", "dev")
    dev = outcome.summary["stacks"]["dev"]
    assert outcome.summary["base"]["own_code"] is True
    assert (dev["before"], dev["after"]) == ("invalid", "ok")
    assert re.fullmatch(r".*stacks/Pulumi\.dev\.yaml:\d+:\d+: .*unknown GPU 'H100-SMX'.*", dev["base_errors"][0])
    assert not any("error(s)" in line for line in dev["base_errors"])


def test_not_a_git_repository(work: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    shutil.copytree(work, plain, ignore=shutil.ignore_patterns(".git"))
    # Stop git's upward search at tmp_path: pytest's temporary folders may sit inside some repository.
    result = CliRunner().invoke(app, ["diff", "--base", "HEAD", "-C", str(plain)],
                                env={"GIT_CEILING_DIRECTORIES": str(tmp_path)})
    assert result.exit_code == 2
    assert "is not in a git repository" in result.stderr


# -- the pure functions ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dev_side(origin: Path) -> Side:
    plan, files = planned(origin)
    return Side("ok", plan, files)


def variant(side: Side, **chosen_fields: Any) -> Side:
    plan = copy.deepcopy(side.plan)
    assert plan is not None
    plan["deployments"][0]["chosen"].update(chosen_fields)
    return Side("ok", plan, side.artifacts)


def test_capacity_below_its_own_traffic(dev_side: Side) -> None:
    # The planner never chooses this; a diff must still say it when a plan document does.
    starved = variant(dev_side, capacity_qps_per_replica=0.1)
    risks = compare_stack("dev", dev_side, starved).risks
    assert [(r.kind, r.deployment) for r in risks] == [("capacity-below-traffic", "chat")]
    assert "0.10 req/s, is below the peak traffic of 0.50 req/s" in risks[0].message


def test_eks_instance_change_replaces_the_node_group(dev_side: Side) -> None:
    plan = copy.deepcopy(dev_side.plan)
    assert plan is not None
    plan["target"] = "eks"
    before = Side("ok", plan, {})
    after = variant(before, instance_type="g6.12xlarge")
    risks = compare_stack("dev", before, after).risks
    assert [r.kind for r in risks] == ["instance-type"]
    assert "EKS creates a new GPU node group and deletes the old one" in risks[0].message


def test_diff_block_caps_lines_and_outfences_backticks() -> None:
    (diff,) = artifact_diffs({"a.md": "one\n"}, {"a.md": "".join(f"````{i}\n" for i in range(50))})
    block = diff_block(diff, max_lines=10)
    assert block.startswith("<details><summary>a.md (+50 −1)</summary>")
    assert "\n`````diff\n" in block and block.count("````") > 2
    assert len(diff.lines) == 54  # ---, +++, @@, -one and 50 added
    assert "\n… 44 more line(s) of this diff not shown\n" in block


def test_a_huge_diff_does_not_hide_the_small_ones(dev_side: Side) -> None:
    files = {f"a-big-{i}.txt": ("z" * 400 + "\n") * 300 for i in range(3)} | {"b-small.txt": "small\n"}
    after = Side("ok", dev_side.plan, files)
    stack = compare_stack("dev", Side("absent"), after)
    report = DiffReport(BaseRef("main", "0" * 40), (stack,))
    text = markdown(report, Limits(diff_lines=300, chars=20000))
    assert len(text) <= 20000
    assert "<details><summary>b-small.txt (+1 −0) — new file</summary>" in text
    assert text.count("diff not shown (comment size limit)") == 3
    assert summary_json(report)["stacks"]["dev"]["artifacts"]["added"] == sorted(files)


def test_truncate_closes_an_open_fence() -> None:
    text = "head\n```text\n" + "error line\n" * 5000 + "```\n"
    cut = truncate(text, 2000)
    assert len(cut) <= 2000
    assert cut.count("```") == 2 and cut.endswith("run `gpufleet diff` locally for the rest)\n")
