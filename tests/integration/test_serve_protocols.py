"""The real ``serve`` (nginx + gunicorn + the default ONNX handler) over each way nginx reaches gunicorn:
HTTP to the ``upstream`` worker (the default) and gunicorn's own ``--protocol uwsgi``
(``SMBYOC_SERVE_PROTOCOL=uwsgi``). Every request goes to both; the answers must agree."""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from serve_support import Server, expected, start_server, write_linear_onnx

pytestmark = pytest.mark.integration

PROTOCOLS = {
    "http": ({}, "Using worker: smbyoc.serving.worker.UpstreamWorker"),
    "uwsgi": ({"SMBYOC_SERVE_PROTOCOL": "uwsgi"}, "Using worker: sync"),
}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, nginx_on_path: str) -> Iterator[dict[str, Server]]:
    tmp = tmp_path_factory.mktemp("protocols")
    base = tmp / "ml"
    write_linear_onnx(base / "model" / "model.onnx")
    started: dict[str, Server] = {}
    try:
        for name, (extra, _) in PROTOCOLS.items():
            env = {"SAGEMAKER_MAX_PAYLOAD_IN_MB": "1", **extra}
            started[name] = start_server(base, tmp, env)
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        for server in started.values():
            server.stop()


def both(servers: dict[str, Server], method: str, path: str, **kwargs: object) -> dict[str, requests.Response]:
    return {name: requests.request(method, f"{s.url}{path}", timeout=10, **kwargs)  # type: ignore[arg-type]
            for name, s in servers.items()}


def test_each_protocol_runs_the_gunicorn_it_says(servers: dict[str, Server]) -> None:
    for name, (_, line) in PROTOCOLS.items():
        assert line in servers[name].output()
    assert "--protocol" not in servers["http"].output()


@pytest.mark.parametrize(("body", "ctype", "accept"), [
    (b"[[1, 2, 3], [0, 0, 1]]", "application/json", "application/json"),
    (b"1,2,3\n0,0,1\n", "text/csv", "text/csv"),
    (b"[[1, 2, 3]]", "application/json; charset=utf-8", "application/x-npy"),
])
def test_invocations_agree(servers: dict[str, Server], body: bytes, ctype: str, accept: str) -> None:
    answers = both(servers, "POST", "/invocations", data=body, headers={"Content-Type": ctype, "Accept": accept})
    for r in answers.values():
        assert r.status_code == 200 and r.headers["Content-Type"].startswith(accept)
    assert answers["http"].content == answers["uwsgi"].content
    if accept == "application/x-npy":
        np.testing.assert_allclose(np.load(io.BytesIO(answers["uwsgi"].content)), expected(np.array([[1, 2, 3]])))


def test_npy_body_and_chunked_request(servers: dict[str, Server]) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([[1, 2, 3]], dtype=np.float32))
    answers = both(servers, "POST", "/invocations", data=buffer.getvalue(),
                   headers={"Content-Type": "application/x-npy", "Accept": "application/json"})
    assert {r.status_code for r in answers.values()} == {200}
    assert answers["http"].json() == answers["uwsgi"].json() == expected(np.array([[1, 2, 3]])).tolist()
    chunked = {name: requests.post(f"{s.url}/invocations", data=iter([b"[[1, 2,", b" 3]]"]), timeout=10,
                                   headers={"Content-Type": "application/json"}) for name, s in servers.items()}
    assert {r.status_code for r in chunked.values()} == {200}  # nginx de-chunks for both
    assert chunked["http"].json() == chunked["uwsgi"].json()


@pytest.mark.parametrize(("method", "path", "kwargs", "status"), [
    ("POST", "/invocations", {"data": b"[[1, 2", "headers": {"Content-Type": "application/json"}}, 400),
    ("POST", "/invocations", {"data": b"[[1]]", "headers": {"Content-Type": "application/x-nope"}}, 415),
    ("POST", "/invocations", {"data": b"[[1, 2, 3]]", "headers": {"Content-Type": "application/json",
                                                               "Accept": "image/png"}}, 406),
    ("POST", "/invocations", {"data": b"[" + b"1," * 600_000 + b"1]",
                              "headers": {"Content-Type": "application/json"}}, 413),
    ("GET", "/invocations", {}, 405),
    ("GET", "/nope", {}, 404),
])
def test_errors_agree(servers: dict[str, Server], method: str, path: str, kwargs: dict[str, object],
                      status: int) -> None:
    answers = both(servers, method, path, **kwargs)
    bodies = {}
    for name, r in answers.items():
        assert r.status_code == status, (name, r.text)
        assert r.headers["Content-Type"].startswith("application/json")
        bodies[name] = r.json()
        assert bodies[name]["status"] == status and set(bodies[name]) == {"error", "message", "status"}
    assert bodies["http"] == bodies["uwsgi"]


def test_ping_and_execution_parameters_agree(servers: dict[str, Server]) -> None:
    pings = both(servers, "GET", "/ping")
    assert {r.status_code for r in pings.values()} == {200}
    params = both(servers, "GET", "/execution-parameters")
    assert params["http"].json() == params["uwsgi"].json() and params["uwsgi"].json()["MaxPayloadInMB"] == 1


def test_underscore_headers_do_not_pose_as_hyphenated_ones(servers: dict[str, Server]) -> None:
    # nginx drops header names with "_" (underscores_in_headers off) before either protocol sees them
    for server in servers.values():
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent_Type: text/csv\r\n"
                      b"Content-Type: application/json\r\nContent-Length: 11\r\nConnection: close\r\n\r\n[[1, 2, 3]]")
            raw = b""
            while chunk := s.recv(65536):
                raw += chunk
        assert raw.startswith(b"HTTP/1.1 200") and json.loads(raw.partition(b"\r\n\r\n")[2]) == [[22.5, 27.5]]


def test_uwsgi_needs_nginx(tmp_path: Path) -> None:
    base = tmp_path / "ml"
    write_linear_onnx(base / "model" / "model.onnx")
    server = start_server(base, tmp_path, {"SMBYOC_SERVE_PROTOCOL": "uwsgi"}, ["--no-nginx"])
    assert server.proc.wait(30) != 0
    assert "SMBYOC_SERVE_PROTOCOL" in server.output() and "nginx" in server.output()
