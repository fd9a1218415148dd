"""Fast paths of the endpoint front checked against their references on generated inputs: the upstream client's
header-section parser against the two-pass parser it replaced, the capture writer's record encoder against
``record_line(capture_record(...))``, and the capture writer's batching (few writes, none on the caller's thread)."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smbyoc.emulator.capture import CaptureWriter, DataCaptureConfig
from smbyoc.emulator.capture.record import (
    INPUT,
    OUTPUT,
    capture_record,
    encode_payload,
    fast_record_line,
    inference_time,
    record_line,
)
from smbyoc.emulator.upstream import UpstreamError, UpstreamLimits, _parse_fields

# ------------------------------------------------------------------------------------------------ header sections
_NAME = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REFERENCE_SECTION = re.compile(rf"(?:{_NAME}:[^\x00-\x08\x0a-\x1f\x7f]*\r\n)*")
_REFERENCE_FIELD = re.compile(rf"({_NAME}):[ \t]*([^\r\n]*)\r\n")


def reference_fields(block: bytes, limits: UpstreamLimits) -> list[tuple[str, str]] | str:
    """The parser before the one-pass regex (a full match of the section, then the fields): its fields, or "error"."""
    if not block:
        return []
    text = block.decode("utf-8", "surrogateescape") + "\r\n"
    if text.count("\r\n") > limits.max_header_fields:
        return "error"
    if _REFERENCE_SECTION.fullmatch(text) is None:
        return "error"
    return [(name, value.rstrip(" \t")) for name, value in _REFERENCE_FIELD.findall(text)]


_PIECES = [b"X-A", b"Content-Length", b"content-type", b":", b": ", b" ", b"\t", b"\r\n", b"\n", b"\r", b"\x00",
           b"\x01", b"\x7f", b"\xff", b"\xc3\xa9", b"value", b"a b", b"(", b"@", b"12", b",", b";", b"=", b'"']


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=24))
def test_the_one_pass_field_parser_agrees_with_the_reference(pieces: list[bytes]) -> None:
    block = b"".join(pieces)
    limits = UpstreamLimits(max_header_fields=6)
    expected = reference_fields(block, limits)
    try:
        got: list[tuple[str, str]] | str = _parse_fields(block, limits)
    except UpstreamError:
        got = "error"
    assert got == expected, block


@pytest.mark.parametrize("block", [
    b"Server: nginx\r\nContent-Type: application/json\r\nContent-Length: 12\r\nConnection: keep-alive",
    b"X-Empty:\r\nX-Spaces:  \t \r\nX-Inner: a \t b  ",
    b"X-A: 1\nX-B: 2",  # a bare LF inside the section
    b"X-A: 1\r\n X-B: 2",  # a folded line
])
def test_field_parser_examples(block: bytes) -> None:
    limits = UpstreamLimits()
    expected = reference_fields(block, limits)
    try:
        got: list[tuple[str, str]] | str = _parse_fields(block, limits)
    except UpstreamError:
        got = "error"
    assert got == expected


# ------------------------------------------------------------------------------------------------ capture records
_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=1500, deadline=None)
@given(request=st.one_of(st.none(), st.binary(max_size=40), _TEXT.map(str.encode)),
       response=st.one_of(st.none(), st.binary(max_size=40), _TEXT.map(str.encode)),
       content_type=st.sampled_from(["application/json", "text/csv; charset=latin-1", "image/png",
                                     "application/json; charset=utf-16"]),
       encoding=st.sampled_from(["JSON", "CSV", "BASE64"]),
       inference_id=st.one_of(st.none(), _TEXT), custom_attributes=st.one_of(st.none(), _TEXT),
       event_id=_TEXT, epoch=st.floats(min_value=0, max_value=4e9))
def test_the_fast_record_encoder_writes_the_same_bytes(request: bytes | None, response: bytes | None,
                                                       content_type: str, encoding: str, inference_id: str | None,
                                                       custom_attributes: str | None, event_id: str,
                                                       epoch: float) -> None:
    endpoint_input = None if request is None else encode_payload(request, content_type, INPUT, encoding)
    endpoint_output = None if response is None else encode_payload(response, content_type, OUTPUT, encoding)
    expected = record_line(capture_record(event_id=event_id, event_time=epoch, endpoint_input=endpoint_input,
                                          endpoint_output=endpoint_output, inference_id=inference_id,
                                          custom_attributes=custom_attributes))
    assert fast_record_line(event_id=event_id, inference_time_text=inference_time(epoch),
                            endpoint_input=endpoint_input, endpoint_output=endpoint_output,
                            inference_id=inference_id, custom_attributes=custom_attributes) == expected


def test_a_second_and_an_hour_are_what_datetime_says(tmp_path: Path) -> None:
    """The writer caches the inference time per second and the directory per hour: edges of both."""
    config = DataCaptureConfig.from_request({"EnableCapture": True, "InitialSamplingPercentage": 100,
                                             "DestinationS3Uri": str(tmp_path),
                                             "CaptureOptions": [{"CaptureMode": "Input"}]})
    writer = CaptureWriter(config, "ep")
    try:
        for epoch in (3599.9999994, 3599.9999996, 3600.0, 1710000000.5, 1710000000.9999999, 1710003599.9999996,
                      1710003600.0000001, 1710000000.0):
            assert writer._time_text(epoch) == inference_time(epoch)
            assert writer._hour(epoch) == inference_time(epoch)[:13].replace("-", "/").replace("T", "/")
    finally:
        writer.close()


# ------------------------------------------------------------------------------------------------ batching
def test_captures_are_written_in_batches_by_the_writer_thread_only(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[str] = []
    real_write = os.write

    def counted(fd: int, data: bytes | memoryview) -> int:
        writes.append(threading.current_thread().name)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", counted)
    config = DataCaptureConfig.from_request({"EnableCapture": True, "InitialSamplingPercentage": 100,
                                             "DestinationS3Uri": str(tmp_path),
                                             "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
                                             "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]}})
    with CaptureWriter(config, "ep", max_queue_records=10_000) as writer:
        for i in range(2000):
            assert writer.capture("AllTraffic" if i % 2 else "Shadow", request_body=b'{"i": %d}' % i,
                                  request_content_type="application/json", response_body=b"[1]",
                                  response_content_type="application/json", inference_id=str(i))
            if i % 500 == 0:
                time.sleep(0.06)  # let a batch go
        assert threading.current_thread().name not in writes  # nothing written on the caller's thread
    assert writer.stats.written == 2000
    assert 2 <= len(writes) <= 100, len(writes)  # (one write per record would be 2,000)
    seen = []
    for file in sorted(tmp_path.rglob("*.jsonl")):
        seen += [json.loads(line)["eventMetadata"]["inferenceId"] for line in file.read_text().splitlines()]
    assert sorted(seen, key=int) == [str(i) for i in range(2000)]
