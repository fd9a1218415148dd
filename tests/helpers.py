"""Small helpers the tests share (a plain module: ``from helpers import free_port``). Nothing here ships in
the package: the runtime and the emulator never need a "free port" or a child `serve` of their own."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def cli_runner() -> Any:
    """A click ``CliRunner`` whose results keep stderr apart from stdout on every click smbyoc supports: click
    8.1 (the floor) mixes them unless told ``mix_stderr=False``; 8.2 removed the option and always separates."""
    import inspect

    from click.testing import CliRunner

    if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:
        return CliRunner(mix_stderr=False)
    return CliRunner()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS considers free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def serve_command(args: Sequence[str] = (), python: str | None = None) -> list[str]:
    """argv that runs ``serve`` with this interpreter (what the ``serve`` console script runs)."""
    return [python or sys.executable, "-m", "smbyoc.serving.main", *args]


def wait_for_file(path: Path, proc: subprocess.Popen[str] | subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait until ``path`` exists (a ``--ready-file``) while ``proc`` runs; whether it appeared."""
    deadline = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return path.exists()
