"""The error pages nginx answers itself (rendered config; nginx need not be installed)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from smbyoc.serving.env import ServingEnv
from smbyoc.serving.nginx import render_nginx_conf


def test_a_request_lost_with_its_worker_says_so(tmp_path: Path) -> None:
    conf = render_nginx_conf(ServingEnv(), tmp_path, tmp_path / "gunicorn.sock", as_root=False)
    block = re.search(r"location @unavailable \{.*?return 503 '(.*?)';", conf, re.S)
    assert block is not None
    body = json.loads(block.group(1))
    assert body["status"] == 503
    assert "worker handling this request exited" in body["message"] and "retry" in body["message"]
    assert "error_page 502 503 =503 @unavailable;" in conf  # a worker killed mid-request is a 502 upstream
