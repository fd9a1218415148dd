"""Inference handler for the default example, in the sagemaker-inference style.

The serving runtime imports this module (``SAGEMAKER_PROGRAM=inference.py``) and calls ``model_fn`` once,
then ``input_fn`` -> ``predict_fn`` -> ``output_fn`` per request. It needs onnxruntime and numpy only
(no torch): it loads ``model.onnx`` and ``model.json`` written by ``train.py``.

Requests (``Content-Type``):

* ``application/json``: ``{"instances": [[f1, ..., f8], ...]}``, ``{"instances": [{"temperature_c": ..}, ..]}``
  (records keyed by feature name), a bare list of rows, or one flat row;
* ``text/csv``: one row of feature values per line; an optional first line naming the features (in any
  order) is used to pick the columns;
* ``application/jsonlines``: one row per line, a JSON list of values or an object keyed by feature name
  (what batch transform sends with ``SplitType=Line``).

Responses (``Accept``; default JSON): ``application/json``
``{"predictions": [{"label": "normal", "probabilities": {"normal": 0.98, ...}}, ...]}``, ``text/csv``
with one line per row: the label, then one probability per class in ``class_names`` order, or
``application/jsonlines`` with one ``{"label": ..., "probabilities": {...}}`` object per row.

Bad requests raise :class:`RequestError`, which carries ``status_code``, ``message`` and ``phrase`` like
sagemaker-inference's ``BaseInferenceToolkitError`` (and is one, when that package is installed): both
smbyoc and sagemaker-inference answer with that status. That covers malformed CSV, JSON nested too
deeply for the parser, and numbers that do not fit the model's float32 input.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

JSON = "application/json"
CSV = "text/csv"
JSONLINES = "application/jsonlines"
#: Other spellings of JSON Lines that clients send (the SageMaker SDK's serializer uses the first).
JSONLINES_ALIASES = frozenset({JSONLINES, "application/x-jsonlines", "application/jsonl"})
#: The model's input is float32: larger magnitudes would become infinities (and NaN probabilities).
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _error_base() -> type[Exception]:
    try:
        from sagemaker_inference.errors import BaseInferenceToolkitError
    except ImportError:
        return Exception
    base: type[Exception] = BaseInferenceToolkitError
    return base


class RequestError(_error_base()):  # type: ignore[misc]
    """A client error: ``status_code`` 400 (bad body), 406 (bad Accept) or 415 (bad Content-Type)."""

    def __init__(self, status_code: int, message: str, phrase: str = "") -> None:
        Exception.__init__(self, message)
        self.status_code = status_code
        self.message = message
        self.phrase = phrase or message


@dataclass(frozen=True)
class Model:
    session: ort.InferenceSession
    input_name: str
    output_name: str
    feature_names: list[str]
    class_names: list[str]


def _providers(available: list[str]) -> list[str]:
    """onnxruntime's CUDA provider when a GPU is usable (onnxruntime-gpu lists it on any machine), else CPU."""
    try:
        from smbyoc.serving.gpu import onnx_providers  # in smbyoc's images: says once why it runs on CPU
    except ImportError:  # another serving toolkit
        return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return onnx_providers(available)


def model_fn(model_dir: str) -> Model:
    directory = Path(model_dir)
    onnx_file = directory / "model.onnx"
    if not onnx_file.is_file():
        raise FileNotFoundError(f"{onnx_file} not found: was the model trained by the default example?")
    session = ort.InferenceSession(str(onnx_file), providers=_providers(ort.get_available_providers()))
    input_name, output_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    n_features = session.get_inputs()[0].shape[1]
    n_classes = session.get_outputs()[0].shape[1]
    meta_file = directory / "model.json"
    meta: dict[str, Any] = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
    features = [str(f) for f in meta.get("feature_names", [f"f{i}" for i in range(int(n_features))])]
    classes = [str(c) for c in meta.get("class_names", [str(i) for i in range(int(n_classes))])]
    return Model(session, input_name, output_name, features, classes)


def _media_type(value: str | None) -> str:
    return (value or "").split(";")[0].strip().lower()


def _text(input_data: str | bytes) -> str:
    if isinstance(input_data, bytes):
        try:
            return input_data.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(400, "request body is not UTF-8 text") from None
    return input_data


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RequestError(400, f"{where}: expected a number, got {value!r}")
    try:
        number = float(value)
    except (ValueError, OverflowError):  # OverflowError: an integer too large for a float
        raise RequestError(400, f"{where}: expected a number, got {_short(value)}") from None
    if not math.isfinite(number):
        raise RequestError(400, f"{where}: {_short(value)} is not a finite number")
    if abs(number) > FLOAT32_MAX:
        raise RequestError(400, f"{where}: {_short(value)} is out of the model's float32 range")
    return number


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:40]}... ({len(text)} characters)"


@dataclass(frozen=True)
class Batch:
    """A decoded request: rows of values as sent, and the column names if the request gave them."""

    rows: list[list[object]]
    columns: tuple[str, ...] | None = None


def _batch_from_json(payload: object) -> Batch:
    if isinstance(payload, dict):
        key = next((k for k in ("instances", "inputs", "data") if k in payload), None)
        if key is None:
            raise RequestError(400, "JSON object needs an 'instances' list")
        payload = payload[key]
    if not isinstance(payload, list) or not payload:
        raise RequestError(400, "JSON body: expected a non-empty list of rows")
    if not isinstance(payload[0], (list, dict)):
        payload = [payload]  # one flat row
    if isinstance(payload[0], dict):
        columns = tuple(str(k) for k in payload[0])
        for i, item in enumerate(payload):
            if not isinstance(item, dict) or set(item) != set(columns):
                raise RequestError(400, f"instance {i}: expected an object with the keys of instance 0 {list(columns)}")
        return Batch([[item[c] for c in columns] for item in payload], columns)
    for i, item in enumerate(payload):
        if not isinstance(item, list):
            raise RequestError(400, f"instance {i}: expected a list of numbers, got {item!r}")
    return Batch(payload)


def _batch_from_jsonlines(text: str) -> Batch:
    rows: list[object] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError as e:
            raise RequestError(400, f"JSON Lines body: line {n} is not valid JSON: {e}") from None
        except RecursionError:
            raise RequestError(400, f"JSON Lines body: line {n} is nested too deeply") from None
        if not isinstance(rows[-1], (list, dict)):
            raise RequestError(400, f"JSON Lines body: line {n} is not a list of values or an object")
    if not rows:
        raise RequestError(400, "JSON Lines body has no rows")
    return _batch_from_json(rows)


def _batch_from_csv(text: str) -> Batch:
    try:
        lines: list[list[object]] = [
            [cell.strip() for cell in row] for row in csv.reader(io.StringIO(text)) if any(c.strip() for c in row)
        ]
    except csv.Error as e:  # an unterminated quote, a field over csv.field_size_limit()...
        raise RequestError(400, f"request body is not valid CSV: {e}") from None
    if not lines:
        raise RequestError(400, "CSV body has no rows")
    if all(_is_number(cell) for cell in lines[0]):
        return Batch(lines)
    if len(lines) == 1:
        raise RequestError(400, "CSV body has a header but no rows")
    return Batch(lines[1:], tuple(str(cell) for cell in lines[0]))


def _is_number(cell: object) -> bool:
    try:
        float(str(cell))
    except ValueError:
        return False
    return True


def input_fn(input_data: str | bytes, content_type: str) -> Batch:
    """Decode a JSON or CSV request body (values are checked by ``predict_fn``, which knows the features)."""
    media_type = _media_type(content_type)
    if media_type == JSON:
        try:
            payload = json.loads(_text(input_data))
        except ValueError as e:
            raise RequestError(400, f"request body is not valid JSON: {e}") from None
        except RecursionError:
            raise RequestError(400, "request body is not valid JSON: it is nested too deeply") from None
        return _batch_from_json(payload)
    if media_type == CSV:
        return _batch_from_csv(_text(input_data))
    if media_type in JSONLINES_ALIASES:
        return _batch_from_jsonlines(_text(input_data))
    raise RequestError(415, f"unsupported Content-Type {content_type!r} (use {JSON}, {CSV} or {JSONLINES})")


def to_array(batch: Batch, feature_names: list[str]) -> np.ndarray[Any, Any]:
    """A float32 (rows, features) array; named columns are matched to the features (extra ones ignored)."""
    expected = len(feature_names)
    if batch.columns is not None:
        missing = [f for f in feature_names if f not in batch.columns]
        if missing:
            raise RequestError(400, f"request lacks feature {missing[0]!r} (needs {', '.join(feature_names)})")
        where = [batch.columns.index(f) for f in feature_names]
        values = []
        for n, row in enumerate(batch.rows):
            if len(row) != len(batch.columns):
                raise RequestError(400, f"row {n}: {len(row)} values for {len(batch.columns)} named columns")
            values.append(
                [_number(row[c], f"row {n} feature {f!r}") for c, f in zip(where, feature_names, strict=True)]
            )
    else:
        values = []
        for n, row in enumerate(batch.rows):
            if len(row) != expected:
                raise RequestError(
                    400, f"row {n}: {len(row)} values, the model needs {expected} ({', '.join(feature_names)})"
                )
            values.append([_number(v, f"row {n} column {j}") for j, v in enumerate(row)])
    return np.asarray(values, dtype=np.float32).reshape(len(values), expected)


def predict_fn(data: Batch | np.ndarray[Any, Any], model: Model) -> dict[str, Any]:
    """Class probabilities and labels for every row."""
    batch = data if isinstance(data, Batch) else Batch(np.atleast_2d(np.asarray(data)).tolist())
    feed = {model.input_name: to_array(batch, model.feature_names)}
    probabilities = np.asarray(model.session.run([model.output_name], feed)[0])
    labels = [model.class_names[i] for i in probabilities.argmax(axis=1)]
    return {"labels": labels, "probabilities": probabilities, "class_names": model.class_names}


def output_fn(prediction: dict[str, Any], accept: str | None) -> tuple[str, str]:
    """Encode the prediction for the first supported type in ``accept``; returns (body, content type)."""
    wanted = [_media_type(a) for a in (accept or JSON).split(",")]
    for media_type in wanted:
        if media_type in (JSON, "*/*", "application/*", ""):
            predictions = [
                {"label": label, "probabilities": dict(zip(prediction["class_names"], map(float, row), strict=True))}
                for label, row in zip(prediction["labels"], prediction["probabilities"], strict=True)
            ]
            return json.dumps({"predictions": predictions}), JSON
        if media_type in JSONLINES_ALIASES:
            lines = [
                json.dumps({"label": label,
                            "probabilities": dict(zip(prediction["class_names"], map(float, row), strict=True))})
                for label, row in zip(prediction["labels"], prediction["probabilities"], strict=True)
            ]
            return "".join(line + "\n" for line in lines), JSONLINES
        if media_type in (CSV, "text/*"):
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            for label, row in zip(prediction["labels"], prediction["probabilities"], strict=True):
                writer.writerow([label, *(f"{float(p):.6g}" for p in row)])
            return out.getvalue(), CSV
    raise RequestError(406, f"unsupported Accept {accept!r} (use {JSON}, {CSV} or {JSONLINES})")
