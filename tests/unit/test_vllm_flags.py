"""The checked-in vLLM 0.33.0 flag schema and the engine-argument checks built on it (no vLLM needed)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from infra.render import vllm_flags
from infra.render.vllm_flags import (
    EngineArgsError,
    FlagProblem,
    flag_default,
    flag_spec,
    human_readable_int,
    load_schema,
    to_cli_args,
    validate_engine_args,
)
from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = ROOT / "infra" / "render" / "data" / "vllm-0.33.0-flags.json"


def _one(args: dict[str, object]) -> FlagProblem:
    problems = validate_engine_args(args)
    assert len(problems) == 1, problems
    return problems[0]


# --- the schema -------------------------------------------------------------------------------------------------


def test_schema_header_names_the_pinned_vllm_version() -> None:
    header = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))["schema"]
    assert header["vllm_version"] == "0.33.0" == vllm_flags.VLLM_VERSION
    assert header["generator"] == "scripts/vllm_flag_schema.py"
    assert (ROOT / header["generator"]).is_file()
    assert header["torch_version"].startswith("2.13.0")
    assert header["python_version"].startswith("3.")
    assert header["generated"]




def test_schema_loads_as_package_data_with_every_option() -> None:
    schema = load_schema()
    assert (schema.command, schema.version) == ("vllm serve", "0.33.0")
    assert len(schema.options) == 320  # reference/vllm.md: 320 options + the positional model
    positionals = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))["positionals"]
    assert [p["dest"] for p in positionals] == ["model_tag"]


def test_schema_holds_the_reference_facts() -> None:
    gpu_util = flag_spec("gpu-memory-utilization")
    assert (gpu_util.type, gpu_util.default) == ("float", 0.92)  # 0.9 before 0.33
    assert flag_default("max-num-seqs") is None
    assert flag_default("max-num-batched-tokens") is None
    assert flag_spec("max-num-batched-tokens").type == "human_readable_int"
    assert flag_spec("max-model-len").type == "human_readable_int_or_auto"
    # argparse says None; the engine then uses CacheConfig.DEFAULT_BLOCK_SIZE (16) unless a backend wants another.
    assert flag_default("block-size") is None
    assert flag_spec("block-size").engine_default == 16
    assert "swap-space" not in load_schema().options
    assert flag_spec("max-lora-rank").choices == (1, 8, 16, 32, 64, 128, 256, 320, 512)
    assert flag_spec("dtype").choices == ("auto", "bfloat16", "float", "float16", "float32", "half")
    kv_dtypes = flag_spec("kv-cache-dtype").known_values
    assert kv_dtypes is not None
    assert {"auto", "fp8", "fp8_e4m3", "fp8_e5m2"} <= set(kv_dtypes)
    assert flag_spec("kv-cache-dtype").choices is None  # the parser lets any string through
    for name, short in [
        ("tensor-parallel-size", "-tp"),
        ("pipeline-parallel-size", "-pp"),
        ("data-parallel-size", "-dp"),
    ]:
        spec = flag_spec(name)
        assert short in spec.option_strings
        assert (spec.type, spec.default) == ("int", 1)
    assert flag_spec("quantization").optional
    assert "-q" in flag_spec("quantization").option_strings
    assert flag_spec("load-format").choices is None  # so `dummy` is fine
    assert (flag_default("port"), flag_default("host")) == (8000, None)


def test_boolean_pairs_record_their_negative_forms() -> None:
    prefix = flag_spec("enable-prefix-caching")
    assert prefix.kind == "BooleanOptionalAction"
    assert set(prefix.negative_option_strings) == {"--disable-prefix-caching", "--no-enable-prefix-caching"}
    assert prefix.hidden_option_strings == ("--no-enable-prefix-caching",)  # works, not in --help
    # --disable-log-requests is the off form of --enable-log-requests (off already).
    log_requests = flag_spec("disable-log-requests")
    assert log_requests.name == "enable-log-requests"
    assert flag_default("disable-log-requests") is False
    stats = flag_spec("disable-log-stats")
    assert (stats.kind, stats.default) == ("store_true", False)


def test_flag_default_accepts_every_spelling() -> None:
    assert flag_default("max_num_seqs") is None
    assert flag_default("--gpu-memory-utilization") == 0.92
    assert flag_default("-tp") == 1
    with pytest.raises(KeyError, match="swap-space"):
        flag_default("swap-space")


# --- valid arguments --------------------------------------------------------------------------------------------


def _profile_engine_args() -> list[tuple[str, dict[str, object]]]:
    """The engineArgs of the example profiles that run vLLM (other engines' are checked by validate)."""
    found = []
    for path in sorted((ROOT / "stacks" / "models").glob("*.yaml")):
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if document.get("engineArgs") and document.get("engine", "vllm") == "vllm":
            found.append((path.name, document["engineArgs"]))
    return found


@pytest.mark.parametrize(("profile", "engine_args"), _profile_engine_args())
def test_example_profiles_engine_args_pass(profile: str, engine_args: dict[str, object]) -> None:
    assert validate_engine_args(engine_args) == []


def test_the_support_chat_profile_is_among_the_examples() -> None:
    by_name = dict(_profile_engine_args())
    assert by_name["support-chat-8b.yaml"] == {"enable-prefix-caching": True, "max-loras": 4}


TYPICAL: dict[str, object] = {
    "host": "0.0.0.0",
    "port": 8000,
    "served-model-name": "support-chat",
    "tensor-parallel-size": 2,
    "max-model-len": 8192,
    "max-num-seqs": 256,
    "max-num-batched-tokens": "8k",
    "gpu-memory-utilization": 0.92,
    "dtype": "bfloat16",
    "kv-cache-dtype": "fp8",
    "quantization": "fp8",
    "enable-prefix-caching": True,
    "enable-lora": True,
    "lora-modules": ["billing=/models/adapters/billing", "devices=/models/adapters/devices"],
    "max-lora-rank": 16,
    "max-loras": 4,
    "revision": "0e9e39f249a16976918f6564b8830bc894c89659",
    "load-format": "dummy",
}


@pytest.mark.parametrize(
    "args",
    [
        TYPICAL,
        {"max-model-len": "4k"},
        {"max-model-len": "4K"},
        {"max-model-len": "auto"},
        {"max-model-len": -1},
        {"max_num_seqs": 128, "gpu_memory_utilization": 0.9},  # '_' spellings
        {"enable-prefix-caching": False},  # --no-enable-prefix-caching
        {"disable-prefix-caching": True},
        {"no-enable-prefix-caching": True},
        {"disable-log-stats": True, "headless": False},  # store_true: false leaves the default
        {"quantization": None},  # optional: null means None
        {"hf-token": True},  # --hf-token alone: read the token from the Hugging Face login
        {"moe-backend": "Flashinfer-Cutlass"},  # normalised before choices are checked
        {"compilation-config": {"mode": 3, "cudagraph_capture_sizes": [1, 2, 4]}},
        {"compilation-config": '{"mode": 3}'},
        {"compilation-config.mode": 3},
        {"speculative-config": {"method": "ngram", "num_speculative_tokens": 4}},
        {"hf-overrides": {"rope_scaling": {"type": "yarn", "factor": 4.0}}},
        {"served-model-name": ["a", "b"], "cudagraph-capture-sizes": [1, 2, 4, 8]},
        {"lora-modules": ['{"name": "a", "path": "/a", "base_model_name": "m"}']},
        {"middleware": ["my.module.Middleware"]},
        {"api-server-count": 2, "config-format": "hf"},
        {"served-model-name": []},  # an empty list is dropped
    ],
)
def test_valid_arguments_pass(args: dict[str, object]) -> None:
    assert validate_engine_args(args) == []


# --- each problem kind ------------------------------------------------------------------------------------------


def test_unknown_flag_gets_the_closest_name() -> None:
    problem = _one({"gpu-memory-utilisation": 0.9})
    assert problem.flag == "gpu-memory-utilisation"
    assert "unknown flag" in problem.message
    assert "'gpu-memory-utilization'" in problem.hint


def test_removed_flag_is_unknown() -> None:
    problem = _one({"swap-space": 4})
    assert problem.message == "unknown flag: vllm serve 0.33.0 has no --swap-space"
    assert problem.severity == "error"


def test_abbreviation_is_reported_with_the_full_name() -> None:
    problem = _one({"max-num-seq": 128})
    assert "abbreviation of --max-num-seqs" in problem.message
    assert problem.hint == "write 'max-num-seqs'"


def test_short_option_as_key() -> None:
    problem = _one({"tp": 2})
    assert "short option" in problem.message
    assert problem.hint == "write 'tensor-parallel-size'"


def test_leading_dashes_in_key() -> None:
    assert _one({"--port": 8001}).hint == "write 'port'"
    assert _one({"-tp": 2}).hint == "write 'tensor-parallel-size'"


@pytest.mark.parametrize(
    ("args", "message", "hint"),
    [
        ({"max-num-seqs": "lots"}, "'lots' is not an integer", "expected an integer"),
        ({"max-num-seqs": 256.5}, "'256.5' is not an integer", "expected an integer"),
        ({"gpu-memory-utilization": "most"}, "'most' is not a number", "expected a number"),
        ({"max-model-len": "long"}, "'long' is not an integer or 'auto'", "8k = 8000"),
        ({"max-model-len": "4.5K"}, "decimal with the binary suffix K (did you mean 4.5k?)", "8K = 8192"),
        ({"max-num-batched-tokens": "8q"}, "'8q' is not an integer", "human-readable"),
        ({"compilation-config": "{mode: 3"}, "is not valid JSON", "expected JSON"),
        ({"compilation-config": 3}, "is not a JSON object, which CompilationConfig needs", "expected JSON"),
        ({"served-model-name": {"a": 1}}, "a mapping is only allowed for JSON flags", "expected a string"),
        ({"load-format": None}, "null is passed to vLLM as the text 'None'", "leave the key out"),
    ],
)
def test_wrong_type(args: dict[str, object], message: str, hint: str) -> None:
    problem = _one(args)
    assert message in problem.message
    assert hint in problem.hint


@pytest.mark.parametrize(
    ("args", "message", "hint"),
    [
        ({"dtype": "fp4"}, "'fp4' is not an allowed value", "one of: auto, bfloat16, float, float16, float32, half"),
        ({"dtype": "bf16"}, "'bf16' is not an allowed value", "did you mean"),
        ({"max-lora-rank": 24}, "'24' is not an allowed value", "1, 8, 16, 32, 64, 128, 256, 320, 512"),
        ({"kv-cache-dtype": "int3"}, "'int3' is not a value vLLM 0.33.0 knows", "fp8_e4m3"),
        ({"kv-cache-dtype": "fp8-e4m3"}, "is not a value vLLM 0.33.0 knows", "did you mean 'fp8_e4m3'?"),
        ({"moe-backend": "tritonn"}, "is not an allowed value", "did you mean 'triton'?"),
    ],
)
def test_bad_choice(args: dict[str, object], message: str, hint: str) -> None:
    problem = _one(args)
    assert message in problem.message
    assert hint in problem.hint


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"gpu-memory-utilization": True}, "true would pass the flag without its value"),
        ({"max-num-seqs": False}, "false is silently dropped by vLLM"),
        ({"hf-token": False}, "false is silently dropped by vLLM"),
    ],
)
def test_boolean_given_to_a_valued_flag(args: dict[str, object], message: str) -> None:
    problem = _one(args)
    assert "a boolean given to a flag that takes a value" in problem.message
    assert message in problem.message
    assert problem.hint.startswith("expected ")


@pytest.mark.parametrize("value", ["yes", 1, "true", ["x"], {"a": 1}, None])
def test_value_given_to_a_valueless_flag(value: object) -> None:
    problem = _one({"enforce-eager": value})
    assert "--enforce-eager takes no value" in problem.message
    assert problem.hint == "write true or false"


def test_false_dropped_by_the_config_loader() -> None:
    underscore = _one({"enable_prefix_caching": False})
    assert "drops `false` for keys written with '_'" in underscore.message
    assert underscore.hint == "write 'enable-prefix-caching: false'"
    negative = _one({"disable-prefix-caching": False})
    assert "--no-disable-prefix-caching does not exist" in negative.message
    assert negative.hint == "write 'enable-prefix-caching: true'"


def test_lists() -> None:
    assert "takes one value, got a list of 2" in _one({"block-size": [16, 32]}).message
    assert "'x' is not an integer" in _one({"cudagraph-capture-sizes": [1, "x"]}).message
    nested = _one({"lora-modules": [{"name": "a", "path": "/a"}]})
    assert "arrives as Python text" in nested.message


def test_same_option_twice() -> None:
    problem = _one({"enable-prefix-caching": True, "enable_prefix_caching": True})
    assert problem.flag == "enable_prefix_caching"
    assert "same option as 'enable-prefix-caching'" in problem.message
    pair = _one({"enable-prefix-caching": True, "disable-prefix-caching": True})
    assert "same option" in pair.message
    whole_and_dotted = _one({"compilation-config": {"mode": 3}, "compilation-config.cudagraph_mode": "FULL"})
    assert "whole and by dotted keys" in whole_and_dotted.message


def test_dotted_keys_only_for_json_flags() -> None:
    assert "no '.' sub-keys" in _one({"max-model-len.x": 1}).message
    for value in (True, [1, 2], {"a": 1}, None):
        problem = _one({"compilation-config.x": value})
        assert "does not pass" in problem.message
        assert problem.hint == f"write it nested: compilation-config: {{x: {json.dumps(value)}}}"


def test_deprecated_flag_is_a_warning() -> None:
    problem = _one({"mamba-cache-mode": "align"})
    assert problem.severity == "warning"
    assert "deprecated" in problem.message
    assert "--mamba-cache-mode is deprecated" in problem.hint
    assert to_cli_args({"mamba-cache-mode": "align"}) == ["--mamba-cache-mode", "align"]


def test_problems_come_in_input_order_and_read_as_one_line() -> None:
    problems = validate_engine_args({"swap-space": 4, "dtype": "fp4", "max-num-seqs": 64})
    assert [p.flag for p in problems] == ["swap-space", "dtype"]
    assert str(problems[1]).startswith("dtype: 'fp4' is not an allowed value (one of: auto,")


# --- to_cli_args ------------------------------------------------------------------------------------------------


def _parser_from_schema() -> argparse.ArgumentParser:
    """A plain argparse parser shaped like vLLM's from the schema alone: what to_cli_args emits must parse."""
    parser = argparse.ArgumentParser(allow_abbrev=False, exit_on_error=False)
    for spec in load_schema().options.values():
        if spec.kind == "BooleanOptionalAction":
            positive = [o for o in spec.option_strings if o not in spec.negative_option_strings]
            parser.add_argument(*positive, dest=spec.dest, action="store_const", const=True, default=spec.default)
            parser.add_argument(*spec.negative_option_strings, dest=spec.dest, action="store_const", const=False)
        elif spec.kind == "store_true":
            parser.add_argument(*spec.option_strings, dest=spec.dest, action="store_true")
        else:

            def convert(token: str, spec: vllm_flags.FlagSpec = spec) -> Any:
                return vllm_flags._convert(spec, token)

            nargs: Any = spec.nargs
            parser.add_argument(*spec.all_option_strings, dest=spec.dest, type=convert, nargs=nargs, const=spec.const)
    return parser


def test_to_cli_args_is_sorted_and_round_trips() -> None:
    argv = to_cli_args(TYPICAL)
    flags = [a for a in argv if a.startswith("--")]
    assert flags == sorted(flags)
    assert argv[argv.index("--lora-modules") : argv.index("--lora-modules") + 3] == [
        "--lora-modules",
        "billing=/models/adapters/billing",
        "devices=/models/adapters/devices",
    ]
    parsed = vars(_parser_from_schema().parse_args(argv))
    assert parsed["max_num_batched_tokens"] == 8000
    assert parsed["max_model_len"] == 8192
    assert parsed["gpu_memory_utilization"] == 0.92
    assert parsed["enable_prefix_caching"] is True
    assert parsed["enable_lora"] is True
    assert parsed["served_model_name"] == ["support-chat"]
    assert parsed["kv_cache_dtype"] == "fp8"
    assert parsed["max_lora_rank"] == 16


def test_to_cli_args_follows_the_config_file_semantics() -> None:
    args: dict[str, object] = {
        "enable_lora": True,
        "enable-prefix-caching": False,
        "disable-log-stats": True,
        "headless": False,
        "quantization": None,
        "max-model-len": "4K",
        "served-model-name": ["a", "b"],
        "compilation-config": {"mode": 3, "cudagraph_capture_sizes": [1, 2]},
        "speculative-config.num_speculative_tokens": 3,
        "kv-cache-dtype-skip-layers": [],
    }
    argv = to_cli_args(args)
    assert argv == [
        "--compilation-config",
        '{"cudagraph_capture_sizes": [1, 2], "mode": 3}',
        "--disable-log-stats",
        "--enable-lora",
        "--no-enable-prefix-caching",
        "--max-model-len",
        "4K",
        "--quantization",
        "None",
        "--served-model-name",
        "a",
        "b",
        "--speculative-config.num_speculative_tokens",
        "3",
    ]
    parsed = vars(_parser_from_schema().parse_args([a for a in argv if not a.startswith("--speculative-config.")]))
    assert parsed["enable_prefix_caching"] is False
    assert parsed["max_model_len"] == 4096
    assert parsed["quantization"] is None
    assert parsed["compilation_config"] == {"mode": 3, "cudagraph_capture_sizes": [1, 2]}
    assert parsed["disable_log_stats"] is True
    assert parsed["headless"] is False


def test_to_cli_args_is_deterministic() -> None:
    reordered = dict(reversed(list(TYPICAL.items())))
    assert to_cli_args(reordered) == to_cli_args(TYPICAL)
    assert to_cli_args({}) == []


def test_to_cli_args_refuses_invalid_arguments() -> None:
    with pytest.raises(EngineArgsError) as raised:
        to_cli_args({"swap-space": 4, "dtype": "fp4", "max-num-seqs": 8})
    assert [p.flag for p in raised.value.problems] == ["swap-space", "dtype"]
    assert "swap-space: unknown flag" in str(raised.value)


@pytest.mark.parametrize(
    ("text", "value"),
    [("4k", 4000), ("4K", 4096), ("25.6k", 25600), ("2M", 2 * 2**20), ("1g", 10**9), (" 512 ", 512), ("-1", -1)],
)
def test_human_readable_int_matches_vllm(text: str, value: int) -> None:
    assert human_readable_int(text) == value


# --- the generator's pure helpers (the script itself needs vLLM only inside its throwaway venv) -------------------


def _script() -> ModuleType:
    return load_script("vllm_flag_schema")


def optional_type(return_type: Any) -> Any:  # the shape of vllm.engine.arg_utils.optional_type
    def _optional_type(val: str) -> Any:
        return None if val in ("", "None") else return_type(val)

    return _optional_type


def human_readable_int_or_auto(value: str) -> int:  # named like vLLM's
    return -1 if value == "auto" else int(value)


def test_script_maps_parser_types_to_stable_names() -> None:
    script = _script()
    assert script._describe_type(None)["type"] == "str"
    assert script._describe_type(optional_type(int)) == {"type": "int", "optional": True, "json_model": None}
    assert script._describe_type(optional_type(json.loads))["type"] == "json"
    assert script._describe_type(human_readable_int_or_auto)["type"] == "human_readable_int_or_auto"
    with pytest.raises(SystemExit, match="unmapped argparse type"):
        script._describe_type(lambda s: s[::-1])


def test_script_help_and_default_helpers() -> None:
    script = _script()
    assert script._first_sentence("Max LoRA rank. Larger ranks use more memory.") == "Max LoRA rank."
    assert script._first_sentence("Use e.g. fp8 here. Second.") == "Use e.g. fp8 here."
    assert script._first_sentence("100%% of\nmemory.\n\nMore.") == "100% of memory."
    assert script._jsonable((1, 2)) == (True, [1, 2])
    assert script._jsonable({"b", "a"}) == (True, ["a", "b"])
    assert script._jsonable(object())[0] is False
    assert script._stable_repr(object()).startswith("<object object")
    assert " at 0x" not in script._stable_repr(object())
