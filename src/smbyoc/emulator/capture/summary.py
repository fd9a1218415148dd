"""What ``smbyoc capture summary`` reports of a capture tree: per endpoint and variant counts, content types,
encodings, payload sizes and event times (:class:`CaptureSummary`), and one ``--csv`` row per record."""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from smbyoc.emulator.capture.record import INFERENCE_TIME_FORMAT, CapturedRecord
from smbyoc.emulator.capture.tree import CaptureTree

LATENCY_NOTE = ("not in the records: the capture record (eventMetadata: eventId, inferenceId, inferenceTime, "
                "customAttributes) has no latency field; SageMaker reports latency as CloudWatch metrics")


def percentiles(values: Sequence[int | float]) -> dict[str, float] | None:
    """Nearest-rank p50/p90/p99, min and max of ``values`` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)

    def rank(p: int) -> float:
        return ordered[max(0, math.ceil(len(ordered) * p / 100) - 1)]

    return {"min": ordered[0], "p50": rank(50), "p90": rank(90), "p99": rank(99), "max": ordered[-1]}


@dataclass
class VariantSummary:
    """What the records of one endpoint variant hold."""

    endpoint: str
    variant: str
    records: int = 0
    files: set[Path] = field(default_factory=set)
    first_event: str | None = None
    last_event: str | None = None
    request_content_types: collections.Counter[str] = field(default_factory=collections.Counter)
    response_content_types: collections.Counter[str] = field(default_factory=collections.Counter)
    request_encodings: collections.Counter[str] = field(default_factory=collections.Counter)
    response_encodings: collections.Counter[str] = field(default_factory=collections.Counter)
    request_bytes: list[int] = field(default_factory=list)
    response_bytes: list[int] = field(default_factory=list)
    with_inference_id: int = 0
    with_custom_attributes: int = 0
    event_versions: collections.Counter[str] = field(default_factory=collections.Counter)

    def add(self, record: CapturedRecord) -> None:
        self.records += 1
        if record.file is not None:
            self.files.add(record.file)
        when = record.event_time.strftime(INFERENCE_TIME_FORMAT)
        self.first_event = min(self.first_event or when, when)
        self.last_event = max(self.last_event or when, when)
        for payload, types, encodings, sizes in (
                (record.request, self.request_content_types, self.request_encodings, self.request_bytes),
                (record.response, self.response_content_types, self.response_encodings, self.response_bytes)):
            if payload is not None:
                types[payload.observed_content_type] += 1
                encodings[payload.encoding] += 1
                sizes.append(len(payload.body()))
        self.with_inference_id += record.inference_id is not None
        self.with_custom_attributes += record.custom_attributes is not None
        self.event_versions[record.event_version] += 1

    def to_dict(self) -> dict[str, Any]:
        span = None
        if self.first_event and self.last_event:
            first = datetime.strptime(self.first_event, INFERENCE_TIME_FORMAT)
            span = (datetime.strptime(self.last_event, INFERENCE_TIME_FORMAT) - first).total_seconds()
        return {
            "endpoint": self.endpoint, "variant": self.variant, "records": self.records, "files": len(self.files),
            "first_event": self.first_event, "last_event": self.last_event, "span_seconds": span,
            "request_content_types": dict(self.request_content_types),
            "response_content_types": dict(self.response_content_types),
            "request_encodings": dict(self.request_encodings), "response_encodings": dict(self.response_encodings),
            "request_bytes": percentiles(self.request_bytes), "response_bytes": percentiles(self.response_bytes),
            "with_inference_id": self.with_inference_id, "with_custom_attributes": self.with_custom_attributes,
            "event_versions": dict(self.event_versions),
            "latency": None, "latency_note": LATENCY_NOTE,
        }


@dataclass
class CaptureSummary:
    """Per endpoint/variant summaries of a capture tree; :meth:`add` each record of ``tree.records()``."""

    tree: CaptureTree
    variants: dict[tuple[str, str], VariantSummary] = field(default_factory=dict)

    def add(self, record: CapturedRecord) -> None:
        key = (record.endpoint, record.variant)
        if key not in self.variants:
            self.variants[key] = VariantSummary(*key)
        self.variants[key].add(record)

    @property
    def records(self) -> int:
        return sum(v.records for v in self.variants.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.tree.root),
            "records": self.records,
            "files": len(self.tree.files),
            "variants": [self.variants[key].to_dict() for key in sorted(self.variants)],
            "malformed_count": len(self.tree.malformed),
            "malformed": [{"file": str(m.file), "line": m.line, "reason": m.reason} for m in self.tree.malformed],
            "unfinished_files": [str(p) for p in self.tree.unfinished],
            "ignored_files": [str(p) for p in self.tree.ignored],
        }


#: Columns of ``smbyoc capture summary --csv``: ``*_data`` is the text for CSV/JSON, base64 for BASE64.
CSV_COLUMNS = ("endpoint", "variant", "inference_time", "event_id", "inference_id", "request_content_type",
               "request_encoding", "request_data", "response_content_type", "response_encoding", "response_data")


def csv_row(record: CapturedRecord) -> dict[str, str]:
    """One ``--csv`` row for ``record`` (empty cells for what it does not hold)."""
    row = {"endpoint": record.endpoint, "variant": record.variant, "inference_time": record.inference_time,
           "event_id": record.event_id, "inference_id": record.inference_id or ""}
    for side, payload in (("request", record.request), ("response", record.response)):
        row[f"{side}_content_type"] = payload.observed_content_type if payload else ""
        row[f"{side}_encoding"] = payload.encoding if payload else ""
        row[f"{side}_data"] = payload.data if payload else ""
    return row
