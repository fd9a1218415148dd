"""Every JSON error body of ``serve`` comes from :func:`smbyoc.serving.error_body.error_body`: the Flask app,
the fast path's ``/ping`` while not ready, the ``upstream`` worker's refusals and nginx's own answers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from werkzeug.test import Client

from smbyoc.serving.app import create_app
from smbyoc.serving.env import ServingEnv
from smbyoc.serving.error_body import error_body, reason_phrase
from smbyoc.serving.fast_path import fast_path
from smbyoc.serving.handler import Handler
from smbyoc.serving.model_holder import DEFAULT_MODEL, ModelHolder
from smbyoc.serving.nginx import nginx_quoted, render_nginx_conf
from smbyoc.serving.responses import Ping
from smbyoc.serving.worker import error_bytes


def test_the_one_shape() -> None:
    assert json.loads(error_body(503, "loading")) == {"error": "Service Unavailable", "message": "loading",
                                                      "status": 503}
    assert reason_phrase(599) == "Error" and error_body(400, "é").isascii()


def test_ping_503_uses_it(tmp_path: Path) -> None:
    env = ServingEnv(model_dir=tmp_path, base_dir=tmp_path)
    assert Ping(env, ModelHolder()).answer() == (503, error_body(503, "no model is held"))
    holder = ModelHolder()
    holder.add(DEFAULT_MODEL, Handler(env, DEFAULT_MODEL))  # added, not loaded
    client = Client(fast_path(env, holder, create_app(env, holder)))
    r = client.get("/ping")
    assert r.status_code == 503 and r.headers["Content-Type"] == "application/json"
    assert r.data == error_body(503, r.json["message"]) and r.json["message"]


def test_app_errors_use_it(tmp_path: Path) -> None:
    env = ServingEnv(model_dir=tmp_path, base_dir=tmp_path)
    holder = ModelHolder()
    client = Client(create_app(env, holder))
    for method, path, status in (("GET", "/nope", 404), ("GET", "/invocations", 405),
                                 ("POST", "/invocations", 503)):
        r = client.open(path, method=method)
        assert r.status_code == status and r.data == error_body(status, r.json["message"]), (path, r.data)


def test_worker_refusals_use_it() -> None:
    head, _, body = error_bytes(431, "too big").partition(b"\r\n\r\n")
    assert body == error_body(431, "too big") and head.startswith(b"HTTP/1.1 431 ")


def test_nginx_answers_use_it(tmp_path: Path) -> None:
    env = ServingEnv(max_payload_mb=3, max_body_mb=3, timeout=17)
    conf = render_nginx_conf(env, tmp_path, tmp_path / "g.sock")
    returns = re.findall(r"return (4\d\d|5\d\d) '(.*)';", conf)
    assert sorted(status for status, _ in returns) == ["400", "400", "404", "413", "503", "504"]  # 400: and 494
    for status, text in returns:
        payload = json.loads(text)
        assert text.encode() == error_body(int(status), payload["message"])
    answers = dict(returns)
    assert "SAGEMAKER_MAX_PAYLOAD_IN_MB=3 (3145728 bytes)" in answers["413"]
    assert "SAGEMAKER_MODEL_SERVER_TIMEOUT=17 s" in answers["504"]


def test_nginx_quoting() -> None:
    assert nginx_quoted(b'{"m": "it\'s a \\"q\\""}') == '{"m": "it\\\'s a \\\\"q\\\\""}'
    with pytest.raises(ValueError, match=r"'\$' cannot be written"):
        nginx_quoted(error_body(500, "costs $5"))
