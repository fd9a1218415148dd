"""The log files of jobs and endpoints, and reading them back for ``smbyoc logs``.

Two places keep them, both ``<root>/logs/<stem>-<name>.log`` with the stem of the kind (``training-job``,
``processing-job``, ``transform-job``, ``endpoint``, the API's ARN resource words):

* the jobs run by ``smbyoc local-train``, ``local-process`` and ``local-transform``: ``<smbyoc state dir>/logs``
  (:func:`smbyoc.emulator.jobs.state_dir`), running while their record (:mod:`smbyoc.emulator.jobs`) is there;
* the jobs and endpoints of ``smbyoc api``: ``<api state dir>/logs``, running while their stored description says
  ``InProgress``/``Stopping`` (jobs) or while it exists and is not ``Failed`` (endpoints).

Each line is what the job's host printed, prefixed as ``local-train`` prints it: ``[algo-1] text``. A run that
reuses a name moves the previous file to ``<file>.1`` (one generation kept); a file stops growing at
:data:`MAX_BYTES` (one last line says so); each ``logs`` folder keeps the newest :data:`KEEP_FILES` files.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from smbyoc.errors import ConfigError

log = logging.getLogger(__name__)

TRAINING = "training"
PROCESSING = "processing"
TRANSFORM = "transform"
ENDPOINT = "endpoint"
#: Kind → the file name's stem (the API's ARN resource word).
STEMS = {TRAINING: "training-job", PROCESSING: "processing-job", TRANSFORM: "transform-job", ENDPOINT: "endpoint"}
#: Kind → the API store's collection (:mod:`smbyoc.api.store`) and the status member of its descriptions.
_API_RECORDS = {TRAINING: ("training-jobs", "TrainingJobStatus"),
                PROCESSING: ("processing-jobs", "ProcessingJobStatus"),
                TRANSFORM: ("transform-jobs", "TransformJobStatus"),
                ENDPOINT: ("endpoints", "EndpointStatus")}
_JOB_ACTIVE = ("InProgress", "Stopping")
FOLDER = "logs"
#: A log file stops growing at this size (the job goes on).
MAX_BYTES = 64 * 1024 * 1024
#: Log files kept in one ``logs`` folder (the oldest go when a new one starts).
KEEP_FILES = 200


def host_line(host: str, line: str) -> str:
    """A host's line as ``local-train`` prints it."""
    return f"[{host}] {line}"


def log_path(root: Path, kind: str, name: str) -> Path:
    """``<root>/logs/<stem>-<name>.log``."""
    return root / FOLDER / f"{STEMS[kind]}-{name}.log"


class LogFile:
    """Appends lines to one job's log file (thread-safe); :meth:`start` rotates and prunes first.

    Writing never fails the job: an error is logged once and the file is given up."""

    def __init__(self, path: Path, *, max_bytes: int = MAX_BYTES, keep_files: int = KEEP_FILES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep_files = keep_files
        self._lock = threading.Lock()
        self._out: TextIO | None = None
        self._written = 0
        self._closed = False

    @classmethod
    def for_job(cls, root: Path, kind: str, name: str) -> LogFile:
        return cls(log_path(root, kind, name))

    def start(self) -> LogFile:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            _prune(self.path.parent, self.keep_files - 1)
            self._out = self.path.open("a", encoding="utf-8")
        except OSError as e:
            log.warning("cannot write the job's log %s: %s", self.path, e.strerror or e)
            self._closed = True
        return self

    def write(self, line: str) -> None:
        with self._lock:
            if self._out is None or self._closed:
                return
            data = line.rstrip("\n") + "\n"
            try:
                if self._written + len(data) > self.max_bytes:
                    self._out.write(f"[smbyoc] log truncated at {self.max_bytes} bytes; the job goes on\n")
                    self._close()
                    return
                self._out.write(data)
                self._out.flush()
                self._written += len(data)
            except OSError as e:
                log.warning("cannot write the job's log %s: %s", self.path, e.strerror or e)
                self._close()

    def host_sink(self, host: str, line: str) -> None:
        """``sink(host, line)``, as the engines call it."""
        self.write(host_line(host, line))

    def _close(self) -> None:
        self._closed = True
        if self._out is not None:
            with contextlib.suppress(OSError):
                self._out.close()

    def close(self) -> None:
        with self._lock:
            self._close()


def _prune(folder: Path, keep: int) -> None:
    """Remove the oldest ``*.log*`` files of ``folder`` beyond the newest ``keep``."""
    files = []
    for path in folder.glob("*.log*"):
        with contextlib.suppress(OSError):
            files.append((path.stat().st_mtime, path))
    files.sort(reverse=True)
    for _, path in files[max(keep, 0):]:
        with contextlib.suppress(OSError):
            path.unlink()


# ----------------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class Found:
    """A log file ``smbyoc logs`` may print: whose it is, where it is, and how to tell its job still runs."""

    kind: str
    name: str
    source: str  # "api" or "local"
    path: Path
    running: Callable[[], bool]


def _api_running(api_dir: Path, kind: str, name: str) -> Callable[[], bool]:
    from smbyoc.jsonfile import read_json_object

    collection, status_key = _API_RECORDS[kind]
    record = api_dir / collection / f"{name}.json"

    def running() -> bool:
        try:
            status = read_json_object(record).get(status_key)
        except (ConfigError, OSError):
            return False
        return status != "Failed" if kind == ENDPOINT else status in _JOB_ACTIVE
    return running


def _local_running(kind: str, name: str) -> Callable[[], bool]:
    from smbyoc.emulator import jobs

    def running() -> bool:
        return any(r.name == name and not r.orphaned for r in jobs.records(kind))
    return running


def find_logs(name: str, *, api_dir: Path, local_dir: Path, kind: str | None = None) -> Found:
    """The log of job or endpoint ``name`` (of ``kind``, when given); one :class:`ConfigError` line when there is
    none (naming where it looked) or when jobs of several kinds share the name (``--kind`` picks). When both the
    API and a ``local-*`` command ran a job of one kind with that name, the newer log wins."""
    kinds = [kind] if kind is not None else list(STEMS)
    found: list[Found] = []
    for k in kinds:
        for source, root, running in (("api", api_dir, _api_running(api_dir, k, name)),
                                      ("local", local_dir, _local_running(k, name))):
            if k == ENDPOINT and source == "local":
                continue  # local-serve prints its endpoint's lines; only the API keeps them
            path = log_path(root, k, name)
            if path.is_file():
                found.append(Found(k, name, source, path, running))
    if not found:
        what = f"{kind} job" if kind in (TRAINING, PROCESSING, TRANSFORM) else (kind or "job or endpoint")
        raise ConfigError(f"no log of a {what} of that name (looked in {local_dir / FOLDER} and "
                          f"{api_dir / FOLDER})", key=f"logs {name!r}")
    kinds_found = sorted({f.kind for f in found})
    if len(kinds_found) > 1:
        raise ConfigError(f"several kinds share that name ({', '.join(kinds_found)}); pick one with --kind",
                          key=f"logs {name!r}")
    return max(found, key=lambda f: _mtime(f.path))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def tail_lines(path: Path, count: int | None) -> tuple[list[str], int]:
    """The last ``count`` whole lines (all: None) of the file, and the offset just after them (a line still
    being written is left to :func:`follow`)."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    lines = [raw.decode("utf-8", "replace") for raw in data[:end].split(b"\n")[:-1]]
    if count is not None:
        lines = lines[-count:] if count > 0 else []
    return lines, end


def follow(found: Found, offset: int, emit: Callable[[str], None], *, interval: float = 0.2,
           sleep: Callable[[float], None] = time.sleep) -> None:
    """Print the lines added after ``offset`` until the job's record says it ended (then what is left)."""
    partial = b""
    while True:
        ended = not found.running()
        try:
            with found.path.open("rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < offset:  # replaced by a new run of the same name: from its start
                    offset = 0
                f.seek(offset)
                chunk = f.read()
                offset += len(chunk)
        except FileNotFoundError:
            chunk = b""
        data = partial + chunk
        *lines, partial = data.split(b"\n")
        for raw in lines:
            emit(raw.decode("utf-8", "replace"))
        if ended:
            if partial:
                emit(partial.decode("utf-8", "replace"))
            return
        sleep(interval)


class RunLog:
    """The log file of one ``local-*`` run, under ``<smbyoc state dir>/logs``: opened by :meth:`start` once the
    job's name is known; :meth:`sink` is a ``sink(host, line)`` that writes nothing before that."""

    def __init__(self, kind: str, root: Path | None = None) -> None:
        self.kind = kind
        self.root = root
        self.file: LogFile | None = None

    def start(self, name: str) -> None:
        from smbyoc.emulator.jobs import state_dir

        self.close()
        self.file = LogFile.for_job(self.root or state_dir(), self.kind, name).start()

    def sink(self, host: str, line: str) -> None:
        if self.file is not None:
            self.file.host_sink(host, line)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
