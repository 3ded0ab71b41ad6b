#!/usr/bin/env python3
"""Regenerate the checked-in `vllm serve` flag schema of the pinned vLLM version from its published wheel.

No GPU is needed. The script

1. creates a throwaway venv (in a temporary directory, or `--venv DIR` to create/reuse one there);
2. `pip download --no-deps vllm==VLLM_VERSION` and installs that wheel with `--no-deps`;
3. installs `torch==TORCH_VERSION` (a CPU build; on the project's machines pip finds one on local disk by name)
   and the small dependencies vLLM imports while it builds its argument parser (IMPORT_DEPS below), constrained
   by the version pins in the wheel's own metadata;
4. runs itself inside that venv with `--dump`, which sets `VLLM_TARGET_DEVICE=cpu` and
   `sys.argv = ["vllm", "--help"]` (vLLM only collects help texts when it sees `--help`), builds
   `vllm.entrypoints.common.cli_args.make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))` and dumps every
   action: dest, option strings (visible, hidden and the negative forms of boolean pairs), kind, type (mapped to
   a stable name, see TYPE_NAMES), nargs, const, default, choices, metavar, group, deprecation and the first
   sentence of the help text;
5. writes infra/render/data/vllm-VLLM_VERSION-flags.json: a header and the options sorted by name.

The output is deterministic: re-running with the same versions gives the same bytes (the header's `generated`
date is kept from the existing file when nothing else changed).

Usage:
    python scripts/vllm_flag_schema.py [--venv DIR] [--output PATH] [--python PYTHON] [--check]

It took 1.5 minutes here (torch's CPU wheel lies on local disk; downloading it takes longer) and 2.5 GB of
disk for the venv, the 336 MB wheel included. The script itself needs only the standard library and
scripts/argparse_schema.py beside it (the venv, pip, action-dumping and --check code it shares with
scripts/sglang_flag_schema.py), so any Python >= 3.11 can run it; `--python` picks the interpreter of the venv
(vLLM 0.33 requires >= 3.11). `--check` exits 1 when the checked-in file is stale and writes nothing.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

_SCRIPTS = str(Path(__file__).resolve().parent)
if _SCRIPTS not in sys.path:  # run by path it is there already; tests load this file by its path
    sys.path.insert(0, _SCRIPTS)
import argparse_schema as shared  # noqa: E402  (what both flag-schema generators share)

ROOT = shared.ROOT

VLLM_VERSION = "0.33.0"
# vLLM 0.33.0 pins torch==2.14.0; no CPU build of it lies on these machines, and 2.13.0's CPU build imports
# vLLM's argument-parser modules fine (the parser does not touch torch's kernels).
TORCH_VERSION = "2.13.0"

# What `import vllm.entrypoints.common.cli_args` and building the serve parser need, found by rounds of
# "import, read the ModuleNotFoundError, install" against vllm 0.33.0 + torch 2.13.0+cpu on Python 3.11
# (26 rounds; the round's missing module in brackets where it differs from the distribution name).
# They are installed with their own dependencies (transformers brings huggingface_hub, tokenizers,
# safetensors, ...), constrained by the vLLM wheel's Requires-Dist pins for these names, so the versions are vLLM's.
# Result on 2026-11-23: ~70 distributions, ~2.1 GB of site-packages (torch 750 MB, vllm 880 MB).
IMPORT_DEPS: tuple[str, ...] = (
    "packaging",
    "regex",
    "pyyaml",  # [yaml]
    "pydantic",
    "numpy",
    "psutil",
    "cbor2",
    "pyzmq",  # [zmq]
    "urllib3",
    "transformers",
    "aiohttp",
    "requests",
    "oss-harmony",  # [openai_harmony]: vLLM 0.33 depends on this fork, which provides the openai_harmony module
    "openai",
    "msgspec",
    "cloudpickle",
    "pillow",  # [PIL]
    "pybase64",
    "cachetools",
    "uvloop",  # comes with fastapi[standard] -> uvicorn[standard] in a full install
    "py-cpuinfo",  # [cpuinfo]
    "fastapi",
    "prometheus_client",
    "partial-json-parser",  # [partial_json_parser]
    "llguidance",
)
# Installed with --no-deps: xgrammar's own dependencies pull triton (1 GB), which building the parser never
# imports; apache-tvm-ffi is the one xgrammar needs at import.
IMPORT_DEPS_NO_DEPS: tuple[str, ...] = ("xgrammar", "apache-tvm-ffi")

# How the parser's `type=` callables are named in the schema (stable names the validator understands).
# Wrappers are unwrapped first: vllm.engine.arg_utils.optional_type(T) -> T with "optional": true (it also
# accepts "None" and "" as None); parse_type(T) -> T (it only turns ValueError into an argparse error).
TYPE_NAMES: dict[str, str] = {
    "None (no type=, value kept as a string)": "str",
    "str": "str",
    "int": "int",
    "float": "float",
    "vllm.utils.argparse_utils.human_readable_int": "human_readable_int (int, or 1.5k = 1500, 4K = 4096; m/M g/G t/T)",
    "vllm.utils.argparse_utils.human_readable_int_or_auto": "human_readable_int_or_auto (same, plus 'auto'/-1 = -1)",
    "json.loads": "json (any JSON document)",
    "arg_utils._compute_kwargs.<locals>.parse_dataclass": (
        "json (a JSON object validated by pydantic against the config dataclass named in json_model; vLLM first "
        "expands bare human-readable numbers like 80m)"
    ),
    "arg_utils.union_dict_and_str": "json_or_str (a JSON object if the value looks like {...}, else a plain string)",
    "arg_utils.parse_reasoning_parser": "str ('none' in any case means unset)",
    "lambda s: s.lower().replace('-', '_')": "str_normalized (lower-cased and '-' -> '_' before choices are checked)",
    "lambda s: [int(x) if x.isdigit() else x for x in s.split(',')]": "csv (comma-separated list of ints or ids)",
    "boolean actions (store_true, store_false, BooleanOptionalAction)": "bool (the flag takes no value)",
}


# --------------------------------------------------------------------------------------------------------------
# Inside the throwaway venv: build vLLM's parser and dump it.
# --------------------------------------------------------------------------------------------------------------

# The shared helpers under the names this script's tests use.
_first_sentence = shared.first_sentence
_jsonable = shared.jsonable
_stable_repr = shared.stable_repr


# Callables found by identity or by function name (see TYPE_NAMES for what each stable name means).
_PLAIN_TYPES: dict[Any, str] = {None: "str", str: "str", int: "int", float: "float", json.loads: "json"}
_NAMED_TYPES: dict[str, str] = {
    "human_readable_int": "human_readable_int",
    "human_readable_int_or_auto": "human_readable_int_or_auto",
    "union_dict_and_str": "json_or_str",
    "parse_reasoning_parser": "str",
}


def _describe_type(fn: Any) -> dict[str, Any]:
    """Map an argparse `type=` callable to {"type": stable name, "optional": bool, "json_model": str | None}."""
    if fn in _PLAIN_TYPES:
        return {"type": _PLAIN_TYPES[fn], "optional": False, "json_model": None}
    qualname = getattr(fn, "__qualname__", "")
    name = getattr(fn, "__name__", "")
    if qualname == "optional_type.<locals>._optional_type":
        (inner,) = shared.closure_values(fn)
        return {**_describe_type(inner), "optional": True}
    if qualname == "parse_type.<locals>._parse_type":
        (inner,) = shared.closure_values(fn)
        return _describe_type(inner)
    if qualname.endswith("parse_dataclass"):
        defaults = getattr(fn, "__defaults__", None) or ()
        model = defaults[0].__name__ if defaults else None
        return {"type": "json", "optional": False, "json_model": model}
    if name in _NAMED_TYPES:
        return {"type": _NAMED_TYPES[name], "optional": False, "json_model": None}
    if name == "<lambda>":
        source = re.sub(r"\s+", "", inspect.getsource(fn))
        if 's.lower().replace("-","_")' in source:
            return {"type": "str_normalized", "optional": False, "json_model": None}
        if 's.split(",")' in source and "isdigit()" in source:
            return {"type": "csv", "optional": False, "json_model": None}
    raise shared.unmapped_type(fn, Path(__file__).name)


# Options whose argparse default is None but whose engine-side default is a constant in vLLM's code: read that
# constant (dest -> (module, attribute path)) so the schema records it too.
ENGINE_DEFAULTS: dict[str, tuple[str, str]] = {
    "block_size": ("vllm.config.cache", "CacheConfig.DEFAULT_BLOCK_SIZE"),
}


def _engine_default(dest: str) -> Any:
    if dest not in ENGINE_DEFAULTS:
        return None
    module_name, path = ENGINE_DEFAULTS[dest]
    value: Any = importlib.import_module(module_name)
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _parser_facts() -> tuple[argparse.ArgumentParser, str]:
    os.environ["VLLM_TARGET_DEVICE"] = "cpu"  # else vLLM fails with "Failed to infer device type"
    sys.argv = ["vllm", "--help"]  # vLLM only reads attribute docstrings into help texts when it sees --help
    # Imported here, inside the throwaway venv only (the rest of the script needs just the standard library).
    vllm = importlib.import_module("vllm")
    try:  # newer vLLM releases moved FlexibleArgumentParser from vllm.utils into vllm.utils.argparse_utils
        flexible_argument_parser = importlib.import_module("vllm.utils.argparse_utils").FlexibleArgumentParser
    except (ImportError, AttributeError):
        flexible_argument_parser = importlib.import_module("vllm.utils").FlexibleArgumentParser
    make_arg_parser = importlib.import_module("vllm.entrypoints.common.cli_args").make_arg_parser
    parser = make_arg_parser(flexible_argument_parser(prog="vllm serve"))
    return parser, str(vllm.__version__)


def dump(output: Path) -> None:
    """Build vLLM's serve parser in this interpreter and write its raw facts to `output` as JSON."""
    parser, vllm_version = _parser_facts()
    options, positionals = shared.describe_actions(parser, _describe_type, _engine_default)
    shared.write_facts(output, "vllm", vllm_version, options, positionals)


# --------------------------------------------------------------------------------------------------------------
# Outside: the throwaway venv and the checked-in file.
# --------------------------------------------------------------------------------------------------------------

ENGINE = shared.Engine(
    dist="vllm",
    version=VLLM_VERSION,
    torch_version=TORCH_VERSION,
    import_deps=IMPORT_DEPS,
    import_deps_no_deps=IMPORT_DEPS_NO_DEPS,
    script=Path(__file__),
    output=ROOT / "infra" / "render" / "data" / f"vllm-{VLLM_VERSION}-flags.json",
    dump_env={"VLLM_TARGET_DEVICE": "cpu"},
)


def build_document(facts: dict[str, Any], generated: str) -> dict[str, Any]:
    header = {
        "generator": "scripts/vllm_flag_schema.py",
        "generated": generated,
        "vllm_version": facts["vllm_version"],
        "torch_version": facts["torch_version"],
        "python_version": facts["python_version"],
        "source": f"vllm=={facts['vllm_version']} wheel, --no-deps, no GPU",
        "parser": 'vllm.entrypoints.common.cli_args.make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))',
        "environment": {"VLLM_TARGET_DEVICE": "cpu", "sys.argv": ["vllm", "--help"]},
        "option_count": len(facts["options"]),
        "type_names": TYPE_NAMES,
        "notes": [
            "options are sorted by name, the first long option string without '--'",
            "negative_option_strings set a boolean pair to false; hidden_option_strings are accepted, not shown",
            "optional: the value 'None' (or '') means None; choices then include null",
            "default_repr is set (and default null) when the default has no faithful JSON form",
            "defaults are argparse's: None often means 'resolved at engine start' (model, GPU, platform)",
            "engine_default: the constant vLLM uses when the argparse default None reaches the engine",
            "known_values: vLLM's metavar list for Literal-or-str fields; the parser takes any string, the engine "
            "may reject unknown ones (kv-cache-dtype does, when the engine config is built)",
            "deprecated: from the parser's deprecated= or the help text ('is deprecated', 'will be removed', "
            "'has been replaced by'); deprecation quotes that sentence",
            "help is the first sentence of the help text",
        ],
    }
    return {"schema": header, "options": facts["options"], "positionals": facts["positionals"]}


def main(argv: list[str] | None = None) -> int:
    return shared.main(ENGINE, __doc__.split("\n\n", 1)[0], dump, build_document, argv)


if __name__ == "__main__":
    sys.exit(main())
