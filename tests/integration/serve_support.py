"""Helpers for the real-`serve` tests: small ONNX models, model trees, and a running-server fixture."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from helpers import B, W, free_port, serve_command, write_linear_onnx
from smbyoc.emulator.runtime_client import ping


def expected(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32) @ W + B


def write_code(base: Path, source: str, name: str = "inference.py") -> Path:
    code = base / "model" / "code"
    code.mkdir(parents=True, exist_ok=True)
    path = code / name
    path.write_text(textwrap.dedent(source))
    return path


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> float:
        return wait_for(lambda: ping(self.url, timeout=2.0)[0] == 200, timeout, self)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(35)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


def wait_for(condition, timeout: float, server: Server | None = None, interval: float = 0.02) -> float:
    start = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - start
        if server is not None and server.proc.poll() is not None:
            raise AssertionError(f"serve exited ({server.proc.returncode}):\n{server.output()[-4000:]}")
        if time.monotonic() - start > timeout:
            detail = server.output()[-4000:] if server is not None else ""
            raise AssertionError(f"condition not met within {timeout} s\n{detail}")
        time.sleep(interval)


def start_server(
    base: Path, tmp: Path, extra_env: dict[str, str] | None = None, args: list[str] | None = None
) -> Server:
    port = free_port()
    env = {
        **os.environ,
        "SAGEMAKER_BASE_DIR": str(base),
        "SAGEMAKER_BIND_TO_PORT": str(port),
        "SMBYOC_SERVE_HOST": "127.0.0.1",
        "SAGEMAKER_MODEL_SERVER_WORKERS": "2",
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    env.pop("SAGEMAKER_PROGRAM", None) if "SAGEMAKER_PROGRAM" not in (extra_env or {}) else None
    log = tmp / f"serve-{port}.log"
    handle = log.open("wb")
    proc = subprocess.Popen(
        serve_command(args or []), env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )
    handle.close()
    return Server(proc, port, log)


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], check=False, capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def session_pids(sid: int) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,sid="], check=False, capture_output=True, text=True).stdout
    pids = []
    for line in out.splitlines():
        pid, s = line.split()
        if int(s) == sid:
            pids.append(int(pid))
    return pids


__all__ = ["Server", "expected", "start_server", "sys", "write_code", "write_linear_onnx"]
