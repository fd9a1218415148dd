"""The persistent FIFO queue of one asynchronous endpoint, in a directory (contract-endpoints.md §6, "keep a
persistent FIFO queue per endpoint").

Layout under ``state_dir``::

    lock                       held (flock) by the one AsyncEndpoint that serves the queue
    queue/<seq>.json           one accepted request (a :class:`Record`), named by a 20-digit sequence number
    queue/<seq>.attempt        how many times the request was handed to the container ("1", "2")
    queue/<seq>.result         the result of a request whose result location is in S3, kept until it is stored
    queue/<seq>.result.info    what that result is, JSON (written after the bytes: it says both are complete)
    queue/.<name>.partial      a file being written (never read; removed on recovery)

Durability: :meth:`DurableQueue.put` writes the record to a temporary name, fsyncs it, renames it into place and
fsyncs the directory before it returns, so a request is on disk before its 202; :meth:`DurableQueue.remove` runs
only once the request's result has been written the same way (:func:`write_atomic`). The attempt marker is
written (atomically) before each call of the container: a request found with a marker at start-up was in flight
when the process stopped, and is retried (at-least-once delivery). A result bound for S3 is kept in the queue
(:meth:`DurableQueue.keep_result`) before it is uploaded: a request found with a kept result at start-up is not
run again, only its upload is redone.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from smbyoc.errors import ServingError

log = logging.getLogger(__name__)

RECORD_VERSION = 1
SEQ_DIGITS = 20
RESULT_SUFFIX = ".result"
#: Beside a kept result: what it is (JSON).
RESULT_INFO_SUFFIX = ".result.info"


@dataclass(frozen=True)
class Record:
    """One accepted request as it is stored: everything needed to run it and report it after a restart."""

    seq: int
    request_id: str
    inference_id: str
    #: When it was accepted (the endpoint's clock, seconds since the epoch).
    accepted_at: float
    ttl_seconds: int
    timeout_seconds: int
    content_type: str | None
    accept: str | None
    custom_attributes: str | None
    #: The payload's InputLocation, read when the request runs: an absolute local path or an ``s3://`` URI;
    #: None: the body is inline.
    input_path: str | None
    #: The inline body, base64 (≤ 128,000 bytes before encoding); None: see input_path.
    body_b64: str | None
    #: Where the result goes (2xx / everything else): an absolute local path or an ``s3://`` URI each.
    output_path: str
    failure_path: str

    @property
    def name(self) -> str:
        return f"{self.seq:0{SEQ_DIGITS}d}"

    @property
    def body(self) -> bytes | None:
        return None if self.body_b64 is None else base64.b64decode(self.body_b64)

    def to_json(self) -> bytes:
        return json.dumps({"version": RECORD_VERSION, **asdict(self)}, sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> Record:
        document: Mapping[str, Any] = json.loads(data)
        if document.get("version") != RECORD_VERSION:
            raise ValueError(f"unknown record version {document.get('version')!r}")
        return cls(**{k: v for k, v in document.items() if k != "version"})


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees nothing or everything: a hidden temporary name in the
    same directory, fsync, rename, fsync of the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.partial"
    try:
        with open(partial, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    fsync_dir(path.parent)


@dataclass(frozen=True)
class Recovered:
    """A record found at start-up and how many times it had been handed to the container."""

    record: Record
    attempts: int
    #: The description of a result kept for an S3 location (:meth:`DurableQueue.keep_result`), or None.
    kept: Mapping[str, Any] | None = None


class DurableQueue:
    """The queue directory of one endpoint. Blocking file I/O: call it from a worker thread."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.directory = state_dir / "queue"
        self._last_seq = 0
        self._lock: TextIO | None = None

    # ---------------------------------------------------------------------------------------- lifecycle
    def open(self) -> list[Recovered]:
        """Take the directory (one server at a time) and read back every accepted request, oldest first."""
        self.directory.mkdir(parents=True, exist_ok=True)
        lock = open(self.state_dir / "lock", "w")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            lock.close()
            raise ServingError(f"{self.state_dir}: the asynchronous queue is in use by another endpoint process "
                               "(one server per state directory)") from e
        self._lock = lock
        return self._recover()

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def _recover(self) -> list[Recovered]:
        found: list[Recovered] = []
        names = set()
        for entry in sorted(self.directory.iterdir()):
            if entry.name.startswith(".") and entry.name.endswith(".partial"):
                entry.unlink()  # never renamed into place: never acknowledged
                continue
            if entry.suffix != ".json":
                continue
            try:
                record = Record.from_json(entry.read_bytes())
            except (OSError, ValueError, TypeError) as e:
                aside = self.state_dir / "unreadable" / entry.name
                aside.parent.mkdir(exist_ok=True)
                os.replace(entry, aside)
                log.error("async queue: %s cannot be read (%s); moved to %s", entry, e, aside)
                continue
            names.add(record.name)
            found.append(Recovered(record, self._attempts(record), self._kept(record)))
            self._last_seq = max(self._last_seq, record.seq)
        for pattern in ("*.attempt", f"*{RESULT_SUFFIX}", f"*{RESULT_INFO_SUFFIX}"):
            for extra in self.directory.glob(pattern):
                if extra.name.partition(".")[0] not in names:
                    extra.unlink()
        return found

    def _kept(self, record: Record) -> Mapping[str, Any] | None:
        described = self.directory / f"{record.name}{RESULT_INFO_SUFFIX}"
        try:
            kept = json.loads(described.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.error("async queue: %s cannot be read (%s); the request runs again", described, e)
            return None
        if not isinstance(kept, dict) or not (self.directory / f"{record.name}{RESULT_SUFFIX}").is_file():
            return None
        return kept

    def _attempts(self, record: Record) -> int:
        try:
            return int((self.directory / f"{record.name}.attempt").read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    # ---------------------------------------------------------------------------------------- records
    def next_seq(self) -> int:
        """A sequence number above every one used before (FIFO order survives restarts)."""
        self._last_seq = max(self._last_seq + 1, time.time_ns())
        return self._last_seq

    def put(self, record: Record) -> None:
        """Make ``record`` durable (module docstring)."""
        write_atomic(self.directory / f"{record.name}.json", record.to_json())

    def mark_attempt(self, record: Record, attempt: int) -> None:
        write_atomic(self.directory / f"{record.name}.attempt", str(attempt).encode())

    def keep_result(self, record: Record, described: Mapping[str, Any], data: bytes) -> None:
        """Keep ``record``'s result (``data`` and its description) until :meth:`remove`: the bytes first, then the
        description that says they are complete (a description kept before is removed first: it never describes
        other bytes)."""
        described_path = self.directory / f"{record.name}{RESULT_INFO_SUFFIX}"
        if described_path.exists():
            described_path.unlink()
            fsync_dir(self.directory)
        write_atomic(self.directory / f"{record.name}{RESULT_SUFFIX}", data)
        write_atomic(described_path, json.dumps(dict(described), sort_keys=True).encode("utf-8"))

    def kept_data(self, record: Record) -> bytes:
        return (self.directory / f"{record.name}{RESULT_SUFFIX}").read_bytes()

    def remove(self, record: Record) -> None:
        """Forget ``record`` (its result is written): the record first, then its marker and any kept result."""
        with contextlib.suppress(FileNotFoundError):
            (self.directory / f"{record.name}.json").unlink()
        for suffix in (".attempt", RESULT_INFO_SUFFIX, RESULT_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                (self.directory / f"{record.name}{suffix}").unlink()
        fsync_dir(self.directory)
