"""``GET /execution-parameters`` (contract.md §4): what a transform job should use with this container.

SageMaker asks before the first ``/invocations`` and uses the answer for every value CreateTransformJob left
unset. The answer here is, per key: the job's value (``SAGEMAKER_MAX_CONCURRENT_TRANSFORMS``,
``SAGEMAKER_BATCH_STRATEGY``, ``SAGEMAKER_MAX_PAYLOAD_IN_MB``, which SageMaker sets only when the job set
them, and which win over this answer anyway), else the handler's ``execution_parameters_fn()``, else the
defaults of SageMaker's own algorithm containers (sagemaker-xgboost-container answers its worker count,
``MULTI_RECORD`` and 6). ``BatchStrategy`` is accepted in both spellings (``MultiRecord`` as in the API,
``MULTI_RECORD`` as in the container documentation) and always answered as ``MULTI_RECORD`` /
``SINGLE_RECORD``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from smbyoc import environment_variables as ev
from smbyoc.serving.env import ServingEnv

logger = logging.getLogger(__name__)

KEYS = ("MaxConcurrentTransforms", "BatchStrategy", "MaxPayloadInMB")
DEFAULT_BATCH_STRATEGY = "MULTI_RECORD"
DEFAULT_MAX_PAYLOAD_MB = 6  # CreateTransformJob's default
MAX_PAYLOAD_MB = 100  # CreateTransformJob's largest MaxPayloadInMB


class ExecutionParametersError(ValueError):
    """``execution_parameters_fn`` answered something SageMaker would not take (a 500 naming key and value)."""


def _integer(key: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ExecutionParametersError(f"{key} must be an integer, not {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"{minimum}..{maximum}" if maximum is not None else f"at least {minimum}"
        raise ExecutionParametersError(f"{key} must be {bound}, not {value}")
    return value


def handler_values(values: Mapping[str, Any] | None) -> dict[str, Any]:
    """The handler's answer checked key by key; None values are left out (the next source answers)."""
    checked: dict[str, Any] = {}
    for key, value in dict(values or {}).items():
        if key not in KEYS:
            raise ExecutionParametersError(f"unknown key {key!r}; the keys are {', '.join(KEYS)}")
        if value is None:
            continue
        if key == "BatchStrategy":
            if not isinstance(value, str):
                raise ExecutionParametersError(f"BatchStrategy must be a string, not {value!r}")
            try:
                checked[key] = ev.parse_batch_strategy(value)
            except ValueError as e:
                raise ExecutionParametersError(f"BatchStrategy {value!r}: {e}") from None
        elif key == "MaxConcurrentTransforms":
            checked[key] = _integer(key, value, 1)
        else:
            checked[key] = _integer(key, value, 0, MAX_PAYLOAD_MB)
    return checked


def execution_parameters(env: ServingEnv, from_handler: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The answer of ``/execution-parameters``: environment (the job), then the handler, then defaults."""
    values: dict[str, Any] = {
        "MaxConcurrentTransforms": env.workers,
        "BatchStrategy": DEFAULT_BATCH_STRATEGY,
        "MaxPayloadInMB": DEFAULT_MAX_PAYLOAD_MB,
    }
    values.update(handler_values(from_handler))
    if env.max_concurrent_transforms is not None:
        values["MaxConcurrentTransforms"] = env.max_concurrent_transforms
    if env.batch_strategy is not None:
        values["BatchStrategy"] = ev.parse_batch_strategy(env.batch_strategy)
    if env.max_payload_set:
        values["MaxPayloadInMB"] = env.max_payload_mb
    payload = values["MaxPayloadInMB"]
    if env.max_body_mb and (payload == 0 or payload > env.max_body_mb):
        logger.warning(
            "/execution-parameters: MaxPayloadInMB=%d but request bodies are limited by %s; "
            "set SAGEMAKER_MAX_PAYLOAD_IN_MB or SMBYOC_BATCH_MAX_BODY_IN_MB", payload, env.max_body_text,
        )
    return values
