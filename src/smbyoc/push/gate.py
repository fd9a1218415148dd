"""The validate gate: ``smbyoc push`` refuses an image that fails ``smbyoc validate`` (unless ``--skip-validate``).

:mod:`smbyoc.validate` is imported when the gate runs, not before: pushing with ``--skip-validate`` needs none
of it, and importing :mod:`smbyoc.push` stays free.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, cast

from smbyoc.errors import SmbyocError

Progress = Callable[[str], None]
DETAIL_MAX = 160


class CheckResultLike(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def detail(self) -> str: ...


class ValidationReportLike(Protocol):
    @property
    def ok(self) -> bool: ...

    def failures(self) -> Sequence[CheckResultLike]: ...


class ValidateFn(Protocol):
    def __call__(self, image: str, *, progress: Progress | None = None) -> ValidationReportLike: ...


def refusal(image: str, failures: Sequence[CheckResultLike]) -> str:
    """One line: the image, every failed check (with its detail, shortened), and the way out."""
    parts = []
    for check in failures:
        detail = " ".join(str(check.detail or "").split())
        if len(detail) > DETAIL_MAX:
            detail = detail[: DETAIL_MAX - 3] + "..."
        parts.append(f"{check.name} ({detail})" if detail else check.name)
    count = len(parts)
    listed = "; ".join(parts) if parts else "no check named"
    return (f"not pushed: {image} failed smbyoc validate ({count} failed check{'s' if count != 1 else ''}: {listed}); "
            f"run `smbyoc validate {image}` for details, or pass --skip-validate")


def load_validate() -> ValidateFn:
    try:
        module = importlib.import_module("smbyoc.validate")
    except ModuleNotFoundError as e:
        if e.name != "smbyoc.validate":
            raise
        raise SmbyocError("cannot run the validate gate: smbyoc.validate is not installed; pass --skip-validate "
                          "to push without it") from e
    return cast(ValidateFn, module.validate_image)


def require_valid(image: str, *, progress: Progress | None = None, validate: ValidateFn | None = None) -> None:
    """Run ``validate_image(image)``; raise SmbyocError with :func:`refusal`'s line when a check fails."""
    report = (validate or load_validate())(image, progress=progress)
    if not report.ok:
        raise SmbyocError(refusal(image, report.failures()))


def require_valid_report(image: str, image_id: str, report_path: Path) -> None:
    """Gate on a report an earlier ``smbyoc validate IMAGE --json FILE`` wrote (CI validates once, with the model
    and payload the image needs, then pushes): the report must be for this very image (same image ID) and pass.
    """
    import json

    try:
        data = json.loads(report_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SmbyocError(f"--validate-report {report_path}: no such file") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise SmbyocError(f"--validate-report {report_path}: not a `smbyoc validate --json` report ({e})") from e
    if not isinstance(data, dict) or "ok" not in data or "image_id" not in data:
        raise SmbyocError(f"--validate-report {report_path}: not a `smbyoc validate --json` report "
                          "(no 'ok' and 'image_id')")
    if data["image_id"] != image_id:
        raise SmbyocError(f"not pushed: --validate-report {report_path} is for image {data['image_id'] or '?'} "
                          f"({data.get('image', '?')}), not {image} ({image_id}); validate this image again")
    if data["ok"] is not True:
        results = data.get("results")
        failed = [check for check in (results if isinstance(results, list) else [])
                  if isinstance(check, dict) and check.get("status") == "fail"]
        names = ", ".join(str(check.get("name")) for check in failed) or "see the report"
        raise SmbyocError(f"not pushed: {image} failed smbyoc validate ({names}) according to --validate-report "
                          f"{report_path}")
