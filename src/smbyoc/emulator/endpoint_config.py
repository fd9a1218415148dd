"""The endpoint configuration file of ``smbyoc local-serve --endpoint-config FILE`` (docs/endpoint-config.md).

One JSON or YAML file holds the requests a user sends to SageMaker for an endpoint::

    {"EndpointName": "...",                  # optional; default: the EndpointConfigName
     "Models": [<CreateModel request>, ...],
     "EndpointConfig": <CreateEndpointConfig request>}

with local paths or ``file://`` URIs wherever SageMaker takes an S3 URI (``ModelDataUrl``,
``DataCaptureConfig.DestinationS3Uri``, ``AsyncInferenceConfig.OutputConfig.S3OutputPath``...). The checks, in
order, each failure one :class:`ConfigError` line naming the file and the field path:

1. syntax (JSON; YAML when PyYAML is importable), duplicate keys, the three top-level fields;
2. each request against botocore's own service model (contract-endpoints.md §9.2): botocore's ParamValidator
   (unknown fields, types, required members, ``min``), then what ParamValidator leaves out (``max``, ``enum``,
   ``pattern``, booleans given for numbers). The validator sees a copy of the request in which every member whose
   shape is an S3 URI and that holds a local path carries a placeholder S3 URI instead: the request checked is
   the one SageMaker would get once the paths are uploaded, every other member keeps its pattern check, and
   nothing of botocore is bypassed or patched;
3. members smbyoc does not emulate (``ModelDataSource``, ``ExplainerConfig``...) are refused;
4. the local rewrite: each S3-URI member becomes an absolute local path (relative paths are relative to the
   file's directory); with a staging (:mod:`smbyoc.s3.staging`, as ``local-serve`` passes) an ``s3://``
   ``ModelDataUrl`` is downloaded through the cache and the request keeps the URI; ``s3://`` async inference
   locations (``S3OutputPath``, ``S3FailurePath``) are kept as checked URIs for
   :mod:`smbyoc.emulator.async_inference`, which writes the results there; ``s3://`` destinations of data capture
   and core dumps, and ``https://`` URLs, are refused with one line;
5. the rules SageMaker enforces on the server side (:mod:`smbyoc.emulator.endpoint_rules`; contract-endpoints.md
   §1, §2, §4.1, §5, §6; contract.md §3, §5, §6): variants name known models, unique variant names, shadow
   variants, weights, serverless and its exclusions, containers and hostnames, multi-model data, environment sizes.

Step 2 is :func:`smbyoc.emulator.api_validation.api_problems`. The result is an
:class:`~smbyoc.emulator.endpoint_definition.EndpointDefinition` of frozen dataclasses with plain values; data
capture and the async configuration stay validated dicts (with local paths) for the modules that run them.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import json
import logging
import os
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smbyoc.emulator.api_validation import api_problems, json_type, service_model, uri_slots
from smbyoc.emulator.endpoint_definition import Container, EndpointDefinition, Model, Variant
from smbyoc.emulator.endpoint_rules import (
    MAX_ENV_ITEM_BYTES,
    MAX_ENV_TOTAL_BYTES,
    MAX_SHADOW_VARIANTS,
    SERVERLESS_MEMORY_STEP_MB,
    build_model,
    build_variant,
    check_endpoint,
    containers_of,
)
from smbyoc.errors import ConfigError

if TYPE_CHECKING:
    from smbyoc.s3.staging import Staging

__all__ = ["MAX_ENV_ITEM_BYTES", "MAX_ENV_TOTAL_BYTES", "MAX_SHADOW_VARIANTS", "SERVERLESS_MEMORY_STEP_MB",
           "Container", "EndpointDefinition", "Model", "Variant", "load_endpoint_config", "parse_endpoint_config"]

log = logging.getLogger(__name__)

TOP_LEVEL_FIELDS = ("EndpointName", "Models", "EndpointConfig")
#: What the validator sees in place of a local path (a short, valid S3 URI).
PLACEHOLDER_URI = "s3://smbyoc-local-path/placeholder"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

#: Members that would change what is served but that smbyoc does not emulate: refused with the reason.
_NOT_EMULATED_CONTAINER = {
    "ModelDataSource": "is not emulated; give the model as ModelDataUrl",
    "AdditionalModelDataSources": "is not emulated; give the model as ModelDataUrl",
    "ModelPackageName": "is not emulated; give the container's Image",
    "InferenceSpecificationName": "is not emulated; give the container's Image",
}
_NOT_EMULATED_VARIANT = {
    "InstancePools": "is not emulated; give InstanceType and InitialInstanceCount",
    "AcceleratorType": "is not supported: Elastic Inference is discontinued (contract.md §9.2)",
}
_NOT_EMULATED_ENDPOINT_CONFIG = {
    "ExplainerConfig": "is not emulated (SageMaker Clarify online explainability)",
}
#: Output locations that take local paths only, by the end of their field path.
_LOCAL_DESTINATIONS = {
    "DataCaptureConfig.DestinationS3Uri": "data capture (DataCaptureConfig.DestinationS3Uri)",
    "CoreDumpConfig.DestinationS3Uri": "core dumps (CoreDumpConfig.DestinationS3Uri)",
}
#: Output locations that take ``s3://`` URIs as well (kept in the request; their module writes to S3).
_S3_DESTINATIONS = ("AsyncInferenceConfig.OutputConfig.S3OutputPath", "AsyncInferenceConfig.OutputConfig.S3FailurePath")


# ------------------------------------------------------------------------------------------ reading the file


def read_document(path: str | os.PathLike[str]) -> Any:
    """The file's document (JSON, or YAML with PyYAML), unvalidated; one line naming the file when it cannot be
    read or parsed."""
    file = Path(path)
    source = str(file)
    suffix = file.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise ConfigError("expected a .json, .yaml or .yml file", source=source)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("does not exist", source=source) from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"is not UTF-8 text ({e.reason} at byte {e.start})", source=source) from e
    except OSError as e:
        raise ConfigError(f"cannot be read: {e.strerror or e}", source=source) from e
    return _parse_yaml(text, source) if suffix in (".yaml", ".yml") else _parse_json(text, source)


def load_endpoint_config(path: str | os.PathLike[str], *, staging: Staging | None = None) -> EndpointDefinition:
    """Read, validate and resolve the endpoint configuration file ``path`` (JSON, or YAML with PyYAML).

    ``staging`` (a :class:`smbyoc.s3.staging.Staging`) downloads ``s3://`` model data; without one, S3 URIs
    are refused."""
    document = read_document(path)
    return parse_endpoint_config(document, source=str(Path(path)), base_dir=Path(os.path.abspath(path)).parent,
                                 staging=staging)


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_json(text: str, source: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except _DuplicateKey as e:
        raise ConfigError(f"the key {e.args[0]!r} appears twice in one object", source=source) from e
    except json.JSONDecodeError as e:
        raise ConfigError(f"is not valid JSON: line {e.lineno} column {e.colno}: {e.msg}", source=source) from e
    except ValueError as e:
        raise ConfigError(f"is not valid JSON: {e}", source=source) from e


def _parse_yaml(text: str, source: str) -> Any:
    try:
        yaml = importlib.import_module("yaml")
    except ImportError:
        raise ConfigError("reading YAML needs PyYAML: pip install pyyaml (or write the file as JSON)",
                          source=source) from None

    class UniqueKeyLoader(yaml.SafeLoader):  # type: ignore[misc,name-defined]
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    repeated = key in seen
                except TypeError:  # an unhashable key: SafeLoader says so below
                    break
                if repeated:
                    mark = key_node.start_mark
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {key!r} appears twice in one mapping", mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"is not valid YAML: {where}{problem}", source=source) from e


# ------------------------------------------------------------------------------- local paths and the checker


def _set(document: Any, keys: tuple[str | int, ...], value: str) -> None:
    for key in keys[:-1]:
        document = document[key]
    document[keys[-1]] = value


def _is_s3(text: str) -> bool:
    """An S3 URI as SageMaker takes it (``s3://`` or ``https://``); everything else stands for a local path."""
    found = _SCHEME.match(text)
    return found is not None and found.group(1).lower() in ("s3", "https")


class _Checker:
    """Validates one file's document; every failure is a ConfigError naming the file and the field path."""

    def __init__(self, source: str, base_dir: Path, staging: Staging | None = None) -> None:
        self.source = source
        self.base_dir = base_dir
        self.staging = staging

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, source=self.source, key=key)

    def check_request(self, shape_name: str, request: Any, root: str) -> Any:
        """Validate ``request`` against ``shape_name``, local paths standing in as placeholder S3 URIs (module
        docstring); returns a copy of ``request`` for :meth:`resolve`."""
        shape = service_model().shape_for(shape_name)
        slots = list(uri_slots(request, shape, root))
        stand_in = copy.deepcopy(request)
        for _, keys, text in slots:
            if not _is_s3(text):
                _set(stand_in, keys, PLACEHOLDER_URI)
        problems = api_problems(shape_name, stand_in, root)
        if problems:
            raise self.fail(*problems[0])
        return copy.deepcopy(request)

    def resolve(self, resolved: Any, root: str, shape_name: str) -> dict[str, Path]:
        """Rewrite every S3-URI member of ``resolved`` (in place) to an absolute local path; path → Path."""
        shape = service_model().shape_for(shape_name)
        paths: dict[str, Path] = {}
        for path, keys, text in list(uri_slots(resolved, shape, root)):
            if path.endswith(_S3_DESTINATIONS) and _is_s3(text):
                self.s3_destination(text, path)  # the request keeps the URI; no local path stands for it
                continue
            local = self.local_path(text, path)
            if not _is_s3(text):  # an S3 URI stays in the request, as SageMaker gets it
                _set(resolved, keys, str(local))
            paths[path] = local
        return paths

    def local_path(self, text: str, key: str) -> Path:
        found = _SCHEME.match(text)
        if found is not None:
            scheme = found.group(1).lower()
            if scheme in ("s3", "https"):
                return self.s3_path(text, key, scheme)
            if scheme != "file":
                raise self.fail(key, f"{text!r}: expected a local path or a file:// URI")
            parts = urllib.parse.urlsplit(text)
            if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
                raise self.fail(key, f"{text!r}: a file:// URI needs an absolute path (file:///path)")
            local = Path(urllib.parse.unquote(parts.path))
        else:
            if not text.strip():
                raise self.fail(key, "the path is empty")
            local = Path(text).expanduser()
        if not local.is_absolute():
            local = self.base_dir / local
        return Path(os.path.abspath(local))

    def s3_destination(self, text: str, key: str) -> None:
        """An ``s3://`` async inference location: a valid bucket and key prefix (``https://`` refused)."""
        from smbyoc.s3.uri import S3Uri, scheme_of

        if scheme_of(text) != "s3":
            raise self.fail(key, f"{text!r}: S3 URIs are not supported yet in the https:// form; give an s3:// URI, a "
                                 "local path or a file:// URI")
        try:
            S3Uri.parse(text)
        except ConfigError as e:
            raise self.fail(key, str(e)) from e

    def s3_path(self, text: str, key: str, scheme: str) -> Path:
        """A ``ModelDataUrl``'s model downloaded through the caller's staging; every other S3 member (and model
        data without a staging) refused, one line each."""
        for suffix, what in _LOCAL_DESTINATIONS.items():
            if key.endswith(suffix):
                raise self.fail(key, f"{text!r}: S3 URIs are not supported yet for {what}: s3:// destinations are "
                                     "not emulated; give a local path or a file:// URI (relative to this file's "
                                     "directory)")
        if not key.endswith(".ModelDataUrl") or self.staging is None:
            hint = " (smbyoc local-serve downloads s3:// model data)" if key.endswith(".ModelDataUrl") else ""
            raise self.fail(key, f"{text!r}: S3 URIs are not supported yet; give a local path or a file:// URI{hint}")
        if scheme != "s3":
            raise self.fail(key, f"{text!r}: https:// model URLs are not supported; give an s3:// URI, a local path "
                                 "or a file:// URI")
        return self.staging.model(text, what=f"{self.source}: {key}")


# ---------------------------------------------------------------------------------------------- the document


def parse_endpoint_config(document: Any, *, source: str, base_dir: Path,
                          staging: Staging | None = None) -> EndpointDefinition:
    """Validate an already parsed endpoint configuration (``source`` names it in errors; relative paths resolve
    against ``base_dir``; ``staging`` downloads ``s3://`` model data)."""
    checker = _Checker(source, base_dir, staging)
    if not isinstance(document, dict):
        raise ConfigError(f"expected an object with {', '.join(TOP_LEVEL_FIELDS)}, got {json_type(document)}",
                          source=source)
    for key in document:
        if key not in TOP_LEVEL_FIELDS:
            close = difflib.get_close_matches(str(key), TOP_LEVEL_FIELDS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f"; expected one of: {', '.join(TOP_LEVEL_FIELDS)}"
            raise checker.fail(str(key), "unknown field" + hint)
    for key in ("Models", "EndpointConfig"):
        if key not in document:
            raise checker.fail(key, "required field is missing")
    models_doc = document["Models"]
    if not isinstance(models_doc, list) or not models_doc:
        raise checker.fail("Models", "expected a non-empty list of CreateModel requests")
    model_requests = [checker.check_request("CreateModelInput", m, f"Models[{i}]") for i, m in enumerate(models_doc)]
    config_request = checker.check_request("CreateEndpointConfigInput", document["EndpointConfig"], "EndpointConfig")
    config_name: str = config_request["EndpointConfigName"]
    endpoint_name = document.get("EndpointName", config_name)
    checker.check_request("CreateEndpointInput", {"EndpointName": endpoint_name, "EndpointConfigName": config_name},
                          "")

    for i, request in enumerate(model_requests):
        _refuse_not_emulated_model(checker, request, f"Models[{i}]")
    _refuse_not_emulated_config(checker, config_request)

    models: dict[str, Model] = {}
    given: dict[str, tuple[str, Mapping[str, Any]]] = {}  # model name -> (its field path, its request)
    for i, request in enumerate(model_requests):
        root = f"Models[{i}]"
        paths = checker.resolve(request, root, "CreateModelInput")
        model = build_model(checker, request, root, paths)
        if model.name in models:
            raise checker.fail(f"{root}.ModelName", f"{model.name!r} is also the name of {given[model.name][0]}")
        models[model.name] = model
        given[model.name] = (root, request)
    checker.resolve(config_request, "EndpointConfig", "CreateEndpointConfigInput")
    _check_destinations(checker, config_request)

    production = tuple(build_variant(checker, v, f"EndpointConfig.ProductionVariants[{i}]", models)
                       for i, v in enumerate(config_request["ProductionVariants"]))
    shadows = tuple(build_variant(checker, v, f"EndpointConfig.ShadowProductionVariants[{i}]", models)
                    for i, v in enumerate(config_request.get("ShadowProductionVariants") or ()))
    check_endpoint(checker, config_request, production, shadows, models, given)

    unused = sorted(set(models) - {v.model_name for v in (*production, *shadows)})
    if unused:
        log.info("%s: models no variant uses: %s", source, ", ".join(unused))
    return EndpointDefinition(
        endpoint_name=endpoint_name, models=models, production_variants=production, shadow_variants=shadows,
        data_capture=config_request.get("DataCaptureConfig"), async_config=config_request.get("AsyncInferenceConfig"),
        endpoint_config_name=config_name, source=Path(source),
        model_requests=tuple(model_requests), endpoint_config_request=config_request)


def _refuse_not_emulated_model(checker: _Checker, request: Mapping[str, Any], root: str) -> None:
    for key, container in containers_of(request, root):
        for member, why in _NOT_EMULATED_CONTAINER.items():
            if member in container:
                raise checker.fail(f"{key}.{member}", why)


def _refuse_not_emulated_config(checker: _Checker, request: Mapping[str, Any]) -> None:
    for member, why in _NOT_EMULATED_ENDPOINT_CONFIG.items():
        if member in request:
            raise checker.fail(f"EndpointConfig.{member}", why)
    for group in ("ProductionVariants", "ShadowProductionVariants"):
        for i, variant in enumerate(request.get(group) or ()):
            for member, why in _NOT_EMULATED_VARIANT.items():
                if member in variant:
                    raise checker.fail(f"EndpointConfig.{group}[{i}].{member}", why)


def _check_destinations(checker: _Checker, request: Mapping[str, Any]) -> None:
    """Output locations (capture, async outputs) are directories to write into: an existing file is refused."""
    candidates = [("EndpointConfig.DataCaptureConfig.DestinationS3Uri",
                   (request.get("DataCaptureConfig") or {}).get("DestinationS3Uri"))]
    output = (request.get("AsyncInferenceConfig") or {}).get("OutputConfig") or {}
    candidates += [(f"EndpointConfig.AsyncInferenceConfig.OutputConfig.{m}", output.get(m))
                   for m in ("S3OutputPath", "S3FailurePath")]
    for key, text in candidates:
        if text is not None and not _is_s3(text) and Path(text).exists() and not Path(text).is_dir():
            raise checker.fail(key, f"{text} is a file; an output location is a directory")
