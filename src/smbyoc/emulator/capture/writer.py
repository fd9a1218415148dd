"""The capture writer (contract-endpoints.md §4.3): :class:`CaptureWriter` writes the capture files of one
endpoint, all its variants (shadow variants included), called by the endpoint front once per invocation and variant.

Capture never fails or delays an inference: :meth:`CaptureWriter.capture` only draws the sample and appends the
invocation to a bounded list under a lock (no encoding, no system call: the front's thread is the endpoint's
bottleneck). One background thread takes what accumulated in batches, encodes it and writes it, so records of
concurrent variants never interleave: it is woken by the first record after it went idle and by a batch reaching
:data:`BATCH_RECORDS`, waits up to :data:`BATCH_SECONDS` for more, then writes every file's new lines with one
``write`` per file and batch (at 2,000 captured invocations a second: a few dozen writes a second instead of
2,000). A full queue drops the record and a write error (full disk, a file where a directory should be) drops it
too: both are counted (:class:`CaptureStats`) and logged once per kind, never raised.

Files are written under a hidden temporary name (``.<name>.partial``) and renamed when closed: S3 makes an
object visible only once its upload completed, so a reader of the real bucket never sees half a record; the
rename gives a local reader the same guarantee.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from smbyoc.emulator.capture.config import DataCaptureConfig
from smbyoc.emulator.capture.record import (
    INPUT,
    OUTPUT,
    capture_record,
    encode_payload,
    fast_record_line,
    inference_time,
    record_line,
)
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
#: The writer thread is woken when this many records wait (besides the first record after it went idle)...
BATCH_RECORDS = 256
#: ... and otherwise collects records for this long before it writes them.
BATCH_SECONDS = 0.05
#: The writer encodes this many records at a time, then sleeps :data:`YIELD_SECONDS` so that the front's thread,
#: which shares the GIL with it, is not kept waiting: a batch of 256 records is ≈4 ms of Python, and a thread that
#: wants the GIL waits up to the interpreter's switch interval (5 ms) for it (measured: +1.9 ms of p99 through a
#: capturing front; chunks of 32 bound the wait to ≈0.5 ms).
YIELD_EVERY = 32
YIELD_SECONDS = 0.0001


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


class _Invocation(NamedTuple):  # (a tuple: the cheapest object to build on the caller's thread)
    variant: str
    event_time: float
    request_body: bytes | None
    request_content_type: str | None
    response_body: bytes | None
    response_content_type: str | None
    inference_id: str | None
    custom_attributes: str | None
    size: int


@dataclass
class _OpenFile:
    partial: Path
    final: Path
    fd: int
    opened: float
    #: Bytes and records in the file...
    size: int = 0
    records: int = 0
    #: ... and lines of this batch not written yet (written by ``_write_pending``).
    pending: list[bytes] = field(default_factory=list)
    pending_size: int = 0


class _Flush:
    def __init__(self) -> None:
        self.done = threading.Event()


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
        self.max_queue_records = max_queue_records
        self._pending: list[_Invocation] = []
        self._flushes: list[_Flush] = []
        self._stopping = False
        self._wake = threading.Event()
        self._variants: set[str] = set()  # variant names already checked
        self._ids: list[str] = []
        self._second: tuple[int, str] = (-1, "")
        self._hour_prefix: tuple[int, str] = (-1, "")
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
            if variant not in self._variants:
                if not isinstance(variant, str) or not NAME_PATTERN.fullmatch(variant):
                    self._count("sampled")
                    self._count("dropped_invalid")
                    self._note_error("variant", f"{variant!r} is not a variant name; its records are dropped")
                    return False
                self._variants.add(variant)
            config = self.config
            request = (request_body if type(request_body) is bytes else bytes(request_body)) \
                if config.capture_input else None
            response = (response_body if type(response_body) is bytes else bytes(response_body)) \
                if config.capture_output and response_body is not None else None
            size = (len(request) if request is not None else 0) + (len(response) if response is not None else 0)
            item = _Invocation(variant, self._clock() if event_time is None else self._epoch(event_time), request,
                               request_content_type, response, response_content_type, inference_id,
                               custom_attributes, size)
            counts = self._counts
            with self._lock:
                counts["sampled"] += 1
                if request is None and response is None:
                    counts["dropped_empty"] += 1  # CaptureMode Output and no response: nothing to write
                    return False
                if self._closed:
                    counts["dropped_closed"] += 1
                    return False
                pending = self._pending
                if len(pending) >= self.max_queue_records or self._queued_bytes + size > self.max_queue_bytes:
                    counts["dropped_queue_full"] += 1
                    return False
                pending.append(item)
                self._queued_bytes += size
                counts["queued"] += 1
                wake = len(pending) == 1 or len(pending) == BATCH_RECORDS
            if wake:
                self._wake.set()
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
        with self._lock:
            self._flushes.append(marker)
        self._wake.set()
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
        with self._lock:
            self._stopping = True
        self._wake.set()
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
        wake = self._wake
        while True:
            if wake.wait(self._tick):
                wake.clear()
                with self._lock:
                    collect = not self._stopping and not self._flushes and len(self._pending) < BATCH_RECORDS
                if collect:  # the first records of a batch: give the others a moment to arrive
                    wake.wait(BATCH_SECONDS)
                    wake.clear()
            with self._lock:
                batch, self._pending = self._pending, []
                flushes, self._flushes = self._flushes, []
                stopping = self._stopping
                self._queued_bytes -= sum(item.size for item in batch)
            try:
                for index, item in enumerate(batch, 1):
                    try:
                        self._write(item)
                    except Exception as e:  # the writer thread must outlive anything one record does
                        self._note_error("internal", f"the writer failed: {type(e).__name__}: {e}")
                    if index % YIELD_EVERY == 0:
                        time.sleep(YIELD_SECONDS)  # (releases the GIL long enough for a waiting thread to take it)
                for current in list(self._files.values()):
                    self._write_pending(current)
                if stopping or flushes:
                    self._close_files(lambda key: True)
                else:
                    self._roll_old_files()
            except Exception as e:
                self._note_error("internal", f"the writer failed: {type(e).__name__}: {e}")
            for marker in flushes:
                marker.done.set()
            if stopping:
                return

    def _roll_old_files(self) -> None:
        now = self._monotonic()
        self._close_files(lambda key: now - self._files[key].opened >= self.roll_seconds)

    def _write(self, item: _Invocation) -> None:
        line = self._line(item)
        hour = self._hour(item.event_time)
        key = (item.variant, hour)
        # a newer hour closes the variant's files of earlier hours (files do not span hours)
        self._close_files(lambda other: other[0] == item.variant and other[1] < hour)
        current = self._files.get(key) or self._open(item.variant, hour, item.event_time)
        if current is None:
            return
        current.pending.append(line)
        current.pending_size += len(line)
        if current.size + current.pending_size >= self.max_file_bytes:
            self._close_files(lambda other: other == key)

    def _write_pending(self, current: _OpenFile) -> None:
        """Write the lines waiting for ``current`` with one ``write``; on a failure keep the whole lines that made it
        and write the rest one by one (each failing record counted, as :meth:`_append` does)."""
        lines, total = current.pending, current.pending_size
        if not lines:
            return
        current.pending, current.pending_size = [], 0
        if len(lines) > 1:
            data = b"".join(lines)
            try:
                done = os.write(current.fd, data)
            except OSError:
                done = 0
            if done == total:
                current.size += total
                current.records += len(lines)
                self._count("written", len(lines))
                return
            whole = kept = 0  # the lines that made it whole; the rest is cut off and written again one by one
            for line in lines:
                if kept + len(line) > done:
                    break
                kept += len(line)
                whole += 1
            if done > kept:
                try:
                    os.ftruncate(current.fd, current.size + kept)
                    os.lseek(current.fd, current.size + kept, os.SEEK_SET)
                except OSError as cut:
                    self._os_error("truncate", current.partial, cut)
                    current.size += kept
                    current.records += whole
                    self._count("written", whole)
                    key = next(k for k, f in self._files.items() if f is current)
                    self._close_files(lambda other: other == key, cut_to_size=True)
                    return
            current.size += kept
            current.records += whole
            if whole:
                self._count("written", whole)
            lines = lines[whole:]
        for line in lines:
            if self._append(current, line):
                self._count("written")

    def _line(self, item: _Invocation) -> bytes:
        endpoint_input = endpoint_output = None
        if item.request_body is not None:
            endpoint_input = encode_payload(item.request_body, item.request_content_type, INPUT,
                                            self.config.encoding_for(item.request_content_type))
        if item.response_body is not None:
            endpoint_output = encode_payload(item.response_body, item.response_content_type, OUTPUT,
                                             self.config.encoding_for(item.response_content_type))
        event_id = self._event_id()
        try:
            return fast_record_line(event_id=event_id, inference_time_text=self._time_text(item.event_time),
                                    endpoint_input=endpoint_input, endpoint_output=endpoint_output,
                                    inference_id=item.inference_id, custom_attributes=item.custom_attributes)
        except TypeError:  # a value that is not a string (capture() records what its caller gives)
            pass
        return record_line(capture_record(
            event_id=event_id, event_time=item.event_time, endpoint_input=endpoint_input,
            endpoint_output=endpoint_output, inference_id=item.inference_id,
            custom_attributes=item.custom_attributes))

    # the writer thread's caches: a batch's records share their second and hour, and event ids come 256 at a time
    def _event_id(self) -> str:
        if not self._ids:
            raw = os.urandom(16 * 256)  # one system call for 256 ids
            self._ids = [str(uuid.UUID(bytes=raw[i:i + 16], version=4)) for i in range(0, len(raw), 16)]
        return self._ids.pop()

    @staticmethod
    def _second_of(epoch: float) -> int:
        """The UTC second ``datetime.fromtimestamp`` puts ``epoch`` in (it rounds to the microsecond first)."""
        return round(epoch * 1_000_000) // 1_000_000

    def _time_text(self, epoch: float) -> str:
        second = self._second_of(epoch)
        if self._second[0] != second:
            self._second = (second, inference_time(epoch))
        return self._second[1]

    def _hour(self, epoch: float) -> str:
        hour = self._second_of(epoch) // 3600
        if self._hour_prefix[0] != hour:
            self._hour_prefix = (hour, hour_prefix(epoch))
        return self._hour_prefix[1]

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
            current = self._files[key]
            if not cut_to_size:
                self._write_pending(current)
            if self._files.get(key) is not current:  # (closed by a failed write meanwhile)
                continue
            del self._files[key]
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
