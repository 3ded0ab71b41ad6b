"""Check `vllm serve` engine arguments against the flag schema of the pinned vLLM version.

The schema (`infra/render/data/vllm-0.33.0-flags.json`) is generated from the published vLLM wheel by
`scripts/vllm_flag_schema.py` and checked in, so nothing here needs vLLM installed.

Arguments are written as the mapping of a `vllm serve --config FILE.yaml`: keys are flag names without `--`
(with '-' or '_'), and values follow vLLM 0.33's config loader (`FlexibleArgumentParser.load_config_file`):

- `true` → `--key`; `false` → `--no-key` when that option exists (boolean pairs), else the key is dropped;
- a list → `--key item1 item2 ...` (each item as `str(item)`), an empty list is dropped;
- a mapping → `--key '<JSON>'` (for JSON-typed flags such as `compilation-config`);
- anything else → `--key str(value)` (so YAML `null` becomes the text `None`, which optional flags read as None).

`validate_engine_args` reports every argument vLLM would reject (or silently drop); `to_cli_args` turns valid
arguments into the equivalent command-line list, sorted by flag name.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from typing import Any, Literal

VLLM_VERSION = "0.33.0"
SCHEMA_FILE = f"vllm-{VLLM_VERSION}-flags.json"

Severity = Literal["error", "warning"]

# The header key naming the engine's version in a generated schema -> the command whose flags it lists
# (scripts/vllm_flag_schema.py, scripts/sglang_flag_schema.py).
ENGINE_COMMANDS = {"vllm_version": "vllm serve", "sglang_version": "sglang serve"}

# Kinds of argparse action that take no value on the command line.
_VALUELESS_KINDS = frozenset({"BooleanOptionalAction", "store_true", "store_false", "store_const", "count"})

_TYPE_WORDS: dict[str, str] = {
    "str": "a string",
    "str_normalized": "a string",
    "int": "an integer",
    "float": "a number",
    "human_readable_int": "an integer (8192, or human-readable: 8k = 8000, 8K = 8192)",
    "human_readable_int_or_auto": "an integer (8192, or human-readable: 8k = 8000, 8K = 8192) or 'auto'",
    "human_readable_int_si_iec": "an integer (32768, or human-readable: 32k = 32000, 32Ki = 32768; case-sensitive)",
    "json": "JSON (a mapping in YAML)",
    "json_object": "a JSON object (a mapping in YAML)",
    "json_or_str": "a string or a JSON object (a mapping in YAML)",
    "csv": "a comma-separated list",
    "bool": "true or false",
}


_SHORT_TYPE_WORDS: dict[str, str] = {
    "int": "an integer",
    "human_readable_int": "an integer",
    "human_readable_int_or_auto": "an integer or 'auto'",
    "human_readable_int_si_iec": "an integer",
    "float": "a number",
}

# Types whose values are JSON: a mapping in YAML is passed as JSON text, and dotted keys reach into it.
_JSON_TYPES = frozenset({"json", "json_or_str", "json_object"})


@dataclass(frozen=True)
class FlagSpec:
    """One `vllm serve` option as the schema records it."""

    name: str  # the first long option without '--', e.g. "max-num-seqs"
    dest: str
    option_strings: tuple[str, ...]
    negative_option_strings: tuple[str, ...]
    hidden_option_strings: tuple[str, ...]
    kind: str  # store, store_true, BooleanOptionalAction, append, ...
    type: str  # see the schema header's type_names
    optional: bool  # the value 'None' (YAML null) means None
    json_model: str | None
    nargs: int | str | None
    const: object
    default: object
    default_repr: str | None
    engine_default: object
    choices: tuple[object, ...] | None
    known_values: tuple[str, ...] | None  # values vLLM knows; the parser itself lets any string through
    deprecated: bool
    deprecation: str | None
    group: str | None
    help: str

    @property
    def takes_value(self) -> bool:
        return self.kind not in _VALUELESS_KINDS

    @property
    def all_option_strings(self) -> tuple[str, ...]:
        return tuple(sorted({*self.option_strings, *self.negative_option_strings, *self.hidden_option_strings}))

    def expected(self) -> str:
        """What a value of this flag looks like, for hints."""
        if self.choices is not None:
            allowed = ", ".join("null" if c is None else str(c) for c in self.choices)
            return f"one of: {allowed}"
        words = _TYPE_WORDS.get(self.type, "a string")
        if self.nargs in ("+", "*"):
            words = f"{words}, or a list of them"
        elif isinstance(self.nargs, int) and self.nargs > 1:
            words = f"a list of {self.nargs} values, each {words}"
        if self.optional:
            words = f"{words}, or null"
        return f"expected {words}"


@dataclass(frozen=True)
class FlagSchema:
    header: Mapping[str, Any]
    options: Mapping[str, FlagSpec]  # by name
    by_option_string: Mapping[str, FlagSpec]  # every registered option string, e.g. "--no-enable-lora", "-tp"

    @property
    def version(self) -> str:
        """The engine version the schema was generated from."""
        return str(self.header[self._version_key])

    @property
    def command(self) -> str:
        """The server command whose flags these are ("vllm serve", "sglang serve")."""
        return ENGINE_COMMANDS[self._version_key]

    @property
    def _version_key(self) -> str:
        (key,) = (k for k in ENGINE_COMMANDS if k in self.header)
        return key

    def spec(self, name: str) -> FlagSpec:
        """The option for a name written as in a config file or on the command line ("max_num_seqs", "-tp")."""
        key = name if name.startswith("-") and not name.startswith("--") else "--" + _dashes(name.lstrip("-"))
        try:
            return self.by_option_string[key]
        except KeyError:
            raise KeyError(f"{self.command} {self.version} has no option {name!r}") from None


@dataclass(frozen=True)
class FlagProblem:
    """An engine argument vLLM would reject or ignore. `flag` is the key as written."""

    flag: str
    message: str
    hint: str = ""
    severity: Severity = "error"

    def __str__(self) -> str:
        return f"{self.flag}: {self.message}" + (f" ({self.hint})" if self.hint else "")


class EngineArgsError(ValueError):
    """Raised by `to_cli_args` for arguments with error-severity problems."""

    def __init__(self, problems: Sequence[FlagProblem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


def _dashes(name: str) -> str:
    return name.replace("_", "-")


def _tuple_or_none(value: object) -> tuple[Any, ...] | None:
    return tuple(value) if isinstance(value, list) else None


def _spec_from_json(raw: Mapping[str, Any]) -> FlagSpec:
    return FlagSpec(
        name=str(raw["name"]),
        dest=str(raw["dest"]),
        option_strings=tuple(raw["option_strings"]),
        negative_option_strings=tuple(raw["negative_option_strings"]),
        hidden_option_strings=tuple(raw["hidden_option_strings"]),
        kind=str(raw["kind"]),
        type=str(raw["type"]),
        optional=bool(raw["optional"]),
        json_model=raw["json_model"],
        nargs=raw["nargs"],
        const=raw["const"],
        default=raw["default"],
        default_repr=raw["default_repr"],
        engine_default=raw["engine_default"],
        choices=_tuple_or_none(raw["choices"]),
        known_values=_tuple_or_none(raw["known_values"]),
        deprecated=bool(raw["deprecated"]),
        deprecation=raw["deprecation"],
        group=raw["group"],
        help=str(raw["help"]),
    )


def parse_schema(document: Mapping[str, Any]) -> FlagSchema:
    options = {spec.name: spec for spec in map(_spec_from_json, document["options"])}
    by_option_string: dict[str, FlagSpec] = {}
    for spec in options.values():
        for option in spec.all_option_strings:
            by_option_string[option] = spec
    return FlagSchema(header=document["schema"], options=options, by_option_string=by_option_string)


@functools.cache
def load_schema() -> FlagSchema:
    """The checked-in schema of vLLM VLLM_VERSION (package data of infra.render)."""
    schema = load_engine_schema("vllm")
    assert schema is not None
    return schema


# Engines whose flag parser is generated from their published package (scripts/*_flag_schema.py).
SCHEMA_FILES = {"vllm": SCHEMA_FILE, "sglang": "sglang-0.5.21-flags.json"}


@functools.cache
def load_engine_schema(engine: str) -> FlagSchema | None:
    """The checked-in flag schema of an engine's pinned version; None where none can be generated."""
    if engine not in SCHEMA_FILES:
        return None
    text = resources.files("infra.render").joinpath("data", SCHEMA_FILES[engine]).read_text(encoding="utf-8")
    return parse_schema(json.loads(text))


def flag_spec(name: str) -> FlagSpec:
    return load_schema().spec(name)


def flag_default(name: str) -> object:
    """argparse's default of a flag ("max-num-seqs", "max_num_seqs" or "--max-num-seqs"); KeyError if unknown.

    None often means "resolved when the engine starts" (see FlagSpec.engine_default where the schema has it).
    """
    return flag_spec(name).default


# ------------------------------------------------------------------------------------------------------------
# Value checks: the argparse `type=` conversions of vLLM 0.33, by the schema's stable type names.
# ------------------------------------------------------------------------------------------------------------

_HUMAN_INT = re.compile(r"(\d+(?:\.\d+)?)([kKmMgGtT])")
_DECIMAL = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_BINARY = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


class BadValue(ValueError):
    """A value vLLM's argparse type rejects, with a reason worth showing (plain ValueErrors have none)."""


def human_readable_int(text: str) -> int:
    """vllm.utils.argparse_utils.human_readable_int: '4k' = 4000, '4K' = 4096, '25.6k' = 25600, '512' = 512."""
    value = text.strip()
    match = _HUMAN_INT.fullmatch(value)
    if match:
        number, suffix = match.groups()
        if suffix in _DECIMAL:
            return int(float(number) * _DECIMAL[suffix])
        if "." in number:
            raise BadValue(f"has a decimal with the binary suffix {suffix} (did you mean {number}{suffix.lower()}?)")
        return int(number) * _BINARY[suffix]
    return int(value)


_SI_IEC_INT = re.compile(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)")
_SI = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_IEC = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def human_readable_int_si_iec(text: str) -> int:
    """sglang.srt.utils.common.human_readable_int (SGLang 0.5.21), case-sensitive: SI '32k' = 32000, '25.6k' = 25600,
    '1M' = 1000000; IEC '128Ki' = 131072, '1Mi' = 1048576 (integers only); '4K' and '1m' are errors."""
    value = text.strip()
    match = _SI_IEC_INT.fullmatch(value)
    if match:
        number, suffix = match.groups()
        if suffix in _SI:
            return int(Decimal(number) * _SI[suffix])
        if "." in number:
            si = "k" if suffix == "Ki" else suffix[0]
            raise BadValue(f"has a decimal with the IEC suffix {suffix} (write an integer, or {number}{si} for SI)")
        return int(number) * _IEC[suffix]
    return int(value)


def _expand_json_human_readable_numbers(text: str) -> str:
    parts = re.split(r'("(?:[^"\\]|\\.)*")', text)
    for i in range(0, len(parts), 2):
        parts[i] = re.sub(r"\b\d+(?:\.\d+)?[kKmMgGtT]\b", lambda m: str(human_readable_int(m.group())), parts[i])
    return "".join(parts)


def _convert(spec: FlagSpec, token: str) -> object:
    """The value argparse would store for one token; ValueError with a reason if vLLM's type= rejects it."""
    if spec.optional and token in ("", "None"):
        return None
    kind = spec.type
    if kind in ("str", "csv"):
        return token
    if kind == "str_normalized":
        return token.lower().replace("-", "_")
    if kind == "int":
        return int(token)
    if kind == "float":
        value = float(token)
        if math.isnan(value):
            raise ValueError("NaN is not a usable number")
        return value
    if kind in _CONVERTERS:
        return _CONVERTERS[kind](token)
    if kind == "human_readable_int_or_auto":
        return -1 if token.strip() in ("-1",) or token.strip().lower() == "auto" else human_readable_int(token)
    if kind == "json":
        if spec.json_model is None:
            return _json(token)
        parsed = _json(_expand_json_human_readable_numbers(token))
        if not isinstance(parsed, dict):
            raise BadValue(f"is not a JSON object, which {spec.json_model} needs (write a mapping in YAML)")
        return parsed
    if kind == "json_or_str":
        return _json(token) if re.match(r"(?s)^\s*{.*}\s*$", token) else token
    return token  # a type the schema names but this module does not know: argparse's str


def _json(token: str) -> object:
    try:
        return json.loads(token)
    except json.JSONDecodeError as exc:
        raise BadValue(f"is not valid JSON ({exc.msg} at character {exc.pos})") from None


def _json_object(token: str) -> object:
    parsed = _json(token)
    if not isinstance(parsed, dict):
        raise BadValue("is not a JSON object (write a mapping in YAML)")
    return parsed


# Types converted by one function of the token.
_CONVERTERS: dict[str, Callable[[str], object]] = {
    "human_readable_int": human_readable_int,
    "human_readable_int_si_iec": human_readable_int_si_iec,
    "json_object": _json_object,
}


def _check_token(spec: FlagSpec, key: str, token: str) -> FlagProblem | None:
    try:
        value = _convert(spec, token)
    except BadValue as exc:
        return FlagProblem(key, f"{token!r} {exc}", spec.expected())
    except ValueError:  # int() or float() said no
        return FlagProblem(key, f"{token!r} is not {_SHORT_TYPE_WORDS.get(spec.type, 'valid')}", spec.expected())
    if spec.choices is not None and value not in spec.choices:
        return FlagProblem(key, f"{token!r} is not an allowed value", _choice_hint(token, spec.choices))
    if spec.known_values is not None and value is not None and value not in spec.known_values:
        return FlagProblem(
            key,
            f"{token!r} is not a value vLLM {VLLM_VERSION} knows (the parser lets any string through for "
            "plugins; the engine rejects unknown ones when it starts)",
            _choice_hint(token, spec.known_values),
        )
    return None


def _choice_hint(token: str, choices: Sequence[object]) -> str:
    names = ["null" if c is None else str(c) for c in choices]
    close = difflib.get_close_matches(token, names, n=1, cutoff=0.6)
    prefix = f"did you mean {close[0]!r}? " if close else ""
    return f"{prefix}one of: {', '.join(names)}"


# ------------------------------------------------------------------------------------------------------------
# Keys and values as vLLM's config loader passes them to argparse.
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Resolved:
    key: str  # as written
    spec: FlagSpec
    option: str  # the option string the key names, '_' turned into '-', e.g. "--no-enable-lora"
    subkey: str  # "" or ".a.b" for dotted keys into JSON flags ("compilation-config.mode")


def _closest_flag(schema: FlagSchema, name: str) -> str:
    candidates = sorted({o[2:] for o in schema.by_option_string if o.startswith("--")})
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else f"see `{schema.command} --help` for the flags"


def _resolve(schema: FlagSchema, key: str) -> _Resolved | FlagProblem:
    version = f"{schema.command} {schema.version}"
    if key.startswith("-"):
        named = schema.by_option_string.get(key)
        return FlagProblem(
            key, "write keys without leading dashes", f"write {named.name if named else key.lstrip('-')!r}"
        )
    base, dot, rest = key.partition(".")
    name = _dashes(base)
    option = "--" + name
    spec = schema.by_option_string.get(option)
    if spec is None:
        short = schema.by_option_string.get("-" + base)
        if short is not None:
            return FlagProblem(
                key,
                f"-{base} is a short option; vLLM's config loader passes keys as --{base}, which does not exist",
                f"write {short.name!r}",
            )
        prefixed = [o for o in schema.by_option_string if o.startswith(option)]
        if len({schema.by_option_string[o].dest for o in prefixed}) == 1:
            full = prefixed[0][2:]
            return FlagProblem(
                key,
                f"not a flag of {version}; argparse would take it as an abbreviation of --{full}, "
                "which breaks when a later vLLM adds a flag with the same prefix",
                f"write {full!r}",
            )
        return FlagProblem(key, f"unknown flag: {version} has no --{name}", _closest_flag(schema, name))
    if dot:
        if spec.type not in _JSON_TYPES:
            return FlagProblem(key, f"--{spec.name} is not a JSON flag, so it has no '.' sub-keys", spec.expected())
        return _Resolved(key, spec, option, "." + rest)
    return _Resolved(key, spec, option, "")


def _sets_false(spec: FlagSpec, option: str) -> bool:
    return option in spec.negative_option_strings or spec.kind == "store_false"


def _check_value(schema: FlagSchema, r: _Resolved, value: object) -> list[FlagProblem]:
    spec, key = r.spec, r.key
    if r.subkey:
        if isinstance(value, bool | list | Mapping) or value is None:
            # true drops its value, lists spill into stray arguments, mappings and null arrive as Python text.
            return [
                FlagProblem(
                    key,
                    f"vLLM's config loader does not pass {json.dumps(value)} through a dotted key intact",
                    f"write it nested: {spec.name}: {{{r.subkey[1:]}: {json.dumps(value)}}}",
                )
            ]
        return []
    if isinstance(value, bool):
        return _check_bool(schema, r, value)
    if not spec.takes_value:
        shown = json.dumps(value) if isinstance(value, (list, dict)) or value is None else repr(value)
        return [FlagProblem(key, f"--{spec.name} takes no value, got {shown}", "write true or false")]
    if isinstance(value, Mapping):
        if spec.type in _JSON_TYPES:
            return []
        return [FlagProblem(key, "a mapping is only allowed for JSON flags", spec.expected())]
    if isinstance(value, list):
        return _check_list(spec, key, value)
    if isinstance(value, int | float | str) or value is None:
        if isinstance(spec.nargs, int) and spec.nargs > 1:
            return [FlagProblem(key, f"takes {spec.nargs} values", spec.expected())]
        if value is None and not spec.optional and spec.type in ("str", "str_normalized", "csv"):
            return [
                FlagProblem(
                    key,
                    "null is passed to vLLM as the text 'None', which this flag takes literally",
                    "leave the key out to keep the default",
                )
            ]
        problem = _check_token(spec, key, str(value))
        return [problem] if problem else []
    return [FlagProblem(key, f"unsupported value of type {type(value).__name__}", spec.expected())]


def _check_bool(schema: FlagSchema, r: _Resolved, value: bool) -> list[FlagProblem]:
    spec, key = r.spec, r.key
    if spec.takes_value:
        if spec.nargs == "?" and spec.const is True and value:
            return []  # `--flag` alone stores True
        what = "true would pass the flag without its value" if value else "false is silently dropped by vLLM"
        return [FlagProblem(key, f"a boolean given to a flag that takes a value ({what})", spec.expected())]
    if value:
        return []
    # false: vLLM's loader looks up "--no-" + the key exactly as written (before '_' becomes '-').
    if f"--no-{r.key}" in schema.by_option_string:
        return []
    if spec.kind == "store_true":
        return []  # dropped, which leaves the default (off)
    if f"--no-{_dashes(r.key)}" in schema.by_option_string:
        return [
            FlagProblem(
                key,
                f"vLLM {VLLM_VERSION}'s config loader drops `false` for keys written with '_'",
                f"write '{_dashes(r.key)}: false'",
            )
        ]
    positive = next((o[2:] for o in spec.option_strings if o.startswith("--") and not _sets_false(spec, o)), None)
    hint = f"write '{positive}: true'" if _sets_false(spec, r.option) and positive else "leave the key out"
    return [FlagProblem(key, f"false is silently dropped by vLLM: --no-{_dashes(r.key)} does not exist", hint)]


def _check_list(spec: FlagSpec, key: str, items: list[Any]) -> list[FlagProblem]:
    if not items:
        return []  # vLLM drops an empty list
    count = len(items)
    if spec.nargs in ("+", "*"):
        pass
    elif isinstance(spec.nargs, int):
        if count != spec.nargs:
            return [FlagProblem(key, f"takes exactly {spec.nargs} values, got {count}", spec.expected())]
    elif count != 1:
        extra = " (vLLM's config loader passes a list as one option followed by every item)"
        return [FlagProblem(key, f"takes one value, got a list of {count}{extra}", spec.expected())]
    problems: list[FlagProblem] = []
    for item in items:
        if isinstance(item, (Mapping, list)):
            problems.append(
                FlagProblem(
                    key,
                    "list items are passed as str(item), so a nested mapping or list arrives as Python text",
                    "write each item as a string (JSON text where the flag reads JSON)",
                )
            )
            continue
        problem = _check_token(spec, key, str(item))
        if problem is not None:
            problems.append(problem)
    return problems


def _resolve_all(schema: FlagSchema, args: Mapping[str, object]) -> tuple[list[_Resolved], list[FlagProblem]]:
    resolved: list[_Resolved] = []
    problems: list[FlagProblem] = []
    seen: dict[str, str] = {}  # dest (plus sub-key) -> first key
    for key, value in args.items():
        if not isinstance(key, str):
            problems.append(FlagProblem(str(key), "flag names must be strings"))
            continue
        r = _resolve(schema, key)
        if isinstance(r, FlagProblem):
            problems.append(r)
            continue
        identity = r.spec.dest + r.subkey
        if identity in seen:
            problems.append(
                FlagProblem(key, f"sets the same option as {seen[identity]!r} (--{r.spec.name})", "keep one of them")
            )
            continue
        # vLLM re-assembles dotted keys into one JSON value placed after the whole one, which it replaces.
        if r.subkey:
            other = seen.get(r.spec.dest)
        else:
            other = next((k for i, k in seen.items() if i.startswith(f"{r.spec.dest}.")), None)
        if other is not None:
            message = f"--{r.spec.name} is given whole and by dotted keys ({other!r}): vLLM keeps only the dotted ones"
            problems.append(FlagProblem(key, message, f"put every field in the {r.spec.name} mapping"))
            continue
        seen[identity] = key
        found = _check_value(schema, r, value)
        problems.extend(found)
        if r.spec.deprecated:
            where = f"{schema.command} {schema.version}"
            problems.append(FlagProblem(key, f"deprecated in {where}", r.spec.deprecation or "", "warning"))
        if not any(p.severity == "error" for p in found):
            resolved.append(r)
    return resolved, problems


def validate_engine_args(args: Mapping[str, object], schema: FlagSchema | None = None) -> list[FlagProblem]:
    """Every problem vLLM's `vllm serve --config` would have with `args` (in input order; [] if none).

    Errors are arguments vLLM rejects at start or silently drops; warnings are deprecated flags.
    """
    return _resolve_all(schema or load_schema(), args)[1]


def _tokens(schema: FlagSchema, r: _Resolved, value: object) -> list[str]:
    if isinstance(value, bool):
        if value:
            return [r.option + r.subkey]
        no = f"--no-{_dashes(r.key)}"
        return [no] if no in schema.by_option_string else []
    option = r.option + r.subkey
    if isinstance(value, Mapping):
        return [option, json.dumps(value, sort_keys=True)]
    if isinstance(value, list):
        return [option, *(str(item) for item in value)] if value else []
    return [option, str(value)]


def to_cli_args(args: Mapping[str, object], schema: FlagSchema | None = None) -> list[str]:
    """The command-line list equivalent to `args` as a `vllm serve --config` file, sorted by flag name.

    Keys are written with '-' (`enable_prefix_caching: true` → `--enable-prefix-caching`); mappings become
    JSON with sorted keys. Raises EngineArgsError if `validate_engine_args` finds an error (warnings pass).
    """
    schema = schema or load_schema()
    resolved, problems = _resolve_all(schema, args)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise EngineArgsError(errors)
    out: list[str] = []
    for r in sorted(resolved, key=lambda r: (r.spec.name, r.subkey, r.option)):
        out.extend(_tokens(schema, r, args[r.key]))
    return out
