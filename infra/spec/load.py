"""Load a stack file and the model profiles it uses; collect every problem before raising.

Stage 1 of the flow (spec): everything later consumes a ``LoadedStack`` and never re-reads YAML.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from infra.catalog import load_catalog
from infra.spec.base import PROFILE_NAME
from infra.spec.checks import check_profiles, check_project_files, check_stack
from infra.spec.issues import SpecError, SpecIssue, display_path
from infra.spec.locate import Locator
from infra.spec.profile import ModelProfile
from infra.spec.pydantic_issues import MISSING, did_you_mean, issues_from_validation
from infra.spec.stack import StackSpec
from infra.spec.yamlpos import PositionedYaml, YamlSyntaxError, load_positioned

if TYPE_CHECKING:
    from infra.calibrate.model import Calibration

NAMESPACE = "gpufleet:"
CALIBRATION_FILE = "calibration.yaml"
"""The project's bench calibration, in stacks/ (written by `gpufleet calibrate`, read with every stack)."""
# Top-level keys Pulumi itself writes into a stack file (pulumi/pulumi sdk/go/common/workspace/project.go).
PULUMI_STACK_KEYS = ("config", "secretsprovider", "encryptedkey", "encryptionsalt", "environment")

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Project:
    root: Path

    @property
    def stacks_dir(self) -> Path:
        return self.root / "stacks"

    @property
    def models_dir(self) -> Path:
        return self.stacks_dir / "models"

    def stack_file(self, stack: str) -> Path:
        return self.stacks_dir / f"Pulumi.{stack}.yaml"

    def profile_file(self, name: str) -> Path:
        return self.models_dir / f"{name}.yaml"

    @property
    def calibration_file(self) -> Path:
        return self.stacks_dir / CALIBRATION_FILE

    def stack_names(self) -> list[str]:
        prefix, suffix = "Pulumi.", ".yaml"
        return sorted(p.name[len(prefix) : -len(suffix)] for p in self.stacks_dir.glob(f"{prefix}*{suffix}"))

    def profile_names(self) -> list[str]:
        return sorted(p.stem for p in self.models_dir.glob("*.yaml"))

    def shown(self, path: Path) -> str:
        return display_path(path, self.root)


@dataclass(frozen=True)
class LoadedProfile:
    profile: ModelProfile
    locator: Locator


@dataclass(frozen=True)
class LoadedStack:
    name: str
    spec: StackSpec
    provider_config: dict[str, Any]
    """Config of other namespaces in the stack file, e.g. {'aws:region': 'us-east-1'}."""
    profiles: dict[str, ModelProfile]
    warnings: list[SpecIssue] = field(default_factory=list)
    calibration: Calibration | None = None
    """The project's ``stacks/calibration.yaml`` (bench-fitted efficiency scales per GPU), if present."""


def read_document(
    path: Path, shown: str, issues: list[SpecIssue], hidden_prefix: tuple[str, ...] = ()
) -> PositionedYaml | None:
    try:
        doc = load_positioned(path.read_text(encoding="utf-8"))
    except YamlSyntaxError as exc:
        issues.append(SpecIssue(shown, exc.mark.line, exc.mark.col, "(document)", exc.message, exc.hint))
        return None
    except (OSError, UnicodeDecodeError) as exc:
        issues.append(SpecIssue(shown, 1, 1, "(document)", f"cannot read the file: {exc}"))
        return None
    locator = Locator(shown, doc, hidden_prefix=hidden_prefix)
    for path_key, mark in doc.duplicate_keys:
        issues.append(
            SpecIssue(shown, mark.line, mark.col, locator.shown(path_key), "key appears twice in one mapping",
                      "YAML keeps only the last one; remove the other")
        )
    return doc


def validate_model(model: type[M], data: Any, locator: Locator, issues: list[SpecIssue]) -> M | None:
    if not isinstance(data, dict):
        issues.append(locator.issue((), "expected a mapping of fields", f"see schemas/ for {model.__name__}"))
        return None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        issues.extend(issues_from_validation(exc, model, data, locator))
        return None


def load_profile(project: Project, name: str, issues: list[SpecIssue]) -> LoadedProfile | None:
    path = project.profile_file(name)
    shown = project.shown(path)
    doc = read_document(path, shown, issues)
    if doc is None:
        return None
    locator = Locator(shown, doc)
    profile = validate_model(ModelProfile, doc.data, locator, issues)
    if profile is None:
        return None
    if profile.name != name:
        issues.append(locator.issue(("name",), f"'{profile.name}' differs from the file name '{name}.yaml'",
                                    f"rename the file or set name: {name}"))
    return LoadedProfile(profile, locator)


def load_calibration(project: Project, issues: list[SpecIssue], path: Path | None = None) -> Calibration | None:
    """The calibration file (the project's by default) if it exists; its errors go to ``issues``."""
    from infra.calibrate.model import Calibration  # noqa: PLC0415 -- it builds on infra.spec.base: import cycle
    path = path or project.calibration_file
    if not path.is_file():
        return None
    shown = project.shown(path)
    doc = read_document(path, shown, issues)
    if doc is None:
        return None
    locator = Locator(shown, doc)
    calibration = validate_model(Calibration, doc.data, locator, issues)
    if calibration is None:
        return None
    catalog = load_catalog()
    found = len(issues)
    for index, entry in enumerate(calibration.gpus):
        gpu = catalog.gpu(entry.gpu)
        if gpu is None:
            issues.append(locator.issue(("gpus", index, "gpu"), f"unknown GPU '{entry.gpu}'",
                                        did_you_mean(entry.gpu, catalog.gpus)))
        elif gpu.name != entry.gpu:
            issues.append(locator.issue(("gpus", index, "gpu"), f"'{entry.gpu}' is an alias",
                                        f"write the catalog name {gpu.name}"))
    return calibration if len(issues) == found else None


@dataclass
class _Config:
    """The stack file's ``config:`` split by namespace."""

    ours: dict[str, Any] = field(default_factory=dict)
    """gpufleet keys, prefix stripped."""
    others: dict[str, Any] = field(default_factory=dict)
    """Other namespaces' keys, e.g. aws:region."""
    bare: set[str] = field(default_factory=set)
    """Keys written without a namespace (already reported)."""
    readable: bool = True
    """False when the file has no config mapping at all (already reported)."""


def _split_config(doc: PositionedYaml, locator: Locator, issues: list[SpecIssue]) -> _Config:
    split = _Config()
    if not isinstance(doc.data, dict):
        issues.append(locator.issue((), "a Pulumi stack file is a mapping with a config: key"))
        split.readable = False
        return split
    for key in doc.data:
        if key not in PULUMI_STACK_KEYS:
            issues.append(locator.issue((key,), "unknown top-level key of a Pulumi stack file",
                                        did_you_mean(key, PULUMI_STACK_KEYS), at_key=True))
    config = doc.data.get("config")
    if not isinstance(config, dict):
        issues.append(locator.issue(("config",), "must be a mapping of namespace:key entries",
                                    f"e.g. {NAMESPACE}target: aws-ec2", at_key=True))
        split.readable = False
        return split
    for key, value in config.items():
        if key.startswith(NAMESPACE):
            split.ours[key[len(NAMESPACE) :]] = value
        elif ":" in key:
            split.others[key] = value
        else:
            split.bare.add(key)
            issues.append(locator.issue(("config", key), "config keys need a namespace",
                                        f"write {NAMESPACE}{key}", at_key=True))
    return split


def _named_models(config: dict[str, Any]) -> list[tuple[int, str]]:
    """(deployment index, profile name) as written, so profiles are checked even if the stack is not valid."""
    deployments = config.get("deployments")
    if not isinstance(deployments, list):
        return []
    return [
        (index, deployment["model"])
        for index, deployment in enumerate(deployments)
        if isinstance(deployment, dict) and isinstance(deployment.get("model"), str) and deployment["model"]
    ]


def _load_profiles(
    project: Project, config: dict[str, Any], locator: Locator, issues: list[SpecIssue]
) -> dict[str, LoadedProfile]:
    profiles: dict[str, LoadedProfile] = {}
    seen: set[str] = set()
    for index, name in _named_models(config):
        if name in seen:
            continue
        seen.add(name)
        path = ("deployments", index, "model")
        hint = did_you_mean(name, project.profile_names())
        if not re.fullmatch(PROFILE_NAME, name):  # never let a name like ../x reach the file system
            issues.append(locator.issue(path, f"'{name}' is not a model profile name", hint))
        elif not project.profile_file(name).is_file():
            issues.append(locator.issue(path, f"no model profile '{name}' in stacks/models/", hint))
        else:
            loaded = load_profile(project, name, issues)
            if loaded is not None:
                profiles[name] = loaded
    return profiles


def load_stack(project: Project, stack: str) -> LoadedStack:
    """Validate a stack and its profiles; raise ``SpecError`` listing every error found."""
    issues: list[SpecIssue] = []
    path = project.stack_file(stack)
    shown = project.shown(path)
    if not path.is_file():
        hint = did_you_mean(stack, project.stack_names())
        raise SpecError([SpecIssue(shown, 1, 1, "(stack)", f"no stack '{stack}' (file not found)", hint)])
    doc = read_document(path, shown, issues, hidden_prefix=("config",))
    if doc is None:
        raise SpecError(issues)
    config = _split_config(doc, Locator(shown, doc, hidden_prefix=("config",)), issues)
    provider_config = config.others
    locator = Locator(shown, doc, doc_prefix=("config",), namespace=NAMESPACE)
    spec_issues: list[SpecIssue] = []
    # Without a config mapping, "every field is missing" would only repeat the error already reported.
    spec = validate_model(StackSpec, config.ours, locator, spec_issues) if config.readable else None
    # A key written without its namespace is already reported; "gpufleet:<key> is missing" would repeat it.
    bare = {locator.shown((key,)) for key in config.bare}
    issues.extend(i for i in spec_issues if not (i.path in bare and i.message == MISSING))
    # Profiles are read even when the stack is invalid: one round reports the errors of every file.
    profiles = _load_profiles(project, config.ours, locator, issues)
    if spec is not None:
        # Cross-field checks run on what did validate, so one round reports as much as possible.
        issues.extend(check_stack(spec, provider_config, locator, profiles))
        issues.extend(check_project_files(spec, project.root, locator))
    else:
        issues.extend(check_profiles(profiles))
    calibration = load_calibration(project, issues)
    errors = [issue for issue in issues if issue.severity == "error"]
    if errors or spec is None:
        raise SpecError(errors)
    return LoadedStack(
        name=stack,
        spec=spec,
        provider_config=provider_config,
        profiles={name: loaded.profile for name, loaded in profiles.items()},
        warnings=sorted(issue for issue in issues if issue.severity == "warning"),
        calibration=calibration,
    )
