"""The report of ``smbyoc validate``: one line per check, JUnit XML that parses, JSON, files written whole."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from smbyoc.errors import ConfigError
from smbyoc.validate.report import (
    CheckResult,
    ValidationReport,
    check_output_path,
    failed,
    not_applicable,
    ordered,
    passed,
    write_junit,
    write_report_json,
)


def sample() -> ValidationReport:
    return ValidationReport(
        image="my-model:serve", image_id="sha256:abc", kinds=("serve",), seconds=12.5,
        results=(
            passed("platform", "linux/amd64", group="image", seconds=0.01),
            failed("serve-ping", "/ping did not answer\nwithin 2 s", group="serving", seconds=4.0,
                   log="serve: starting\x1b[0m\x00 crash"),
            not_applicable("train-model", "the image does not train", group="training"),
        ),
    )


def test_a_result_is_one_line_and_has_one_of_three_statuses() -> None:
    result = failed("serve-ping", "first\n  second\tthird")
    assert result.detail == "first second third"
    assert result.line(12) == "FAIL serve-ping   first second third"
    assert passed("user", "root").line(4) == "PASS user root"
    assert not_applicable("kind", "why").line(4).startswith("N/A  kind")
    with pytest.raises(ValueError, match="status 'ok'"):
        CheckResult("x", "ok", "")  # type: ignore[arg-type]


def test_the_report_is_ok_only_without_failures_and_counts_each_status() -> None:
    report = sample()
    assert not report.ok
    assert [r.name for r in report.failures()] == ["serve-ping"]
    assert report.counts() == {"pass": 1, "fail": 1, "n/a": 1}
    assert report.result("platform").passed
    with pytest.raises(KeyError):
        report.result("nope")
    ok = ValidationReport(image="x", results=(passed("a", ""), not_applicable("b", "why")))
    assert ok.ok


def test_lines_align_the_names_and_end_with_a_summary() -> None:
    lines = sample().lines()
    assert lines[:3] == ["PASS platform    linux/amd64", "FAIL serve-ping  /ping did not answer within 2 s",
                         "N/A  train-model the image does not train"]
    assert lines[3] == "my-model:serve: FAILED (1 passed, 1 failed, 1 not applicable) in 12.5 s"


def test_junit_xml_parses_and_maps_fail_to_failure_and_na_to_skipped() -> None:
    root = ET.fromstring(sample().junit_xml())
    assert root.tag == "testsuites" and root.get("failures") == "1" and root.get("skipped") == "1"
    suite = root.find("testsuite")
    assert suite is not None
    assert suite.get("name") == "smbyoc validate my-model:serve" and suite.get("tests") == "3"
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert list(cases) == ["platform", "serve-ping", "train-model"]
    assert cases["serve-ping"].get("classname") == "smbyoc.validate.serving"
    assert cases["serve-ping"].get("time") == "4.000"
    failure = cases["serve-ping"].find("failure")
    assert failure is not None and failure.get("message") == "/ping did not answer within 2 s"
    err = cases["serve-ping"].find("system-err")
    assert err is not None and err.text is not None and "\x00" not in err.text and "crash" in err.text
    skipped = cases["train-model"].find("skipped")
    assert skipped is not None and skipped.get("message") == "the image does not train"
    assert cases["platform"].find("failure") is None and cases["platform"].find("skipped") is None
    properties = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert properties == {"image": "my-model:serve", "image_id": "sha256:abc", "kinds": "serve"}


def test_json_has_every_result_and_the_verdict() -> None:
    data = json.loads(json.dumps(sample().to_dict()))
    assert data["ok"] is False and data["counts"] == {"pass": 1, "fail": 1, "n/a": 1}
    assert [r["status"] for r in data["results"]] == ["pass", "fail", "n/a"]
    assert data["results"][1]["log"].startswith("serve: starting")
    assert "log" not in data["results"][0]


def test_reports_are_written_through_a_temporary_name(tmp_path: Path) -> None:
    junit, as_json = tmp_path / "v.xml", tmp_path / "v.json"
    junit.write_text("old", encoding="utf-8")
    write_junit(sample(), junit)
    write_report_json(sample(), as_json)
    assert ET.parse(junit).getroot().tag == "testsuites"
    assert json.loads(as_json.read_text(encoding="utf-8"))["image"] == "my-model:serve"
    assert sorted(os.listdir(tmp_path)) == ["v.json", "v.xml"]  # no partial file left


def test_a_report_path_in_a_missing_directory_or_on_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--junit .*/nowhere/v.xml: the directory .* does not exist"):
        check_output_path(tmp_path / "nowhere" / "v.xml", "--junit")
    with pytest.raises(ConfigError, match="--json .*: is a directory"):
        check_output_path(tmp_path, "--json")
    assert check_output_path(tmp_path / "v.json", "--json") == tmp_path / "v.json"


def test_ordered_follows_the_suite_order() -> None:
    results = [passed("b", ""), passed("z", ""), passed("a", "")]
    assert [r.name for r in ordered(results, ["a", "b"])] == ["a", "b", "z"]
