"""What a person watching a training or processing job sees: a live status line and host-prefixed logs.

On a terminal the status line (job name, host count, elapsed time, the states so far, e.g.
``Starting → Downloading → Training``) is redrawn in place every second on stderr, and log lines are
printed above it; elsewhere (CI logs, pipes) each state change is one plain line.

Text that came from the job (its ``FailureReason``) goes through :func:`smbyoc.logs.terminal_safe` before
it reaches a terminal, and under ``--json`` :func:`stdout_to_stderr` keeps standard output for the JSON
alone.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

import click

from smbyoc.emulator import job_logs

ARROW = " → "


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to standard output meanwhile to standard error instead.

    Both levels move: ``sys.stdout`` (the emulator's own lines) and file descriptor 1 (what a process
    mode program, which inherits it, prints), so standard output can carry one JSON document alone.
    """
    sys.stdout.flush()
    try:
        saved: int | None = os.dup(1)
        sys.stderr.flush()
        os.dup2(2, 1)
    except OSError:  # no descriptor 1 (a detached process): only sys.stdout moves
        saved = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if saved is not None:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def format_elapsed(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class StatusDisplay:
    def __init__(
        self,
        job_name: str,
        hosts: int,
        *,
        err: TextIO | None = None,
        out: TextIO | None = None,
        live: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job_name = job_name
        self.hosts = hosts
        self.err = err or sys.stderr
        self.out = out or sys.stdout
        self.live = self.err.isatty() if live is None else live
        self.clock = clock
        self.began = clock()
        self.states: list[str] = []
        self._lock = threading.Lock()
        self._shown = False
        self._done = threading.Event()
        self._ticker: threading.Thread | None = None

    def line(self) -> str:
        trail = ARROW.join(self.states) or "Starting"
        noun = "host" if self.hosts == 1 else "hosts"
        return f"{self.job_name} | {self.hosts} {noun} | {format_elapsed(self.clock() - self.began)} | {trail}"

    # -- callbacks -----------------------------------------------------------------------------
    def on_status(self, primary: str, secondary: str) -> None:
        with self._lock:
            if not self.states or self.states[-1] != secondary:
                self.states.append(secondary)
            if self.live:
                self._draw()
            else:
                self.err.write(f"[{self.job_name}] {secondary} ({format_elapsed(self.clock() - self.began)})\n")
                self.err.flush()

    def log_line(self, host: str, text: str) -> None:
        with self._lock:
            if self.live and self._shown:
                self.err.write("\r\033[K")
                self.err.flush()
                self._shown = False
            self.out.write(f"[{host}] {text}\n")
            self.out.flush()
            if self.live:
                self._draw()

    # -- live redraw ---------------------------------------------------------------------------
    def _draw(self) -> None:
        self.err.write("\r\033[K" + self.line())
        self.err.flush()
        self._shown = True

    def start(self) -> StatusDisplay:
        if self.live:
            self._ticker = threading.Thread(target=self._tick, name="status-line", daemon=True)
            self._ticker.start()
        return self

    def _tick(self) -> None:
        while not self._done.wait(1.0):
            with self._lock:
                self._draw()

    def close(self) -> None:
        self._done.set()
        if self._ticker is not None:
            self._ticker.join(2)
        with self._lock:
            if self.live and self._shown:
                self.err.write("\r\033[K" + self.line() + "\n")
                self.err.flush()
                self._shown = False


class JobConsole:
    """What a ``local-*`` job command shows while the job runs: ``header(spec)`` once every check passed, then the
    live status line and the hosts' log lines (on stderr under ``--json``, so stdout holds the JSON alone).
    ``spec`` is any job spec with ``job_name`` and ``instance_count``."""

    def __init__(self, as_json: bool, header: Callable[[Any], str]) -> None:
        self.as_json = as_json
        self.header = header
        self.display: StatusDisplay | None = None

    def start(self, spec: Any) -> None:
        self.display = StatusDisplay(spec.job_name, spec.instance_count, out=sys.stderr if self.as_json else None)
        click.echo(self.header(spec), err=True)
        self.display.start()

    def on_status(self, primary: str, secondary: str) -> None:
        if self.display is not None:
            self.display.on_status(primary, secondary)

    def log_line(self, host: str, text: str) -> None:
        if self.display is not None:
            self.display.log_line(host, text)

    def close(self) -> None:
        if self.display is not None:
            self.display.close()


class JobOutput:
    """Where a running job's lines go: its log file (:class:`~smbyoc.emulator.job_logs.RunLog`) and the console.
    ``on_start``, ``sink`` and ``console.on_status`` are the callbacks the job runners take."""

    def __init__(self, console: JobConsole, run_log: job_logs.RunLog, start_note: str | None = None) -> None:
        self.console = console
        self.run_log = run_log
        self.start_note = start_note

    def on_start(self, spec: Any) -> None:
        """Open the job's log file (``start_note``, if any, its first line) and show its header."""
        self.run_log.start(spec.job_name)
        if self.start_note is not None:
            self.run_log.sink("smbyoc", self.start_note)
        self.console.start(spec)

    def sink(self, host: str, line: str) -> None:
        """A host's line: into the log file and above the status line."""
        self.run_log.sink(host, line)
        self.console.log_line(host, line)


@contextlib.contextmanager
def job_output(kind: str, as_json: bool, header: Callable[[Any], str],
               start_note: str | None = None) -> Iterator[JobOutput]:
    """A ``local-*`` job command's output while its job runs (``kind``: ``job_logs.TRAINING`` or
    ``PROCESSING``); under ``--json`` standard output goes to stderr meanwhile. The status line and the log file
    are closed on the way out, however the job ended."""
    console = JobConsole(as_json, header)
    run_log = job_logs.RunLog(kind)
    try:
        with stdout_to_stderr() if as_json else contextlib.nullcontext():
            yield JobOutput(console, run_log, start_note)
    finally:
        console.close()
        run_log.close()
