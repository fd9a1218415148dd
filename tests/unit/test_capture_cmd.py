"""``smbyoc capture summary`` on a tree the real CaptureWriter wrote."""

from __future__ import annotations

import base64
import csv
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from helpers import cli_runner
from smbyoc.cli import _register, cli
from smbyoc.emulator.capture import CSV_COLUMNS, CaptureWriter, DataCaptureConfig

PNG = bytes(range(256)) * 3


def at(hour: int, minute: int, second: int) -> float:
    return datetime(2024, 3, 11, hour, minute, second, tzinfo=timezone.utc).timestamp()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Endpoint ``ep-one``: AllTraffic (JSON in, CSV out, 10 records across an hour, inference ids on the even ones)
    and ShadowVariant (2 PNG in, JSON out)."""
    root = tmp_path / "capture"
    config = DataCaptureConfig.from_request({
        "InitialSamplingPercentage": 100, "DestinationS3Uri": str(root),
        "CaptureOptions": [{"CaptureMode": "InputAndOutput"}],
        "CaptureContentTypeHeader": {"CsvContentTypes": ["text/csv"], "JsonContentTypes": ["application/json"]}})
    with CaptureWriter(config, "ep-one") as writer:
        for i in range(10):
            writer.capture("AllTraffic", request_body=json.dumps({"x": [i] * (i + 1)}).encode(),
                           request_content_type="application/json", response_body=f"{i / 10}\n".encode(),
                           response_content_type="text/csv; charset=utf-8",
                           inference_id=str(i) if i % 2 == 0 else None, event_time=at(10, 59, 55) + i)
        for i in range(2):
            writer.capture("ShadowVariant", request_body=PNG[: 100 * (i + 1)], request_content_type="image/png",
                           response_body=b'{"label": "cat"}', response_content_type="application/json",
                           event_time=at(11, 0, 1) + i, custom_attributes="trace=1")
    assert writer.stats.written == 12
    return root


def run(*args: str) -> Result:
    _register()
    try:
        runner = cli_runner()
    except TypeError:
        runner = cli_runner()  # click >= 8.2 always keeps them apart
    return runner.invoke(cli, ["capture", "summary", *args])


def test_summary_text(tree: Path) -> None:
    result = run(str(tree))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "12 records in 3 files, 2 endpoint variants" in out
    assert "ep-one / AllTraffic: 10 records in 2 files" in out
    assert "ep-one / ShadowVariant: 2 records in 1 files" in out
    assert "2024-03-11T10:59:55Z .. 2024-03-11T11:00:04Z (9 s)" in out
    assert "application/json 10" in out and "text/csv; charset=utf-8 10" in out and "image/png 2" in out
    assert "JSON 10" in out and "CSV 10" in out and "BASE64 2" in out
    assert "in 5 of 10 records; customAttributes in 0" in out and "in 0 of 2 records; customAttributes in 2" in out
    assert "request bytes     min 100 p50 100 p90 200 p99 200 max 200" in out
    assert "latency: not in the records" in out
    assert result.stderr == ""


def test_summary_json(tree: Path) -> None:
    result = run(str(tree / "ep-one"), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["records"] == 12 and data["files"] == 3 and data["malformed_count"] == 0
    main, shadow = data["variants"]
    assert (main["endpoint"], main["variant"], shadow["variant"]) == ("ep-one", "AllTraffic", "ShadowVariant")
    assert main["first_event"] == "2024-03-11T10:59:55Z" and main["last_event"] == "2024-03-11T11:00:04Z"
    assert main["request_encodings"] == {"JSON": 10} and main["response_encodings"] == {"CSV": 10}
    sizes = sorted(len(json.dumps({"x": [i] * (i + 1)})) for i in range(10))
    assert main["request_bytes"] == {"min": sizes[0], "p50": sizes[4], "p90": sizes[8], "p99": sizes[9],
                                     "max": sizes[9]}
    assert shadow["request_content_types"] == {"image/png": 2} and shadow["with_custom_attributes"] == 2
    assert main["latency"] is None and "no latency field" in main["latency_note"]


def test_csv_export_round_trips(tree: Path, tmp_path: Path) -> None:
    target = tmp_path / "records.csv"
    result = run(str(tree), "--csv", str(target))
    assert result.exit_code == 0, result.output
    assert "wrote 12 rows to" in result.stderr
    with target.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        rows = list(reader)
    main = [r for r in rows if r["variant"] == "AllTraffic"]
    shadow = [r for r in rows if r["variant"] == "ShadowVariant"]
    assert len(main) == 10 and len(shadow) == 2 and {r["endpoint"] for r in rows} == {"ep-one"}
    by_time = sorted(main, key=lambda r: r["inference_time"])
    for i, row in enumerate(by_time):
        assert json.loads(row["request_data"]) == {"x": [i] * (i + 1)}
        assert row["response_data"] == f"{i / 10}\n" and row["response_encoding"] == "CSV"
        assert row["inference_id"] == (str(i) if i % 2 == 0 else "")
        assert row["inference_time"] == datetime.fromtimestamp(at(10, 59, 55) + i, timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
    for i, row in enumerate(sorted(shadow, key=lambda r: r["inference_time"])):
        assert row["request_encoding"] == "BASE64" and base64.b64decode(row["request_data"]) == PNG[: 100 * (i + 1)]
        assert json.loads(row["response_data"]) == {"label": "cat"}
    assert not list(tmp_path.glob(".records.csv.*"))


def append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text)


def test_malformed_lines_are_named_counted_and_skipped(tree: Path) -> None:
    shadow_file = next((tree / "ep-one" / "ShadowVariant").rglob("*.jsonl"))
    append(shadow_file, '{"captureData": \n[1, 2]\n')
    with shadow_file.open("ab") as handle:
        handle.write(b"\xff\xfe\n")
    result = run(str(tree), "--json")
    assert result.exit_code == 0, result.output
    assert f"{shadow_file}:3: not JSON" in result.stderr
    assert f"{shadow_file}:4: a record is a JSON object, not a list" in result.stderr
    assert f"{shadow_file}:5: not UTF-8" in result.stderr
    assert "3 malformed lines skipped" in result.stderr
    data = json.loads(result.stdout)
    assert data["records"] == 12 and data["malformed_count"] == 3
    assert [m["line"] for m in data["malformed"]] == [3, 4, 5]


def test_lines_that_parse_as_json_but_are_no_record_are_skipped_not_a_crash(tree: Path) -> None:
    shadow_file = next((tree / "ep-one" / "ShadowVariant").rglob("*.jsonl"))
    good = json.loads(shadow_file.read_text().splitlines()[0])
    impossible = {**good, "eventMetadata": {**good["eventMetadata"], "inferenceTime": "2024-02-30T10:00:00Z"}}
    surrogate = json.dumps({**good, "captureData": {**good["captureData"], "endpointOutput": {
        **good["captureData"]["endpointOutput"], "data": "\ud800"}}})  # valid JSON: a lone surrogate escape
    append(shadow_file, json.dumps(impossible) + "\n" + surrogate + "\n" + "[" * 100_000 + "]" * 100_000 + "\n")
    result = run(str(tree), "--json")
    assert result.exit_code == 0, result.output
    assert f"{shadow_file}:3: eventMetadata.inferenceTime '2024-02-30T10:00:00Z' is not a real date" in result.stderr
    assert f"{shadow_file}:4: captureData.endpointOutput.data is not valid Unicode text" in result.stderr
    assert f"{shadow_file}:5: not a capture record: JSON nested deeper" in result.stderr
    assert json.loads(result.stdout)["malformed_count"] == 3


def test_nothing_readable_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    hour = tmp_path / "cap" / "ep" / "AllTraffic" / "2024" / "03" / "11" / "10"
    hour.mkdir(parents=True)
    (hour / "00-00-000-x.jsonl").write_text("not json\n")
    (hour / ".00-00-001-y.jsonl.partial").write_text("{")
    target = tmp_path / "out.csv"
    result = run(str(tmp_path / "cap"), "--csv", str(target))
    assert result.exit_code == 1
    assert "00-00-000-x.jsonl:1: not JSON" in result.stderr
    assert ("no readable capture records (1 capture files, 1 malformed lines, 1 unfinished .partial files)"
            in result.stderr)
    assert not target.exists() and not list(tmp_path.glob(".out.csv.*"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(str(empty)).exit_code == 1


@pytest.mark.parametrize("what", ["file", "missing"])
def test_a_directory_that_is_not_one(tmp_path: Path, what: str) -> None:
    target = tmp_path / "capture"
    if what == "file":
        target.write_text("x")
    result = run(str(target))
    assert result.exit_code == 1
    reason = "is not a directory" if what == "file" else "does not exist"
    assert result.stderr.strip() == f"Error: {target}: {reason} (give the capture destination directory)"


def test_csv_in_a_missing_directory(tree: Path, tmp_path: Path) -> None:
    result = run(str(tree), "--csv", str(tmp_path / "no" / "such.csv"))
    assert result.exit_code == 1 and "its directory does not exist" in result.stderr


def test_unfinished_and_foreign_files_are_reported(tree: Path) -> None:
    hour = next(p.parent for p in (tree / "ep-one" / "AllTraffic").rglob("*.jsonl"))
    (hour / ".59-59-000-z.jsonl.partial").write_text('{"captureData":')
    (tree / "README.txt").write_text("notes")
    result = run(str(tree))
    assert result.exit_code == 0
    assert "1 unfinished .partial files" in result.stderr and "1 files outside the capture layout" in result.stderr
    data: dict[str, Any] = json.loads(run(str(tree), "--json").stdout)
    assert data["records"] == 12 and len(data["unfinished_files"]) == 1 and len(data["ignored_files"]) == 1
