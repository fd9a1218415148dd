"""``/opt/ml/input/config/hyperparameters.json``: the wire format, its limits and SageMaker's keys.

The file is a flat JSON object string → string (contract.md §1.3): at most 100 entries, keys at most
256 characters, values at most 2500 characters (the API shape allows 2500 while the API prose says "each
key and value is limited to 256 characters"; we enforce the shape's 2500, the limit the service checks).
A non-string value is an error naming the key: the service never writes one, so it means a hand-written
file that would not behave like SageMaker. A missing file means a job without hyperparameters.

Keys in :data:`RESERVED_HYPERPARAMETERS` or starting with ``sagemaker_`` are SageMaker's, never the
user's (:func:`is_reserved`). Decoding and typing the values is :mod:`smbyoc.hyperparameters`'s job.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from smbyoc.errors import ConfigError
from smbyoc.jsonfile import read_json, write_json
from smbyoc.paths import Paths

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


def read(paths: Paths) -> dict[str, str]:
    """The job's wire-format hyperparameters (``{}`` without the file)."""
    return read_hyperparameters_file(paths.hyperparameters_file)


def write(paths: Paths, hyperparameters: Mapping[str, str]) -> Path:
    """Write ``hyperparameters`` (string → string, within the API limits) as SageMaker does."""
    target = paths.hyperparameters_file
    return write_json(target, validate_wire(dict(hyperparameters), source=str(target)))
