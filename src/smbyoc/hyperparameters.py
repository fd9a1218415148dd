"""Hyperparameters: decoding, SageMaker's reserved keys, and typed declarations — one name for all.

**Wire format** (contract.md §1.3): ``hyperparameters.json``, its limits, its reader and writer and the
reserved keys live in :mod:`smbyoc.opt_ml.hyperparameters_file`, re-exported here.

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
from typing import Any

from smbyoc.hyperparameter_schema import (
    HyperparameterSpec,
    Schema,
    coerce,
    load_schema,
    parse_bool,
)
from smbyoc.opt_ml.hyperparameters_file import (
    MAX_HYPERPARAMETERS,
    MAX_KEY_LENGTH,
    MAX_VALUE_LENGTH,
    RESERVED_HYPERPARAMETERS,
    SAGEMAKER_PREFIX,
    is_reserved,
    read_hyperparameters_file,
    validate_wire,
)

logger = logging.getLogger(__name__)


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
