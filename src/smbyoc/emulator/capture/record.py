"""One capture record (contract-endpoints.md §4.2): the JSON Lines line SageMaker writes per captured invocation,
``captureData.endpointInput`` / ``endpointOutput`` plus ``eventMetadata``, built (:func:`capture_record`,
:func:`record_line`) and parsed back (:func:`parse_record`)."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from json.encoder import encode_basestring as _quote  # what json.dumps(ensure_ascii=False) quotes strings with
from pathlib import Path
from typing import Any

CSV, JSON, BASE64 = "CSV", "JSON", "BASE64"
ENCODINGS = (CSV, JSON, BASE64)
INPUT, OUTPUT = "INPUT", "OUTPUT"
EVENT_VERSION = "0"
#: What the record says a request or response without a Content-Type was (RFC 9110 §8.3: a recipient may
#: assume it); SageMaker's own choice is not documented.
DEFAULT_CONTENT_TYPE = "application/octet-stream"
#: ``eventMetadata.inferenceTime``: UTC to the second (§4.2).
INFERENCE_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z")


def json_kind(value: object) -> str:
    """``value``'s type in JSON words, for error messages."""
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
             tuple: "a list", dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def inference_time(epoch: float) -> str:
    """``eventMetadata.inferenceTime`` for a POSIX time: UTC, to the second."""
    return datetime.fromtimestamp(epoch, timezone.utc).strftime(INFERENCE_TIME_FORMAT)


def _decode_text(body: bytes, content_type: str) -> str | None:
    """``body`` as text in the Content-Type's charset (UTF-8 when none), or None when it does not decode."""
    charset = "utf-8"
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip():
            charset = value.strip().strip('"')
    try:
        text = body.decode(charset)  # a bytes-to-bytes codec (charset=base64) is a LookupError here
        text.encode("utf-8")  # (utf-7 or unicode_escape can decode to lone surrogates, which JSON cannot carry)
    except (LookupError, UnicodeError, ValueError):
        return None
    return text


def encode_payload(body: bytes, content_type: str | None, mode: str, encoding: str) -> dict[str, str]:
    """``captureData.endpointInput`` / ``endpointOutput`` (§4.2): ``data`` is the text itself for CSV and JSON
    (not re-parsed) and base64 for BASE64. A CSV/JSON body that is not text in its charset is captured as
    BASE64 (lossless; the record stays valid JSON)."""
    observed = content_type if content_type is not None else DEFAULT_CONTENT_TYPE
    if encoding in (CSV, JSON):
        text = _decode_text(body, observed)
        if text is not None:
            return {"observedContentType": observed, "mode": mode, "data": text, "encoding": encoding}
    return {"observedContentType": observed, "mode": mode, "data": base64.b64encode(body).decode("ascii"),
            "encoding": BASE64}


def capture_record(*, event_id: str, event_time: float, endpoint_input: Mapping[str, str] | None = None,
                   endpoint_output: Mapping[str, str] | None = None, inference_id: str | None = None,
                   custom_attributes: str | None = None) -> dict[str, Any]:
    """One line of a capture file as a dict, keys in the order SageMaker writes them (§4.2).

    ``inferenceId`` (the caller's InferenceId) goes into ``eventMetadata`` after ``eventId``; the
    X-Amzn-SageMaker-Custom-Attributes value goes into ``eventMetadata.customAttributes`` as a one-item list
    (Model Monitor's record reader knows the key; AWS's preprocessing samples read ``custom_attribute[0]``)."""
    data: dict[str, Any] = {}
    if endpoint_input is not None:
        data["endpointInput"] = dict(endpoint_input)
    if endpoint_output is not None:
        data["endpointOutput"] = dict(endpoint_output)
    metadata: dict[str, Any] = {"eventId": event_id}
    if inference_id is not None:
        metadata["inferenceId"] = inference_id
    metadata["inferenceTime"] = inference_time(event_time)
    if custom_attributes is not None:
        metadata["customAttributes"] = [custom_attributes]
    return {"captureData": data, "eventMetadata": metadata, "eventVersion": EVENT_VERSION}


def record_line(record: Mapping[str, Any]) -> bytes:
    """``record`` as one JSON Lines line (compact, UTF-8, newline-terminated)."""
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def _payload_json(payload: Mapping[str, str]) -> str:
    return (f'{{"observedContentType":{_quote(payload["observedContentType"])},"mode":{_quote(payload["mode"])},'
            f'"data":{_quote(payload["data"])},"encoding":{_quote(payload["encoding"])}}}')


def fast_record_line(*, event_id: str, inference_time_text: str, endpoint_input: Mapping[str, str] | None,
                     endpoint_output: Mapping[str, str] | None, inference_id: str | None,
                     custom_attributes: str | None) -> bytes:
    """``record_line(capture_record(...))``, byte for byte, without building the dicts (the capture writer's
    thread encodes every captured invocation): ``inference_time_text`` is :func:`inference_time`'s text; every
    value a string (or None where the record leaves it out)."""
    data = []
    if endpoint_input is not None:
        data.append('"endpointInput":' + _payload_json(endpoint_input))
    if endpoint_output is not None:
        data.append('"endpointOutput":' + _payload_json(endpoint_output))
    metadata = '"eventId":' + _quote(event_id)
    if inference_id is not None:
        metadata += ',"inferenceId":' + _quote(inference_id)
    metadata += ',"inferenceTime":' + _quote(inference_time_text)
    if custom_attributes is not None:
        metadata += ',"customAttributes":[' + _quote(custom_attributes) + "]"
    return ('{"captureData":{' + ",".join(data) + '},"eventMetadata":{' + metadata + '},"eventVersion":'
            + _quote(EVENT_VERSION) + "}\n").encode("utf-8")


@dataclass(frozen=True)
class CapturedPayload:
    """``endpointInput`` or ``endpointOutput`` of a record as read back."""

    observed_content_type: str
    mode: str
    data: str
    encoding: str

    def body(self) -> bytes:
        """The bytes that were captured."""
        return base64.b64decode(self.data) if self.encoding == BASE64 else self.data.encode("utf-8")


@dataclass(frozen=True)
class CapturedRecord:
    """One capture record as read back, with where it was found."""

    event_id: str
    inference_time: str
    request: CapturedPayload | None
    response: CapturedPayload | None
    inference_id: str | None = None
    custom_attributes: Any = None
    event_version: str = EVENT_VERSION
    endpoint: str = ""
    variant: str = ""
    file: Path | None = None
    line: int = 0

    @property
    def event_time(self) -> datetime:
        return datetime.strptime(self.inference_time[:19] + "Z", INFERENCE_TIME_FORMAT).replace(tzinfo=timezone.utc)


def _payload(data: Mapping[str, Any], key: str, mode: str) -> CapturedPayload | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"captureData.{key} is {json_kind(value)}, not an object")
    for name in ("observedContentType", "mode", "data", "encoding"):
        if not isinstance(value.get(name), str):
            raise ValueError(f"captureData.{key}.{name} is missing or not a string")
    if value["mode"] != mode:
        raise ValueError(f"captureData.{key}.mode is {value['mode']!r}, not {mode!r}")
    if value["encoding"] not in ENCODINGS:
        raise ValueError(f"captureData.{key}.encoding is {value['encoding']!r}, not one of {', '.join(ENCODINGS)}")
    if value["encoding"] == BASE64:
        try:
            base64.b64decode(value["data"], validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"captureData.{key}.data is not valid base64: {e}") from e
    for name in ("observedContentType", "data"):
        try:
            value[name].encode("utf-8")
        except UnicodeEncodeError:  # (JSON's "\ud800": valid JSON, not text)
            raise ValueError(f"captureData.{key}.{name} is not valid Unicode text (a lone surrogate)") from None
    return CapturedPayload(value["observedContentType"], value["mode"], value["data"], value["encoding"])


def parse_record(line: str | bytes) -> CapturedRecord:
    """One line of a capture file, checked against §4.2; ValueError says what is wrong."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"not JSON: {e}") from e
    except RecursionError:
        raise ValueError("not a capture record: JSON nested deeper than the parser goes") from None
    if not isinstance(record, dict):
        raise ValueError(f"a record is a JSON object, not {json_kind(record)}")
    data = record.get("captureData")
    if not isinstance(data, dict):
        raise ValueError("captureData is missing or not an object")
    request = _payload(data, "endpointInput", INPUT)
    response = _payload(data, "endpointOutput", OUTPUT)
    if request is None and response is None:
        raise ValueError("captureData has neither endpointInput nor endpointOutput")
    metadata = record.get("eventMetadata")
    if not isinstance(metadata, dict):
        raise ValueError("eventMetadata is missing or not an object")
    event_id, when = metadata.get("eventId"), metadata.get("inferenceTime")
    if not isinstance(event_id, str) or not event_id:
        raise ValueError("eventMetadata.eventId is missing or not a string")
    if not isinstance(when, str) or not _TIME_RE.fullmatch(when):
        raise ValueError(f"eventMetadata.inferenceTime {when!r} is not a UTC time YYYY-MM-DDTHH:MM:SSZ")
    try:
        datetime.strptime(when[:19] + "Z", INFERENCE_TIME_FORMAT)
    except ValueError:  # the shape, not a date: 2024-02-30, 99:99:99
        raise ValueError(f"eventMetadata.inferenceTime {when!r} is not a real date and time") from None
    inference_id = metadata.get("inferenceId")
    if inference_id is not None and not isinstance(inference_id, str):
        raise ValueError("eventMetadata.inferenceId is not a string")
    version = record.get("eventVersion")
    if not isinstance(version, str):
        raise ValueError("eventVersion is missing or not a string")
    return CapturedRecord(event_id=event_id, inference_time=when, request=request, response=response,
                          inference_id=inference_id, custom_attributes=metadata.get("customAttributes"),
                          event_version=version)
