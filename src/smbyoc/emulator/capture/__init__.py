"""Endpoint data capture, SageMaker's side (contract-endpoints.md §4): ``DataCaptureConfig``, the JSON Lines
record Model Monitor reads, and the ``{dest}/{endpoint}/{variant}/yyyy/mm/dd/hh/*.jsonl`` tree it reads it from.

This package owns that tree and both writes it (:class:`CaptureWriter`, called by the endpoint front once per
invocation and variant, shadow variants included) and reads it back (:func:`scan_capture_tree`,
:class:`CaptureSummary`, used by ``smbyoc capture summary``). It imports nothing of the front.

* :mod:`.config` — ``DataCaptureConfig.from_request`` and its validation (§4.1);
* :mod:`.record` — one record: building, encoding and parsing it back (§4.2);
* :mod:`.tree` — the file layout: names of hour directories and files, scanning a tree (§4.3);
* :mod:`.writer` — :class:`CaptureWriter`: sampling, the queue, the writer thread, file rolling, counters;
* :mod:`.summary` — what ``smbyoc capture summary`` reports, and its ``--csv`` rows.

A local directory (or a ``file://`` URI) stands for the S3 prefix. Everything here is the standard library only.
"""

from smbyoc.emulator.capture.config import DataCaptureConfig, DataCaptureConfigError, destination_path, media_type
from smbyoc.emulator.capture.record import (
    BASE64,
    CSV,
    JSON,
    CapturedPayload,
    CapturedRecord,
    capture_record,
    encode_payload,
    inference_time,
    parse_record,
    record_line,
)
from smbyoc.emulator.capture.summary import CSV_COLUMNS, CaptureSummary, VariantSummary, csv_row, percentiles
from smbyoc.emulator.capture.tree import CaptureTree, Malformed, capture_file_name, hour_prefix, scan_capture_tree
from smbyoc.emulator.capture.writer import CaptureStats, CaptureWriter

__all__ = [
    "BASE64",
    "CSV",
    "CSV_COLUMNS",
    "JSON",
    "CaptureStats",
    "CaptureSummary",
    "CaptureTree",
    "CaptureWriter",
    "CapturedPayload",
    "CapturedRecord",
    "DataCaptureConfig",
    "DataCaptureConfigError",
    "Malformed",
    "VariantSummary",
    "capture_file_name",
    "capture_record",
    "csv_row",
    "destination_path",
    "encode_payload",
    "hour_prefix",
    "inference_time",
    "media_type",
    "parse_record",
    "percentiles",
    "record_line",
    "scan_capture_tree",
]
