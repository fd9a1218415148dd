"""`smbyoc local-serve --mode process` on a host without nginx: gunicorn alone, one warning; `--require-nginx`
makes it an error. nginx is hidden from PATH (whether or not this machine has it) so both run everywhere."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from serve_support import expected

from helpers import free_port, wait_for_file, write_linear_onnx

pytestmark = pytest.mark.integration

SMBYOC = [sys.executable, "-m", "smbyoc.cli"]


def path_without_nginx() -> str:
    dirs = [str(Path(sys.executable).parent), *os.environ.get("PATH", "").split(os.pathsep)]
    kept = [d for d in dict.fromkeys(dirs) if d and not (Path(d) / "nginx").exists()]
    return os.pathsep.join(kept)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    write_linear_onnx(tmp_path / "model" / "model.onnx")
    return tmp_path / "model"


def test_serves_through_gunicorn_with_one_warning(tmp_path: Path, model_dir: Path) -> None:
    port = free_port()
    ready = tmp_path / "ready"
    env = {**os.environ, "PATH": path_without_nginx()}
    proc = subprocess.Popen(
        [*SMBYOC, "local-serve", "--mode", "process", "--model-data", str(model_dir), "--port", str(port),
         "--ready-file", str(ready)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert wait_for_file(ready, proc, 120), proc.communicate(timeout=30)
        url = ready.read_text().strip()
        result = subprocess.run([*SMBYOC, "invoke", "--url", url, "[[1.0, 2.0, 3.0]]"],
                                capture_output=True, timeout=60, env=env)
        assert result.returncode == 0, result.stderr
        (row,) = json.loads(result.stdout)
        assert row == pytest.approx(expected([[1.0, 2.0, 3.0]]).tolist()[0])
        # Content-Length over 6 MB, body not sent: the app answers 413 from the header alone.
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % (6 * 1024 * 1024 + 1))
            status_line = conn.makefile("rb").readline()
        assert status_line.split()[1] == b"413", status_line  # what nginx would have refused
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    warnings = [line for line in err.splitlines() if "nginx is not installed" in line]
    assert len(warnings) == 1, err
    assert "--require-nginx" in warnings[0] and "gunicorn alone" in warnings[0]
    assert "Endpoint stopped." in err


def test_require_nginx_is_one_error_line_before_anything_starts(tmp_path: Path, model_dir: Path) -> None:
    env = {**os.environ, "PATH": path_without_nginx()}
    proc = subprocess.run(
        [*SMBYOC, "local-serve", "--mode", "process", "--require-nginx", "--model-data", str(model_dir),
         "--port", str(free_port())],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "nginx not found" in errors[0] and "--require-nginx" in errors[0], proc.stderr
    assert "Starting endpoint" not in proc.stderr


def test_require_nginx_is_for_process_mode_only(model_dir: Path) -> None:
    proc = subprocess.run([*SMBYOC, "local-serve", "--require-nginx", "--model-data", str(model_dir)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "--require-nginx: only for --mode process" in proc.stderr


def test_asked_for_no_nginx_gives_no_warning(tmp_path: Path, model_dir: Path) -> None:
    from smbyoc.emulator.endpoint import resolve_nginx

    assert resolve_nginx({"SAGEMAKER_USE_NGINX": "false", "PATH": path_without_nginx()}, require=True) is False
