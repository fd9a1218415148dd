"""Run the user program: own process group, forwarded signals, live output, a bounded stderr tail.

The child runs in a new session (its own process group), so SIGTERM and SIGINT received by ``train``
are forwarded to the whole group — the program and anything it started (``torchrun`` workers, data
loaders) — and ``train`` keeps waiting until the program exits, so a SIGTERM handler that saves a
checkpoint can finish (SageMaker sends SIGKILL 120 s after SIGTERM, contract.md §1.7).

stdout is inherited (no copy, no buffering by us). stderr goes through a pipe that a thread drains
continuously — so large output never deadlocks — writing every chunk straight to our stderr and keeping
the last :data:`STDERR_TAIL_BYTES` bytes for the failure file. ``PYTHONUNBUFFERED=1`` is set for the
child unless already set, so Python programs' output is live.

When the program exits, whatever it left running in its process group (a data loader, a background
helper that ignores SIGTERM) gets SIGTERM and, :data:`LEFTOVER_GRACE` seconds later, SIGKILL: on SageMaker
the end of the container ends them all, and nothing may outlive a job run outside a container either.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

from smbyoc import exit_codes

log = logging.getLogger(__name__)

#: How much of the end of stderr is kept for the failure file.
STDERR_TAIL_BYTES = 64 * 1024
#: Signals forwarded to the program's process group.
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: How long to wait for the stderr pipe to drain after the program exited (a grandchild may hold it).
_DRAIN_TIMEOUT = 5.0
#: Seconds processes left in the program's process group after it exits get between SIGTERM and SIGKILL.
LEFTOVER_GRACE = 2.0


@dataclass(frozen=True)
class ProcessResult:
    """How a program ended."""

    argv: tuple[str, ...]
    exit_status: int          # the program's status; 128 + n when it died of signal n
    stderr_tail: str          # the last STDERR_TAIL_BYTES bytes of its stderr, decoded leniently
    signal_number: int | None  # the signal that killed it, if any
    forwarded_signals: tuple[int, ...]  # signals train forwarded to it

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


class _Tail:
    """Bytes kept from the end of a stream."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.lock = threading.Lock()

    def add(self, chunk: bytes) -> None:
        with self.lock:
            self.data += chunk
            if len(self.data) > self.limit:
                del self.data[: len(self.data) - self.limit]

    def text(self) -> str:
        with self.lock:
            return bytes(self.data).decode("utf-8", errors="replace")


def _default_sink() -> IO[bytes] | None:
    return getattr(sys.stderr, "buffer", None)


def _tee(pipe: IO[bytes], tail: _Tail, sink: IO[bytes] | None) -> None:
    fd = pipe.fileno()
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # pragma: no cover - closed under us
            break
        if not chunk:
            break
        tail.add(chunk)
        try:
            if sink is not None:
                sink.write(chunk)
                sink.flush()
            else:
                os.write(2, chunk)
        except (OSError, ValueError):  # our stderr went away; keep draining
            sink = None
    pipe.close()


@contextlib.contextmanager
def _forwarding(signals: Sequence[int]) -> Iterator[dict[str, Any]]:
    """Install handlers that forward ``signals`` to the child's process group once it exists."""
    state: dict[str, Any] = {"pid": None, "pending": [], "forwarded": []}

    def handler(signum: int, frame: FrameType | None) -> None:
        pid = state["pid"]
        if pid is None:
            state["pending"].append(signum)
            return
        _send(pid, signum, state)

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in signals:
            previous[signum] = signal.signal(signum, handler)
    else:
        log.debug("not in the main thread: signals are not forwarded")
    try:
        yield state
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _send(pid: int, signum: int, state: dict[str, Any]) -> None:
    state["forwarded"].append(signum)
    log.info("forwarding %s to the program (process group %d)", signal.Signals(signum).name, pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signum)


def _group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` has a live member (zombies do not count where /proc tells them apart)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, _ppid, group = stat[stat.rfind(")") + 2:].split()[:3]
        if int(group) == pgid and state not in ("Z", "X"):
            return True
    return False


def _reap() -> None:
    """As PID 1 (``train`` as a container's entry point) we inherit orphans: collect the dead ones."""
    if os.getpid() != 1:
        return
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def end_group(pgid: int, grace: float = LEFTOVER_GRACE) -> bool:
    """SIGTERM what is left in process group ``pgid``, SIGKILL after ``grace`` s; True when something was."""
    if not _group_alive(pgid):
        return False
    log.warning("the program left processes in its process group %d: SIGTERM, then SIGKILL after %g s",
                pgid, grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap()
        if not _group_alive(pgid):
            return True
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    _reap()
    return True


def run_program(
    argv: Sequence[str],
    *,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    stderr_sink: IO[bytes] | None = None,
    tail_bytes: int = STDERR_TAIL_BYTES,
    forward_signals: Sequence[int] = FORWARDED_SIGNALS,
) -> ProcessResult:
    """Run ``argv`` to completion and return how it ended; raises OSError if it cannot be started."""
    child_env = dict(os.environ if env is None else env)
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    sink = stderr_sink if stderr_sink is not None else _default_sink()
    tail = _Tail(tail_bytes)
    with _forwarding(forward_signals) as state:
        proc = subprocess.Popen(
            list(argv), cwd=cwd, env=child_env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True, close_fds=True,
        )
        state["pid"] = proc.pid
        assert proc.stderr is not None
        reader = threading.Thread(target=_tee, args=(proc.stderr, tail, sink), name="stderr-tee", daemon=True)
        reader.start()
        for signum in state["pending"]:
            _send(proc.pid, signum, state)
        returncode = proc.wait()  # signal handlers run in between; wait() resumes (PEP 475)
        end_group(proc.pid)
        reader.join(_DRAIN_TIMEOUT)
        if reader.is_alive():
            log.warning("the program's stderr is still open (a background process?); not waiting for it")
    signum = -returncode if returncode < 0 else None
    return ProcessResult(
        argv=tuple(argv),
        exit_status=exit_codes.from_returncode(returncode),
        stderr_tail=tail.text(),
        signal_number=signum,
        forwarded_signals=tuple(state["forwarded"]),
    )
