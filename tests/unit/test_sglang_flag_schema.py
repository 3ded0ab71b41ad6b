"""The checked-in SGLang 0.5.21 flag schema, read and checked by infra/render/vllm_flags.py (no SGLang needed)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import ModuleType

import pytest

from infra.catalog import load_catalog
from infra.render import vllm_flags
from infra.render.vllm_flags import (
    FlagProblem,
    FlagSchema,
    human_readable_int_si_iec,
    parse_schema,
    to_cli_args,
    validate_engine_args,
)
from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = ROOT / "infra" / "render" / "data" / "sglang-0.5.21-flags.json"
VLLM_SCHEMA_PATH = ROOT / "infra" / "render" / "data" / "vllm-0.33.0-flags.json"


@pytest.fixture(scope="module")
def document() -> dict[str, object]:
    loaded: dict[str, object] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def schema(document: dict[str, object]) -> FlagSchema:
    return parse_schema(document)


def _raw(document: dict[str, object], name: str) -> dict[str, object]:
    """An option as the file records it (FlagSpec leaves out `action` and `required`)."""
    options = document["options"]
    assert isinstance(options, list)
    return next(option for option in options if option["name"] == name)


def _one(schema: FlagSchema, args: dict[str, object]) -> FlagProblem:
    problems = validate_engine_args(args, schema)
    assert len(problems) == 1, problems
    return problems[0]


# --- the schema -------------------------------------------------------------------------------------------------


def test_schema_header_names_the_pinned_sglang(schema: FlagSchema) -> None:
    header = schema.header
    # The version of the image infra/catalog/data/engines.yaml pins.
    assert header["sglang_version"] == load_catalog().engines["sglang"].version == schema.version == "0.5.21"
    assert schema.command == "sglang serve"
    assert header["generator"] == "scripts/sglang_flag_schema.py"
    assert (ROOT / header["generator"]).is_file()
    assert header["torch_version"].startswith("2.13.0")  # sglang 0.5.21's own pin
    assert header["python_version"].startswith("3.")
    assert header["generated"]
    assert "ServerArgs.add_cli_args" in header["parser"]




def test_schema_has_the_structure_of_the_vllm_schema(document: dict[str, object], schema: FlagSchema) -> None:
    vllm_document = json.loads(VLLM_SCHEMA_PATH.read_text(encoding="utf-8"))
    assert list(document) == list(vllm_document)  # schema, options, positionals
    option_keys = list(vllm_document["options"][0])
    options = document["options"]
    assert isinstance(options, list)
    assert all(list(option) == option_keys for option in options)
    assert document["positionals"] == []  # the model is --model-path
    assert len(schema.options) == 512  # every action of the parser but --help


def test_every_type_is_named_in_the_header_and_known_to_the_validator(document: dict[str, object]) -> None:
    header = document["schema"]
    assert isinstance(header, dict)
    documented = {description.split(" ", 1)[0].rstrip(",") for description in header["type_names"].values()}
    options = document["options"]
    assert isinstance(options, list)
    used = {option["type"] for option in options}
    assert used <= documented
    assert used <= set(vllm_flags._TYPE_WORDS)  # each has a converter and words for hints


# The flags gpufleet renders for an SGLang replica: (name, kind, type).
RENDERED_FLAGS = [
    ("host", "store", "str"),
    ("port", "store", "int"),
    ("model-path", "store", "str"),
    ("served-model-name", "store", "str"),
    ("tp-size", "store", "int"),
    ("context-length", "store", "human_readable_int_si_iec"),
    ("max-running-requests", "store", "int"),
    ("chunked-prefill-size", "store", "int"),
    ("max-prefill-tokens", "store", "human_readable_int_si_iec"),
    ("mem-fraction-static", "store", "float"),
    ("quantization", "store", "str"),
    ("dtype", "store", "str"),
    ("kv-cache-dtype", "store", "str"),
    ("api-key", "store", "str"),
    ("enable-metrics", "store_true", "bool"),
    ("revision", "store", "str"),
    ("trust-remote-code", "store_true", "bool"),
]


@pytest.mark.parametrize(("name", "kind", "type_name"), RENDERED_FLAGS)
def test_rendered_flags_exist(schema: FlagSchema, name: str, kind: str, type_name: str) -> None:
    spec = schema.spec(name)
    assert (spec.name, spec.kind, spec.type) == (name, kind, type_name)
    assert not spec.deprecated
    assert spec.nargs == (0 if kind == "store_true" else None)  # one value each, or none


def test_schema_holds_the_reference_facts(document: dict[str, object], schema: FlagSchema) -> None:
    assert (schema.spec("host").default, schema.spec("port").default) == ("127.0.0.1", 30000)
    assert schema.spec("model").name == "model-path"  # --model is an alias
    assert _raw(document, "model-path")["required"] is True
    assert schema.spec("tensor-parallel-size").name == "tp-size"
    assert schema.spec("tp-size").default == 1
    assert schema.spec("max-prefill-tokens").default == 16384
    # None: resolved at start from the model and the GPU.
    for name in ("context-length", "mem-fraction-static", "chunked-prefill-size", "max-running-requests"):
        assert schema.spec(name).default is None
    quantization = schema.spec("quantization").choices
    assert quantization is not None
    assert {"awq", "fp8", "gptq"} <= set(quantization)
    assert schema.spec("dtype").choices == ("auto", "half", "float16", "bfloat16", "float", "float32")
    kv_dtypes = schema.spec("kv-cache-dtype").choices
    assert kv_dtypes is not None
    assert {"auto", "fp8_e4m3", "fp8_e5m2"} <= set(kv_dtypes)
    assert "fp8" not in kv_dtypes  # unlike vLLM
    assert schema.spec("quantization-param-path").optional  # nullable_str: '' and 'None' mean None
    assert schema.spec("cuda-graph-config").type == "json_object"
    # Arg(fallback=...) of a field whose argparse default is None.
    assert (schema.spec("swa-full-tokens-ratio").default, schema.spec("swa-full-tokens-ratio").engine_default) == (
        None,
        0.8,
    )


def test_boolean_pairs_and_deprecated_flags(document: dict[str, object], schema: FlagSchema) -> None:
    strict = schema.spec("lora-strict-loading")
    assert strict.kind == "BooleanOptionalAction"
    assert strict.negative_option_strings == ("--no-lora-strict-loading",)
    disable_graph = schema.spec("disable-cuda-graph")
    assert (disable_graph.kind, disable_graph.type, disable_graph.deprecated) == ("store_true", "bool", True)
    assert _raw(document, "disable-cuda-graph")["action"] == "DeprecatedStoreTrueAction"
    assert disable_graph.deprecation == "Deprecated. Use --cuda-graph-backend-{decode,prefill}=disabled instead."
    deprecated = {name for name, spec in schema.options.items() if spec.deprecated}
    assert deprecated == {
        "disable-cuda-graph",
        "disable-fast-image-processor",
        "enable-flashinfer-allreduce-fusion",
        "grpc-mode",
    }


# --- SGLang's human-readable integers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("32k", 32_000),
        ("128Ki", 131_072),
        ("25.6k", 25_600),
        ("1M", 1_000_000),
        ("1Mi", 2**20),
        ("2G", 2 * 10**9),
        ("1Ti", 2**40),
        (" 512 ", 512),
        ("-1", -1),
    ],
)
def test_human_readable_int_si_iec_matches_sglang(text: str, value: int) -> None:
    assert human_readable_int_si_iec(text) == value


@pytest.mark.parametrize("text", ["32K", "1m", "1.5Ki", "1e3", "lots"])
def test_human_readable_int_si_iec_rejects_what_sglang_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        human_readable_int_si_iec(text)


# --- validate_engine_args with the SGLang schema -------------------------------------------------------------------

TYPICAL: dict[str, object] = {
    "host": "0.0.0.0",
    "port": 30000,
    "model-path": "/models/llama-3.1-8b-instruct",
    "served-model-name": "support-chat",
    "tp-size": 2,
    "context-length": "32k",
    "max-running-requests": 256,
    "chunked-prefill-size": 8192,
    "max-prefill-tokens": "16Ki",
    "mem-fraction-static": 0.88,
    "quantization": "fp8",
    "dtype": "bfloat16",
    "kv-cache-dtype": "fp8_e4m3",
    "api-key": "change-me",
    "enable-metrics": True,
    "revision": "0e9e39f249a16976918f6564b8830bc894c89659",
    "trust-remote-code": True,
}


@pytest.mark.parametrize(
    "args",
    [
        TYPICAL,
        {"context-length": 131072},
        {"context-length": "128Ki"},
        {"tensor-parallel-size": 4},  # the long alias
        {"quantization": "awq", "enable-metrics": False},  # store_true: false leaves the default
        {"quantization-param-path": None},  # optional: null means None
        {"lora-strict-loading": False},  # --no-lora-strict-loading
        {"cuda-graph-config": {"decode": {"backend": "full"}}},
    ],
)
def test_valid_arguments_pass(schema: FlagSchema, args: dict[str, object]) -> None:
    assert validate_engine_args(args, schema) == []


def test_unknown_flag(schema: FlagSchema) -> None:
    problem = _one(schema, {"max-num-seqs": 256})  # vLLM's name; SGLang's is max-running-requests
    assert problem.severity == "error"
    assert "unknown flag" in problem.message
    assert "sglang serve 0.5.21 has no --max-num-seqs" in problem.message
    assert _one(schema, {"mem-fraction-statc": 0.9}).hint == "did you mean 'mem-fraction-static'?"


@pytest.mark.parametrize(
    ("args", "message", "hint"),
    [
        ({"quantization": "fp4"}, "'fp4' is not an allowed value", "did you mean 'mxfp4'?"),
        ({"dtype": "bf16"}, "'bf16' is not an allowed value", "one of: auto, half, float16, bfloat16"),
        ({"kv-cache-dtype": "fp8"}, "'fp8' is not an allowed value", "fp8_e4m3"),
    ],
)
def test_bad_choice(schema: FlagSchema, args: dict[str, object], message: str, hint: str) -> None:
    problem = _one(schema, args)
    assert message in problem.message
    assert hint in problem.hint


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"context-length": "32K"}, "'32K' is not an integer"),  # SI k is lower case; 32Ki is binary
        ({"context-length": "1.5Ki"}, "decimal with the IEC suffix Ki"),
        ({"tp-size": "two"}, "'two' is not an integer"),
        ({"mem-fraction-static": "most"}, "'most' is not a number"),
        ({"cuda-graph-config": "[1]"}, "is not a JSON object"),
        ({"enable-metrics": "yes"}, "--enable-metrics takes no value"),
    ],
)
def test_wrong_type(schema: FlagSchema, args: dict[str, object], message: str) -> None:
    assert message in _one(schema, args).message


def test_deprecated_flag_is_a_warning(schema: FlagSchema) -> None:
    problem = _one(schema, {"disable-cuda-graph": True})
    assert problem.severity == "warning"
    assert problem.hint.startswith("Deprecated. Use --cuda-graph-backend-")


def test_to_cli_args_with_the_sglang_schema(schema: FlagSchema) -> None:
    args = {"tp-size": 2, "context-length": "32k", "enable-metrics": True, "cuda-graph-config": {"decode": {}}}
    assert to_cli_args(args, schema) == [
        "--context-length",
        "32k",
        "--cuda-graph-config",
        '{"decode": {}}',
        "--enable-metrics",
        "--tp-size",
        "2",
    ]


# --- the generator's pure helpers (SGLang itself is needed only inside its throwaway venv) -------------------------


def _script() -> ModuleType:
    return load_script("sglang_flag_schema")


def nullable_str(val: str) -> str | None:  # the shape of sglang.srt.utils.common.nullable_str
    return None if not val or val == "None" else val


nullable_str.__module__ = "sglang.srt.utils.common"


def test_script_maps_parser_types_to_stable_names() -> None:
    script = _script()
    assert script._describe_type(None) == {"type": "str", "optional": False, "json_model": None}
    assert script._describe_type(int)["type"] == "int"
    assert script._describe_type(json.loads)["type"] == "json"
    assert script._describe_type(nullable_str) == {"type": "str", "optional": True, "json_model": None}
    with pytest.raises(SystemExit, match="unmapped argparse type"):
        script._describe_type(lambda s: s[::-1])


def test_shared_helpers_for_sglang_actions() -> None:
    script = _script()
    shared, pattern = script.shared, script.DEPRECATION
    assert shared.deprecation("Deprecated. Use --b instead. More.", pattern) == "Deprecated. Use --b instead."
    assert shared.deprecation("(Deprecated, use --b) Old selector.", pattern) == "(Deprecated, use --b) Old selector."
    # Deprecating one use of another flag does not deprecate this one.
    assert shared.deprecation("JSON config. The fallback to that flag is deprecated.", pattern) is None

    class DeprecatedStoreTrueAction(argparse.Action):  # the shape of SGLang's
        def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
            super().__init__(option_strings, dest, nargs=0, const=True, default=False, help="Deprecated. Use --b.")

        def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                     option_string: str | None = None) -> None:
            setattr(namespace, self.dest, True)  # stores true, as SGLang's does (after warning)

    parser = argparse.ArgumentParser()
    parser.add_argument("--old", action=DeprecatedStoreTrueAction)
    parser.add_argument("--size", type=int, choices={3, 1, 2})
    options, positionals = shared.describe_actions(parser, script._describe_type)
    assert positionals == []
    old, size = options
    assert (old["kind"], old["action"], old["type"], old["deprecated"]) == (
        "store_true",
        "DeprecatedStoreTrueAction",
        "bool",
        True,
    )
    assert size["choices"] == [1, 2, 3]  # a set's choices are sorted
    assert parser.parse_args(["--old"]).old is True and parser.parse_args([]).old is False
