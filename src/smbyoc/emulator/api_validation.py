"""Checking a SageMaker API request against botocore's own service model (contract-endpoints.md §9.2).

:func:`api_problems` lists every problem of a request shape (``CreateModelInput``, ``CreateEndpointConfigInput``,
``CreateEndpointInput``; later ``CreateTrainingJobRequest`` and ``CreateTransformJobRequest``) as
``(field path, message)``: botocore's ParamValidator first (unknown fields, types, required members, ``min``), then
what ParamValidator leaves out (``max``, ``enum``, ``pattern``, booleans given for numbers). Patterns Python's
``re`` cannot compile (the Java character classes of tag keys) are not checked. :func:`uri_slots` walks a
request to the members whose shape is an S3 URI, the members that take local paths in smbyoc.

botocore is imported on first use, never when this module is imported; nothing of botocore is bypassed or patched.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
from collections.abc import Iterator
from typing import Any

from smbyoc.errors import ConfigError

_S3_URI_PATTERN = "(https|s3)://"  # how botocore's S3-URI shapes (Url, S3ModelUri, DestinationS3Uri) begin
_NUMBER_TYPES = ("integer", "long", "float", "double")


@functools.lru_cache(maxsize=1)
def service_model() -> Any:
    try:
        import botocore.session
    except ImportError:
        raise ConfigError("checking an endpoint configuration needs botocore: pip install botocore") from None
    return botocore.session.get_session().get_service_model("sagemaker")


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:  # Java classes such as \p{L} (tag keys): not checked, see the module docstring
        return None


def _join(root: str, name: str) -> str:
    return (root + name).lstrip(".")


def json_type(value: Any) -> str:
    for kind, label in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
                        (list, "list"), (dict, "object")):
        if isinstance(value, kind):
            return label
    return "null" if value is None else type(value).__name__


_BOTOCORE_TYPES = {"str": "string", "int": "integer", "float": "number", "Decimal": "number", "bool": "boolean",
                   "list": "list", "tuple": "list", "dict": "object", "bytes": "bytes", "bytearray": "bytes",
                   "datetime": "timestamp"}


def _expected(valid_types: list[str]) -> str:
    names: list[str] = []
    for text in valid_types:
        found = re.search(r"'([^']+)'", text)
        bare = (found.group(1) if found else text).rpartition(".")[2]
        label = _BOTOCORE_TYPES.get(bare, bare)
        if label not in names:
            names.append(label)
    return " or ".join(names)


def _botocore_problem(error: Any, root: str) -> tuple[str, str] | None:
    """One of ParamValidator's ``(kind, name, details)`` errors as ``(field path, message)``."""
    try:
        kind, name, details = error
    except (TypeError, ValueError):
        return None
    if kind == "missing required field":
        return _join(root, f"{name}.{details['required_name']}"), "required field is missing"
    if kind == "unknown field":
        valid = list(details["valid_names"])
        close = difflib.get_close_matches(details["unknown_param"], valid, n=1)
        hint = f" (did you mean {close[0]}?)" if close else f"; expected one of: {', '.join(valid)}"
        return _join(root, f"{name}.{details['unknown_param']}"), "unknown field" + hint
    if kind == "invalid type":
        param = details["param"]
        return _join(root, name), f"expected {_expected(details['valid_types'])}, got {json_type(param)} " \
                                  f"{param!r}"
    if kind == "invalid range":
        return _join(root, name), f"{details['param']} is below the minimum {details['min_allowed']}"
    if kind == "invalid length":
        return _join(root, name), f"length {details['param']} is below the minimum {details['min_allowed']}"
    return None


def api_problems(shape_name: str, params: Any, root: str = "") -> list[tuple[str, str]]:
    """Every problem of ``params`` as the request shape ``shape_name`` of botocore's sagemaker service model
    (``CreateModelInput``, ``CreateEndpointConfigInput``, ``CreateEndpointInput``), as ``(field path, message)``
    with paths under ``root``: botocore's ParamValidator first, then ``max``, ``enum`` and ``pattern``."""
    shape = service_model().shape_for(shape_name)
    from botocore.validate import ParamValidator

    report = ParamValidator().validate(params, shape)
    problems: list[tuple[str, str]] = []
    if report.has_errors():
        # ParamValidator keeps its findings as (kind, name, details); its report text is the fallback.
        for error in getattr(report, "_errors", ()):
            problem = _botocore_problem(error, root)
            if problem is None:
                problems = []
                break
            problems.append(problem)
        if not problems:
            problems = [(root, line) for line in report.generate_report().splitlines()]
    problems.extend(_extra_problems(params, shape, root))
    return problems


def _extra_problems(value: Any, shape: Any, path: str) -> list[tuple[str, str]]:
    """What ParamValidator does not check (contract-endpoints.md §9.2): max, enum, pattern; bool as a number."""
    problems: list[tuple[str, str]] = []
    metadata, kind = shape.metadata, shape.type_name
    size: int | float | None = None
    unit = ""
    if kind == "structure" and isinstance(value, dict):
        for key, item in value.items():
            if key in shape.members:
                problems.extend(_extra_problems(item, shape.members[key], _join(path, f".{key}")))
    elif kind == "list" and isinstance(value, list):
        size, unit = len(value), "entries"
        for i, item in enumerate(value):
            problems.extend(_extra_problems(item, shape.member, f"{path}[{i}]"))
    elif kind == "map" and isinstance(value, dict):
        size, unit = len(value), "entries"
        for key, item in value.items():
            problems.extend(_extra_problems(key, shape.key, _join(path, f".{key}")))
            problems.extend(_extra_problems(item, shape.value, _join(path, f".{key}")))
    elif kind == "string" and isinstance(value, str):
        if "max" in metadata and len(value) > metadata["max"]:
            problems.append((path, f"{len(value)} characters; at most {metadata['max']}"))
        enum = metadata.get("enum")
        if enum and value not in enum:
            close = difflib.get_close_matches(value, enum, n=1)
            listed = f"one of: {', '.join(enum)}" if len(enum) <= 12 else f"one of the {len(enum)} {shape.name} values"
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append((path, f"{value!r} is not {listed}{hint}"))
        compiled = _compiled(metadata["pattern"]) if metadata.get("pattern") else None
        if compiled is not None and not compiled.fullmatch(value):
            problems.append((path, f"{value!r} does not match the pattern {metadata['pattern']}"))
    elif kind in _NUMBER_TYPES and isinstance(value, bool):
        problems.append((path, f"expected {'integer' if kind in ('integer', 'long') else 'number'}, got boolean "
                               f"{value!r}"))
    elif kind in _NUMBER_TYPES and isinstance(value, float) and not math.isfinite(value):
        problems.append((path, f"{value} is not a finite number"))  # (YAML's .inf, JSON's 1e999)
    elif kind in _NUMBER_TYPES and isinstance(value, (int, float)):
        size = value
    if size is not None and "max" in metadata and size > metadata["max"]:
        if unit:
            problems.append((path, f"{size} {unit}; at most {metadata['max']}"))
        else:
            problems.append((path, f"{size} is above the maximum {metadata['max']}"))
    return problems


def uri_slots(value: Any, shape: Any, path: str, keys: tuple[str | int, ...] = ()
               ) -> Iterator[tuple[str, tuple[str | int, ...], str]]:
    """``(field path, keys, text)`` of every member whose shape is an S3 URI (the members that take local paths)."""
    kind = shape.type_name
    if kind == "structure" and isinstance(value, dict):
        for key, item in value.items():
            if key in shape.members:
                yield from uri_slots(item, shape.members[key], _join(path, f".{key}"), (*keys, key))
    elif kind == "list" and isinstance(value, list):
        for i, item in enumerate(value):
            yield from uri_slots(item, shape.member, f"{path}[{i}]", (*keys, i))
    elif kind == "map" and isinstance(value, dict):
        for key, item in value.items():
            yield from uri_slots(item, shape.value, _join(path, f".{key}"), (*keys, key))
    elif kind == "string" and isinstance(value, str) and shape.metadata.get("pattern", "").startswith(_S3_URI_PATTERN):
        yield path, keys, value
