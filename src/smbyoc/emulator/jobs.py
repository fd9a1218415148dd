"""The registry of emulated training jobs and endpoints: what runs, who owns it, what it leaves behind.

Each running ``local-train`` writes ``<state dir>/jobs/<job-name>.json`` and each endpoint
``<state dir>/endpoints/<id>.json``: the owner (the emulator process: PID, start time, host, boot id, see
:mod:`smbyoc.emulator.owners`), the mode, the job's temporary tree, its output directory, the token its
processes carry and the ``train``/``serve`` process. The owner removes its record when it ends. A record
whose owner is gone (``kill -9``, a crash) is *orphaned*: ``smbyoc ps`` shows it, and the next ``local-*``
command or ``smbyoc stop --all`` sweeps what it names (:mod:`smbyoc.emulator.sweep`).

``stop`` sends a running owner SIGTERM, which the emulator handles exactly like Ctrl-C: SIGTERM to the
training program or containers, SIGKILL after the grace period, status ``Stopped``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smbyoc.emulator.owners import Owner
from smbyoc.environment_variables import SMBYOC_STATE_DIR
from smbyoc.errors import ConfigError

TRAINING = "training"
ENDPOINT = "endpoint"
TRANSFORM = "transform"
PROCESSING = "processing"
_FOLDERS = {TRAINING: "jobs", ENDPOINT: "endpoints", TRANSFORM: "transforms", PROCESSING: "processing-jobs"}


def state_dir() -> Path:
    """``SMBYOC_STATE_DIR``, else ``$XDG_RUNTIME_DIR/smbyoc``, else ``$XDG_STATE_HOME/smbyoc``
    (``~/.local/state/smbyoc``)."""
    configured = SMBYOC_STATE_DIR.get()
    if configured:
        return Path(configured)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "smbyoc"
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "smbyoc"


@dataclass(frozen=True)
class Record:
    """One registered job or endpoint; ``data`` holds the fields beyond the owner (see module docstring)."""

    kind: str
    name: str
    owner: Owner
    path: Path
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def mode(self) -> str:
        return str(self.data.get("mode", ""))

    @property
    def orphaned(self) -> bool:
        return not self.owner.alive()

    @property
    def state(self) -> str:
        return "orphaned" if self.orphaned else "running"

    def child(self) -> Owner | None:
        """The ``train`` / ``serve`` process, if one was started."""
        child = self.data.get("child")
        return Owner.from_dict(child) if isinstance(child, dict) else None

    def describe(self) -> dict[str, Any]:
        """What ``smbyoc ps --json`` prints for this record."""
        return {"Kind": self.kind, "Name": self.name, "State": self.state, "Mode": self.mode,
                "OwnerPid": self.owner.pid, "StartTime": self.data.get("started"),
                **({"Url": self.data["url"]} if self.data.get("url") else {}),
                **({"Tree": self.data["tree"]} if self.data.get("tree") else {}),
                **({"OutputDir": self.data["output_dir"]} if self.data.get("output_dir") else {}),
                **({"ProcessPid": self.data["child"]["pid"]} if self.data.get("child") else {}),
                "Record": str(self.path)}


def _path(kind: str, name: str) -> Path:
    return state_dir() / _FOLDERS[kind] / f"{name}.json"


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, sort_keys=True))
        os.replace(tmp, path)
    except OSError as e:
        raise ConfigError(f"cannot record the job: {e.strerror} (set SMBYOC_STATE_DIR to a writable directory)",
                          source=str(path.parent)) from e


def _read(path: Path) -> Record | None:
    try:
        data = json.loads(path.read_text())
        owner = Owner.from_dict(data["owner"]) if "owner" in data else Owner(int(data["pid"]), None, "")
        return Record(str(data.get("kind", TRAINING)), str(data.get("name") or data.get("job_name") or path.stem),
                      owner, path, data)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def register(kind: str, name: str, **fields: Any) -> Record:
    """Record this process as the owner of ``name`` (fields: mode, tree, output_dir, url...)."""
    owner = Owner.current()
    path = _path(kind, name)
    data = {"kind": kind, "name": name, "job_name": name, "pid": owner.pid, "owner": owner.to_dict(),
            "started": time.time(), **fields}
    _write(path, data)
    return Record(kind, name, owner, path, data)


def update(kind: str, name: str, **fields: Any) -> None:
    """Add fields to this process's own record of ``name`` (a record owned by another process is left)."""
    record = _read(_path(kind, name))
    if record is None or record.owner.pid != os.getpid():
        return
    _write(record.path, {**record.data, **fields})


def unregister(kind: str, name: str) -> None:
    """Remove this process's record of ``name``."""
    path = _path(kind, name)
    record = _read(path)
    if record is not None and record.owner.pid == os.getpid():
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def registered(job_name: str, mode: str, **fields: Any) -> Iterator[Record]:
    """Record this process as running training job ``job_name`` for the duration of the block."""
    record = register(TRAINING, job_name, mode=mode, **fields)
    try:
        yield record
    finally:
        unregister(TRAINING, job_name)


def records(kind: str | None = None) -> list[Record]:
    """Every record (of ``kind``), running and orphaned, sorted by kind and name."""
    found = []
    for k, folder in sorted(_FOLDERS.items()):
        directory = state_dir() / folder
        if (kind is None or k == kind) and directory.is_dir():
            found += [r for r in map(_read, sorted(directory.glob("*.json"))) if r is not None]
    return found


def running_jobs() -> dict[str, int]:
    """Job name → owner process id of every running emulated training job (orphans are not listed)."""
    return {r.name: r.owner.pid for r in records(TRAINING) if not r.orphaned}


def stop_owner(record: Record) -> int:
    """Ask the emulator owning ``record`` to stop it (SIGTERM, as Ctrl-C); returns that process id."""
    os.kill(record.owner.pid, signal.SIGTERM)
    return record.owner.pid


def find(job_name: str) -> Record:
    """The training job's record; ConfigError naming the running jobs when there is none."""
    for record in records(TRAINING):
        if record.name == job_name:
            return record
    known = ", ".join(sorted(running_jobs())) or "none"
    raise ConfigError(f"no running job of that name (running: {known})", key=f"job {job_name!r}")


def stop_job(job_name: str) -> int:
    """Ask the emulator running ``job_name`` to stop it; returns that process id (see :func:`find` for an
    orphaned job, which has nobody left to ask)."""
    record = find(job_name)
    if record.orphaned:
        raise ConfigError("its emulator is gone; `smbyoc stop --all` removes what it left", key=f"job {job_name!r}")
    return stop_owner(record)
