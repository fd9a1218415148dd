"""What ``smbyoc validate`` found: one :class:`CheckResult` per check, gathered in a :class:`ValidationReport`.

A result is ``pass``, ``fail`` or ``n/a`` (the check does not apply to this image, or could not be run here;
its detail says why). The report prints one line per check and writes the two files CI systems read:
JUnit XML (a failure is a ``<failure>``, an ``n/a`` a ``<skipped>``) and JSON. Both are written to a
temporary name beside the target and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from smbyoc.errors import ConfigError
from smbyoc.jsonfile import write_json

Status = Literal["pass", "fail", "n/a"]
STATUSES: tuple[Status, ...] = ("pass", "fail", "n/a")

PASS: Status = "pass"  # noqa: S105 - a status, not a password
FAIL: Status = "fail"
NOT_APPLICABLE: Status = "n/a"

#: How the status is printed at the start of a line.
_STATUS_WORDS = {"pass": "PASS", "fail": "FAIL", "n/a": "N/A "}
#: Characters XML 1.0 cannot carry (container logs may hold any of them).
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_WHITESPACE = re.compile(r"\s+")


def one_line(text: str) -> str:
    """``text`` on one line: runs of whitespace (newlines included) become one space."""
    return _WHITESPACE.sub(" ", text).strip()


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check. ``detail`` is one line; ``log`` the container's last lines, when they help."""

    name: str
    status: Status
    detail: str
    group: str = ""
    seconds: float = 0.0
    log: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {', '.join(STATUSES)}")
        object.__setattr__(self, "detail", one_line(self.detail))

    @property
    def passed(self) -> bool:
        return self.status == PASS

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    def line(self, width: int = 20) -> str:
        """``PASS platform             linux/amd64 ...``: what the CLI prints for this check."""
        return f"{_STATUS_WORDS[self.status]} {self.name:<{width}} {self.detail}".rstrip()

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "group": self.group, "status": self.status,
                                "detail": self.detail, "seconds": round(self.seconds, 3)}
        if self.log:
            data["log"] = self.log
        return data


def passed(name: str, detail: str, **kwargs: Any) -> CheckResult:
    return CheckResult(name, PASS, detail, **kwargs)


def failed(name: str, detail: str, **kwargs: Any) -> CheckResult:
    return CheckResult(name, FAIL, detail, **kwargs)


def not_applicable(name: str, reason: str, **kwargs: Any) -> CheckResult:
    return CheckResult(name, NOT_APPLICABLE, reason, **kwargs)


@dataclass(frozen=True)
class ValidationReport:
    """Every check's result for one image, in the suite's order."""

    image: str
    results: tuple[CheckResult, ...]
    image_id: str = ""
    kinds: tuple[str, ...] = ()
    seconds: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No check failed (``n/a`` is not a failure)."""
        return not any(r.failed for r in self.results)

    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if r.failed)

    def result(self, name: str) -> CheckResult:
        """The result of the check called ``name`` (KeyError when the suite has no such check)."""
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def counts(self) -> dict[str, int]:
        return {status: sum(1 for r in self.results if r.status == status) for status in STATUSES}

    def lines(self) -> list[str]:
        """One line per check, then a summary line."""
        width = max((len(r.name) for r in self.results), default=0)
        counts = self.counts()
        verdict = "passed" if self.ok else "FAILED"
        summary = (f"{self.image}: {verdict} ({counts['pass']} passed, {counts['fail']} failed, "
                   f"{counts['n/a']} not applicable) in {self.seconds:.1f} s")
        return [r.line(width) for r in self.results] + [summary]

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "image_id": self.image_id, "kinds": list(self.kinds), "ok": self.ok,
                "seconds": round(self.seconds, 3), "counts": self.counts(), "options": dict(self.options),
                "results": [r.to_dict() for r in self.results]}

    def junit_xml(self) -> bytes:
        """The report as a JUnit XML document (one ``<testsuite>``, one ``<testcase>`` per check)."""
        counts = self.counts()
        suites = ET.Element("testsuites", name="smbyoc validate", tests=str(len(self.results)),
                            failures=str(counts["fail"]), skipped=str(counts["n/a"]), errors="0",
                            time=f"{self.seconds:.3f}")
        suite = ET.SubElement(suites, "testsuite", name=_xml_text(f"smbyoc validate {self.image}"),
                              tests=str(len(self.results)), failures=str(counts["fail"]),
                              skipped=str(counts["n/a"]), errors="0", time=f"{self.seconds:.3f}")
        properties = ET.SubElement(suite, "properties")
        for key, value in (("image", self.image), ("image_id", self.image_id), ("kinds", ",".join(self.kinds))):
            ET.SubElement(properties, "property", name=key, value=_xml_text(value))
        for r in self.results:
            case = ET.SubElement(suite, "testcase", name=r.name, classname=f"smbyoc.validate.{r.group or 'suite'}",
                                 time=f"{r.seconds:.3f}")
            if r.failed:
                failure = ET.SubElement(case, "failure", message=_xml_text(r.detail), type="ValidationFailure")
                failure.text = _xml_text(r.detail)
            elif r.status == NOT_APPLICABLE:
                ET.SubElement(case, "skipped", message=_xml_text(r.detail))
            else:
                out = ET.SubElement(case, "system-out")
                out.text = _xml_text(r.detail)
            if r.log:
                log = ET.SubElement(case, "system-err")
                log.text = _xml_text(r.log)
        ET.indent(suites)
        document: bytes = ET.tostring(suites, encoding="utf-8", xml_declaration=True)
        return document + b"\n"


def _xml_text(text: str) -> str:
    return _XML_INVALID.sub("\ufffd", text)


def check_output_path(path: Path, option: str) -> Path:
    """Refuse, before anything runs, a report path whose directory does not exist or that is a directory."""
    if path.is_dir():
        raise ConfigError("is a directory; expected a file name", key=f"{option} {path}")
    if not path.parent.is_dir():
        raise ConfigError(f"the directory {path.parent} does not exist", key=f"{option} {path}")
    return path


def write_junit(report: ValidationReport, path: Path) -> Path:
    """Write ``report`` as JUnit XML to ``path`` through a temporary name, then rename."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        tmp.write_bytes(report.junit_xml())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_report_json(report: ValidationReport, path: Path) -> Path:
    """Write ``report`` as JSON to ``path`` through a temporary name, then rename."""
    return write_json(path, report.to_dict())


def ordered(results: Iterable[CheckResult], order: Iterable[str]) -> tuple[CheckResult, ...]:
    """``results`` in the order of ``order`` (names not in it last, in their own order)."""
    rank = {name: i for i, name in enumerate(order)}
    return tuple(sorted(results, key=lambda r: rank.get(r.name, len(rank))))
