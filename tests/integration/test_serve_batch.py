"""The real ``serve`` (nginx + gunicorn + the default ONNX handler) as a batch transform container sees it:
SAGEMAKER_BATCH=true, a 20 MB MultiRecord CSV mini-batch under SAGEMAKER_MAX_PAYLOAD_IN_MB=50, and a
chunked body of any size under SAGEMAKER_MAX_PAYLOAD_IN_MB=0 (docs/serving.md, "Batch transform")."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from serve_support import Server, expected, start_server

from helpers import write_linear_onnx

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def model_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("batch") / "ml"
    write_linear_onnx(base / "model" / "model.onnx")
    return base


def running(base: Path, tmp: Path, env: dict[str, str]) -> Iterator[Server]:
    server = start_server(base, tmp, {"SAGEMAKER_BATCH": "true", "SMBYOC_SERVE_RUNTIME_DIR": str(tmp / "run"), **env})
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def csv_rows(count: int, seed: int) -> tuple[np.ndarray, bytes]:
    rows = np.random.default_rng(seed).uniform(-1000, 1000, size=(count, 3)).astype(np.float32)
    text = "\n".join(",".join(f"{v:.6f}" for v in row) for row in rows.tolist()) + "\n"
    return rows, text.encode()


def post(server: Server, body: bytes | Iterator[bytes], headers: dict[str, str]) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
    try:
        chunked = not isinstance(body, bytes)
        connection.request("POST", "/invocations", body=body, headers=headers, encode_chunked=chunked)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def check_predictions(rows: np.ndarray, answer: bytes) -> None:
    lines = answer.split(b"\n")
    assert lines[-1] == b"" and len(lines) - 1 == len(rows)  # one line per record, each ended by a line break
    got = np.array(answer.replace(b"\n", b",").decode().rstrip(",").split(","), dtype=np.float64).reshape(-1, 2)
    np.testing.assert_allclose(got, expected(rows), rtol=1e-5, atol=1e-3)


def test_20_mb_multirecord_csv_under_a_50_mb_limit(model_base: Path, tmp_path: Path, nginx_on_path: str) -> None:
    rows, body = csv_rows(640_000, seed=1)
    assert 20 * MIB <= len(body) < 50 * MIB
    for server in running(model_base, tmp_path, {"SAGEMAKER_MAX_PAYLOAD_IN_MB": "50", "SMBYOC_BATCH_RECORDS": "true"}):
        conf = (tmp_path / "run" / "nginx.conf").read_text()
        assert f"client_max_body_size {50 * MIB};" in conf and "proxy_read_timeout 600s;" in conf
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        connection.request("GET", "/execution-parameters")
        assert json.loads(connection.getresponse().read()) == {
            "MaxConcurrentTransforms": 2, "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": 50,
        }
        connection.close()
        status, answer = post(server, body, {"Content-Type": "text/csv", "Accept": "text/csv"})
        assert status == 200, answer[:500]
        check_predictions(rows, answer)


def test_chunked_body_of_any_size_when_the_limit_is_0(model_base: Path, tmp_path: Path, nginx_on_path: str) -> None:
    rows, body = csv_rows(250_000, seed=2)
    assert len(body) > 6 * MIB  # over the real-time default
    chunks = iter([body[i : i + MIB] for i in range(0, len(body), MIB)])
    for server in running(model_base, tmp_path, {"SAGEMAKER_MAX_PAYLOAD_IN_MB": "0"}):
        assert "client_max_body_size 0;" in (tmp_path / "run" / "nginx.conf").read_text()
        status, answer = post(server, chunks, {"Content-Type": "text/csv", "Accept": "text/csv"})
        assert status == 200, answer[:500]
        check_predictions(rows, answer)  # the default handler, without records mode: one row out per row in
