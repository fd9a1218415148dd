"""Endpoint data capture (contract-endpoints.md §4): DataCaptureConfig, the record Model Monitor reads, the
file tree, sampling, and a writer that never blocks or raises."""

from __future__ import annotations

import base64
import copy
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from smbyoc.emulator.capture import (
    CaptureWriter,
    DataCaptureConfig,
    DataCaptureConfigError,
    capture_file_name,
    encode_payload,
    hour_prefix,
    inference_time,
    parse_record,
    percentiles,
    scan_capture_tree,
)
from smbyoc.errors import ConfigError

#: Verbatim from SDKv2 tests/data/monitor/captured-data.jsonl line 1 (contract-endpoints.md §4.2).
SDK_RECORD = (
    '{"captureData":{"endpointInput":{"observedContentType":"application/json","mode":"INPUT","data":"{\\"instances'
    '\\": [1.0, 2.0, 5.0]}","encoding":"JSON"},"endpointOutput":{"observedContentType":"application/json","mode":'
    '"OUTPUT","data":"{\\n    \\"predictions\\": [3.5, 4.0, 5.5\\n    ]\\n}","encoding":"JSON"}},"eventMetadata":'
    '{"eventId":"12b73486-e916-45de-9d82-7fa23d4a39a6","inferenceTime":"2019-11-24T07:30:50Z"},"eventVersion":"0"}'
)
FILE_NAME = re.compile(r"(\d{2})-(\d{2})-(\d{3})-([0-9a-f-]{36})\.jsonl")
BENCH_PYTHON = Path("/tmp/bench-venv/bin/python")


def request(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "EnableCapture": True,
        "InitialSamplingPercentage": 100,
        "DestinationS3Uri": str(tmp_path / "capture"),
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        "CaptureContentTypeHeader": {"CsvContentTypes": ["text/csv"], "JsonContentTypes": ["application/json"]},
    }
    base.update(changes)
    return base


def config(tmp_path: Path, **changes: Any) -> DataCaptureConfig:
    return DataCaptureConfig.from_request(request(tmp_path, **changes))


def at(hour: int, minute: int, second: int, micro: int = 0) -> float:
    return datetime(2024, 3, 11, hour, minute, second, micro, tzinfo=timezone.utc).timestamp()


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def capture_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.jsonl"))


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def invoke(writer: CaptureWriter, variant: str = "AllTraffic", **kwargs: Any) -> bool:
    kwargs.setdefault("request_body", b'{"instances": [1.0, 2.0]}')
    kwargs.setdefault("request_content_type", "application/json")
    kwargs.setdefault("response_body", b"0.25\n")
    kwargs.setdefault("response_content_type", "text/csv; charset=utf-8")
    return writer.capture(variant, **kwargs)


# ------------------------------------------------------------------------------------------ configuration
def test_a_full_config_parses_and_round_trips(tmp_path: Path) -> None:
    parsed = config(tmp_path, KmsKeyId="alias/capture-key")
    assert parsed.initial_sampling_percentage == 100
    assert parsed.destination == tmp_path / "capture"
    assert parsed.capture_input and parsed.capture_output
    assert parsed.csv_content_types == ("text/csv",) and parsed.json_content_types == ("application/json",)
    assert DataCaptureConfig.from_request(parsed.to_request()) == parsed
    assert parsed.describe() == {"EnableCapture": True, "CaptureStatus": "Started", "CurrentSamplingPercentage": 100,
                                 "DestinationS3Uri": str(tmp_path / "capture"), "KmsKeyId": "alias/capture-key"}


def test_defaults_and_destinations(tmp_path: Path) -> None:
    minimal = DataCaptureConfig.from_request({"InitialSamplingPercentage": 0, "DestinationS3Uri": "cap",
                                              "CaptureOptions": [{"CaptureMode": "InputAndOutput"}]},
                                             base_dir=tmp_path)
    assert minimal.enable_capture is True  # "defaults to enabled"
    assert minimal.destination == tmp_path / "cap"
    assert minimal.capture_input and minimal.capture_output
    assert minimal.encoding_for("text/csv") == "BASE64"  # no lists: "by default base64 encode"
    uri = config(tmp_path, DestinationS3Uri=f"file://{tmp_path}/with%20space")
    assert uri.destination == tmp_path / "with space"
    assert config(tmp_path, DestinationS3Uri=f"file://localhost{tmp_path}").destination == tmp_path
    only_input = config(tmp_path, CaptureOptions=[{"CaptureMode": "Input"}], EnableCapture=False)
    assert only_input.capture_input and not only_input.capture_output
    assert only_input.describe()["CaptureStatus"] == "Stopped"


BAD_CONFIGS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("unknown", lambda r: r.update(Bucket="x"), "DataCaptureConfig.Bucket: unknown field"),
    ("enable", lambda r: r.update(EnableCapture="true"), "DataCaptureConfig.EnableCapture: must be true or false, "
                                                         "not a string"),
    ("pct-missing", lambda r: r.pop("InitialSamplingPercentage"), "DataCaptureConfig.InitialSamplingPercentage: "
                                                                  "is required"),
    ("pct-str", lambda r: r.update(InitialSamplingPercentage="30"), "InitialSamplingPercentage: must be an integer "
                                                                    "from 0 to 100, not a string"),
    ("pct-bool", lambda r: r.update(InitialSamplingPercentage=True), "not a boolean"),
    ("pct-float", lambda r: r.update(InitialSamplingPercentage=30.5), "not a number"),
    ("pct-low", lambda r: r.update(InitialSamplingPercentage=-1), "must be from 0 to 100, not -1"),
    ("pct-high", lambda r: r.update(InitialSamplingPercentage=101), "must be from 0 to 100, not 101"),
    ("dest-missing", lambda r: r.pop("DestinationS3Uri"), "DataCaptureConfig.DestinationS3Uri: is required"),
    ("dest-type", lambda r: r.update(DestinationS3Uri=7), "DestinationS3Uri: must be a string, not an integer"),
    ("dest-empty", lambda r: r.update(DestinationS3Uri=""), "DestinationS3Uri: must not be empty"),
    ("dest-long", lambda r: r.update(DestinationS3Uri="/" + "d" * 512), "has 513 characters; the limit is 512"),
    ("dest-s3", lambda r: r.update(DestinationS3Uri="s3://bucket/capture"), "s3:// destinations are not supported"),
    ("dest-https", lambda r: r.update(DestinationS3Uri="https://b.s3.amazonaws.com/c"), "https:// destinations are"),
    ("dest-ftp", lambda r: r.update(DestinationS3Uri="ftp://host/c"), "the scheme ftp:// is not supported"),
    ("dest-host", lambda r: r.update(DestinationS3Uri="file://server/c"), "must be file:///absolute/path"),
    ("dest-query", lambda r: r.update(DestinationS3Uri="file:///c?x=1"), "must be file:///absolute/path"),
    ("dest-relative-uri", lambda r: r.update(DestinationS3Uri="file:c"), "must name an absolute path"),
    ("kms-null", lambda r: r.update(KmsKeyId=None), "DataCaptureConfig.KmsKeyId: must be a string, not null"),
    ("kms-long", lambda r: r.update(KmsKeyId="k" * 2049), "KmsKeyId: has 2049 characters; the limit is 2048"),
    ("kms-pattern", lambda r: r.update(KmsKeyId="alias/my key"), "KmsKeyId: 'alias/my key' does not match"),
    ("opts-missing", lambda r: r.pop("CaptureOptions"), "DataCaptureConfig.CaptureOptions: is required"),
    ("opts-type", lambda r: r.update(CaptureOptions="Input"), "CaptureOptions: must be a list"),
    ("opts-empty", lambda r: r.update(CaptureOptions=[]), "CaptureOptions: must have 1 to 32 items, not 0"),
    ("opts-many", lambda r: r.update(CaptureOptions=[{"CaptureMode": "Input"}] * 33), "1 to 32 items, not 33"),
    ("opt-type", lambda r: r.update(CaptureOptions=["Input"]), "CaptureOptions[0]: must be an object"),
    ("opt-unknown", lambda r: r.update(CaptureOptions=[{"CaptureMode": "Input", "Mode": 1}]),
     "DataCaptureConfig.CaptureOptions[0].Mode: unknown field"),
    ("opt-missing", lambda r: r.update(CaptureOptions=[{}]), "CaptureOptions[0].CaptureMode: is required"),
    ("opt-sdk-word", lambda r: r.update(CaptureOptions=[{"CaptureMode": "Input"}, {"CaptureMode": "REQUEST"}]),
     "DataCaptureConfig.CaptureOptions[1].CaptureMode: must be one of Input, Output, InputAndOutput, not 'REQUEST'"),
    ("opt-mode-type", lambda r: r.update(CaptureOptions=[{"CaptureMode": 1}]), "not an integer"),
    ("header-type", lambda r: r.update(CaptureContentTypeHeader=["text/csv"]),
     "DataCaptureConfig.CaptureContentTypeHeader: must be an object, not a list"),
    ("header-unknown", lambda r: r["CaptureContentTypeHeader"].update(XmlContentTypes=["text/xml"]),
     "DataCaptureConfig.CaptureContentTypeHeader.XmlContentTypes: unknown field"),
    ("csv-type", lambda r: r["CaptureContentTypeHeader"].update(CsvContentTypes="text/csv"),
     "CaptureContentTypeHeader.CsvContentTypes: must be a list of content types, not a string"),
    ("csv-empty", lambda r: r["CaptureContentTypeHeader"].update(CsvContentTypes=[]), "must have 1 to 10 items"),
    ("json-many", lambda r: r["CaptureContentTypeHeader"].update(JsonContentTypes=[f"a/b{i}" for i in range(11)]),
     "CaptureContentTypeHeader.JsonContentTypes: must have 1 to 10 items, not 11"),
    ("ct-type", lambda r: r["CaptureContentTypeHeader"].update(CsvContentTypes=[1]),
     "CaptureContentTypeHeader.CsvContentTypes[0]: must be a string, not an integer"),
    ("ct-empty", lambda r: r["CaptureContentTypeHeader"].update(JsonContentTypes=["application/json", ""]),
     "CaptureContentTypeHeader.JsonContentTypes[1]: must have 1 to 256 characters, not 0"),
    ("ct-long", lambda r: r["CaptureContentTypeHeader"].update(CsvContentTypes=["text/" + "c" * 252]),
     "must have 1 to 256 characters, not 257"),
    ("ct-params", lambda r: r["CaptureContentTypeHeader"].update(CsvContentTypes=["text/csv; charset=utf-8"]),
     "CsvContentTypes[0]: 'text/csv; charset=utf-8' is not a media type"),
    ("ct-plus", lambda r: r["CaptureContentTypeHeader"].update(JsonContentTypes=["application/ld+json"]),
     "is not a media type"),
]


@pytest.mark.parametrize(("change", "message"), [(c, m) for _, c, m in BAD_CONFIGS],
                         ids=[name for name, _, _ in BAD_CONFIGS])
def test_every_bad_field_is_named(tmp_path: Path, change: Callable[[dict[str, Any]], None], message: str) -> None:
    bad = copy.deepcopy(request(tmp_path))
    change(bad)
    with pytest.raises(DataCaptureConfigError) as caught:
        DataCaptureConfig.from_request(bad)
    assert message in str(caught.value)
    assert isinstance(caught.value, ConfigError) and len(caught.value.problems) == 1
    assert str(caught.value).startswith("DataCaptureConfig.")


def test_all_problems_are_reported_at_once_and_a_non_object_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataCaptureConfigError) as caught:
        DataCaptureConfig.from_request({"InitialSamplingPercentage": 200, "CaptureOptions": [{"CaptureMode": "x"}],
                                        "Extra": 1})
    paths = [path for path, _ in caught.value.problems]
    assert paths == ["DataCaptureConfig.Extra", "DataCaptureConfig.InitialSamplingPercentage",
                     "DataCaptureConfig.DestinationS3Uri", "DataCaptureConfig.CaptureOptions[0].CaptureMode"]
    assert str(caught.value).count("DataCaptureConfig.") == 4
    with pytest.raises(DataCaptureConfigError, match=r"^DataCaptureConfig: must be an object, not a list$"):
        DataCaptureConfig.from_request([])


def test_kms_key_is_accepted_and_ignored_with_a_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="smbyoc")
    config(tmp_path, KmsKeyId="arn:aws:kms:us-east-1:123456789012:key/abcd-12")
    assert any("KmsKeyId" in r.getMessage() and "ignored" in r.getMessage() for r in caplog.records)


def test_encoding_by_content_type(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    parsed = config(tmp_path)
    assert parsed.encoding_for("text/csv") == "CSV"
    assert parsed.encoding_for("text/csv; charset=utf-8") == "CSV"  # the DG's sample: parameters ignored
    assert parsed.encoding_for("Application/JSON") == "JSON"
    assert parsed.encoding_for("application/jsonlines") == "BASE64"
    assert parsed.encoding_for(None) == "BASE64"
    caplog.set_level(logging.WARNING, logger="smbyoc")
    both = config(tmp_path, CaptureContentTypeHeader={"CsvContentTypes": ["text/plain"],
                                                      "JsonContentTypes": ["TEXT/plain"]})
    assert both.encoding_for("text/plain") == "CSV"
    assert any("as CSV and as JSON" in r.getMessage() for r in caplog.records)


def test_config_members_and_limits_agree_with_botocore(tmp_path: Path) -> None:
    botocore_session = pytest.importorskip("botocore.session")
    from smbyoc.emulator.capture import config as dc

    model = botocore_session.get_session().get_service_model("sagemaker")
    shape = model.shape_for("DataCaptureConfig")
    assert tuple(shape.members) == dc.FIELDS
    assert set(shape.required_members) == {"InitialSamplingPercentage", "DestinationS3Uri", "CaptureOptions"}
    assert shape.members["InitialSamplingPercentage"].metadata == {"min": 0, "max": 100}
    assert shape.members["DestinationS3Uri"].metadata["max"] == dc.MAX_DESTINATION
    assert shape.members["KmsKeyId"].metadata == {"min": 0, "max": dc.MAX_KMS_KEY,
                                                   "pattern": dc.KMS_KEY_PATTERN.pattern}
    assert shape.members["CaptureOptions"].metadata == {"min": 1, "max": dc.MAX_CAPTURE_OPTIONS}
    assert tuple(model.shape_for("CaptureOption").members["CaptureMode"].enum) == dc.CAPTURE_MODES
    header = model.shape_for("CaptureContentTypeHeader")
    assert tuple(header.members) == dc.CONTENT_TYPE_FIELDS
    for member in header.members.values():
        assert member.metadata == {"min": 1, "max": dc.MAX_CONTENT_TYPES}
        assert member.member.metadata == {"min": 1, "max": dc.MAX_CONTENT_TYPE,
                                          "pattern": dc.CONTENT_TYPE_PATTERN.pattern}


@pytest.mark.oracle
@pytest.mark.skipif(not BENCH_PYTHON.exists(), reason="the bench venv with the sagemaker SDK (v2) is missing")
def test_the_sdk_data_capture_config_is_accepted(tmp_path: Path) -> None:
    """sagemaker.model_monitor.DataCaptureConfig._to_request_dict() (what Model.deploy sends) parses unchanged,
    but for the destination (s3:// stands for a local directory here)."""
    script = (
        "import json\nfrom unittest import mock\nfrom sagemaker.model_monitor import DataCaptureConfig\n"
        "session = mock.MagicMock(sagemaker_config=None)\n"
        "configs = [DataCaptureConfig(enable_capture=True, destination_s3_uri='s3://b/p', sagemaker_session=session),"
        " DataCaptureConfig(enable_capture=False, sampling_percentage=30, destination_s3_uri='s3://b/p',"
        " kms_key_id='alias/k', capture_options=['RESPONSE'], csv_content_types=['text/csv', 'application/x-csv'],"
        " json_content_types=['application/jsonlines'], sagemaker_session=session)]\n"
        "print('RESULT ' + json.dumps([c._to_request_dict() for c in configs]))\n"
    )
    done = subprocess.run([str(BENCH_PYTHON), "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SAGEMAKER_SUPPRESS_V2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    sdk = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    parsed = [DataCaptureConfig.from_request({**r, "DestinationS3Uri": str(tmp_path)}) for r in sdk]
    assert parsed[0].capture_modes == ("Input", "Output") and parsed[0].initial_sampling_percentage == 20
    assert parsed[0].encoding_for("text/csv") == "CSV" and parsed[0].encoding_for("application/json") == "JSON"
    assert parsed[1].capture_modes == ("Output",) and not parsed[1].enable_capture
    assert parsed[1].kms_key_id == "alias/k" and parsed[1].encoding_for("application/jsonlines") == "JSON"
    with pytest.raises(DataCaptureConfigError, match="s3:// destinations are not supported yet"):
        DataCaptureConfig.from_request(sdk[0])


# ------------------------------------------------------------------------------------------ the record
def shape(value: Any) -> Any:
    """Keys (in order) and value types of a JSON value, recursively."""
    if isinstance(value, dict):
        return [(key, shape(item)) for key, item in value.items()]
    return type(value).__name__


def test_a_record_has_the_shape_of_the_sdks_captured_data(tmp_path: Path) -> None:
    with CaptureWriter(config(tmp_path), "my-endpoint", clock=lambda: at(7, 30, 50, 900_000)) as writer:
        invoke(writer, request_body=b'{"instances": [1.0, 2.0, 5.0]}',
               response_body=b'{\n    "predictions": [3.5, 4.0, 5.5\n    ]\n}',
               response_content_type="application/json")
    [file] = capture_files(tmp_path / "capture")
    [record] = lines(file)
    assert shape(record) == shape(json.loads(SDK_RECORD))
    assert record["captureData"] == json.loads(SDK_RECORD)["captureData"]  # text kept as sent, not re-parsed
    metadata = record["eventMetadata"]
    assert uuid.UUID(metadata["eventId"]).version == 4
    assert metadata["inferenceTime"] == "2024-03-11T07:30:50Z"  # UTC, to the second
    assert record["eventVersion"] == "0"
    assert file.read_bytes().count(b"\n") == 1 and b": " not in file.read_bytes().split(b'"data"')[0]


def test_inference_id_custom_attributes_and_modes(tmp_path: Path) -> None:
    with CaptureWriter(config(tmp_path), "ep", clock=lambda: at(7, 0, 0)) as writer:
        invoke(writer, inference_id="order-17", custom_attributes='{"testIndicator": "true"}')
    [record] = lines(capture_files(tmp_path / "capture")[0])
    assert list(record["eventMetadata"]) == ["eventId", "inferenceId", "inferenceTime", "customAttributes"]
    assert record["eventMetadata"]["inferenceId"] == "order-17"
    assert record["eventMetadata"]["customAttributes"] == ['{"testIndicator": "true"}']
    assert record["captureData"]["endpointInput"]["mode"] == "INPUT"
    assert record["captureData"]["endpointOutput"] == {"observedContentType": "text/csv; charset=utf-8",
                                                       "mode": "OUTPUT", "data": "0.25\n", "encoding": "CSV"}
    for modes, present in (("Input", ["endpointInput"]), ("Output", ["endpointOutput"])):
        target = tmp_path / modes
        with CaptureWriter(config(tmp_path, DestinationS3Uri=str(target), CaptureOptions=[{"CaptureMode": modes}]),
                           "ep") as writer:
            invoke(writer)
        assert list(lines(capture_files(target)[0])[0]["captureData"]) == present
    output_only = config(tmp_path, DestinationS3Uri=str(tmp_path / "none"), CaptureOptions=[{"CaptureMode": "Output"}])
    with CaptureWriter(output_only, "ep") as writer:
        assert not invoke(writer, response_body=None)  # a failed invocation: no output to capture
    assert writer.stats.dropped_empty == 1 and not (tmp_path / "none").exists()


def test_payload_encodings() -> None:
    assert encode_payload(b"1,2\n", "text/csv", "INPUT", "CSV") == {
        "observedContentType": "text/csv", "mode": "INPUT", "data": "1,2\n", "encoding": "CSV"}
    binary = bytes(range(256))
    png = encode_payload(binary, "image/png", "OUTPUT", "BASE64")
    assert png["encoding"] == "BASE64" and base64.b64decode(png["data"]) == binary
    assert encode_payload(b"x", None, "INPUT", "BASE64")["observedContentType"] == "application/octet-stream"
    latin = encode_payload("é,1".encode("latin-1"), "text/csv; charset=ISO-8859-1", "INPUT", "CSV")
    assert latin["data"] == "é,1" and latin["encoding"] == "CSV"
    not_text = encode_payload(b"\xff\xfe{", "application/json", "INPUT", "JSON")  # not UTF-8: kept losslessly
    assert not_text["encoding"] == "BASE64" and base64.b64decode(not_text["data"]) == b"\xff\xfe{"
    odd_charset = encode_payload(b"abc", "text/csv; charset=base64", "INPUT", "CSV")
    assert odd_charset["encoding"] == "BASE64"
    for body, charset in ((b"+2AA-", "utf-7"), (b"\\ud800", "unicode_escape")):  # decode to a lone surrogate
        surrogate = encode_payload(body, f"text/csv; charset={charset}", "INPUT", "CSV")
        assert surrogate["encoding"] == "BASE64" and base64.b64decode(surrogate["data"]) == body
        json.dumps(surrogate).encode("utf-8")  # the record line can be written


def test_time_and_name_helpers() -> None:
    assert inference_time(at(23, 59, 59, 999_999)) == "2024-03-11T23:59:59Z"
    assert hour_prefix(at(23, 59, 59, 999_999)) == "2024/03/11/23"
    assert hour_prefix(at(0, 0, 0) + 86400 * 21) == "2024/04/01/00"
    name = capture_file_name(at(12, 32, 18, 648_500))
    match = FILE_NAME.fullmatch(name)
    assert match and match.groups()[:3] == ("32", "18", "648") and uuid.UUID(match.group(4)).version == 4
    assert percentiles([]) is None
    assert percentiles(list(range(1, 101))) == {"min": 1, "p50": 50, "p90": 90, "p99": 99, "max": 100}


def test_the_sdk_record_parses_and_bad_lines_say_why() -> None:
    record = parse_record(SDK_RECORD)
    assert record.request is not None and record.request.body() == b'{"instances": [1.0, 2.0, 5.0]}'
    assert record.response is not None and record.response.encoding == "JSON"
    assert record.event_id == "12b73486-e916-45de-9d82-7fa23d4a39a6" and record.inference_id is None
    good = json.loads(SDK_RECORD)
    cases: list[tuple[Any, str]] = [
        ([], "a record is a JSON object, not a list"),
        ({**good, "captureData": None}, "captureData is missing"),
        ({**good, "captureData": {}}, "neither endpointInput nor endpointOutput"),
        ({**good, "captureData": {"endpointInput": {**good["captureData"]["endpointInput"], "mode": "OUTPUT"}}},
         "captureData.endpointInput.mode is 'OUTPUT', not 'INPUT'"),
        ({**good, "captureData": {"endpointInput": {**good["captureData"]["endpointInput"], "encoding": "XML"}}},
         "encoding is 'XML'"),
        ({**good, "captureData": {"endpointInput": {**good["captureData"]["endpointInput"], "data": 1}}},
         "captureData.endpointInput.data is missing or not a string"),
        ({**good, "captureData": {"endpointInput": {"observedContentType": "a/b", "mode": "INPUT", "data": "*",
                                                    "encoding": "BASE64"}}}, "not valid base64"),
        ({**good, "eventMetadata": {"inferenceTime": "2019-11-24T07:30:50Z"}}, "eventId is missing"),
        ({**good, "eventMetadata": {"eventId": "e", "inferenceTime": "2019-11-24 07:30:50"}}, "not a UTC time"),
        ({**good, "eventMetadata": {**good["eventMetadata"], "inferenceId": 3}}, "inferenceId is not a string"),
        ({**good, "eventVersion": 0}, "eventVersion is missing or not a string"),
    ]
    for value, reason in cases:
        with pytest.raises(ValueError, match=re.escape(reason)):
            parse_record(json.dumps(value))
    with pytest.raises(ValueError, match="not JSON"):
        parse_record('{"captureData": ')


# ------------------------------------------------------------------------------------------ sampling
def test_sampling_follows_the_percentage_and_is_repeatable(tmp_path: Path) -> None:
    with CaptureWriter(config(tmp_path, InitialSamplingPercentage=30), "ep", seed=7,
                       clock=lambda: at(9, 0, 0)) as writer:
        taken = [invoke(writer) for _ in range(2000)]
    stats = writer.stats
    # 2000 draws at p = 0.3: mean 600, standard deviation 20.5; the seed makes the count fixed, this bound
    # (4 standard deviations) says it is the configured share
    assert 518 <= sum(taken) <= 682
    assert stats.sampled == sum(taken) and stats.not_sampled == 2000 - sum(taken) and stats.written == sum(taken)
    assert sum(len(lines(f)) for f in capture_files(tmp_path / "capture")) == sum(taken)
    same = CaptureWriter(config(tmp_path, InitialSamplingPercentage=30, EnableCapture=False), "ep", seed=7)
    assert [same.sample() for _ in range(2000)] == taken
    none = CaptureWriter(config(tmp_path, InitialSamplingPercentage=0, EnableCapture=False), "ep", seed=1)
    every = CaptureWriter(config(tmp_path, InitialSamplingPercentage=100, EnableCapture=False), "ep", seed=1)
    assert not any(none.sample() for _ in range(1000)) and all(every.sample() for _ in range(1000))


def test_the_callers_own_draw_overrides_sampling(tmp_path: Path) -> None:
    with CaptureWriter(config(tmp_path, InitialSamplingPercentage=0), "ep") as writer:
        assert invoke(writer, sampled=True) and invoke(writer, "Shadow", sampled=True)
        assert not invoke(writer)
    assert writer.stats.written == 2 and writer.stats.not_sampled == 1


def test_disabled_capture_writes_nothing(tmp_path: Path) -> None:
    writer = CaptureWriter(config(tmp_path, EnableCapture=False), "ep")
    assert not invoke(writer) and writer.describe()["CaptureStatus"] == "Stopped"
    writer.close()
    assert not (tmp_path / "capture").exists() and writer.stats.sampled == 0


# ------------------------------------------------------------------------------------------ files
def test_files_are_laid_out_by_the_events_utc_hour_and_roll_on_the_hour(tmp_path: Path) -> None:
    times = iter([at(10, 59, 59, 500_000), at(10, 59, 59, 900_000), at(11, 0, 0, 200_000), at(10, 59, 59, 950_000)])
    with CaptureWriter(config(tmp_path), "my-endpoint", clock=lambda: next(times)) as writer:
        for i in range(4):
            invoke(writer, inference_id=str(i))
    root = tmp_path / "capture"
    files = capture_files(root)
    by_hour = {}
    for file in files:
        relative = file.relative_to(root).parts
        assert relative[:2] == ("my-endpoint", "AllTraffic") and FILE_NAME.fullmatch(relative[-1])
        by_hour.setdefault("/".join(relative[2:6]), []).append(file)
    assert sorted(by_hour) == ["2024/03/11/10", "2024/03/11/11"]
    # hour 10: the first file (closed when hour 11 began) and a new one for the late event
    ten = sorted(by_hour["2024/03/11/10"], key=lambda f: [r["eventMetadata"]["inferenceId"] for r in lines(f)])
    assert [[r["eventMetadata"]["inferenceId"] for r in lines(f)] for f in ten] == [["0", "1"], ["3"]]
    assert ten[0].name.startswith("59-59-500-") and ten[1].name.startswith("59-59-950-")
    [eleven] = by_hour["2024/03/11/11"]
    assert eleven.name.startswith("00-00-200-") and lines(eleven)[0]["eventMetadata"]["inferenceId"] == "2"
    assert not list(root.rglob("*.partial"))
    assert writer.stats.files == 3


def test_files_roll_by_size(tmp_path: Path) -> None:
    with CaptureWriter(config(tmp_path), "ep", max_file_bytes=600, clock=lambda: at(3, 0, 0)) as writer:
        for _ in range(10):
            invoke(writer)
    files = capture_files(tmp_path / "capture")
    record_size = len((files[0].read_bytes().splitlines(keepends=True))[0])
    per_file = -(-600 // record_size)
    assert [len(lines(f)) for f in files] == [per_file] * (10 // per_file) + ([10 % per_file] if 10 % per_file else [])


def test_an_open_file_is_invisible_until_it_is_rolled_by_age(tmp_path: Path) -> None:
    fake = [100.0]
    root = tmp_path / "capture"
    writer = CaptureWriter(config(tmp_path), "ep", roll_seconds=0.2, monotonic=lambda: fake[0])
    try:
        invoke(writer)
        assert wait_until(lambda: bool(list(root.rglob(".*.jsonl.partial"))))
        assert capture_files(root) == []  # a reader sees no half-written file
        fake[0] += 1.0
        assert wait_until(lambda: len(capture_files(root)) == 1)
        assert not list(root.rglob("*.partial")) and len(lines(capture_files(root)[0])) == 1
        invoke(writer)
        assert writer.flush() and len(capture_files(root)) == 2
    finally:
        writer.close()
    assert not invoke(writer) and writer.stats.dropped_closed == 1 and writer.describe()["CaptureStatus"] == "Stopped"


# ------------------------------------------------------------------------------------------ never blocks or raises
class StalledWriter(CaptureWriter):
    """A writer whose thread stops at the first record until released."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        super().__init__(*args, **kwargs)

    def _write(self, item: Any) -> None:
        self.entered.set()
        self.release.wait(60)
        super()._write(item)


def test_a_full_queue_drops_and_counts_and_never_blocks(tmp_path: Path) -> None:
    writer = StalledWriter(config(tmp_path), "ep", max_queue_records=5, clock=lambda: at(4, 0, 0))
    try:
        assert invoke(writer) and writer.entered.wait(10)
        results: list[bool] = []
        caller = threading.Thread(target=lambda: results.extend(invoke(writer) for _ in range(100)))
        caller.start()
        caller.join(30)
        assert not caller.is_alive(), "capture() blocked on a stalled writer"
        assert results.count(True) == 5 and results.count(False) == 95
        assert writer.stats.dropped_queue_full == 95 and writer.stats.queued == 6
    finally:
        writer.release.set()
        writer.close()
    assert writer.stats.written == 6


def test_the_queue_is_bounded_in_bytes_too(tmp_path: Path) -> None:
    writer = StalledWriter(config(tmp_path), "ep", max_queue_bytes=100)
    try:
        assert invoke(writer) and writer.entered.wait(10)
        assert invoke(writer, request_body=b"1" * 60, response_body=b"2" * 30)
        assert not invoke(writer, request_body=b"1" * 20, response_body=b"")
        assert writer.stats.dropped_queue_full == 1
    finally:
        writer.release.set()
        writer.close()


def test_a_file_where_a_directory_should_be_is_counted_and_logged_once(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="smbyoc")
    (tmp_path / "capture").mkdir()
    (tmp_path / "capture" / "ep").write_text("not a directory")
    with CaptureWriter(config(tmp_path), "ep") as writer:
        assert all(invoke(writer) for _ in range(5))
    stats = writer.stats
    assert stats.write_errors == 5 and stats.written == 0
    assert [*stats.errors] == ["mkdir:ENOTDIR"] and stats.errors["mkdir:ENOTDIR"] == 5
    warnings = [r.getMessage() for r in caplog.records if "cannot mkdir" in r.getMessage()]
    assert len(warnings) == 1 and "ep/AllTraffic" in warnings[0]


def test_a_full_disk_mid_record_leaves_only_whole_records(tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes the kernel refuse writes past a size (EFBIG), the way a full disk does (ENOSPC)."""
    script = f"""
import json, resource, sys
from smbyoc.emulator.capture import CaptureWriter, DataCaptureConfig
config = DataCaptureConfig.from_request({{"InitialSamplingPercentage": 100, "DestinationS3Uri": {str(tmp_path)!r},
    "CaptureOptions": [{{"CaptureMode": "Input"}}], "CaptureContentTypeHeader": {{"CsvContentTypes": ["text/csv"]}}}})
resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, resource.RLIM_INFINITY))
with CaptureWriter(config, "ep", clock=lambda: 1710000000.0) as writer:
    for i in range(8):
        writer.capture("AllTraffic", request_body=(str(i) * 2000).encode(), request_content_type="text/csv")
print(json.dumps(writer.stats.to_dict()))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    [file] = capture_files(tmp_path)
    records = lines(file)  # every line parses: the cut record was removed
    assert stats["written"] == len(records) == 4 and file.stat().st_size <= 10_000
    assert stats["errors"] == {"write:EFBIG": 4} and stats["write_errors"] == 4
    assert [r["captureData"]["endpointInput"]["data"][0] for r in records] == ["0", "1", "2", "3"]


def test_capture_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with CaptureWriter(config(tmp_path), "ep") as writer:
        assert not writer.capture("../escape", request_body=b"x", request_content_type="text/csv")
        assert not writer.capture("AllTraffic", request_body=None,  # type: ignore[arg-type]
                                  request_content_type="text/csv", event_time="soon")  # type: ignore[arg-type]
    assert writer.stats.dropped_invalid == 1 and writer.stats.errors["internal"] == 1
    assert not (tmp_path / "capture").exists()
    with pytest.raises(ConfigError, match="EndpointName"):
        CaptureWriter(config(tmp_path), "my/endpoint")


def test_concurrent_variants_never_interleave(tmp_path: Path) -> None:
    per_thread, padding = 150, "x" * 20_000
    with CaptureWriter(config(tmp_path), "ep", max_queue_records=10_000, max_queue_bytes=1 << 30) as writer:
        def send(variant: str, worker: int) -> None:
            for i in range(per_thread):
                body = json.dumps({"variant": variant, "worker": worker, "i": i, "pad": padding}).encode()
                assert invoke(writer, variant, request_body=body, response_body=body,
                              response_content_type="application/json", inference_id=f"{variant}-{worker}-{i}")

        threads = [threading.Thread(target=send, args=(variant, worker))
                   for variant in ("AllTraffic", "ShadowVariant") for worker in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    seen = set()
    for file in capture_files(tmp_path / "capture"):
        variant = file.relative_to(tmp_path / "capture").parts[1]
        for record in lines(file):
            body = json.loads(record["captureData"]["endpointInput"]["data"])
            assert body["variant"] == variant
            assert json.loads(record["captureData"]["endpointOutput"]["data"]) == body
            seen.add(record["eventMetadata"]["inferenceId"])
    assert len(seen) == 2 * 3 * per_thread == writer.stats.written


def test_the_tree_scan_separates_records_unfinished_and_foreign_files(tmp_path: Path) -> None:
    with CaptureWriter(config(tmp_path), "ep", clock=lambda: at(5, 0, 0)) as writer:
        invoke(writer, "AllTraffic")
    root = tmp_path / "capture"
    hour = root / "ep" / "AllTraffic" / "2024" / "03" / "11" / "05"
    (hour / ".00-00-000-x.jsonl.partial").write_text("{")
    (root / "notes.jsonl").write_text("{}\n")
    tree = scan_capture_tree(root)
    assert [(e, v) for e, v, _ in tree.files] == [("ep", "AllTraffic")]
    assert tree.unfinished == [(hour / ".00-00-000-x.jsonl.partial").resolve()]
    assert tree.ignored == [(root / "notes.jsonl").resolve()]
    [record] = list(tree.records())
    assert record.endpoint == "ep" and record.variant == "AllTraffic" and record.line == 1
    assert [(e, v) for e, v, _ in scan_capture_tree(root / "ep" / "AllTraffic").files] == [("ep", "AllTraffic")]
    with pytest.raises(ConfigError, match="is not a directory"):
        scan_capture_tree(hour / tree.files[0][2].name)


def test_the_writer_lets_go_of_the_gil_between_chunks_of_a_batch(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch is encoded in chunks with a short sleep between them, so that the front's thread, which shares the GIL
    with the writer, never waits out a whole batch (up to the interpreter's 5 ms switch interval)."""
    from types import SimpleNamespace

    from smbyoc.emulator.capture import writer as writer_module

    naps: list[float] = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        time.sleep(seconds)

    monkeypatch.setattr(writer_module, "time", SimpleNamespace(**{**vars(time), "sleep": sleep}))
    monkeypatch.setattr(writer_module, "BATCH_SECONDS", 5.0)  # one batch: the 256th record wakes the writer
    with CaptureWriter(config(tmp_path), "ep") as writer:
        for _ in range(writer_module.BATCH_RECORDS):
            assert invoke(writer)
        assert writer.flush()
        written = writer.stats.written
    assert written == writer_module.BATCH_RECORDS
    chunks = [n for n in naps if n == writer_module.YIELD_SECONDS]
    assert len(chunks) == writer_module.BATCH_RECORDS // writer_module.YIELD_EVERY
