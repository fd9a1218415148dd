"""The real `serve`: real nginx and gunicorn on a free port (see serve_support.py)."""

from __future__ import annotations

import io
import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from serve_support import (
    Server,
    children_of,
    expected,
    session_pids,
    start_server,
    wait_for,
    write_code,
    write_linear_onnx,
)

from smbyoc.emulator.runtime_client import ping

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("nginx_on_path")]

SIX_MB = 6 * 1024 * 1024


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def call(server: Server, path: str, data: bytes | None = None, headers: dict[str, str] | None = None,
         method: str | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(server.url + path, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.fixture(scope="module")
def onnx_server(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("ml")
    write_linear_onnx(base / "model" / "model.onnx")
    write_code(base, '''
        import numpy as np
        from smbyoc.serving.default_handlers import OnnxModel

        def model_fn(model_dir, context):
            return OnnxModel(__import__("pathlib").Path(model_dir) / "model.onnx", 1)

        def predict_fn(data, model, context):
            attrs = context.custom_attributes
            if attrs:
                context.set_custom_attributes("seen=" + attrs)
            if isinstance(data, np.ndarray) and data.size == 1 and data.item() == -1:
                raise RuntimeError("user code blew up")
            return model.predict(data)

        def execution_parameters_fn():
            return {"MaxConcurrentTransforms": 2}
    ''')
    server = start_server(base, tmp_path_factory.mktemp("logs"))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_routes_and_codecs(onnx_server: Server) -> None:
    s = onnx_server
    x = [[1.0, 2.0, 3.0], [0.0, 1.0, 0.0]]
    status, headers, body = call(s, "/ping")
    assert status == 200
    status, headers, body = call(s, "/invocations", json.dumps(x).encode(), {"Content-Type": "application/json"})
    assert status == 200 and headers["Content-Type"] == "application/json"
    np.testing.assert_allclose(json.loads(body), expected(x))
    csv = b"1,2,3\n0,1,0\n"
    status, headers, body = call(s, "/invocations", csv, {"Content-Type": "text/csv", "Accept": "text/csv"})
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    np.testing.assert_allclose(np.genfromtxt(io.BytesIO(body), delimiter=","), expected(x))
    buf = io.BytesIO()
    np.save(buf, np.array(x, dtype=np.float32))
    status, headers, body = call(s, "/invocations", buf.getvalue(),
                                 {"Content-Type": "application/x-npy", "Accept": "image/png, application/x-npy"})
    assert status == 200
    np.testing.assert_allclose(np.load(io.BytesIO(body)), expected(x))
    buf = io.BytesIO()
    np.savez(buf, x=np.array(x))
    status, _, body = call(s, "/invocations", buf.getvalue(),
                           {"Content-Type": "application/x-npz", "Accept": "application/x-npz"})
    assert status == 200
    np.testing.assert_allclose(np.load(io.BytesIO(body))["arr_0"], expected(x))
    status, _, body = call(s, "/invocations", b"[1,2,3]\n[0,1,0]\n",
                           {"Content-Type": "application/jsonlines", "Accept": "application/jsonlines"})
    assert status == 200
    np.testing.assert_allclose([json.loads(line) for line in body.splitlines()], expected(x))
    status, headers, _ = call(s, "/invocations", b"[[1,2,3]]", {"Content-Type": "application/json",
                              "X-Amzn-SageMaker-Custom-Attributes": "a=1"})
    assert headers["X-Amzn-SageMaker-Custom-Attributes"] == "seen=a=1"
    status, _, body = call(s, "/execution-parameters")
    assert status == 200
    assert json.loads(body) == {"MaxConcurrentTransforms": 2, "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": 6}


@pytest.mark.parametrize(
    ("path", "data", "headers", "status", "needle"),
    [
        ("/invocations", b"[[1,2,3]]", {"Content-Type": "image/png"}, 415, "image/png"),
        ("/invocations", b"[[1,2,3]]", {"Content-Type": "application/json", "Accept": "image/png"}, 406, "image/png"),
        ("/invocations", b"[[1,2", {"Content-Type": "application/json"}, 400, "application/json"),
        ("/invocations", b"[-1]", {"Content-Type": "application/json"}, 500, "user code blew up"),
        ("/nope", None, {}, 404, "no such route"),
        ("/models/x/y/z", None, {}, 404, "Not Found"),
    ],
)
def test_error_statuses_are_json(onnx_server: Server, path, data, headers, status, needle) -> None:
    got, hdrs, body = call(onnx_server, path, data, headers)
    assert got == status, body
    assert hdrs["Content-Type"].startswith("application/json")
    assert needle in json.loads(body)["message"] or needle in json.loads(body)["error"]
    assert b"Traceback" not in body


def raw_exchange(server: Server, data: bytes) -> tuple[int, str, bytes]:
    """Send ``data`` as it is; the status, Content-Type and body nginx answers."""
    import http.client
    import socket

    host, port = server.url.split("//", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(data)
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        return answer.status, answer.getheader("Content-Type") or "", answer.read()


@pytest.mark.parametrize(("data", "words"), [
    (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
     b"X-Amzn-SageMaker-Custom-Attributes: " + b"a" * 20_000 + b"\r\nContent-Length: 2\r\n\r\n[]",
     "the request line or a header field is too large"),
    (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
     b"Transfer-Encoding: chunked\r\n\r\nzz\r\n[]\r\n0\r\n\r\n", "not well-formed HTTP/1.1"),
    (b"GET /ping HTTP/1.1\r\nHost: x\r\nBad Header: x\r\n\r\n", "not well-formed HTTP/1.1"),
])
def test_what_nginx_refuses_itself_is_json_too(onnx_server: Server, data: bytes, words: str) -> None:
    status, content_type, body = raw_exchange(onnx_server, data)
    assert (status, content_type) == (400, "application/json"), body
    answer = json.loads(body)
    assert answer["status"] == 400 and words in answer["message"], answer


def test_payload_limit_6mb(onnx_server: Server) -> None:
    ok = b"1" * SIX_MB
    status, _, body = call(onnx_server, "/invocations", ok, {"Content-Type": "application/octet-stream"})
    assert status != 413, body  # reaches the handler (which rejects the bytes as model input)
    status, headers, body = call(onnx_server, "/invocations", ok + b"1", {"Content-Type": "application/octet-stream"})
    assert status == 413
    assert "SAGEMAKER_MAX_PAYLOAD_IN_MB" in json.loads(body)["message"]
    assert call(onnx_server, "/ping")[0] == 200


def test_worker_crash_is_recovered(onnx_server: Server) -> None:
    def gunicorn_workers() -> list[int]:
        masters = [p for p in children_of(onnx_server.proc.pid) if comm(p) != "nginx"]
        return [w for g in masters for w in children_of(g)]

    wait_for(lambda: len(gunicorn_workers()) == 2, 20, onnx_server)
    workers = gunicorn_workers()
    os.kill(workers[0], signal.SIGKILL)

    def replaced() -> bool:
        now = gunicorn_workers()
        return len(now) == 2 and workers[0] not in now

    wait_for(replaced, 20, onnx_server)
    for _ in range(6):  # both workers serve
        assert call(onnx_server, "/invocations", b"[[1,2,3]]", {"Content-Type": "application/json"})[0] == 200
    assert onnx_server.proc.poll() is None


def test_model_fn_failure_gives_503_and_a_clear_log(tmp_path: Path) -> None:
    write_code(tmp_path, """
        def model_fn(model_dir):
            raise FileNotFoundError("weights.bin is missing")
    """)
    server = start_server(tmp_path, tmp_path)
    try:
        def failed_load_reported() -> bool:  # a worker still loading answers 503 "model is loading" first
            if ping(server.url)[0] != 503:  # not listening yet (or not failed yet)
                return False
            status, _, body = call(server, "/ping")
            return status == 503 and "weights.bin is missing" in json.loads(body)["message"]

        wait_for(failed_load_reported, 30, server)
        wait_for(lambda: "Traceback" in server.output(), 10, server)
        assert "weights.bin is missing" in server.output()
    finally:
        assert server.stop() == 0


def test_sigterm_stops_everything_quickly(tmp_path: Path) -> None:
    write_linear_onnx(tmp_path / "model" / "model.onnx")
    server = start_server(tmp_path, tmp_path)
    startup = server.wait_ready()
    sid = server.proc.pid
    assert len(session_pids(sid)) >= 1
    start = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    code = server.proc.wait(35)
    elapsed = time.monotonic() - start
    assert code == 0, server.output()[-3000:]
    assert elapsed < 30
    wait_for(lambda: not any(p for p in session_pids(sid)), 5)
    print(f"startup to first 200: {startup:.3f} s; SIGTERM to exit: {elapsed:.3f} s")


def test_killing_nginx_stops_serve_non_zero(tmp_path: Path) -> None:
    write_linear_onnx(tmp_path / "model" / "model.onnx")
    server = start_server(tmp_path, tmp_path)
    server.wait_ready()
    kids = children_of(server.proc.pid)
    names = {pid: Path(f"/proc/{pid}/comm").read_text().strip() for pid in kids}
    nginx = next(pid for pid, name in names.items() if name == "nginx")
    gunicorn = next(pid for pid, name in names.items() if name != "nginx")
    os.kill(nginx, signal.SIGKILL)
    code = server.proc.wait(35)
    assert code != 0
    wait_for(lambda: not Path(f"/proc/{gunicorn}").exists(), 5)
    assert "nginx exited" in server.output()


def test_no_nginx(tmp_path: Path) -> None:
    write_linear_onnx(tmp_path / "model" / "model.onnx")
    server = start_server(tmp_path, tmp_path, args=["--no-nginx"])
    try:
        server.wait_ready()
        status, _, body = call(server, "/invocations", b"[[1,2,3]]", {"Content-Type": "application/json"})
        assert status == 200 and np.allclose(json.loads(body), expected([[1, 2, 3]]))
        assert call(server, "/nope")[0] == 404
        try:  # werkzeug answers 413 before reading the body, so the client may see the socket closed
            status = call(server, "/invocations", b"1" * (SIX_MB + 1), {"Content-Type": "application/octet-stream"})[0]
        except urllib.error.URLError:
            status = 413
        assert status == 413
        assert call(server, "/ping")[0] == 200
        names = [Path(f"/proc/{p}/comm").read_text().strip() for p in children_of(server.proc.pid)]
        assert "nginx" not in names
    finally:
        assert server.stop() == 0


def test_default_torchscript_handler(tmp_path: Path) -> None:
    """No handler module and a TorchScript model.pt: served with torch (in this environment torch is installed)."""
    import torch

    class Affine(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2.0 + 1.0

    base = tmp_path / "ml"
    (base / "model").mkdir(parents=True)
    torch.jit.trace(Affine(), torch.zeros(1, 2)).save(str(base / "model" / "model.pt"))
    server = start_server(base, tmp_path)
    try:
        server.wait_ready(60)
        status, headers, body = call(server, "/invocations", b"[[1.0, 2.0], [3.0, 4.0]]",
                                     {"Content-Type": "application/json", "Accept": "application/json"})
        assert status == 200, body
        assert json.loads(body) == [[3.0, 5.0], [7.0, 9.0]]
        assert "torchscript" in server.output().lower(), server.output()[-2000:]
    finally:
        assert server.stop() == 0
