#!/usr/bin/env python3
"""Regenerate the checked-in `sglang serve` flag schema of the pinned SGLang version from its published wheel.

No GPU is needed. The script does for SGLang what scripts/vllm_flag_schema.py does for vLLM, with the code they
share in scripts/argparse_schema.py:

1. creates a throwaway venv (in a temporary directory, or `--venv DIR` to create/reuse one there);
2. `pip download --no-deps sglang==SGLANG_VERSION` and installs that wheel with `--no-deps`;
3. installs `torch==TORCH_VERSION` (the wheel's own pin; on the project's machines pip finds it, its CUDA
   libraries and triton on local disk by name) and the small dependencies SGLang imports while it builds its
   argument parser (IMPORT_DEPS below), constrained by the version pins in the wheel's own metadata;
4. runs itself inside that venv with `--dump` (PYTHONHASHSEED=0, every SGLANG_* and SGL_* variable removed: one
   of them adds a choice), builds the parser the way `sglang serve` and `python -m sglang.launch_server` do
   (`sglang.srt.server_args.prepare_server_args`: `ServerArgs.add_cli_args(argparse.ArgumentParser(prog="sglang
   serve"))`) and dumps every action like the vLLM script: dest, option strings, kind, type (mapped to a stable
   name, see TYPE_NAMES), nargs, const, default, engine default, choices, metavar, group, deprecation and the
   first sentence of the help text;
5. writes infra/render/data/sglang-SGLANG_VERSION-flags.json: a header and the options sorted by name, in the
   structure of the vLLM file, so infra/render/vllm_flags.py's `parse_schema` reads it.

The output is deterministic: re-running with the same versions gives the same bytes (the header's `generated`
date is kept from the existing file when nothing else changed). `--check` exits 1 when the checked-in file is
stale and writes nothing.

Usage:
    python scripts/sglang_flag_schema.py [--venv DIR] [--output PATH] [--python PYTHON] [--check]

It took 1.4 minutes here from an empty venv and 2.0 GB of disk (torch 2.13.0's CPU build lies on local disk;
the sglang wheel, triton and the small dependencies come from the package index). With sglang 0.5.23 (torch
2.14.1, a CUDA build whose nvidia-* libraries `import torch` needs even without a GPU) it was 2.2 minutes and
6 GB. The script itself needs only the standard library and scripts/argparse_schema.py, so any
Python >= 3.11 can run it; `--python` picks the interpreter of the venv (the checked-in file was made with
Python 3.11; sglang 0.5.21 requires >= 3.11).
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any

_SCRIPTS = str(Path(__file__).resolve().parent)
if _SCRIPTS not in sys.path:  # run by path it is there already; tests load this file by its path
    sys.path.insert(0, _SCRIPTS)
import argparse_schema as shared  # noqa: E402  (what both flag-schema generators share)

ROOT = shared.ROOT

# 0.5.21, not the newest wheel (0.5.23): the newest release whose lmsysorg/sglang image tag is on record
# (infra/catalog/data/engines.yaml pins that image; the flags must be the image's).
SGLANG_VERSION = "0.5.21"
# sglang 0.5.21 pins torch==2.13.0. Unlike vLLM's parser, SGLang's imports torch, torch.distributed and triton at
# module level (sglang.srt.utils.common), so no stub stands in for them.
TORCH_VERSION = "2.13.0"
# torch 2.13.0 is taken from local disk as its CPU build, which does not bring triton; SGLang imports triton at
# module level. 3.7.1 is the triton of torch 2.13's CUDA build (the lmsysorg/sglang v0.5.20/v0.5.21 images ship
# PyTorch 2.13.0+cu130 with Triton 3.7.1).
TRITON_CONSTRAINT = "triton==3.7.1"

# What `import sglang.srt.server_args` and `ServerArgs.add_cli_args` need besides torch, found by rounds of
# "import, read the ModuleNotFoundError, install" against sglang 0.5.23 + torch 2.14.1 on Python 3.11, the same for
# 0.5.21 + torch 2.13.0 but for triton, which the CPU build of torch does not bring (the
# missing module in brackets where it differs from the distribution name). sglang/__init__.py imports its
# frontend language (IPython, aiohttp, tqdm, ...); sglang.srt.utils.common the server's helpers. They are
# installed with their own dependencies, constrained by the SGLang wheel's Requires-Dist pins for these names.
IMPORT_DEPS: tuple[str, ...] = (
    "msgspec",
    "numpy",
    "orjson",
    "psutil",
    "pybase64",
    "requests",
    "packaging",
    "pillow",  # [PIL]
    "starlette",  # not pinned by the wheel: fastapi brings it in a full install
    "pydantic",  # brings pydantic_core
    "pyzmq",  # [zmq]
    "tqdm",
    "ipython",  # [IPython]
    "aiohttp",
    "triton",  # see TRITON_CONSTRAINT
)

# How the parser's `type=` callables are named in the schema (stable names the validator understands).
# SGLang derives most options from ServerArgs' annotated fields (sglang.srt.arg_groups.arg_utils): str, int and
# float by the annotation, bool -> store_true, Literal[...] -> choices, list[X] -> nargs; `Arg(type_parser=...)`
# names the rest.
TYPE_NAMES: dict[str, str] = {
    "None (no type=, value kept as a string)": "str",
    "str": "str",
    "int": "int",
    "float": "float",
    "sglang.srt.utils.common.human_readable_int": (
        "human_readable_int_si_iec (int, or SI 1k = 1000, 25.6k = 25600, 1M = 1000000; k M G T; or IEC 128Ki = "
        "131072, 1Mi = 1048576, integers only; Ki Mi Gi Ti; case-sensitive: 4K and 1m are errors)"
    ),
    "sglang.srt.utils.common.nullable_str": "str, with optional: true ('' and 'None' mean None)",
    "json.loads": "json (any JSON document)",
    "sglang.srt.utils.common.json_list_type": (
        "json (any JSON document, parsed with orjson, which also rejects NaN and Infinity; these flags take a list)"
    ),
    "sglang.srt.model_executor.cuda_graph_config.parse_cuda_graph_config_arg": (
        "json_object (a JSON object; SGLang also checks its keys, phases such as decode and prefill, each a JSON "
        "object of that phase's settings)"
    ),
    "sglang.srt.model_executor.cuda_graph_config.parse_cuda_graph_backend_arg": (
        "str (it rejects the removed 'tc_piecewise', which the choices leave out as well)"
    ),
    "boolean actions (store_true, BooleanOptionalAction, SGLang's DeprecatedStoreTrueAction)": (
        "bool (the flag takes no value)"
    ),
}

# SGLang 0.5.21 and 0.5.23 mark a deprecated option by a help text that starts "Deprecated. Use X instead." or
# "(Deprecated: use X) ...", and retires flags with actions named Deprecated*Action. Not by vLLM's phrases: "is
# deprecated" also appears in help that deprecates one use of another flag (unified-cache-external-linker-config).
DEPRECATION = re.compile(r"^\(?deprecated\b", re.IGNORECASE)


# --------------------------------------------------------------------------------------------------------------
# Inside the throwaway venv: build SGLang's parser and dump it.
# --------------------------------------------------------------------------------------------------------------

_TYPE_BY_NAME: dict[str, dict[str, Any]] = {
    "sglang.srt.utils.common.human_readable_int": {"type": "human_readable_int_si_iec"},
    "sglang.srt.utils.common.nullable_str": {"type": "str", "optional": True},
    "sglang.srt.utils.common.json_list_type": {"type": "json"},
    "sglang.srt.model_executor.cuda_graph_config.parse_cuda_graph_config_arg": {"type": "json_object"},
    "sglang.srt.model_executor.cuda_graph_config.parse_cuda_graph_backend_arg": {"type": "str"},
}


def _describe_type(fn: Any) -> dict[str, Any]:
    """Map an argparse `type=` callable to {"type": stable name, "optional": bool, "json_model": None}."""
    plain = {None: "str", str: "str", int: "int", float: "float", json.loads: "json"}
    if fn in plain:
        return {"type": plain[fn], "optional": False, "json_model": None}
    named = _TYPE_BY_NAME.get(shared.qualname(fn))
    if named is not None:
        return {"optional": False, "json_model": None, **named}
    raise shared.unmapped_type(fn, Path(__file__).name)


def _engine_defaults() -> dict[str, Any]:
    """SGLang's declared fallbacks: `Arg(fallback=...)` of fields whose argparse default is None.

    sglang.srt.arg_groups.arg_utils documents a fallback as the scalar used "when neither resolution nor input
    supplies a value"; every other None is resolved at start (from the model, the GPU, the other flags).
    """
    server_args = importlib.import_module("sglang.srt.server_args")
    fallbacks_of = importlib.import_module("sglang.srt.arg_groups.arg_utils").fallbacks_of
    return dict(fallbacks_of(server_args.ServerArgs))


def _parser_facts() -> tuple[argparse.ArgumentParser, str]:
    # Imported here, inside the throwaway venv only (the rest of the script needs just the standard library).
    server_args = importlib.import_module("sglang.srt.server_args")
    parser = argparse.ArgumentParser(prog="sglang serve")  # as sglang.srt.server_args.prepare_server_args does
    server_args.ServerArgs.add_cli_args(parser)
    return parser, str(importlib.import_module("sglang").__version__)


def dump(output: Path) -> None:
    """Build SGLang's server parser in this interpreter and write its raw facts to `output` as JSON."""
    parser, sglang_version = _parser_facts()
    defaults = _engine_defaults()
    options, positionals = shared.describe_actions(parser, _describe_type, defaults.get, DEPRECATION)
    shared.write_facts(output, "sglang", sglang_version, options, positionals)


# --------------------------------------------------------------------------------------------------------------
# Outside: the throwaway venv and the checked-in file.
# --------------------------------------------------------------------------------------------------------------

ENGINE = shared.Engine(
    dist="sglang",
    version=SGLANG_VERSION,
    torch_version=TORCH_VERSION,
    import_deps=IMPORT_DEPS,
    import_deps_no_deps=(),
    script=Path(__file__),
    output=ROOT / "infra" / "render" / "data" / f"sglang-{SGLANG_VERSION}-flags.json",
    dump_env={},
    drop_env_prefixes=("SGLANG_", "SGL_"),
    extra_constraints=(TRITON_CONSTRAINT,),
)


def build_document(facts: dict[str, Any], generated: str) -> dict[str, Any]:
    header = {
        "generator": "scripts/sglang_flag_schema.py",
        "generated": generated,
        "sglang_version": facts["sglang_version"],
        "torch_version": facts["torch_version"],
        "python_version": facts["python_version"],
        "source": f"sglang=={facts['sglang_version']} wheel, --no-deps, no GPU",
        "parser": 'sglang.srt.server_args.ServerArgs.add_cli_args(argparse.ArgumentParser(prog="sglang serve"))',
        "launcher": (
            "sglang serve MODEL_PATH [options] (the positional becomes --model-path), or python -m "
            "sglang.launch_server --model-path MODEL_PATH [options]"
        ),
        "environment": {"PYTHONHASHSEED": "0", "unset": ["SGLANG_*", "SGL_*"]},
        "option_count": len(facts["options"]),
        "type_names": TYPE_NAMES,
        "notes": [
            "options are sorted by name, the first long option string without '--'",
            "negative_option_strings set a boolean pair to false; hidden_option_strings are accepted, not shown",
            "optional: the value 'None' (or '') means None",
            "default_repr is set (and default null) when the default has no faithful JSON form",
            "defaults are argparse's: None often means 'resolved at engine start' (model, GPU, other flags)",
            "engine_default: the fallback SGLang declares (Arg(fallback=...)) for when neither its resolution nor "
            "the input supplies a value; null where it declares none",
            "kind store_true also covers SGLang's DeprecatedStoreTrueAction (named in action): no value, stores "
            "true over a false default",
            "deprecated: from the action (Deprecated*Action) or a help sentence that starts with 'Deprecated' or "
            "'(Deprecated'; deprecation quotes that sentence (and the next one after a bare 'Deprecated.')",
            "help is the first sentence of the help text",
        ],
    }
    return {"schema": header, "options": facts["options"], "positionals": facts["positionals"]}


def main(argv: list[str] | None = None) -> int:
    return shared.main(ENGINE, __doc__.split("\n\n", 1)[0], dump, build_document, argv)


if __name__ == "__main__":
    sys.exit(main())
