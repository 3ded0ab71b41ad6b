"""What the engine flag-schema generators share (scripts/vllm_flag_schema.py, scripts/sglang_flag_schema.py).

Each generator pins one inference engine and turns its command-line parser into a checked-in JSON schema
(infra/render/data/ENGINE-VERSION-flags.json) that infra/render/vllm_flags.py reads. The generators differ only
in how they build the parser, how they name its `type=` callables, and which packages the parser imports; this
module holds the rest:

- inside the throwaway venv: `describe_actions` turns an argparse parser into the schema's option entries
  (kind, stable type name via the engine's `describe_type`, JSON defaults, choices, deprecation, first help
  sentence), `write_json` writes the raw facts;
- outside it: `prepare_venv` creates or reuses the venv, downloads the pinned wheel with `--no-deps`, installs
  it, torch and the engine's import dependencies constrained by the wheel's own Requires-Dist pins; `main` runs
  the generator inside the venv with `--dump FILE`, renders the document, keeps the header's date when nothing
  else changed, and writes the file or, with `--check`, fails when the checked-in file is stale.

Standard library only: the generators import it both in the caller's interpreter and inside the venv (run by
path, a script has its own directory on sys.path).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

HELP_MAX_CHARS = 400

# --------------------------------------------------------------------------------------------------------------
# Inside the throwaway venv: describe a parser's actions.
# --------------------------------------------------------------------------------------------------------------

TypeDescription = dict[str, Any]  # {"type": stable name, "optional": bool, "json_model": str | None}

BOOL_TYPE: TypeDescription = {"type": "bool", "optional": False, "json_model": None}
BOOL_KINDS = frozenset({"BooleanOptionalAction", "store_true", "store_false"})


def qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', repr(obj))}"


def closure_values(fn: Any) -> list[Any]:
    return [cell.cell_contents for cell in (getattr(fn, "__closure__", None) or ())]


def unmapped_type(fn: Any, script: str) -> SystemExit:
    return SystemExit(f"unmapped argparse type {qualname(fn)}: add it to _describe_type and TYPE_NAMES in {script}")


def action_kind(action: argparse.Action) -> str:
    # Most specific first: vLLM registers EnableDisableAction for BooleanOptionalAction.
    kinds: list[tuple[type[argparse.Action], str]] = [
        (argparse.BooleanOptionalAction, "BooleanOptionalAction"),
        (argparse._StoreTrueAction, "store_true"),
        (argparse._StoreFalseAction, "store_false"),
        (argparse._StoreConstAction, "store_const"),
        (argparse._AppendConstAction, "append_const"),
        (argparse._AppendAction, "append"),
        (argparse._ExtendAction, "extend"),
        (argparse._CountAction, "count"),
        (argparse._HelpAction, "help"),
        (argparse._VersionAction, "version"),
        (argparse._StoreAction, "store"),
    ]
    for cls, kind in kinds:
        if isinstance(action, cls):
            return kind
    # Custom actions (vLLM's LoRAParserAction, SGLang's DeprecatedStoreTrueAction, ...): "action" names the class.
    # One that takes a value consumes it like `store`; one that takes none and stores True over a False default
    # (SGLang's deprecated booleans) behaves like `store_true`.
    if action.nargs != 0:
        return "store"
    return "store_true" if action.const is True and action.default is False else "store_const"


def jsonable(value: Any) -> tuple[bool, Any]:
    """(True, JSON value) if `value` has a faithful JSON form, else (False, None)."""
    if value is None or isinstance(value, bool | int | str):
        return True, value
    if isinstance(value, float):
        return (True, value) if math.isfinite(value) else (False, None)
    if isinstance(value, list | tuple):
        items = [jsonable(v) for v in value]
        return (all(ok for ok, _ in items), [v for _, v in items])
    if isinstance(value, set | frozenset):
        items = [jsonable(v) for v in value]
        ok = all(ok for ok, _ in items)
        return (ok, sorted((v for _, v in items), key=lambda v: json.dumps(v, sort_keys=True)) if ok else None)
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        entries = {k: jsonable(v) for k, v in value.items()}
        return (all(ok for ok, _ in entries.values()), {k: v for k, (_, v) in entries.items()})
    enum_value = getattr(value, "value", None)
    if type(value).__module__ != "builtins" and hasattr(type(value), "__members__") and enum_value is not None:
        return jsonable(enum_value)
    return False, None


def stable_repr(value: Any) -> str:
    return re.sub(r" at 0x[0-9a-f]+", "", repr(value))


def first_sentence(text: str | None) -> str:
    if not text or text == argparse.SUPPRESS:
        return ""
    paragraph = " ".join(text.replace("%%", "%").split("\n\n", 1)[0].split())
    # A sentence ends at ". " before a capital letter or a backtick, not after e.g./i.e./etc.
    match = re.search(r"(?<!\be\.g)(?<!\bi\.e)(?<!\betc)(?<!\bvs)[.!?](?=\s+[A-Z`(\"'])", paragraph)
    sentence = paragraph[: match.end()] if match else paragraph
    if len(sentence) > HELP_MAX_CHARS:
        sentence = sentence[: HELP_MAX_CHARS - 1].rstrip() + "…"
    return sentence


# How vLLM 0.33 marks deprecated options (only in their help texts); an engine may pass its own pattern.
DEPRECATION = re.compile(r"\bis deprecated\b|\bwill be removed\b|\bhas been replaced by\b", re.IGNORECASE)


def deprecation(text: str | None, pattern: re.Pattern[str] = DEPRECATION) -> str | None:
    """The help text's sentence saying the option is deprecated, if any.

    A sentence that is one word ("Deprecated.") is quoted with the sentence after it, which names the successor.
    """
    if not text or text == argparse.SUPPRESS:
        return None
    flat = " ".join(text.replace("%%", "%").split())
    sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z`-])", flat)
    for i, sentence in enumerate(sentences):
        if pattern.search(sentence):
            if len(sentence.split()) == 1 and i + 1 < len(sentences):
                return f"{sentence} {sentences[i + 1]}"
            return sentence
    return None


def _no_engine_default(_dest: str) -> Any:
    return None


def describe_actions(
    parser: argparse.ArgumentParser,
    describe_type: Callable[[Any], TypeDescription],
    engine_default: Callable[[str], Any] = _no_engine_default,
    deprecation_pattern: re.Pattern[str] = DEPRECATION,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(options sorted by name, positionals) of `parser`, one schema entry each (the help action left out).

    `describe_type` maps an action's `type=` callable to its TypeDescription (boolean kinds are "bool" without
    asking); `engine_default(dest)` is the engine-side default recorded beside argparse's.
    """
    registered: dict[int, list[str]] = {}
    for option, act in parser._option_string_actions.items():
        registered.setdefault(id(act), []).append(option)
    groups = {id(act): group.title for group in parser._action_groups for act in group._group_actions}

    options: list[dict[str, Any]] = []
    positionals: list[dict[str, Any]] = []
    for action in parser._actions:
        kind = action_kind(action)
        if kind == "help":
            continue
        visible = list(action.option_strings)
        every = registered.get(id(action), [])
        negative = sorted(getattr(action, "negative_option_strings", None) or [])
        if kind == "BooleanOptionalAction" and not negative:  # plain BooleanOptionalAction: --no-x
            negative = sorted(s for s in every if s.startswith("--no-"))
        hidden = sorted(s for s in every if s not in visible)
        long_names = [s for s in visible if s.startswith("--")]
        described = BOOL_TYPE if kind in BOOL_KINDS else describe_type(action.type)
        ok, default = jsonable(action.default)
        if action.default == argparse.SUPPRESS:  # the dest is not set at all unless given
            ok, default = False, None
        if action.choices is None:
            choices_ok, choices = True, None
        elif isinstance(action.choices, set | frozenset):  # sorted: a set's order changes from run to run
            choices_ok, choices = jsonable(action.choices)
        else:
            choices_ok, choices = jsonable(list(action.choices))
        if not choices_ok:
            raise SystemExit(f"choices of {action.dest} are not JSON: {action.choices!r}")
        metavar_ok, metavar = jsonable(action.metavar)
        # vLLM turns `Literal[...] | str` fields into metavar={sorted literals}: known values, not enforced by the
        # parser (plugins may register more); some are checked when the engine config is built (kv-cache-dtype).
        known_values = metavar if isinstance(metavar, list) else None
        said = deprecation(action.help, deprecation_pattern)
        entry: dict[str, Any] = {
            "name": long_names[0][2:] if long_names else action.dest,
            "dest": action.dest,
            "option_strings": visible,
            "negative_option_strings": negative,
            "hidden_option_strings": hidden,
            "kind": kind,
            "action": None if type(action).__module__ == "argparse" else type(action).__name__,
            "type": described["type"],
            "optional": described["optional"],
            "json_model": described["json_model"],
            "nargs": action.nargs,
            "const": jsonable(action.const)[1],
            "default": default if ok else None,
            "default_repr": None if ok else stable_repr(action.default),
            "engine_default": engine_default(action.dest),
            "choices": choices,
            "known_values": known_values,
            "metavar": None if known_values is not None else (metavar if metavar_ok else stable_repr(action.metavar)),
            "required": bool(action.required),
            "deprecated": (
                action in getattr(parser, "_deprecated", set())
                or bool(getattr(action, "deprecated", False))
                or type(action).__name__.startswith("Deprecated")
                or said is not None
            ),
            "deprecation": said,
            "group": groups.get(id(action)),
            "help": first_sentence(action.help),
        }
        (options if action.option_strings else positionals).append(entry)

    options.sort(key=lambda e: e["name"])
    return options, positionals


def render(document: Mapping[str, Any]) -> str:
    """The exact text of a schema file (and of the raw facts): 2-space JSON, UTF-8 as is, a final newline."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    path.write_text(render(document), encoding="utf-8")


def write_facts(
    path: Path, dist: str, version: str, options: list[dict[str, Any]], positionals: list[dict[str, Any]]
) -> None:
    """The raw facts a generator's --dump writes: the engine's and this interpreter's versions, the actions."""
    facts = {
        f"{dist}_version": version,
        "torch_version": importlib.metadata.version("torch"),
        "python_version": platform.python_version(),
        "options": options,
        "positionals": positionals,
    }
    write_json(path, facts)


# --------------------------------------------------------------------------------------------------------------
# Outside: the throwaway venv and the checked-in file.
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Engine:
    """One engine's pins and what building its parser needs (see each generator's module docstring)."""

    dist: str  # the distribution and the facts' "<dist>_version" key, e.g. "vllm"
    version: str
    torch_version: str  # installed with its own dependencies (on these machines pip finds it on local disk)
    import_deps: tuple[str, ...]  # installed with their dependencies, constrained by the wheel's pins
    import_deps_no_deps: tuple[str, ...]  # installed with --no-deps
    script: Path  # the generator, run inside the venv with --dump FILE
    output: Path  # the checked-in schema file
    dump_env: Mapping[str, str]  # set for the --dump run (besides PYTHONHASHSEED=0)
    drop_env_prefixes: tuple[str, ...] = ()  # variables removed for the --dump run (the engine's settings)
    extra_constraints: tuple[str, ...] = ()  # pins the wheel does not state (added to its constraints)
    # Requires-Dist entries of the wheel left out of the constraints: torch is replaced by torch_version.
    unconstrained: frozenset[str] = frozenset({"torch", "torchaudio", "torchvision", "torchcodec"})


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, text=True, **kwargs)


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def installed_version(python: Path, dist: str) -> str | None:
    code = (
        "import importlib.metadata as m, sys\n"
        "try:\n print(m.version(sys.argv[1]))\n"
        "except m.PackageNotFoundError:\n print('')\n"
    )
    out = subprocess.run([str(python), "-c", code, dist], check=True, text=True, capture_output=True).stdout
    return out.strip() or None


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def constraints_from_wheel(wheel: Path, engine: Engine) -> list[str]:
    """torch's pin and the wheel's Requires-Dist pins of the packages the generator installs, as pip constraints.

    Only those: the wheel also pins transitive packages to releases newer than the index may serve yet
    (vLLM 0.33.0 asks for certifi>=2026.10.19), which would make the resolver fail for nothing.
    """
    wanted = {normalise(n) for n in (*engine.import_deps, *engine.import_deps_no_deps)}
    with zipfile.ZipFile(wheel) as zf:
        metadata_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(metadata_name).decode("utf-8")
    lines = [f"torch=={engine.torch_version}", *engine.extra_constraints]
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        requirement, _, marker = line.removeprefix("Requires-Dist:").strip().partition(";")
        if "extra ==" in marker:
            continue
        match = re.match(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*(.*)", requirement.strip())
        if match is None:
            continue
        name, _extras, spec = match.groups()
        if normalise(name) in engine.unconstrained or normalise(name) not in wanted or not spec.strip():
            continue
        lines.append(f"{name}{spec.strip()}" + (f"; {marker.strip()}" if marker.strip() else ""))
    return lines


def prepare_venv(engine: Engine, venv: Path, python: str) -> Path:
    """Create (or reuse) `venv` with the engine's wheel, torch and import dependencies; return its interpreter."""
    vpython = venv_python(venv)
    if not vpython.exists():
        run([python, "-m", "venv", str(venv)])
    pip = [str(vpython), "-m", "pip", "--disable-pip-version-check"]
    wheels = venv / "wheels"
    pattern = f"{engine.dist}-{engine.version}-*.whl"
    wheel = next(iter(sorted(wheels.glob(pattern))), None)
    if wheel is None:
        run([*pip, "download", "--quiet", "--no-deps", "-d", str(wheels), f"{engine.dist}=={engine.version}"])
        wheel = next(iter(sorted(wheels.glob(pattern))))
    constraints = venv / f"{engine.dist}-constraints.txt"
    constraints.write_text("\n".join(constraints_from_wheel(wheel, engine)) + "\n", encoding="utf-8")
    if installed_version(vpython, engine.dist) != engine.version:
        run([*pip, "install", "--quiet", "--no-deps", str(wheel)])
    if (installed_version(vpython, "torch") or "").split("+")[0] != engine.torch_version:
        run([*pip, "install", "--quiet", f"torch=={engine.torch_version}"])
    run([*pip, "install", "--quiet", "-c", str(constraints), *engine.import_deps])
    if engine.import_deps_no_deps:
        run([*pip, "install", "--quiet", "--no-deps", "-c", str(constraints), *engine.import_deps_no_deps])
    return vpython


def dump_environment(engine: Engine) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(engine.drop_env_prefixes)}
    return {**env, **engine.dump_env, "PYTHONHASHSEED": "0"}


def collect_facts(engine: Engine, venv: Path | None, python: str) -> dict[str, Any]:
    """Prepare the venv (a temporary one, removed afterwards, unless `venv` is given) and dump the parser there."""
    tmp: str | None = None
    if venv is None:
        tmp = tempfile.mkdtemp(prefix=f"{engine.dist}-flag-schema-")
        venv = Path(tmp) / "venv"
    try:
        vpython = prepare_venv(engine, venv.resolve(), python)
        raw = venv.resolve() / "parser-facts.json"
        cmd = [str(vpython), str(engine.script.resolve()), "--dump", str(raw)]
        run(cmd, env=dump_environment(engine), cwd=venv.resolve())
        facts: dict[str, Any] = json.loads(raw.read_text(encoding="utf-8"))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    found = facts[f"{engine.dist}_version"]
    if found != engine.version:
        raise SystemExit(f"installed {engine.dist} is {found}, expected {engine.version}")
    return facts


def write_or_check(output: Path, build: Callable[[str], Mapping[str, Any]], check: bool) -> int:
    """Write `build(date)` to `output`, or with `check` only compare; keep the old date when nothing else changed."""
    today = dt.datetime.now(dt.UTC).date().isoformat()
    text = render(build(today))
    if output.exists():  # keep the old date when nothing else changed: re-running gives the same file
        current = output.read_text(encoding="utf-8")
        old_date = str(json.loads(current).get("schema", {}).get("generated", today))
        if render(build(old_date)) == current:
            text = current
    if check:
        same = output.exists() and output.read_text(encoding="utf-8") == text
        print(f"{output}: {'up to date' if same else 'would change'}")
        return 0 if same else 1
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    return 0


def main(
    engine: Engine,
    description: str,
    dump: Callable[[Path], None],
    build_document: Callable[[dict[str, Any], str], Mapping[str, Any]],
    argv: list[str] | None = None,
) -> int:
    """The generators' command line: [--venv DIR] [--python PYTHON] [--output PATH] [--check] (and --dump FILE)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--venv", type=Path, help="create or reuse the venv here (default: a temporary directory)")
    ap.add_argument("--python", default=sys.executable, help="interpreter for a new venv (>= 3.11)")
    ap.add_argument("--output", type=Path, default=engine.output)
    ap.add_argument("--check", action="store_true", help="exit 1 if the output file would change; write nothing")
    ap.add_argument("--dump", type=Path, help=argparse.SUPPRESS)  # internal: run inside the venv
    args = ap.parse_args(argv)

    if args.dump is not None:
        dump(args.dump)
        return 0

    facts = collect_facts(engine, args.venv, args.python)
    output: Path = args.output
    status = write_or_check(output, lambda date: build_document(facts, date), args.check)
    if not args.check:
        print(f"wrote {output} ({len(facts['options'])} options, {engine.dist} {engine.version})")
    return status
