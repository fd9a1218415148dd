"""``CreateEndpointConfig.DataCaptureConfig`` (contract-endpoints.md §4.1): :meth:`DataCaptureConfig.from_request`
checks every field the way the API does and reports every bad one in one :class:`DataCaptureConfigError`; a local
directory (or a ``file://`` URI) stands for the S3 prefix."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from smbyoc.emulator.capture.record import BASE64, CSV, DEFAULT_CONTENT_TYPE, JSON, json_kind
from smbyoc.errors import ConfigError

log = logging.getLogger(__name__)

SECTION = "DataCaptureConfig"
#: ``CaptureOption.CaptureMode`` (BOTO-SM).
CAPTURE_MODES = ("Input", "Output", "InputAndOutput")
#: ``CaptureContentTypeHeader`` list members (BOTO-SM).
CONTENT_TYPE_PATTERN = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9])*\/[a-zA-Z0-9](-*[a-zA-Z0-9.])*")
KMS_KEY_PATTERN = re.compile(r"[a-zA-Z0-9:/_-]*")
MAX_DESTINATION, MAX_KMS_KEY, MAX_CAPTURE_OPTIONS, MAX_CONTENT_TYPES, MAX_CONTENT_TYPE = 512, 2048, 32, 10, 256
FIELDS = ("EnableCapture", "InitialSamplingPercentage", "DestinationS3Uri", "KmsKeyId", "CaptureOptions",
          "CaptureContentTypeHeader")
CONTENT_TYPE_FIELDS = ("CsvContentTypes", "JsonContentTypes")


class DataCaptureConfigError(ConfigError):
    """``DataCaptureConfig`` is malformed; ``problems`` lists every bad field as ``(path, why)``."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:
            super().__init__(self.problems[0][1], key=self.problems[0][0])
        else:
            super().__init__("; ".join(f"{path}: {why}" for path, why in self.problems))


def destination_path(uri: str, base_dir: Path | None = None) -> Path:
    """The local directory a ``DestinationS3Uri`` stands for: a path (relative ones against ``base_dir`` or the
    working directory) or a ``file://`` URI. ``s3://`` and ``https://`` raise ValueError (not supported yet)."""
    scheme = re.match(r"([a-zA-Z][a-zA-Z0-9+.-]*)://", uri)
    if scheme or uri.lower().startswith("file:"):
        name = scheme.group(1).lower() if scheme else "file"
        if name in ("s3", "https"):
            raise ValueError(f"{name}:// destinations are not supported yet: give a local directory or a file:// "
                             f"URI, which stands for the S3 prefix")
        if name != "file":
            raise ValueError(f"the scheme {name}:// is not supported: give a local directory or a file:// URI")
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise ValueError("a file:// URI must be file:///absolute/path (no host, query or fragment)")
        path = Path(unquote(parts.path))
        if not parts.path.startswith("/"):
            raise ValueError("a file:// URI must name an absolute path (file:///absolute/path)")
        return path
    path = Path(uri).expanduser()
    return path if path.is_absolute() else (base_dir or Path.cwd()) / path


def media_type(content_type: str) -> str:
    """``type/subtype`` of a Content-Type, lower-cased, parameters dropped (``text/csv; charset=utf-8`` is
    ``text/csv``: the DG's sample captures it with encoding CSV)."""
    return content_type.split(";", 1)[0].strip().lower()


@dataclass(frozen=True)
class DataCaptureConfig:
    """A validated ``CreateEndpointConfig.DataCaptureConfig`` (§4.1); ``destination`` is the local directory
    that stands for ``DestinationS3Uri``."""

    initial_sampling_percentage: int
    destination_uri: str
    destination: Path
    capture_modes: tuple[str, ...]
    enable_capture: bool = True
    kms_key_id: str | None = None
    csv_content_types: tuple[str, ...] = ()
    json_content_types: tuple[str, ...] = ()

    @classmethod
    def from_request(cls, request: object, *, base_dir: Path | None = None) -> DataCaptureConfig:
        """Parse the boto3-shaped dict; every bad or unknown field is reported in one
        :class:`DataCaptureConfigError` (``DataCaptureConfig.<path>: <why>``)."""
        problems: list[tuple[str, str]] = []

        def bad(path: str, why: str) -> None:
            problems.append((f"{SECTION}{path}", why))

        if not isinstance(request, Mapping):
            raise DataCaptureConfigError([(SECTION, f"must be an object, not {json_kind(request)}")])
        for key in request:
            if key not in FIELDS:
                bad(f".{key}", f"unknown field (the fields are {', '.join(FIELDS)})")

        enable = request.get("EnableCapture", True)
        if not isinstance(enable, bool):
            bad(".EnableCapture", f"must be true or false, not {json_kind(enable)}")

        percentage = request.get("InitialSamplingPercentage")
        if "InitialSamplingPercentage" not in request:
            bad(".InitialSamplingPercentage", "is required (an integer from 0 to 100)")
        elif not isinstance(percentage, int) or isinstance(percentage, bool):
            bad(".InitialSamplingPercentage", f"must be an integer from 0 to 100, not {json_kind(percentage)}")
        elif not 0 <= percentage <= 100:
            bad(".InitialSamplingPercentage", f"must be from 0 to 100, not {percentage}")

        uri = request.get("DestinationS3Uri")
        destination = Path()
        if "DestinationS3Uri" not in request:
            bad(".DestinationS3Uri", "is required (a local directory or file:// URI stands for the S3 prefix)")
        elif not isinstance(uri, str):
            bad(".DestinationS3Uri", f"must be a string, not {json_kind(uri)}")
        elif not uri:
            bad(".DestinationS3Uri", "must not be empty")
        elif len(uri) > MAX_DESTINATION:
            bad(".DestinationS3Uri", f"has {len(uri)} characters; the limit is {MAX_DESTINATION}")
        else:
            try:
                destination = destination_path(uri, base_dir)
            except ValueError as e:
                bad(".DestinationS3Uri", f"{uri!r}: {e}")

        kms = request.get("KmsKeyId")
        if kms is not None or "KmsKeyId" in request:
            if not isinstance(kms, str):
                bad(".KmsKeyId", f"must be a string, not {json_kind(kms)}")
            elif len(kms) > MAX_KMS_KEY:
                bad(".KmsKeyId", f"has {len(kms)} characters; the limit is {MAX_KMS_KEY}")
            elif not KMS_KEY_PATTERN.fullmatch(kms):
                bad(".KmsKeyId", f"{kms!r} does not match {KMS_KEY_PATTERN.pattern}")

        modes = _parse_capture_options(request, bad)
        csv_types, json_types = _parse_content_type_header(request, bad)

        if problems:
            raise DataCaptureConfigError(problems)
        assert isinstance(uri, str) and isinstance(percentage, int)
        if kms:
            log.info("DataCaptureConfig.KmsKeyId %s is accepted and ignored: local capture files are not "
                     "encrypted", kms)
        both = {media_type(t) for t in csv_types} & {media_type(t) for t in json_types}
        if both:
            log.warning("DataCaptureConfig.CaptureContentTypeHeader lists %s as CSV and as JSON: captured as CSV",
                        ", ".join(sorted(both)))
        return cls(initial_sampling_percentage=percentage, destination_uri=uri, destination=destination,
                   capture_modes=modes, enable_capture=bool(enable), kms_key_id=kms,
                   csv_content_types=csv_types, json_content_types=json_types)

    @property
    def capture_input(self) -> bool:
        return any(mode in ("Input", "InputAndOutput") for mode in self.capture_modes)

    @property
    def capture_output(self) -> bool:
        return any(mode in ("Output", "InputAndOutput") for mode in self.capture_modes)

    def encoding_for(self, content_type: str | None) -> str:
        """``CSV``, ``JSON`` or ``BASE64`` for a request or response Content-Type: the lists are matched on the
        media type, case-insensitively, parameters ignored; CSV wins when a type is in both; no lists → BASE64."""
        wanted = media_type(content_type if content_type is not None else DEFAULT_CONTENT_TYPE)
        if wanted in {media_type(t) for t in self.csv_content_types}:
            return CSV
        if wanted in {media_type(t) for t in self.json_content_types}:
            return JSON
        return BASE64

    def to_request(self) -> dict[str, Any]:
        """The boto3-shaped dict again (``from_request(c.to_request()) == c``)."""
        request: dict[str, Any] = {
            "EnableCapture": self.enable_capture,
            "InitialSamplingPercentage": self.initial_sampling_percentage,
            "DestinationS3Uri": self.destination_uri,
            "CaptureOptions": [{"CaptureMode": mode} for mode in self.capture_modes],
        }
        if self.kms_key_id is not None:
            request["KmsKeyId"] = self.kms_key_id
        header = {name: list(types) for name, types in (("CsvContentTypes", self.csv_content_types),
                                                        ("JsonContentTypes", self.json_content_types)) if types}
        if header:
            request["CaptureContentTypeHeader"] = header
        return request

    def describe(self, *, started: bool | None = None) -> dict[str, Any]:
        """``DescribeEndpoint.DataCaptureConfig`` (§4.1)."""
        running = self.enable_capture if started is None else started
        described: dict[str, Any] = {
            "EnableCapture": self.enable_capture,
            "CaptureStatus": "Started" if running else "Stopped",
            "CurrentSamplingPercentage": self.initial_sampling_percentage,
            "DestinationS3Uri": self.destination_uri,
        }
        if self.kms_key_id is not None:
            described["KmsKeyId"] = self.kms_key_id
        return described


def _parse_capture_options(request: Mapping[str, Any], bad: Callable[[str, str], None]) -> tuple[str, ...]:
    options = request.get("CaptureOptions")
    if "CaptureOptions" not in request:
        bad(".CaptureOptions", f"is required (a list of {{CaptureMode: {' | '.join(CAPTURE_MODES)}}})")
        return ()
    if not isinstance(options, (list, tuple)):
        bad(".CaptureOptions", f"must be a list of {{CaptureMode: ...}}, not {json_kind(options)}")
        return ()
    if not 1 <= len(options) <= MAX_CAPTURE_OPTIONS:
        bad(".CaptureOptions", f"must have 1 to {MAX_CAPTURE_OPTIONS} items, not {len(options)}")
    modes: list[str] = []
    for i, option in enumerate(options):
        path = f".CaptureOptions[{i}]"
        if not isinstance(option, Mapping):
            bad(path, f"must be an object {{CaptureMode: ...}}, not {json_kind(option)}")
            continue
        for key in option:
            if key != "CaptureMode":
                bad(f"{path}.{key}", "unknown field (the field is CaptureMode)")
        mode = option.get("CaptureMode")
        if "CaptureMode" not in option:
            bad(f"{path}.CaptureMode", f"is required (one of {', '.join(CAPTURE_MODES)})")
        elif mode not in CAPTURE_MODES:
            shown = repr(mode) if isinstance(mode, str) else json_kind(mode)
            bad(f"{path}.CaptureMode", f"must be one of {', '.join(CAPTURE_MODES)}, not {shown}")
        else:
            modes.append(mode)
    return tuple(modes)


def _parse_content_type_header(request: Mapping[str, Any],
                               bad: Callable[[str, str], None]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    header = request.get("CaptureContentTypeHeader")
    if "CaptureContentTypeHeader" not in request:
        return (), ()
    if not isinstance(header, Mapping):
        bad(".CaptureContentTypeHeader", f"must be an object, not {json_kind(header)}")
        return (), ()
    for key in header:
        if key not in CONTENT_TYPE_FIELDS:
            bad(f".CaptureContentTypeHeader.{key}", f"unknown field (the fields are {', '.join(CONTENT_TYPE_FIELDS)})")
    found: list[tuple[str, ...]] = []
    for name in CONTENT_TYPE_FIELDS:
        path = f".CaptureContentTypeHeader.{name}"
        types = header.get(name)
        if name not in header:
            found.append(())
            continue
        if not isinstance(types, (list, tuple)):
            bad(path, f"must be a list of content types, not {json_kind(types)}")
            found.append(())
            continue
        if not 1 <= len(types) <= MAX_CONTENT_TYPES:
            bad(path, f"must have 1 to {MAX_CONTENT_TYPES} items, not {len(types)}")
        kept = []
        for i, value in enumerate(types):
            if not isinstance(value, str):
                bad(f"{path}[{i}]", f"must be a string, not {json_kind(value)}")
            elif not 1 <= len(value) <= MAX_CONTENT_TYPE:
                bad(f"{path}[{i}]", f"must have 1 to {MAX_CONTENT_TYPE} characters, not {len(value)}")
            elif not CONTENT_TYPE_PATTERN.fullmatch(value):
                bad(f"{path}[{i}]", f"{value!r} is not a media type such as text/csv (no parameters; the pattern "
                    f"is {CONTENT_TYPE_PATTERN.pattern})")
            else:
                kept.append(value)
        found.append(tuple(kept))
    return found[0], found[1]
