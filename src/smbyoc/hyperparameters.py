"""Hyperparameters: the wire format, SageMaker's reserved keys, and typed declarations.

**Wire format** (contract.md §1.3). ``hyperparameters.json`` is a flat JSON object string → string:
at most 100 entries, keys at most 256 characters, values at most 2500 characters (the API shape allows
2500 while the API prose says "each key and value is limited to 256 characters"; we enforce the shape's
2500, the limit the service checks). A non-string value in the file is an error naming the key: the
service never writes one, so it means a hand-written file that would not behave like SageMaker.

**Decoding** (contract.md §2.3), as sagemaker-training does: each value is ``json.loads``-ed and kept
as the raw string when that fails, so ``"10"`` → ``10``, ``"\\"adam\\""`` → ``"adam"`` and ``"adam"``
→ ``"adam"``. Keys in :data:`RESERVED_HYPERPARAMETERS` or starting with ``sagemaker_`` are removed from
the user's hyperparameters; the ``sagemaker_*`` ones outside the tuple become the
``additional_framework_parameters``.

**Typed hyperparameters**: see :mod:`smbyoc.hyperparameter_schema` (``load_schema``, ``coerce``),
re-exported here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smbyoc.errors import ConfigError
from smbyoc.jsonfile import read_json

logger = logging.getLogger(__name__)

MAX_HYPERPARAMETERS = 100
MAX_KEY_LENGTH = 256
MAX_VALUE_LENGTH = 2500

SAGEMAKER_PREFIX = "sagemaker_"

#: Keys that are SageMaker's, never the user's (sagemaker-training ``params.SAGEMAKER_HYPERPARAMETERS``).
RESERVED_HYPERPARAMETERS: tuple[str, ...] = (
    "sagemaker_program",
    "sagemaker_submit_directory",
    "sagemaker_enable_cloudwatch_metrics",
    "sagemaker_region",
    "sagemaker_container_log_level",
    "sagemaker_job_name",
    "default_user_module_name",
    "_tuning_objective_metric",
    "sagemaker_s3_output",
)


def is_reserved(key: str) -> bool:
    """Whether ``key`` belongs to SageMaker (removed from the user's hyperparameters)."""
    return key in RESERVED_HYPERPARAMETERS or key.startswith(SAGEMAKER_PREFIX)


def validate_wire(raw: object, source: str | None = None) -> dict[str, str]:
    """Check a parsed ``hyperparameters.json`` against the API limits; returns it as ``dict[str, str]``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a JSON object of strings, got {type(raw).__name__}", source=source)
    if len(raw) > MAX_HYPERPARAMETERS:
        raise ConfigError(
            f"{len(raw)} hyperparameters given; SageMaker allows at most {MAX_HYPERPARAMETERS}", source=source
        )
    checked: dict[str, str] = {}
    for key, value in raw.items():
        if len(key) > MAX_KEY_LENGTH:
            raise ConfigError(
                f"key is {len(key)} characters long; SageMaker allows at most {MAX_KEY_LENGTH}",
                source=source, key=key[:60] + "...",
            )
        if not isinstance(value, str):
            shown = json.dumps(value)
            raise ConfigError(
                f"value {shown[:80]} is a JSON {_json_type(value)}; SageMaker hyperparameter values are "
                f"always strings (write \"{key}\": {json.dumps(shown[:80])})",
                source=source, key=key,
            )
        if len(value) > MAX_VALUE_LENGTH:
            raise ConfigError(
                f"value is {len(value)} characters long; SageMaker allows at most {MAX_VALUE_LENGTH}",
                source=source, key=key,
            )
        checked[key] = value
    return checked


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, list):
        return "array"
    return "object"


def read_hyperparameters_file(path: Path | str) -> dict[str, str]:
    """The wire-format hyperparameters of ``path``; ``{}`` when the file does not exist."""
    path = Path(path)
    raw = read_json(path, missing={})
    return validate_wire(raw, source=str(path))


def decode_value(value: str) -> Any:
    """``json.loads(value)``, or ``value`` itself when it is not JSON (the toolkit's rule)."""
    try:
        return json.loads(value)
    except (ValueError, TypeError):
        return value


def decode(raw: Mapping[str, str]) -> dict[str, Any]:
    """Decode every value of a wire-format mapping with :func:`decode_value`."""
    return {key: decode_value(value) for key, value in raw.items()}


def encode(hyperparameters: Mapping[str, Any], *, json_encode: bool = True) -> dict[str, str]:
    """The wire format a client sends.

    ``json_encode=True`` is what the SDK's framework estimators do (``json.dumps`` of every value,
    ``"adam"`` → ``"\\"adam\\""``); ``False`` is the generic ``Estimator``'s ``str(value)``.
    """
    if json_encode:
        return {str(k): json.dumps(v) for k, v in hyperparameters.items()}
    return {str(k): str(v) for k, v in hyperparameters.items()}


@dataclass(frozen=True)
class SplitHyperparameters:
    """Decoded hyperparameters split the way sagemaker-training splits them."""

    user: dict[str, Any]
    """The user's hyperparameters (reserved and ``sagemaker_*`` keys removed)."""
    sagemaker: dict[str, Any]
    """Every reserved or ``sagemaker_*`` key (the toolkit's ``split_by_criteria(...).included``)."""
    framework: dict[str, Any]
    """``sagemaker_*`` keys outside :data:`RESERVED_HYPERPARAMETERS` (``additional_framework_parameters``)."""


def split(decoded: Mapping[str, Any]) -> SplitHyperparameters:
    user: dict[str, Any] = {}
    sagemaker: dict[str, Any] = {}
    for key, value in decoded.items():
        (sagemaker if is_reserved(key) else user)[key] = value
    framework = {k: v for k, v in sagemaker.items() if k not in RESERVED_HYPERPARAMETERS}
    return SplitHyperparameters(user=user, sagemaker=sagemaker, framework=framework)


# Typed declarations live in their own module; re-exported so `smbyoc.hyperparameters` is the one name.
from smbyoc.hyperparameter_schema import (  # noqa: E402
    HyperparameterSpec,
    Schema,
    coerce,
    load_schema,
    parse_bool,
)

__all__ = [
    "MAX_HYPERPARAMETERS",
    "MAX_KEY_LENGTH",
    "MAX_VALUE_LENGTH",
    "RESERVED_HYPERPARAMETERS",
    "SAGEMAKER_PREFIX",
    "HyperparameterSpec",
    "Schema",
    "SplitHyperparameters",
    "coerce",
    "decode",
    "decode_value",
    "encode",
    "is_reserved",
    "load_schema",
    "parse_bool",
    "read_hyperparameters_file",
    "split",
    "validate_wire",
]
