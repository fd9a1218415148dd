"""The real `serve` (nginx + gunicorn) on a Neo-style compiled model: the default example is trained for real,
its model.onnx compiled locally with Apache TVM for ``ml_c5`` (``smbyoc neo-compile``), and the compiled
directory served by the default handler; predictions must match onnxruntime's on the same ONNX file."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from serve_support import Server, start_server, wait_for

from smbyoc.emulator.runtime_client import ping
from smbyoc.examples import default_example
from smbyoc.serving import neo

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("nginx_on_path")]
tvm = pytest.importorskip("tvm", reason="the neo extra (apache-tvm) is installed by scripts/bootstrap")

EXAMPLE = default_example()


def call(server: Server, data: bytes, content_type: str, accept: str = "application/json") -> tuple[int, bytes]:
    req = urllib.request.Request(server.url + "/invocations", data=data,
                                 headers={"Content-Type": content_type, "Accept": accept})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def validation_features() -> np.ndarray:
    lines = (EXAMPLE.channels["validation"] / "validation.csv").read_text().splitlines()
    return np.array([[float(v) for v in line.split(",")[:-1]] for line in lines[1:]], dtype=np.float32)


@pytest.fixture(scope="module")
def trained_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default example trained for 2 epochs by its real train.py (about 10 s)."""
    base = tmp_path_factory.mktemp("train")
    for name, source in EXAMPLE.channels.items():
        shutil.copytree(source, base / "input" / "data" / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")} | {"SAGEMAKER_BASE_DIR": str(base)}
    done = subprocess.run([sys.executable, str(EXAMPLE.source_dir / EXAMPLE.entry_point), "--epochs", "2"],
                          env=env, cwd=base, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return base / "model" / "model.onnx"


@pytest.fixture(scope="module")
def neo_base(trained_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An /opt/ml tree whose model dir holds only what `smbyoc neo-compile --target ml_c5` wrote (compiled once
    per session: about 10 s on the 2-core machine)."""
    base = tmp_path_factory.mktemp("neo")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "smbyoc.cli", "neo-compile", str(trained_onnx), str(base / "model"),
                           "--target", "ml_c5"], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"neo-compile took {time.monotonic() - started:.1f} s")
    assert sorted(p.name for p in (base / "model").iterdir()) == ["compiled.meta", "compiled.so"]
    return base


def onnxruntime_probabilities(onnx_file: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    result: np.ndarray = session.run(None, {session.get_inputs()[0].name: x})[0]
    return result


@pytest.fixture(scope="module")
def neo_server(neo_base: Path, tmp_path_factory: pytest.TempPathFactory):
    if "avx512f" not in neo.cpu_flags():
        pytest.skip("the ml_c5 build uses AVX-512 and this CPU has none")
    server = start_server(neo_base, tmp_path_factory.mktemp("logs"), {"TVM_USE_RUNTIME_LIB": "1"})
    try:
        server.wait_ready(90)
        yield server
    finally:
        assert server.stop() == 0


def test_compiled_model_serves_onnxruntime_predictions(neo_server: Server, trained_onnx: Path) -> None:
    x = validation_features()
    want = onnxruntime_probabilities(trained_onnx, x)

    status, body = call(neo_server, json.dumps(x.tolist()).encode(), "application/json")
    assert status == 200, body
    got = np.asarray(json.loads(body), dtype=np.float32)
    assert got.shape == want.shape == (len(x), 4)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    csv = "\n".join(",".join(repr(float(v)) for v in row) for row in x[:5]).encode()
    status, body = call(neo_server, csv, "text/csv", "text/csv")
    assert status == 200, body
    rows = np.array([[float(v) for v in line.split(",")] for line in body.decode().splitlines()])
    np.testing.assert_allclose(rows, want[:5], rtol=1e-5, atol=1e-6)

    buffer = io.BytesIO()
    np.save(buffer, x[:3])
    status, body = call(neo_server, buffer.getvalue(), "application/x-npy", "application/x-npy")
    assert status == 200, body
    np.testing.assert_allclose(np.load(io.BytesIO(body)), want[:3], rtol=1e-5, atol=1e-6)

    status, body = call(neo_server, json.dumps(x[0].tolist()).encode(), "application/json")  # one record
    assert status == 200, body
    np.testing.assert_allclose(np.asarray(json.loads(body)), want[:1], rtol=1e-5, atol=1e-6)

    log = neo_server.output()
    assert "Neo relax model" in log, log[-2000:]


def test_request_that_does_not_fit_is_a_400_naming_the_input(neo_server: Server) -> None:
    status, body = call(neo_server, b"[[1.0, 2.0, 3.0]]", "application/json")
    assert status == 400, body
    assert "input 'input': shape [1, 3] does not fit the model's Nx8" in json.loads(body)["message"], body


def test_library_for_another_architecture_fails_ping_with_one_clear_line(neo_base: Path, tmp_path: Path) -> None:
    other = "aarch64" if neo.host_machine() == "x86_64" else "x86_64"
    machine = {"x86_64": 0x3E, "aarch64": 0xB7}[other]
    model = tmp_path / "ml" / "model"
    model.mkdir(parents=True)
    shutil.copy(neo_base / "model" / "compiled.meta", model / "compiled.meta")
    header = bytearray((neo_base / "model" / "compiled.so").read_bytes())
    header[18:20] = machine.to_bytes(2, "little")  # the real library, relabelled for another machine
    (model / "compiled.so").write_bytes(bytes(header))
    server = start_server(tmp_path / "ml", tmp_path)
    try:
        def refused() -> bool:
            if ping(server.url)[0] != 503:
                return False
            req = urllib.request.Request(server.url + "/ping")
            try:
                urllib.request.urlopen(req, timeout=5)
            except urllib.error.HTTPError as e:
                return f"compiled for {other}" in json.loads(e.read())["message"]
            return False

        wait_for(refused, 60, server)
        assert f"compiled for {other}, but this machine is {neo.host_machine()}" in server.output()
    finally:
        assert server.stop() == 0
