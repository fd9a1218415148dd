"""One ``InvokeEndpointAsync`` request as SageMaker reads it (contract-endpoints.md §6.2), and where its result goes.

:func:`parse_request` checks the request headers BOTO-RT defines, in the order of the API's table, each failure one
``ValidationError`` naming the header; then ``Body`` XOR ``InputLocation``. An ``InputLocation`` is an
``s3://bucket/key`` URI (its syntax checked now, the object read when the request runs) or a local file (an
absolute path or a ``file://`` URI, checked now) standing for the S3 object; ``https://`` S3 URLs are refused.

:func:`locations` names the result objects (§6.3; the rule is **[UNCONFIRMED]**, see docs/async-inference.md):
``<S3OutputPath>[/<S3OutputPathExtension>]/<Filename or <request id>.out>`` for a 2xx answer and
``<S3FailurePath>[/<S3OutputPathExtension>]/<Filename stem or request id>-error.out`` for everything else, each
a local path or an S3 object as the configuration says.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from smbyoc.emulator.async_inference.storage import Location, below
from smbyoc.emulator.front import FrontError, check_printable, validation_error
from smbyoc.errors import ConfigError
from smbyoc.s3.uri import S3Uri, key_problem

PREFIX = "X-Amzn-SageMaker-"
INPUT_LOCATION = PREFIX + "InputLocation"
CONTENT_TYPE = PREFIX + "Content-Type"
ACCEPT = PREFIX + "Accept"
CUSTOM_ATTRIBUTES = PREFIX + "Custom-Attributes"
INFERENCE_ID = PREFIX + "Inference-Id"
REQUEST_TTL = PREFIX + "RequestTTLSeconds"
INVOCATION_TIMEOUT = PREFIX + "InvocationTimeoutSeconds"
OUTPUT_PATH_EXTENSION = PREFIX + "S3OutputPathExtension"
FILENAME = PREFIX + "Filename"
OUTPUT_LOCATION = PREFIX + "OutputLocation"
FAILURE_LOCATION = PREFIX + "FailureLocation"

#: BOTO-RT ``InvokeEndpointAsyncInput.Body``: "Body and InputLocation are mutually exclusive".
MAX_INLINE_BODY = 128_000
#: DG ``async-inference.md``: "large payload sizes (up to 1GB)".
MAX_PAYLOAD = 1024**3
TTL_RANGE, DEFAULT_TTL = (60, 21600), 21600
TIMEOUT_RANGE, DEFAULT_TIMEOUT = (1, 3600), 900
MAX_TEXT = 1024
INFERENCE_ID_MAX = 64
INPUT_LOCATION_MAX = 1024
EXTENSION_MAX = 512
FILENAME_MAX = 32
EXTENSION_PATTERN = re.compile(r"(?!s3:|https:)[a-zA-Z0-9!_.*'()/-]+")
FILENAME_PATTERN = re.compile(r"(?!.*\..*\.)[a-zA-Z0-9][a-zA-Z0-9\-_.]*")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
#: Kernel pseudo-file systems: no payload lives there, and /proc/self/environ is the front's own environment.
PSEUDO_FILE_SYSTEMS = (Path("/proc"), Path("/sys"), Path("/dev"))


def check_local_input(path: Path, roots: tuple[Path, ...] | None) -> Path:
    """The real path of local input ``path`` when the front may read it: below one of ``roots`` (symbolic links
    resolved first) when there are roots, anywhere but the kernel's pseudo-file systems when ``roots`` is empty,
    nowhere when ``roots`` is None (a front reachable beyond this machine without ``--async-input-root``); else a
    ``ValidationError`` naming the header."""
    if roots is None:
        raise validation_error(f"{INPUT_LOCATION}: local files are not read by a front that listens beyond this "
                               "machine; give s3://bucket/key, or start it with --async-input-root DIR")
    real = Path(os.path.realpath(path))
    if any(real.is_relative_to(pseudo) for pseudo in PSEUDO_FILE_SYSTEMS):
        raise validation_error(f"{INPUT_LOCATION}: {path} is in a kernel pseudo-file system, not a payload file")
    if roots and not any(real.is_relative_to(root) for root in roots):
        raise validation_error(f"{INPUT_LOCATION}: {path} is outside the directories inputs are read from "
                               f"(--async-input-root: {', '.join(map(str, roots))})")
    return real


@dataclass(frozen=True)
class AsyncRequest:
    """A validated request: the payload (``body``) or where it is (``input_location``), and its parameters."""

    inference_id: str
    body: bytes | None
    input_location: Location | None
    content_type: str | None
    accept: str | None
    custom_attributes: str | None
    ttl_seconds: int
    timeout_seconds: int
    extension: tuple[str, ...]
    filename: str | None


@dataclass(frozen=True)
class Locations:
    """Where a request's result will be: the output object (2xx) and the failure object (everything else)."""

    output: Location
    failure: Location


def _text(headers: Mapping[str, str], name: str, limit: int) -> str | None:
    value = headers.get(name.lower())
    if value is None:
        return None
    if len(value) > limit:
        raise validation_error(f"{name}: the value has {len(value)} characters; the limit is {limit}")
    if not value.isascii():
        raise validation_error(f"{name}: the value must be US-ASCII characters")
    return value


def _integer(headers: Mapping[str, str], name: str, bounds: tuple[int, int], default: int) -> int:
    text = headers.get(name.lower())
    if text is None:
        return default
    low, high = bounds
    if not re.fullmatch(r"[0-9]{1,10}", text.strip()):
        raise validation_error(f"{name}: {text!r} is not an integer (expected {low} to {high})")
    value = int(text)
    if not low <= value <= high:
        raise validation_error(f"{name}: {value} is out of range; expected {low} to {high}")
    return value


def _inference_id(headers: Mapping[str, str]) -> str | None:
    value = headers.get(INFERENCE_ID.lower())
    if value is None:
        return None
    if len(value) > INFERENCE_ID_MAX:
        raise validation_error(f"{INFERENCE_ID}: the value has {len(value)} characters; expected 1 to "
                               f"{INFERENCE_ID_MAX}")
    return check_printable(INFERENCE_ID, value)


def _extension(headers: Mapping[str, str]) -> tuple[str, ...]:
    value = headers.get(OUTPUT_PATH_EXTENSION.lower())
    if value is None:
        return ()
    if not 1 <= len(value) <= EXTENSION_MAX:
        raise validation_error(f"{OUTPUT_PATH_EXTENSION}: the value has {len(value)} characters; expected 1 to "
                               f"{EXTENSION_MAX}")
    if not EXTENSION_PATTERN.fullmatch(value):
        raise validation_error(f"{OUTPUT_PATH_EXTENSION}: {value!r} must match {EXTENSION_PATTERN.pattern} "
                               "(a relative key prefix, not a URI)")
    segments = tuple(s for s in value.split("/") if s)
    if any(s in (".", "..") for s in segments):
        raise validation_error(f"{OUTPUT_PATH_EXTENSION}: {value!r} has a '.' or '..' segment; locally it would "
                               "leave the output location")
    return segments


def _filename(headers: Mapping[str, str]) -> str | None:
    value = headers.get(FILENAME.lower())
    if value is None:
        return None
    if not 1 <= len(value) <= FILENAME_MAX:
        raise validation_error(f"{FILENAME}: the value has {len(value)} characters; expected 1 to {FILENAME_MAX}")
    if not FILENAME_PATTERN.fullmatch(value):
        raise validation_error(f"{FILENAME}: {value!r} must start with a letter or digit, hold only letters, digits, "
                               "'-', '_' and '.', and at most one '.'")
    return value


def input_location(location: str, roots: tuple[Path, ...] | None = ()) -> Location:
    """Where the payload ``X-Amzn-SageMaker-InputLocation`` names is: an ``s3://bucket/key`` object (its syntax
    checked; the object is read when the request runs) or a local file (an absolute path or a ``file://`` URI),
    which must be a regular file within the payload limit that :func:`check_local_input` lets the front read
    (``roots``); the local file is returned as its real path."""
    if not 1 <= len(location) <= INPUT_LOCATION_MAX:
        raise validation_error(f"{INPUT_LOCATION}: the value has {len(location)} characters; expected 1 to "
                               f"{INPUT_LOCATION_MAX}")
    found = _SCHEME.match(location)
    if found is not None:
        scheme = found.group(1).lower()
        if scheme == "s3":
            try:
                return S3Uri.parse(location, need_key=True, what=INPUT_LOCATION)
            except ConfigError as e:
                raise validation_error(str(e)) from e
        if scheme == "https":
            raise validation_error(f"{INPUT_LOCATION}: {location!r}: S3 URIs are not supported yet in the https:// "
                                   "form; give s3://bucket/key, a local path or a file:// URI")
        if scheme != "file":
            raise validation_error(f"{INPUT_LOCATION}: {location!r}: expected s3://bucket/key, a local path or a "
                                   "file:// URI")
        parts = urllib.parse.urlsplit(location)
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise validation_error(f"{INPUT_LOCATION}: {location!r}: a file:// URI needs an absolute path "
                                   "(file:///path)")
        path = Path(urllib.parse.unquote(parts.path))
    else:
        path = Path(location)
        if not path.is_absolute():
            raise validation_error(f"{INPUT_LOCATION}: {location!r} is a relative path; give an absolute path or a "
                                   "file:///path URI")
    if "\0" in str(path):
        raise validation_error(f"{INPUT_LOCATION}: {location!r}: a NUL character in the path")
    path = check_local_input(path, roots)
    try:
        info = path.stat()
    except OSError as e:
        raise validation_error(f"{INPUT_LOCATION}: {path} cannot be read: {e.strerror or e}") from e
    if not path.is_file():
        raise validation_error(f"{INPUT_LOCATION}: {path} is not a regular file")
    if info.st_size > MAX_PAYLOAD:
        raise validation_error(f"{INPUT_LOCATION}: {path} has {info.st_size:,} bytes; the limit is "
                               f"{MAX_PAYLOAD:,} (1 GB)")
    return path


def parse_request(headers: Mapping[str, str], body: bytes, input_roots: tuple[Path, ...] | None = ()
                  ) -> AsyncRequest:
    """The request ``headers`` (any case) and ``body`` describe; :class:`FrontError` (400 ``ValidationError``)
    naming the first bad header otherwise. ``inference_id`` is empty when the header is absent (the caller
    generates one); ``input_roots``: where a local InputLocation may be (:func:`check_local_input`)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    location = lowered.get(INPUT_LOCATION.lower())
    content_type = _text(lowered, CONTENT_TYPE, MAX_TEXT)
    accept = _text(lowered, ACCEPT, MAX_TEXT)
    custom = _text(lowered, CUSTOM_ATTRIBUTES, MAX_TEXT)
    if custom is not None and not custom.isprintable():
        raise validation_error(f"{CUSTOM_ATTRIBUTES}: the value must be visible US-ASCII characters")
    inference_id = _inference_id(lowered)
    ttl = _integer(lowered, REQUEST_TTL, TTL_RANGE, DEFAULT_TTL)
    timeout = _integer(lowered, INVOCATION_TIMEOUT, TIMEOUT_RANGE, DEFAULT_TIMEOUT)
    extension = _extension(lowered)
    filename = _filename(lowered)
    if location is not None and body:
        raise validation_error(f"Body and InputLocation ({INPUT_LOCATION}) are mutually exclusive; provide exactly "
                               "one")
    if location is None and not body:
        raise validation_error(f"provide exactly one of Body and InputLocation ({INPUT_LOCATION}); the request has "
                               "neither")
    if location is None and len(body) > MAX_INLINE_BODY:
        raise validation_error(f"Body: the request body has {len(body):,} bytes; the limit is {MAX_INLINE_BODY:,} "
                               f"(put larger payloads in a file and give {INPUT_LOCATION})")
    where = input_location(location, input_roots) if location is not None else None
    return AsyncRequest(inference_id or "", body if where is None else None, where, content_type, accept, custom,
                        ttl, timeout, extension, filename)


def locations(request: AsyncRequest, request_id: str, output: Location, failure: Location) -> Locations:
    """Where ``request`` (internal id ``request_id``) will leave its result (module docstring), under the
    configuration's ``output`` and ``failure`` locations; a ``ValidationError`` when an S3 key would be longer
    than S3 allows."""
    if request.filename is not None:
        output_name = request.filename
        failure_name = request.filename.partition(".")[0] + "-error.out"
    else:
        output_name = f"{request_id}.out"
        failure_name = f"{request_id}-error.out"
    where = Locations(below(output, request.extension, output_name), below(failure, request.extension, failure_name))
    for location in (where.output, where.failure):
        problem = key_problem(location.key) if isinstance(location, S3Uri) else None
        if problem is not None:
            raise validation_error(f"{OUTPUT_PATH_EXTENSION}: {location}: {problem}")
    return where


def refusal(endpoint_name: str) -> FrontError:
    """The error InvokeEndpoint gets on an asynchronous endpoint (the wording is **[UNCONFIRMED]**)."""
    return validation_error(f"Endpoint {endpoint_name} is an asynchronous endpoint (its endpoint configuration has "
                            "an AsyncInferenceConfig): it accepts InvokeEndpointAsync only, not InvokeEndpoint.")
