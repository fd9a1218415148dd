"""``smbyoc validate``: a conformance suite that runs any image through SageMaker's container contract.

:func:`validate_image` returns a :class:`ValidationReport` with one :class:`CheckResult` per check
(``pass``, ``fail`` or ``n/a`` with the reason); the report prints one line per check and writes JUnit
XML and JSON for CI (:func:`write_junit`, :func:`write_report_json`).

Importing this package is cheap: the names below are loaded on first use, so the CLI can read
:mod:`smbyoc.validate.checks` without loading the suite. It never imports the Docker SDK.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from smbyoc.validate.checks import ALL_CHECKS

if TYPE_CHECKING:
    from smbyoc.validate.report import CheckResult, ValidationReport, write_junit, write_report_json
    from smbyoc.validate.suite import ValidateOptions, validate_image

_LAZY = {
    "CheckResult": "smbyoc.validate.report",
    "ValidationReport": "smbyoc.validate.report",
    "write_junit": "smbyoc.validate.report",
    "write_report_json": "smbyoc.validate.report",
    "ValidateOptions": "smbyoc.validate.suite",
    "validate_image": "smbyoc.validate.suite",
}

__all__ = ["ALL_CHECKS", "CheckResult", "ValidateOptions", "ValidationReport", "validate_image", "write_junit",
           "write_report_json"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
