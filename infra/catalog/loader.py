"""Load the data catalogs in ``infra/catalog/data/`` into typed, cross-checked records.

The catalog ships inside the package and is read with ``importlib.resources``, so it works from a wheel,
an editable install or a zip. A catalog that does not validate is a bug in this repository, not bad user
input: loading raises :class:`CatalogError` naming the file and the record key, and nothing is cached.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Literal, TypeVar

import yaml
from pydantic import ValidationError

from infra.catalog.schema import CatalogLlm, CatalogModel, Gpu, InferenceEngine, InstanceType, QuantizationMethod

CatalogKind = Literal["gpu", "instance", "model", "quantization", "engine"]

RecordT = TypeVar("RecordT", bound=CatalogModel)

DATA_PACKAGE = "infra.catalog"
DATA_DIRECTORY = "data"

EXTENSION_KEY_PREFIX = "x-"
"""Top-level keys starting with this hold YAML anchors shared by records (e.g. a price source)."""

HINT_CUTOFF = 0.6
"""difflib similarity below which ``closest`` offers no hint rather than a misleading one."""


class CatalogError(Exception):
    """A catalog file is malformed or inconsistent: a bug in this repository's data, not user input."""


@dataclass(frozen=True, eq=False)  # eq=False keeps identity hashing: the cached Catalog can key caches.
class Catalog:
    gpus: dict[str, Gpu]
    instances: dict[str, InstanceType]
    models: dict[str, CatalogLlm]
    quantization: dict[str, QuantizationMethod]
    engines: dict[str, InferenceEngine]
    _gpu_names_by_lowercase: dict[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # A frozen dataclass may only set its derived fields through object.__setattr__.
        object.__setattr__(self, "_gpu_names_by_lowercase", gpu_name_index(self.gpus))

    def gpu(self, name: str) -> Gpu | None:
        """The GPU called ``name`` or one of its aliases, compared case-insensitively; None if unknown."""
        canonical = self._gpu_names_by_lowercase.get(name.strip().lower())
        return self.gpus[canonical] if canonical is not None else None

    def instances_for_gpu(self, gpu_name: str) -> list[InstanceType]:
        """Instance types carrying that GPU (name or alias), fewest GPUs first, then smallest host."""
        gpu = self.gpu(gpu_name)
        if gpu is None:
            return []
        matching = [instance for instance in self.instances.values() if instance.gpu == gpu.name]
        return sorted(matching, key=lambda it: (it.gpu_count, it.vcpus or 0, it.name))

    def closest(self, kind: CatalogKind, name: str) -> str | None:
        """The canonical name closest to ``name``, for "did you mean ...?" hints; None if nothing is close."""
        candidates = self._hint_candidates(kind)
        matches = difflib.get_close_matches(name.strip().lower(), candidates, n=1, cutoff=HINT_CUTOFF)
        return candidates[matches[0]] if matches else None

    def _hint_candidates(self, kind: CatalogKind) -> dict[str, str]:
        """Lower-cased spellings (names, and aliases for GPUs) -> canonical name."""
        if kind == "gpu":
            return self._gpu_names_by_lowercase
        return {name.lower(): name for name in self._names(kind)}

    def _names(self, kind: CatalogKind) -> Iterable[str]:
        if kind == "instance":
            return self.instances.keys()
        if kind == "model":
            return self.models.keys()
        if kind == "quantization":
            return self.quantization.keys()
        if kind == "engine":
            return self.engines.keys()
        raise ValueError(f"unknown catalog kind {kind!r}")


@cache
def load_catalog() -> Catalog:
    """The packaged catalog, validated and cross-checked; read once per process."""
    gpus = parse_records("gpus.yaml", read_data_file("gpus.yaml"), "gpus", Gpu)
    instances = parse_records("instances.yaml", read_data_file("instances.yaml"), "instances", InstanceType)
    models = parse_records("models.yaml", read_data_file("models.yaml"), "models", CatalogLlm)
    quantization = parse_records(
        "quantization.yaml", read_data_file("quantization.yaml"), "methods", QuantizationMethod
    )
    engines = parse_records("engines.yaml", read_data_file("engines.yaml"), "engines", InferenceEngine)
    check_instance_gpus(instances, gpus)
    check_engine_quantizations(engines, quantization)
    return Catalog(gpus=gpus, instances=instances, models=models, quantization=quantization, engines=engines)


def read_data_file(file_name: str) -> object:
    """The parsed YAML document of a packaged catalog file."""
    text = resources.files(DATA_PACKAGE).joinpath(DATA_DIRECTORY, file_name).read_text(encoding="utf-8")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise CatalogError(f"{file_name}: not valid YAML: {error}") from error


def parse_records(
    file_name: str, document: object, top_key: str, record_type: type[RecordT]
) -> dict[str, RecordT]:
    """Validate ``document[top_key]`` (key -> record fields) into typed records named by their key.

    Raises CatalogError naming the file, the record key and the offending field.
    """
    raw_records = _records_mapping(file_name, document, top_key)
    return {
        key: _parse_record(file_name, top_key, key, fields, record_type)
        for key, fields in raw_records.items()
    }


def _records_mapping(file_name: str, document: object, top_key: str) -> dict[str, object]:
    if not isinstance(document, dict):
        raise CatalogError(f"{file_name}: expected a mapping with a top-level '{top_key}:' key")
    unexpected = [
        str(key) for key in document if key != top_key and not str(key).startswith(EXTENSION_KEY_PREFIX)
    ]
    if unexpected:
        raise CatalogError(
            f"{file_name}: unexpected top-level key(s) {', '.join(unexpected)} "
            f"(only '{top_key}' and '{EXTENSION_KEY_PREFIX}*' anchor holders are allowed)"
        )
    records = document.get(top_key)
    if not isinstance(records, dict) or not records:
        raise CatalogError(f"{file_name}: '{top_key}' must be a non-empty mapping of name -> record")
    non_string_keys = [repr(key) for key in records if not isinstance(key, str)]
    if non_string_keys:
        raise CatalogError(f"{file_name}: {top_key}: record names must be strings, got {non_string_keys}")
    return records


def _parse_record(
    file_name: str, top_key: str, key: str, fields: object, record_type: type[RecordT]
) -> RecordT:
    where = f"{file_name}: {top_key}.{key}"
    if not isinstance(fields, dict):
        raise CatalogError(f"{where}: expected a mapping of fields, got {type(fields).__name__}")
    if "name" in fields and fields["name"] != key:
        raise CatalogError(f"{where}: 'name: {fields['name']}' contradicts the record key; drop it")
    try:
        return record_type.model_validate({**fields, "name": key})
    except ValidationError as error:
        raise CatalogError(f"{where}: {_describe(error)}") from error


def _describe(error: ValidationError) -> str:
    """One line per problem: ``field.path: message``."""
    problems = []
    for detail in error.errors():
        path = ".".join(str(part) for part in detail["loc"])
        problems.append(f"{path}: {detail['msg']}" if path else detail["msg"])
    return "; ".join(problems)


def gpu_name_index(gpus: Mapping[str, Gpu]) -> dict[str, str]:
    """Lower-cased canonical names and aliases -> canonical name; an ambiguous spelling is an error."""
    index: dict[str, str] = {}
    for gpu in gpus.values():
        for spelling in (gpu.name, *gpu.aliases):
            lowered = spelling.strip().lower()
            owner = index.setdefault(lowered, gpu.name)
            if owner != gpu.name:
                raise CatalogError(
                    f"gpus.yaml: gpus.{gpu.name}: alias '{spelling}' is already used by {owner}"
                )
    return index


def check_instance_gpus(instances: Mapping[str, InstanceType], gpus: Mapping[str, Gpu]) -> None:
    """Every instance type must name a GPU of gpus.yaml by its canonical name."""
    unknown = [
        f"instances.yaml: instances.{name}.gpu: '{instance.gpu}' is not a GPU of gpus.yaml"
        for name, instance in instances.items()
        if instance.gpu not in gpus
    ]
    if unknown:
        raise CatalogError("; ".join(unknown))


def check_engine_quantizations(
    engines: Mapping[str, InferenceEngine], quantization: Mapping[str, QuantizationMethod]
) -> None:
    """Every quantization an engine lists is a method of quantization.yaml, in a format the engine loads."""
    problems: list[str] = []
    for name, engine in engines.items():
        where = f"engines.yaml: engines.{name}.capabilities.quantizations"
        for method in engine.capabilities.quantizations:
            if method not in quantization:
                problems.append(f"{where}: '{method}' is not a method of quantization.yaml")
            elif quantization[method].format not in engine.capabilities.weight_formats:
                problems.append(f"{where}: '{method}' is a {quantization[method].format} method, and the "
                                f"engine loads {', '.join(engine.capabilities.weight_formats)}")
    if problems:
        raise CatalogError("; ".join(problems))
