"""The capture writer (contract-endpoints.md §4.3): :class:`CaptureWriter` writes the capture files of one
endpoint, all its variants (shadow variants included), called by the endpoint front once per invocation and variant.

Capture never fails or delays an inference: :meth:`CaptureWriter.capture` only draws the sample and puts the
invocation on a bounded queue; one background thread encodes and writes, so records of concurrent variants never
interleave. A full queue drops the record and a write error (full disk, a file where a directory should be) drops
it too: both are counted (:class:`CaptureStats`) and logged once per kind, never raised.

Files are written under a hidden temporary name (``.<name>.partial``) and renamed when closed: S3 makes an
object visible only once its upload completed, so a reader of the real bucket never sees half a record; the
rename gives a local reader the same guarantee.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import queue
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from smbyoc.emulator.capture.config import DataCaptureConfig
from smbyoc.emulator.capture.record import INPUT, OUTPUT, capture_record, encode_payload, record_line
from smbyoc.emulator.capture.tree import capture_file_name, hour_prefix
from smbyoc.errors import ConfigError

log = logging.getLogger(__name__)

#: EndpointName / VariantName (BOTO-SM): they become directory names, so they are checked here too.
NAME_PATTERN = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")

# Writer defaults (§4.3 leaves the cadence open: "delivery can require a couple of minutes").
DEFAULT_ROLL_SECONDS = 60.0
DEFAULT_MAX_FILE_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_QUEUE_RECORDS = 1000
DEFAULT_MAX_QUEUE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class CaptureStats:
    """Counters of a :class:`CaptureWriter`. ``sampled`` + ``not_sampled`` = the invocations offered while
    capture was on; ``queued`` of the sampled reached the writer thread, the rest were dropped
    (``dropped_queue_full``, ``dropped_invalid`` for a bad variant name, ``dropped_closed`` after close,
    ``dropped_empty`` when CaptureMode is Output and there is no response);
    ``written`` records are in files; ``write_errors`` counts failed file operations by ``errors`` kind
    (``mkdir:ENOTDIR``, ``write:ENOSPC``...), each of which lost the record it was writing."""

    sampled: int = 0
    not_sampled: int = 0
    queued: int = 0
    dropped_queue_full: int = 0
    dropped_invalid: int = 0
    dropped_closed: int = 0
    dropped_empty: int = 0
    written: int = 0
    write_errors: int = 0
    files: int = 0
    errors: Mapping[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**{name: getattr(self, name) for name in self.__dataclass_fields__ if name != "errors"},
                "errors": dict(self.errors)}


@dataclass(frozen=True)
class _Invocation:
    variant: str
    event_time: float
    request_body: bytes | None
    request_content_type: str | None
    response_body: bytes | None
    response_content_type: str | None
    inference_id: str | None
    custom_attributes: str | None

    @property
    def size(self) -> int:
        return len(self.request_body or b"") + len(self.response_body or b"")


@dataclass
class _OpenFile:
    partial: Path
    final: Path
    fd: int
    opened: float
    size: int = 0
    records: int = 0


class _Flush:
    def __init__(self) -> None:
        self.done = threading.Event()


_STOP = object()


class CaptureWriter:
    """Writes the capture files of one endpoint (all its variants) under ``config.destination``.

    ``capture()`` is cheap and never blocks or raises; a background thread writes. Files roll on the UTC hour of
    the events, when one reaches ``max_file_bytes``, when one has been open ``roll_seconds`` (checked at least
    every second) and on :meth:`flush` / :meth:`close`. ``seed`` (or ``rng``) makes sampling repeatable;
    ``clock`` gives event times when the caller passes none, ``monotonic`` the age of open files."""

    def __init__(self, config: DataCaptureConfig, endpoint_name: str, *, seed: int | None = None,
                 rng: random.Random | None = None, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic, roll_seconds: float = DEFAULT_ROLL_SECONDS,
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, max_queue_records: int = DEFAULT_MAX_QUEUE_RECORDS,
                 max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES) -> None:
        if not NAME_PATTERN.fullmatch(endpoint_name):
            raise ConfigError(f"{endpoint_name!r} is not an endpoint name ({NAME_PATTERN.pattern})",
                              key="EndpointName")
        if roll_seconds <= 0 or max_file_bytes <= 0 or max_queue_records <= 0 or max_queue_bytes <= 0:
            raise ConfigError("roll_seconds, max_file_bytes, max_queue_records and max_queue_bytes must be positive",
                              key="CaptureWriter")
        self.config = config
        self.endpoint_name = endpoint_name
        self.roll_seconds = roll_seconds
        self.max_file_bytes = max_file_bytes
        self.max_queue_bytes = max_queue_bytes
        self._rng = rng or random.Random(seed)  # noqa: S311 - sampling, not secrets
        self._clock = clock
        self._monotonic = monotonic
        self._tick = max(0.02, min(1.0, roll_seconds / 4))
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queue_records)
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()
        self._errors: collections.Counter[str] = collections.Counter()
        self._queued_bytes = 0
        self._closed = False
        self._files: dict[tuple[str, str], _OpenFile] = {}
        self._thread: threading.Thread | None = None
        if config.enable_capture:
            self._thread = threading.Thread(target=self._run, name=f"data-capture-{endpoint_name}", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------------------------ caller side
    @property
    def enabled(self) -> bool:
        """Whether invocations are being captured (``CaptureStatus`` ``Started``)."""
        return self.config.enable_capture and not self._closed

    def sample(self) -> bool:
        """Draw one sampling decision: True with probability ``InitialSamplingPercentage / 100``."""
        with self._lock:
            return self._rng.random() < self.config.initial_sampling_percentage / 100

    def capture(self, variant: str, *, request_body: bytes, request_content_type: str | None,
                response_body: bytes | None = None, response_content_type: str | None = None,
                inference_id: str | None = None, custom_attributes: str | None = None,
                event_time: float | datetime | None = None, sampled: bool | None = None) -> bool:
        """Offer one invocation of ``variant`` (a production or shadow variant); whether it was queued.

        ``sampled=None`` draws the sample here; True/False is the caller's own draw (one :meth:`sample` shared
        by a production variant and its shadow keeps their records paired). ``event_time`` (POSIX seconds or
        an aware datetime; default: now) gives ``inferenceTime`` and the hour directory. ``response_body`` None
        leaves ``endpointOutput`` out. Never blocks, never raises."""
        try:
            if not self.enabled:
                if self.config.enable_capture:
                    self._count("dropped_closed")
                return False
            if sampled is None:
                sampled = self.sample()
            if not sampled:
                self._count("not_sampled")
                return False
            self._count("sampled")
            if not isinstance(variant, str) or not NAME_PATTERN.fullmatch(variant):
                self._count("dropped_invalid")
                self._note_error("variant", f"{variant!r} is not a variant name; its records are dropped")
                return False
            item = _Invocation(
                variant=variant, event_time=self._epoch(event_time),
                request_body=bytes(request_body) if self.config.capture_input else None,
                request_content_type=request_content_type,
                response_body=(bytes(response_body) if self.config.capture_output and response_body is not None
                               else None),
                response_content_type=response_content_type, inference_id=inference_id,
                custom_attributes=custom_attributes)
            if item.request_body is None and item.response_body is None:
                self._count("dropped_empty")  # CaptureMode Output and no response: nothing to write
                return False
            with self._lock:
                if self._closed:
                    self._counts["dropped_closed"] += 1
                    return False
                if self._queued_bytes + item.size > self.max_queue_bytes:
                    self._counts["dropped_queue_full"] += 1
                    return False
                try:
                    self._queue.put_nowait(item)
                except queue.Full:
                    self._counts["dropped_queue_full"] += 1
                    return False
                self._queued_bytes += item.size
                self._counts["queued"] += 1
            return True
        except Exception as e:  # capture must never fail an invocation
            self._note_error("internal", f"capture failed: {type(e).__name__}: {e}")
            return False

    def _epoch(self, event_time: float | datetime | None) -> float:
        if event_time is None:
            return self._clock()
        if isinstance(event_time, datetime):
            if event_time.tzinfo is None:
                event_time = event_time.replace(tzinfo=timezone.utc)
            return event_time.timestamp()
        return float(event_time)

    @property
    def stats(self) -> CaptureStats:
        with self._lock:
            counts = dict(self._counts)
            errors = dict(self._errors)
        return CaptureStats(**counts, errors=errors)

    def describe(self) -> dict[str, Any]:
        """``DescribeEndpoint.DataCaptureConfig``."""
        return self.config.describe(started=self.enabled)

    def flush(self, timeout: float = 30.0) -> bool:
        """Write what is queued and close (rename) every open file; whether that finished within ``timeout``."""
        if self._thread is None or not self._thread.is_alive():
            return True
        marker = _Flush()
        try:
            self._queue.put(marker, timeout=timeout)
        except queue.Full:
            return False
        return marker.done.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Stop capturing, write what is queued and close every file (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        thread = self._thread
        if thread is None:
            return
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            log.warning("data capture for endpoint %s: the writer did not take the stop request within %s s",
                        self.endpoint_name, timeout)
            return
        thread.join(timeout)
        if thread.is_alive():
            log.warning("data capture for endpoint %s: the writer did not finish within %s s", self.endpoint_name,
                        timeout)

    def __enter__(self) -> CaptureWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def _note_error(self, kind: str, message: str) -> None:
        """Count an error of ``kind``; log it the first time only."""
        with self._lock:
            self._errors[kind] += 1
            first = self._errors[kind] == 1
        if first:
            log.warning("data capture for endpoint %s: %s (further %s errors are counted, not logged)",
                        self.endpoint_name, message, kind)

    # ------------------------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self._tick)
            except queue.Empty:
                item = None
            try:
                if item is _STOP:
                    self._close_files(lambda key: True)
                    return
                if isinstance(item, _Flush):
                    self._close_files(lambda key: True)
                    item.done.set()
                elif isinstance(item, _Invocation):
                    with self._lock:
                        self._queued_bytes -= item.size
                    self._write(item)
                self._roll_old_files()
            except Exception as e:  # the writer thread must outlive anything one record does
                self._note_error("internal", f"the writer failed: {type(e).__name__}: {e}")

    def _roll_old_files(self) -> None:
        now = self._monotonic()
        self._close_files(lambda key: now - self._files[key].opened >= self.roll_seconds)

    def _write(self, item: _Invocation) -> None:
        line = self._line(item)
        hour = hour_prefix(item.event_time)
        key = (item.variant, hour)
        # a newer hour closes the variant's files of earlier hours (files do not span hours)
        self._close_files(lambda other: other[0] == item.variant and other[1] < hour)
        current = self._files.get(key) or self._open(item.variant, hour, item.event_time)
        if current is None:
            return
        if self._append(current, line):
            self._count("written")
        if key in self._files and current.size >= self.max_file_bytes:
            self._close_files(lambda other: other == key)

    def _line(self, item: _Invocation) -> bytes:
        endpoint_input = endpoint_output = None
        if item.request_body is not None:
            endpoint_input = encode_payload(item.request_body, item.request_content_type, INPUT,
                                            self.config.encoding_for(item.request_content_type))
        if item.response_body is not None:
            endpoint_output = encode_payload(item.response_body, item.response_content_type, OUTPUT,
                                             self.config.encoding_for(item.response_content_type))
        return record_line(capture_record(
            event_id=str(uuid.uuid4()), event_time=item.event_time, endpoint_input=endpoint_input,
            endpoint_output=endpoint_output, inference_id=item.inference_id,
            custom_attributes=item.custom_attributes))

    def _os_error(self, operation: str, path: Path, error: OSError) -> None:
        code = errno.errorcode.get(error.errno or 0, type(error).__name__)
        with self._lock:
            self._counts["write_errors"] += 1
        self._note_error(f"{operation}:{code}", f"cannot {operation} {path}: {error.strerror or error}")

    def _open(self, variant: str, hour: str, epoch: float) -> _OpenFile | None:
        directory = self.config.destination / self.endpoint_name / variant / hour
        name = capture_file_name(epoch)
        partial = directory / f".{name}.partial"
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            self._os_error("mkdir", directory, e)
            return None
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as e:
            self._os_error("create", partial, e)
            return None
        opened = _OpenFile(partial=partial, final=directory / name, fd=fd, opened=self._monotonic())
        self._files[(variant, hour)] = opened
        return opened

    def _append(self, current: _OpenFile, line: bytes) -> bool:
        """Write one whole line; on a failure cut the file back to its last whole line and drop the record."""
        view = memoryview(line)
        done = 0
        try:
            while done < len(line):
                done += os.write(current.fd, view[done:])
        except OSError as e:
            self._os_error("write", current.partial, e)
            if done:
                try:
                    os.ftruncate(current.fd, current.size)
                    os.lseek(current.fd, current.size, os.SEEK_SET)
                except OSError as cut:
                    self._os_error("truncate", current.partial, cut)
                    key = next(k for k, f in self._files.items() if f is current)
                    self._close_files(lambda other: other == key, cut_to_size=True)
            return False
        current.size += len(line)
        current.records += 1
        return True

    def _close_files(self, which: Callable[[tuple[str, str]], bool], *, cut_to_size: bool = False) -> None:
        for key in [key for key in self._files if which(key)]:
            current = self._files.pop(key)
            try:
                os.close(current.fd)
            except OSError as e:
                self._os_error("close", current.partial, e)
            try:
                if cut_to_size:
                    os.truncate(current.partial, current.size)
                if current.records:
                    os.rename(current.partial, current.final)
                    self._count("files")
                else:
                    current.partial.unlink()
            except OSError as e:
                self._os_error("rename", current.partial, e)
