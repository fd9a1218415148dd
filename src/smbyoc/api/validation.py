"""Requests checked against botocore's sagemaker service model, refused in SageMaker's own words.

The checks, in order (contract-endpoints.md §9.2):

1. botocore's ParamValidator (unknown members, types, required members, ``min``): refused with botocore's own
   ``Parameter validation failed:`` text, as a client that validates would say it;
2. what ParamValidator leaves out (``max``, ``enum``, ``pattern``, and ``min`` again for completeness): refused the
   way the service refuses it, ``N validation error(s) detected: Value 'x' at 'trainingJobName' failed to satisfy
   constraint: Member must satisfy regular expression pattern: ...`` (member paths in lower camel case, list
   entries as ``name.1.member``, 1-based).

Members whose shape is an S3 URI also take a local path or a ``file://`` URI here (the emulator's stand-in for
S3): the validator sees a placeholder S3 URI in their place, so every other member keeps its checks and nothing of
botocore is patched.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any

from smbyoc.api.errors import validation
from smbyoc.api.timestamps import parse

#: What the validator sees in place of a local path (a short, valid S3 URI).
PLACEHOLDER_URI = "s3://smbyoc-local-path/placeholder"
_REMOTE = re.compile(r"^(s3|https)://", re.IGNORECASE)
_NUMBERS = ("integer", "long", "float", "double")


def input_shape(operation: str) -> Any:
    from smbyoc.emulator.api_validation import service_model

    return service_model().operation_model(operation).input_shape


def is_remote(text: str) -> bool:
    """An S3 location as SageMaker takes it (everything else stands for a local path)."""
    return bool(_REMOTE.match(text))


def check(operation: str, params: Any) -> None:
    """Raise one ValidationException ApiError when the service would refuse ``params`` for ``operation``."""
    from botocore.validate import ParamValidator

    from smbyoc.emulator.api_validation import uri_slots

    shape = input_shape(operation)
    if shape is None:
        if params:
            raise validation(f"{operation} takes no parameters")
        return
    stand_in = copy.deepcopy(params)
    if isinstance(params, dict):
        for _, keys, text in list(uri_slots(params, shape, "")):
            if text.strip() and not is_remote(text):  # (an empty one is left to the service's pattern)
                target: Any = stand_in
                for key in keys[:-1]:
                    target = target[key]
                target[keys[-1]] = PLACEHOLDER_URI
    for at, value in _timestamps(stand_in, shape, ""):  # (ParamValidator fails on some: 1e400, year 10000)
        parse(value, at)
    report = ParamValidator().validate(stand_in, shape)
    if report.has_errors():
        raise validation("Parameter validation failed:\n" + report.generate_report())
    problems = constraint_problems(stand_in, shape, "")
    if problems:
        count = len(problems)
        raise validation(f"{count} validation error{'s' if count > 1 else ''} detected: " + "; ".join(problems))


def _timestamps(value: Any, shape: Any, at: str) -> Iterator[tuple[str, Any]]:
    """The timestamp members of ``value`` (``shape``'s), with their paths."""
    kind = shape.type_name
    if kind == "timestamp":
        yield at, value
    elif kind == "structure" and isinstance(value, dict):
        for key, item in value.items():
            if key in shape.members:
                yield from _timestamps(item, shape.members[key], f"{at}.{_camel(key)}".lstrip("."))
    elif kind == "list" and isinstance(value, list):
        for i, item in enumerate(value, 1):
            yield from _timestamps(item, shape.member, f"{at}.{i}.member")
    elif kind == "map" and isinstance(value, dict):
        for key, item in value.items():
            yield from _timestamps(item, shape.value, f"{at}.{key}.value")


def _camel(name: str) -> str:
    return name[:1].lower() + name[1:]


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, (list, dict)):
        return json.dumps(value)[:200]
    return str(value)


def _limit_problems(value: Any, size: int | float, shape: Any, at: str, what: str) -> list[str]:
    problems = []
    metadata = shape.metadata
    if "max" in metadata and size > metadata["max"]:
        problems.append(f"Value {_shown(value)} at '{at}' failed to satisfy constraint: Member must have {what} "
                        f"less than or equal to {metadata['max']}")
    if "min" in metadata and size < metadata["min"]:
        problems.append(f"Value {_shown(value)} at '{at}' failed to satisfy constraint: Member must have {what} "
                        f"greater than or equal to {metadata['min']}")
    return problems


def constraint_problems(value: Any, shape: Any, at: str) -> list[str]:
    """The service's messages for ``max``, ``min``, ``enum`` and ``pattern`` in ``value`` (``at``: its path)."""
    kind = shape.type_name
    problems: list[str] = []
    if kind == "structure" and isinstance(value, dict):
        for key, item in value.items():
            if key in shape.members:
                problems += constraint_problems(item, shape.members[key], f"{at}.{_camel(key)}".lstrip("."))
    elif kind == "list" and isinstance(value, list):
        problems += _limit_problems(value, len(value), shape, at, "length")
        for i, item in enumerate(value, 1):
            problems += constraint_problems(item, shape.member, f"{at}.{i}.member")
    elif kind == "map" and isinstance(value, dict):
        problems += _limit_problems(value, len(value), shape, at, "length")
        for key, item in value.items():
            problems += constraint_problems(key, shape.key, f"{at}.{key}.key")
            problems += constraint_problems(item, shape.value, f"{at}.{key}.value")
    elif kind == "string" and isinstance(value, str):
        problems += _limit_problems(value, len(value), shape, at, "length")
        enum = shape.metadata.get("enum")
        if enum and value not in enum:
            problems.append(f"Value '{value}' at '{at}' failed to satisfy constraint: Member must satisfy enum value "
                            f"set: [{', '.join(enum)}]")
        pattern = shape.metadata.get("pattern")
        if pattern:
            try:
                compiled = re.compile(pattern)
            except re.error:  # Java classes (\p{...}) that Python's re does not know: not checked
                compiled = None
            if compiled is not None and not compiled.fullmatch(value):
                problems.append(f"Value '{value}' at '{at}' failed to satisfy constraint: Member must satisfy "
                                f"regular expression pattern: {pattern}")
    elif kind in _NUMBERS and isinstance(value, (int, float)) and not isinstance(value, bool):
        problems += _limit_problems(value, value, shape, at, "value")
    return problems
