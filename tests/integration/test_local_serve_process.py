"""`smbyoc local-serve --mode process` with no model trains and serves the default example; `invoke` calls it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import free_port

pytestmark = pytest.mark.integration

SMBYOC = [sys.executable, "-m", "smbyoc.cli"]


@pytest.fixture(scope="module")
def served(tmp_path_factory, nginx_on_path):
    tmp = tmp_path_factory.mktemp("serve")
    port = free_port()
    ready = tmp / "ready"
    env = {**os.environ, "SMBYOC_CACHE_DIR": str(tmp / "cache")}
    proc = subprocess.Popen(
        [*SMBYOC, "local-serve", "--mode", "process", "--port", str(port), "--ready-file", str(ready)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp,
    )
    deadline = time.monotonic() + 180
    while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if not ready.exists():
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"local-serve did not become ready:\n{out}\n{err}")
    yield f"http://127.0.0.1:{port}", proc, tmp
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)


def invoke(url: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*SMBYOC, "invoke", "--url", url, *args], capture_output=True, input=stdin, timeout=60)


ROW = "55.11,2.6644,314.36,1691.4,10.082,395.14,47.60,77.70"


def test_default_model_was_trained_and_cached(served) -> None:
    _, _, tmp = served
    assert list((tmp / "cache" / "default-model").glob("*/model.tar.gz"))


def test_json_prediction(served) -> None:
    url, _, _ = served
    result = invoke(url, "-i", json.dumps([[float(x) for x in ROW.split(",")]]))
    assert result.returncode == 0, result.stderr
    assert b"HTTP 200" in result.stderr
    prediction = json.loads(result.stdout)
    (only,) = prediction["predictions"]
    assert only["label"] in only["probabilities"]
    assert abs(sum(only["probabilities"].values()) - 1) < 1e-4


def test_csv_prediction_from_stdin(served) -> None:
    url, _, _ = served
    result = invoke(url, "--content-type", "text/csv", "--accept", "text/csv", stdin=(ROW + "\n" + ROW).encode())
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().strip().splitlines()
    assert len(lines) == 2
    assert all(len(line.split(",")) == 5 for line in lines)


def test_model_error_reports_original_status(served) -> None:
    url, _, _ = served
    result = invoke(url, "--content-type", "application/x-unknown", "abc")
    assert result.returncode != 0
    assert b"OriginalStatusCode: 415" in result.stderr
    assert b"ModelError" in result.stderr


def test_request_over_6_mb_is_refused_before_sending(served, tmp_path: Path) -> None:
    url, _, _ = served
    big = tmp_path / "big.json"
    big.write_bytes(b"1" * (6 * 1024 * 1024 + 1))
    result = invoke(url, "-f", str(big))
    assert result.returncode != 0
    assert b"ValidationError" in result.stderr


def test_ctrl_c_stops_cleanly(served) -> None:
    url, proc, _ = served
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Endpoint stopped." in err
    from smbyoc.emulator.runtime_client import ping

    assert ping(url)[0] == 0


def test_bad_model_data_is_one_line(tmp_path: Path) -> None:
    bogus = tmp_path / "model.tar.gz"
    bogus.write_text("not a tar")
    proc = subprocess.run([*SMBYOC, "local-serve", "--mode", "process", "--model-data", str(bogus),
                           "--port", str(free_port())], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "model.tar.gz" in errors[0], proc.stderr


def test_missing_model_data(tmp_path: Path) -> None:
    proc = subprocess.run([*SMBYOC, "local-serve", "--mode", "process", "--model-data", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "--model-data" in proc.stderr and "no such file" in proc.stderr


def test_a_port_in_use_is_one_line_and_nothing_starts(tmp_path: Path) -> None:
    import socket

    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.json").write_text("[1]")
    with socket.socket() as other:  # another program's server on the port, answering nothing
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        env = {**os.environ, "TMPDIR": str(tmp_path), "SMBYOC_STATE_DIR": str(tmp_path / "state")}
        proc = subprocess.run([*SMBYOC, "local-serve", "--mode", "process", "--model-data", str(model),
                               "--port", str(port)], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: 127.0.0.1:{port} is in use by another program; choose another port "
                      "(local-serve --port)"], proc.stderr
    assert "InService" not in proc.stdout + proc.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("smbyoc-")]  # no temporary tree left
    assert not list((tmp_path / "state").rglob("*.json"))  # no endpoint record left


def test_nginx_of_a_serve_killed_hard_is_found_and_ended_by_its_token(tmp_path: Path, nginx_on_path: str) -> None:
    """serve SIGKILLed cannot stop nginx, which runs in a session of its own and writes its title over its
    environment: the emulator's sweep finds it by the token on its command line, and its workers with it."""
    from smbyoc.emulator import owners
    from smbyoc.emulator.endpoint import EndpointSpec, ProcessEndpoint

    model = tmp_path / "model"
    (model / "code").mkdir(parents=True)
    (model / "code" / "inference.py").write_text("def model_fn(model_dir):\n    return 1\n"
                                                 "def predict_fn(data, model):\n    return [model]\n")
    endpoint = ProcessEndpoint(EndpointSpec(model_data=model, port=free_port()), sink=None, require_nginx=True)
    endpoint.start()
    try:
        tagged = owners.tagged_processes(endpoint.token)
        nginx = [p for p in tagged if Path(f"/proc/{p}/comm").read_text().strip() == "nginx"]
        assert len(nginx) >= 2, tagged  # the master and its worker
        assert endpoint.process is not None
        os.kill(endpoint.process.pid, signal.SIGKILL)
        endpoint.process.wait()
        ended = owners.end_processes(endpoint.token, grace=5)
        assert set(nginx) <= set(ended)
        deadline = time.monotonic() + 10
        while any(owners.start_time(p) is not None for p in nginx) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(owners.start_time(p) is None for p in nginx)  # gone (a zombie counts as gone)
    finally:
        endpoint.close()
