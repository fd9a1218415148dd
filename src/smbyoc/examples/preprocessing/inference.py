"""Preprocessing handler for an inference pipeline, in the sagemaker-inference style (standard library only).

The first container of a serial pipeline whose second container is the default example's model: it turns
field readings into the features that model was trained on, and answers in a format the next container reads.

``model_fn`` reads ``scaling.json`` from the model directory::

    {"features": [{"name": "temperature_c", "input": "temperature_f", "subtract": 32, "divide_by": 1.8,
                   "fill": 64.9}, {"name": "rpm", "fill": 1750.2}, ...]}

one entry per output feature, in the order the next container expects: ``input`` (default: ``name``) is the
request's field, the output is ``(value - subtract) / divide_by`` (defaults 0 and 1; standardisation is
``subtract=mean, divide_by=std``), and a missing value (absent, ``null`` or an empty CSV cell) becomes ``fill``
(an error without one).

Requests (``Content-Type``):

* ``application/json``: ``{"instances": [...]}``, a list, or one row; each row an object keyed by the input
  field names (other keys are ignored) or a list of values in the order of ``features``;
* ``text/csv``: one row per line; a first line naming the fields (in any order) picks the columns, else the
  values are in the order of ``features``.

Responses (``Accept``, which SageMaker's pipeline passes to every container; ``*/*`` or none: JSON):
``application/json`` ``{"instances": [[f1, ..., fn], ...]}`` or ``text/csv`` with one row of features per
line, no header. Both are what the default example's model reads.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCALING_FILE = "scaling.json"
JSON = "application/json"
CSV = "text/csv"


class RequestError(Exception):
    """A client error: ``status_code`` 400 (bad body), 406 (bad Accept) or 415 (bad Content-Type)."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


@dataclass(frozen=True)
class Feature:
    name: str
    source: str
    subtract: float = 0.0
    divide_by: float = 1.0
    fill: float | None = None

    def apply(self, value: float | None, where: str) -> float:
        if value is None:
            if self.fill is None:
                raise RequestError(400, f"{where}: {self.source!r} is missing and has no fill value")
            return self.fill
        return (value - self.subtract) / self.divide_by


@dataclass(frozen=True)
class Scaling:
    features: tuple[Feature, ...]

    @property
    def sources(self) -> list[str]:
        return [f.source for f in self.features]


def _float(entry: dict[str, Any], key: str, default: float | None, where: str) -> float | None:
    value = entry.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: {key} must be a finite number, got {value!r}")
    return float(value)


def model_fn(model_dir: str) -> Scaling:
    path = Path(model_dir) / SCALING_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the preprocessing container's model is a directory or "
                                f"model.tar.gz holding {SCALING_FILE}")
    config = json.loads(path.read_text(encoding="utf-8"))
    entries = config.get("features") if isinstance(config, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected {{\"features\": [{{\"name\": ...}}, ...]}}")
    features = []
    for n, entry in enumerate(entries):
        where = f"{path}: features[{n}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ValueError(f"{where}: expected an object with a \"name\"")
        divide_by = _float(entry, "divide_by", 1.0, where)
        if not divide_by:
            raise ValueError(f"{where}: divide_by must not be 0")
        features.append(Feature(entry["name"], str(entry.get("input", entry["name"])),
                                _float(entry, "subtract", 0.0, where) or 0.0, divide_by,
                                _float(entry, "fill", None, where)))
    return Scaling(tuple(features))


def _media_type(value: str | None) -> str:
    return (value or "").split(";")[0].strip().lower()


def _number(value: object, where: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RequestError(400, f"{where}: expected a number, got {value!r}")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise RequestError(400, f"{where}: expected a number, got {str(value)[:40]!r}") from None
    if not math.isfinite(number):
        raise RequestError(400, f"{where}: {str(value)[:40]!r} is not a finite number")
    return number


#: A decoded request: rows, each a list of values (in ``features`` order) or a mapping of field names.
Rows = list[Any]


def input_fn(input_data: str | bytes, content_type: str) -> Rows:
    text = input_data.decode("utf-8") if isinstance(input_data, bytes) else input_data
    media_type = _media_type(content_type)
    if media_type == JSON:
        try:
            payload = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise RequestError(400, f"request body is not valid JSON: {e}") from None
        if isinstance(payload, dict):
            payload = payload.get("instances", [payload])
        if not isinstance(payload, list) or not payload:
            raise RequestError(400, "JSON body: expected a non-empty list of rows")
        return payload if isinstance(payload[0], (list, dict)) else [payload]
    if media_type == CSV:
        try:
            lines = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
        except csv.Error as e:
            raise RequestError(400, f"request body is not valid CSV: {e}") from None
        if not lines:
            raise RequestError(400, "CSV body has no rows")
        if any(cell.strip() and not _is_number(cell) for cell in lines[0]):
            header = [cell.strip() for cell in lines[0]]
            return [dict(zip(header, row, strict=False)) for row in lines[1:]]
        return lines
    raise RequestError(415, f"unsupported Content-Type {content_type!r} (use {JSON} or {CSV})")


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def predict_fn(rows: Rows, scaling: Scaling) -> list[list[float]]:
    """Each row's features, in ``scaling.features`` order."""
    out = []
    for n, row in enumerate(rows):
        if isinstance(row, dict):
            values = [_number(row.get(f.source), f"row {n} field {f.source!r}") for f in scaling.features]
        elif isinstance(row, list):
            if len(row) != len(scaling.features):
                raise RequestError(400, f"row {n}: {len(row)} values, expected {len(scaling.features)} "
                                        f"({', '.join(scaling.sources)})")
            values = [_number(v, f"row {n} column {j}") for j, v in enumerate(row)]
        else:
            raise RequestError(400, f"row {n}: expected an object or a list, got {row!r}")
        out.append([f.apply(v, f"row {n}") for f, v in zip(scaling.features, values, strict=True)])
    return out


def output_fn(prediction: list[list[float]], accept: str | None) -> tuple[str, str]:
    for media_type in (_media_type(a) for a in (accept or JSON).split(",")):
        if media_type in (JSON, "*/*", "application/*", ""):
            return json.dumps({"instances": prediction}), JSON
        if media_type in (CSV, "text/*"):
            return "".join(",".join(repr(v) for v in row) + "\n" for row in prediction), CSV
    raise RequestError(406, f"unsupported Accept {accept!r} (use {JSON} or {CSV})")
