"""Who owns an emulator resource, whether that owner still runs, and how to end an owner's processes.

An owner is a process identified by its PID *and* its start time (``/proc/<pid>/stat`` field 22, clock
ticks since boot), the host name and the boot id: a PID the kernel has recycled for another program is
not mistaken for the owner, and an owner recorded on another host (a container sharing the Docker
socket) is never judged dead from here.

Processes a job starts (``train``, the program, its workers; ``serve``, nginx, gunicorn) inherit the
job's token in :data:`TOKEN_VARIABLE`; :func:`tagged_processes` finds them by it, also when they left the
job's process group or their parent died (the idea of Jenkins' ProcessTreeKiller cookie).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from smbyoc.environment_variables import SMBYOC_OWNER_TOKEN

log = logging.getLogger(__name__)

PROC = Path("/proc")
TOKEN_VARIABLE = SMBYOC_OWNER_TOKEN.name
#: Seconds a sweep waits after SIGTERM before SIGKILL (an orphan has nobody to save a checkpoint for).
SWEEP_GRACE = 5.0


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of ``/proc/<pid>/stat`` (after the command name), or None when there is no such process."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError, OSError):
        return None
    return text[text.rfind(")") + 2:].split()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot; None when it does not exist (or is a zombie)."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def process_group(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return None if fields is None or fields[0] in ("Z", "X") else int(fields[2])


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (parents before their children), from one walk of /proc; ``[pid]`` without
    /proc. Processes that end meanwhile may still be listed: callers tolerate a process gone."""
    if not PROC.is_dir():
        return [pid]
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        process = todo.pop()
        found.append(process)
        todo += children.get(process, [])
    return found


def _boot_id() -> str:
    try:
        return (PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class Owner:
    """A process that owns emulator resources."""

    pid: int
    start: int | None
    host: str
    boot: str = ""

    @classmethod
    def of(cls, pid: int) -> Owner:
        """Process ``pid`` of this host, as it is now."""
        return cls(pid, start_time(pid), socket.gethostname(), _boot_id())

    @classmethod
    def current(cls) -> Owner:
        return cls.of(os.getpid())

    @classmethod
    def from_dict(cls, data: Any) -> Owner:
        start = data.get("start")
        return cls(int(data["pid"]), None if start in (None, "") else int(start), str(data.get("host", "")),
                   str(data.get("boot", "")))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def labels(self) -> dict[str, str]:
        """Docker labels naming this owner (see :mod:`smbyoc.emulator.containers`)."""
        return {"com.smbyoc.owner-pid": str(self.pid), "com.smbyoc.owner-start": str(self.start or ""),
                "com.smbyoc.owner-host": self.host, "com.smbyoc.owner-boot": self.boot}

    @classmethod
    def from_labels(cls, labels: dict[str, str]) -> Owner | None:
        if not labels.get("com.smbyoc.owner-pid", "").isdigit():
            return None  # created before owners were recorded: not ours to judge
        return cls.from_dict({"pid": labels["com.smbyoc.owner-pid"], "start": labels.get("com.smbyoc.owner-start"),
                              "host": labels.get("com.smbyoc.owner-host", ""),
                              "boot": labels.get("com.smbyoc.owner-boot", "")})

    def alive(self) -> bool:
        """False only when this owner is surely gone; an owner on another host counts as alive (one with no
        host, recorded before owners were, is judged by its PID alone)."""
        here = Owner.current()
        if self.host and self.host != here.host:
            return True
        if self.boot and here.boot and self.boot != here.boot:
            return False
        if PROC.is_dir() and self.start is not None:
            return start_time(self.pid) == self.start
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def new_token() -> str:
    return secrets.token_hex(12)


def tagged_processes(token: str) -> list[int]:
    """Live processes that carry ``token``, ours only (others' are unreadable): ``SMBYOC_OWNER_TOKEN=token`` in
    their environment, or the token on their command line (nginx writes its process title over its environment;
    ``serve`` gives it the token as an argument), and their descendants (nginx's workers)."""
    if not token or not PROC.is_dir():
        return []
    needle = f"{TOKEN_VARIABLE}={token}".encode()
    found: set[int] = set()
    me = os.getpid()
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            environ = (entry / "environ").read_bytes()
            tagged = needle in environ.split(b"\0") or needle in (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if tagged and start_time(int(entry.name)) is not None:
            found.add(int(entry.name))
    for pid in list(found):
        found.update(p for p in process_tree(pid) if p != me and start_time(p) is not None)
    return sorted(found)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    if not PROC.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in PROC.iterdir():
        if entry.name.isdigit() and process_group(int(entry.name)) == pgid:
            members.append(int(entry.name))
    return members


def _signal_all(pids: Iterable[int], groups: Iterable[int], signum: int) -> None:
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signum)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def end_processes(token: str, groups: Iterable[int] = (), *, grace: float = SWEEP_GRACE,
                  term: bool = True) -> list[int]:
    """End every process tagged with ``token`` and every member of ``groups``: SIGTERM, then SIGKILL to
    whatever is left after ``grace`` seconds (at once when ``term`` is false). Returns the pids found."""
    groups = [g for g in groups if group_members(g)]
    found = sorted(set(tagged_processes(token)) | {p for g in groups for p in group_members(g)})
    if not found:
        return []
    if term:
        _signal_all(found, groups, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not tagged_processes(token) and not any(group_members(g) for g in groups):
                return found
            time.sleep(0.1)
    left = set(tagged_processes(token)) | {p for g in groups for p in group_members(g)}
    if left:
        log.debug("SIGKILL to %s", sorted(left))
    _signal_all(left, [g for g in groups if group_members(g)], signal.SIGKILL)
    return found
