"""The ``upstream`` worker in a real gunicorn, with a probe WSGI application, spoken to over its unix socket
(as nginx does) and through a real ``serve`` with nginx in front."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from serve_support import start_server, wait_for

from helpers import write_linear_onnx

pytestmark = pytest.mark.integration

PROBE = '''
import json, os, sys

CLOSED = os.environ["PROBE_CLOSED_FILE"]


class Closing:
    def __init__(self, chunks):
        self.chunks = chunks

    def __iter__(self):
        return iter(self.chunks)

    def close(self):
        open(CLOSED, "a").write("closed\\n")


def app(environ, start_response):
    path = environ.get("HTTP_X_PROBE_PATH") or environ["PATH_INFO"]  # behind nginx: POST /invocations
    if path == "/echo":
        body = environ["wsgi.input"].read()
        keys = {k: v for k, v in environ.items() if isinstance(v, str)}
        out = json.dumps({"environ": keys, "body_length": len(body), "body_head": body[:20].decode("latin-1"),
                          "multiprocess": environ["wsgi.multiprocess"], "pid": os.getpid()}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [out]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (chunk for chunk in (b"a", b"", b"bc"))
    if path == "/write":
        write = start_response("201 Created", [("Content-Type", "text/plain")])
        write(b"written-")
        return [b"returned"]
    if path == "/raise":
        raise RuntimeError("probe failure")
    if path == "/raise-late":
        def gen():
            yield b"partial"
            raise RuntimeError("late failure")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return gen()
    if path == "/raise-late-big":
        def big():
            yield b"x" * (2 * 1024 * 1024)  # past the worker's buffer: the head is out before the failure
            raise RuntimeError("late failure, big")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return big()
    if path == "/big":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (b"y" * (1024 * 1024) for _ in range(3))
    if path == "/inject":
        start_response("200 OK", [("X-Bad", "1\\r\\nSet-Cookie: evil=1")])
        return [b"never"]
    if path == "/closing":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Closing([b"done"])
    if path == "/slow":
        import time
        time.sleep(float(environ["QUERY_STRING"] or "1"))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"slow"]
    if path == "/crash":
        import signal
        os.kill(os.getpid(), signal.SIGKILL)
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"no"]
'''


class Gunicorn:
    def __init__(self, proc: subprocess.Popen[bytes], sock: Path, log: Path, closed: Path) -> None:
        self.proc, self.sock, self.log, self.closed = proc, sock, log, closed

    def raw(self, data: bytes, timeout: float = 10.0) -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.sock))
            s.sendall(data)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)

    def request(
        self, method: str, path: str, body: bytes = b"", headers: str = ""
    ) -> tuple[int, dict[str, str], bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: probe\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
        return parse(self.raw(head.encode("latin-1") + body))


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    return int(lines[0].split(" ")[1]), headers, body


@pytest.fixture(scope="module")
def gunicorn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    tmp = tmp_path_factory.mktemp("upstream")
    (tmp / "probe_app.py").write_text(textwrap.dedent(PROBE))
    sock, log, closed = tmp / "g.sock", tmp / "gunicorn.log", tmp / "closed"
    env = {**os.environ, "PROBE_CLOSED_FILE": str(closed), "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "gunicorn", "--worker-class", "smbyoc.serving.worker.UpstreamWorker",
            "--workers", "2", "--bind", f"unix:{sock}", "--pythonpath", str(tmp), "--timeout", "5",
            "--graceful-timeout", "5", "--no-control-socket", "probe_app:app"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Gunicorn(proc, sock, log, closed)
    try:
        wait_for(sock.exists, 30)
        wait_for(lambda: server.request("GET", "/echo")[0] == 200, 30)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)


def test_environ_and_body(gunicorn: Gunicorn) -> None:
    body = b'{"x": 1}' + b" " * 200_000  # several reads
    extra = "Content-Type: application/json\r\nX-Amzn-SageMaker-Custom-Attributes: k=v\r\n"
    status, headers, out = gunicorn.request("POST", "/echo?a=1&b=%20", body, extra)
    assert status == 200 and headers["connection"] == "close" and headers["date"]
    data = json.loads(out)
    env = data["environ"]
    assert data["body_length"] == len(body) and data["body_head"].startswith('{"x": 1}')
    assert env["REQUEST_METHOD"] == "POST" and env["PATH_INFO"] == "/echo" and env["QUERY_STRING"] == "a=1&b=%20"
    assert env["CONTENT_TYPE"] == "application/json" and env["CONTENT_LENGTH"] == str(len(body))
    assert env["HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES"] == "k=v" and env["wsgi.url_scheme"] == "http"
    assert data["multiprocess"] is True
    assert int(headers["content-length"]) == len(out)


def test_streamed_written_and_closed_responses(gunicorn: Gunicorn) -> None:
    status, headers, body = gunicorn.request("GET", "/stream")
    assert (status, body) == (200, b"abc") and headers["content-length"] == "3"  # held back, then one write
    status, _, body = gunicorn.request("GET", "/write")
    assert (status, body) == (201, b"written-returned")
    before = gunicorn.closed.read_text().count("closed") if gunicorn.closed.exists() else 0
    assert gunicorn.request("GET", "/closing")[::2] == (200, b"done")
    assert gunicorn.closed.read_text().count("closed") == before + 1  # the iterable's close() was called
    status, headers, body = gunicorn.request("HEAD", "/echo")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0


def test_application_errors(gunicorn: Gunicorn) -> None:
    status, headers, body = gunicorn.request("GET", "/raise")
    assert status == 500 and headers["content-type"] == "application/json"
    assert json.loads(body)["message"] == "RuntimeError: probe failure" and b"Traceback" not in body
    # A response that fails after it started is never completed: nothing was sent yet (nginx answers 502) ...
    assert gunicorn.raw(b"GET /raise-late HTTP/1.1\r\nHost: p\r\n\r\n") == b""
    # ... or, past the buffer, it went out chunked and stops without the last chunk (a cut nginx sees).
    raw = gunicorn.raw(b"GET /raise-late-big HTTP/1.1\r\nHost: p\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and b"Transfer-Encoding: chunked\r\n" in raw
    assert not raw.endswith(b"0\r\n\r\n")
    status, headers, body = gunicorn.request("GET", "/big")
    assert status == 200 and headers["transfer-encoding"] == "chunked" and body.endswith(b"0\r\n\r\n")
    status, _, body = gunicorn.request("GET", "/inject")
    assert status == 500 and b"CR or LF" in body and b"evil" not in body
    log = gunicorn.log.read_text()
    assert "probe failure" in log and "late failure" in log and "Traceback" in log
    assert "closing the connection without completing it" in log


@pytest.mark.parametrize(("data", "status", "needle"), [
    (b"NOT A REQUEST\r\n\r\n", 400, b"malformed request line"),
    (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 501, b"Transfer-Encoding"),
    (b"POST /echo HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400, b"bad Content-Length"),
    (b"GET /echo HTTP/1.1\r\n" + b"X-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431, b"larger than"),
    (b"POST /echo HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", 413, b"SAGEMAKER_MAX_PAYLOAD_IN_MB"),
    # as strict as gunicorn's parser: these were accepted (or a 500) before
    (b"POST /echo HTTP/1.1\r\nContent-Length: \xb2\r\n\r\nx", 400, b"not ASCII digits"),
    (b"POST /echo HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", 400, b"more than one"),
    (b"GET /echo HTTP/1.1\r\nX Spaced: 1\r\n\r\n", 400, b"RFC 9110 token"),
    (b"GET /echo HTTP/1.1\r\nX-N\x00ul: 1\r\n\r\n", 400, b"RFC 9110 token"),
    (b"GET /echo HTTP/1.1\r\nX-A: 1\x00\r\n\r\n", 400, b"control character"),
    (b"GET /echo HTTP/1.1\r\nX-A: 1\rX-B: 2\r\n\r\n", 400, b"control character"),
    (b"GET /echo HTTP/1.1\r\nX-A: 1\nX-B: 2\r\n\r\n", 400, b"control character"),
    (b"GET /ec\x7fho HTTP/1.1\r\nHost: p\r\n\r\n", 400, b"malformed request line"),
])
def test_malformed_requests_get_a_json_error(gunicorn: Gunicorn, data: bytes, status: int, needle: bytes) -> None:
    got, headers, body = parse(gunicorn.raw(data))
    assert got == status and headers["content-type"] == "application/json" and needle in body
    assert json.loads(body)["status"] == status
    assert gunicorn.request("GET", "/echo")[0] == 200  # and the worker goes on serving


def test_peer_that_hangs_up_early_does_not_hurt_the_worker(gunicorn: Gunicorn) -> None:
    for data in (b"", b"POST /echo HTTP/1.1\r\nContent-Length: 100\r\n\r\nshort", b"GET /ec"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(gunicorn.sock))
            s.sendall(data)
    assert gunicorn.request("GET", "/echo")[0] == 200


def test_two_workers_share_the_queue_and_crashes_are_replaced(gunicorn: Gunicorn) -> None:
    # While one worker sleeps, the other answers at once: one accept queue, no request waits behind another.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as slow:
        slow.connect(str(gunicorn.sock))
        slow.sendall(b"GET /slow?1.5 HTTP/1.1\r\nHost: p\r\n\r\n")
        time.sleep(0.2)
        start = time.monotonic()
        assert gunicorn.request("GET", "/echo")[0] == 200
        assert time.monotonic() - start < 1.0
        assert slow.recv(65536).startswith(b"HTTP/1.1 200 OK")
    pids = {json.loads(gunicorn.request("GET", "/echo")[2])["pid"] for _ in range(20)}
    assert gunicorn.raw(b"GET /crash HTTP/1.1\r\nHost: p\r\n\r\n") == b""  # the worker died mid-request
    wait_for(lambda: all(gunicorn.request("GET", "/echo")[0] == 200 for _ in range(4)), 30)
    assert gunicorn.proc.poll() is None and pids


def test_request_timeout_kills_the_worker_not_the_server(gunicorn: Gunicorn) -> None:
    # --timeout 5: a request that runs past it is ended by gunicorn's master (the heartbeat contract).
    assert gunicorn.raw(b"GET /slow?8 HTTP/1.1\r\nHost: p\r\n\r\n", timeout=20) == b""
    assert "WORKER TIMEOUT" in gunicorn.log.read_text()
    wait_for(lambda: gunicorn.request("GET", "/echo")[0] == 200, 30)


def test_serve_behind_nginx_uses_it_and_sync_stays_selectable(tmp_path: Path, nginx_on_path: str) -> None:
    base = tmp_path / "ml"
    write_linear_onnx(base / "model" / "model.onnx")
    for setting, worker in (("auto", "Using worker: smbyoc.serving.worker.UpstreamWorker"),
                            ("sync", "Using worker: sync")):
        server = start_server(base, tmp_path, {"SMBYOC_GUNICORN_WORKER_CLASS": setting})
        try:
            server.wait_ready()
            answer = requests.post(f"{server.url}/invocations", data="[[1, 2, 3]]",
                                   headers={"Content-Type": "application/json"}, timeout=5)
            assert answer.status_code == 200 and answer.json() == [[22.5, 27.5]]
            chunked = requests.post(f"{server.url}/invocations", data=iter([b"[[1, 2,", b" 3]]"]),
                                    headers={"Content-Type": "application/json"}, timeout=5)
            assert chunked.status_code == 200 and chunked.json() == [[22.5, 27.5]]  # nginx de-chunks
            assert requests.get(f"{server.url}/nope", timeout=5).status_code == 404
        finally:
            assert server.stop() == 0
        assert worker in server.output()


def test_behind_nginx_a_failed_response_is_an_error_not_a_short_200(
    gunicorn: Gunicorn, tmp_path: Path, nginx_on_path: str
) -> None:
    from helpers import free_port
    from smbyoc.serving.env import ServingEnv
    from smbyoc.serving.nginx import nginx_argv, render_nginx_conf

    env = ServingEnv(port=free_port(), host="127.0.0.1", workers=2)
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_nginx_conf(env, tmp_path, gunicorn.sock))
    log = tmp_path / "nginx.log"
    with log.open("wb") as out:
        nginx = subprocess.Popen(nginx_argv(conf, tmp_path), stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    url = f"http://127.0.0.1:{env.port}/invocations"

    def post(probe: str, stream: bool = False) -> requests.Response:
        return requests.post(url, data=b"x", headers={"X-Probe-Path": probe}, timeout=10, stream=stream)

    try:
        wait_for(lambda: nginx.poll() is not None or _answers(lambda: post("/echo")), 30)
        assert post("/echo").status_code == 200
        failed = post("/raise-late")  # nothing reached nginx: its 502, sent as the JSON 503 page
        assert failed.status_code == 503 and "failed midway" in failed.json()["message"]
        assert b"partial" not in failed.content
        with pytest.raises(requests.exceptions.ChunkedEncodingError):  # past the buffer: the client is cut off
            post("/raise-late-big", stream=True).content  # noqa: B018
        big = post("/big")
        assert big.status_code == 200 and len(big.content) == 3 * 1024 * 1024
    finally:
        nginx.terminate()
        nginx.wait(15)
    assert "upstream prematurely closed connection" in log.read_text()


def _answers(call: Callable[[], requests.Response]) -> bool:
    try:
        return call().status_code == 200
    except requests.ConnectionError:
        return False
