"""`serve` under SAGEMAKER_BATCH: limits, /execution-parameters, and batch records mode (docs/serving.md).

Every app test runs against the Flask app and the WSGI fast path (the differential idea of
tests/unit/test_serving_app.py).
"""

from __future__ import annotations

import io
import json
import struct
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from smbyoc.errors import EnvVarError
from smbyoc.serving import records
from smbyoc.serving.app import create_app
from smbyoc.serving.env import ServingEnv
from smbyoc.serving.fast_path import fast_path
from smbyoc.serving.gunicorn import gunicorn_argv
from smbyoc.serving.handler import Handler
from smbyoc.serving.model_holder import DEFAULT_MODEL, ModelHolder, ModelState
from smbyoc.serving.nginx import render_nginx_conf

MIB = 1024 * 1024


def make_env(tmp_path: Path, **kw: object) -> ServingEnv:
    environ = {"SAGEMAKER_BASE_DIR": str(tmp_path), "SAGEMAKER_MODEL_SERVER_WORKERS": "1"}
    environ.update({k: str(v) for k, v in kw.items()})
    return ServingEnv.from_env(environ)


def write_module(tmp_path: Path, source: str) -> None:
    code = tmp_path / "model" / "code"
    code.mkdir(parents=True, exist_ok=True)
    (code / "inference.py").write_text(textwrap.dedent(source))


@pytest.fixture(autouse=True)
def _forget_user_modules():
    path = list(sys.path)
    sys.modules.pop("inference", None)
    yield
    sys.modules.pop("inference", None)
    sys.path[:] = path


@pytest.fixture(params=["flask", "fast-path"])
def client_for(request, tmp_path: Path):
    def make(**kw: object):
        env = make_env(tmp_path, **kw)
        holder = ModelHolder()
        holder.add(DEFAULT_MODEL, Handler(env))
        entry = holder.load(DEFAULT_MODEL)
        assert entry.state is ModelState.READY, entry.reason
        app = create_app(env, holder)
        if request.param == "fast-path":
            from werkzeug.test import Client

            return Client(fast_path(env, holder, app))
        return app.test_client()

    return make


def write_onnx(tmp_path: Path, features: int = 2) -> np.ndarray:
    """y = x @ W with x: float32[N, features], y: float32[N, 1]; returns W."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.arange(1, features + 1, dtype=np.float32).reshape(features, 1)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    (tmp_path / "model").mkdir(exist_ok=True)
    onnx.save(model, str(tmp_path / "model" / "model.onnx"))
    return w


# ------------------------------------------------------------------------------------- limits, timeouts


def test_batch_limits_and_timeout(tmp_path: Path) -> None:
    real_time = make_env(tmp_path)
    assert (real_time.max_body_bytes, real_time.timeout, real_time.max_decoded_payload_mb) == (6 * MIB, 60, 24)
    batch = make_env(tmp_path, SAGEMAKER_BATCH="true")
    assert (batch.max_body_mb, batch.max_body_source, batch.timeout) == (100, "SMBYOC_BATCH_MAX_BODY_IN_MB", 600)
    assert batch.max_payload_mb == 6 and not batch.max_payload_set and batch.max_decoded_payload_mb == 400
    job = make_env(tmp_path, SAGEMAKER_BATCH="true", SAGEMAKER_MAX_PAYLOAD_IN_MB=50, SAGEMAKER_MODEL_SERVER_TIMEOUT=90)
    assert (job.max_body_mb, job.max_payload_mb, job.timeout, job.max_decoded_payload_mb) == (50, 50, 90, 200)
    chunked = make_env(tmp_path, SAGEMAKER_BATCH="true", SAGEMAKER_MAX_PAYLOAD_IN_MB=0)
    assert chunked.max_body_bytes == 0 and chunked.max_decoded_payload_mb == 0
    assert make_env(tmp_path, SAGEMAKER_BATCH="1", SMBYOC_BATCH_MAX_BODY_IN_MB=0).max_body_bytes == 0
    assert make_env(tmp_path, SMBYOC_BATCH_MAX_BODY_IN_MB=0).max_body_bytes == 6 * MIB  # only under batch
    with pytest.raises(EnvVarError, match="SAGEMAKER_MAX_PAYLOAD_IN_MB"):
        make_env(tmp_path, SAGEMAKER_MAX_PAYLOAD_IN_MB=101)

    conf = render_nginx_conf(batch, tmp_path, tmp_path / "g.sock")
    assert f"client_max_body_size {100 * MIB};" in conf and "proxy_read_timeout 600s;" in conf
    assert "SMBYOC_BATCH_MAX_BODY_IN_MB=100" in conf and "SAGEMAKER_MODEL_SERVER_TIMEOUT is unset" in conf
    assert "client_max_body_size 0;" in render_nginx_conf(chunked, tmp_path, tmp_path / "g.sock")
    argv = gunicorn_argv(batch, tmp_path, tmp_path / "g.sock")
    assert argv[argv.index("--timeout") + 1] == "600"


def test_batch_strategy_spellings(tmp_path: Path) -> None:
    for value, expected in [("MultiRecord", "MULTI_RECORD"), ("MULTI_RECORD", "MULTI_RECORD"),
                            ("SingleRecord", "SINGLE_RECORD"), ("single_record", "SINGLE_RECORD")]:
        assert make_env(tmp_path, SAGEMAKER_BATCH_STRATEGY=value).batch_strategy == expected
    with pytest.raises(EnvVarError, match="SAGEMAKER_BATCH_STRATEGY.*'Batched'"):
        make_env(tmp_path, SAGEMAKER_BATCH_STRATEGY="Batched")


def test_body_over_the_real_time_limit_is_taken_under_batch(tmp_path: Path, client_for) -> None:
    write_module(tmp_path, """
        def model_fn(model_dir): return None
        def transform_fn(model, data, content_type, accept): return str(len(data))
    """)
    body = b"x" * (7 * MIB)
    response = client_for().post("/invocations", data=body, content_type="application/octet-stream")
    assert response.status_code == 413 and "SAGEMAKER_MAX_PAYLOAD_IN_MB=6" in response.json["message"]
    batch = client_for(SAGEMAKER_BATCH="true")
    response = batch.post("/invocations", data=body, content_type="application/octet-stream")
    assert (response.status_code, response.data) == (200, str(7 * MIB).encode())


# -------------------------------------------------------------------------------- /execution-parameters


def test_execution_parameters_defaults_handler_and_environment(tmp_path: Path, client_for) -> None:
    write_module(tmp_path, "def model_fn(model_dir): return 1\n")
    assert client_for(SAGEMAKER_BATCH="true").get("/execution-parameters").json == {
        "MaxConcurrentTransforms": 1, "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": 6,
    }
    sys.modules.pop("inference")
    write_module(tmp_path, """
        def model_fn(model_dir): return 1
        def execution_parameters_fn(context):
            assert context.system_properties["model_dir"]
            return {"MaxConcurrentTransforms": 4, "BatchStrategy": "SingleRecord", "MaxPayloadInMB": 20}
    """)
    assert client_for(SAGEMAKER_BATCH="true").get("/execution-parameters").json == {
        "MaxConcurrentTransforms": 4, "BatchStrategy": "SINGLE_RECORD", "MaxPayloadInMB": 20,
    }
    sys.modules.pop("inference")
    answer = client_for(SAGEMAKER_BATCH="true", SAGEMAKER_BATCH_STRATEGY="MultiRecord",
                        SAGEMAKER_MAX_CONCURRENT_TRANSFORMS=2, SAGEMAKER_MAX_PAYLOAD_IN_MB=0)
    assert answer.get("/execution-parameters").json == {
        "MaxConcurrentTransforms": 2, "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": 0,
    }


@pytest.mark.parametrize(("answer", "message"), [
    ('{"MaxPayloadInMb": 5}', "unknown key 'MaxPayloadInMb'"),
    ('{"BatchStrategy": "Batched"}', "BatchStrategy 'Batched'"),
    ('{"MaxPayloadInMB": 101}', "MaxPayloadInMB must be 0..100, not 101"),
    ('{"MaxConcurrentTransforms": "8"}', "MaxConcurrentTransforms must be an integer, not '8'"),
])
def test_execution_parameters_refuses_what_sagemaker_would_not_take(
    tmp_path: Path, client_for, answer: str, message: str
) -> None:
    write_module(tmp_path, f"def model_fn(model_dir): return 1\ndef execution_parameters_fn(): return {answer}\n")
    response = client_for(SAGEMAKER_BATCH="true").get("/execution-parameters")
    assert response.status_code == 500
    assert response.json["message"].startswith("execution_parameters_fn: ") and message in response.json["message"]


# ------------------------------------------------------------------------------------- batch records mode

LINES_TRANSFORM = """
    batch_records = True
    SEEN = []

    def model_fn(model_dir): return None

    def transform_fn(model, data, content_type, accept):
        SEEN.append(data)
        if data[0] == "drop":
            return data[1:]
        return [line.upper() for line in data]
"""


def test_transform_fn_gets_the_lines_and_answers_one_per_line(tmp_path: Path, client_for) -> None:
    write_module(tmp_path, LINES_TRANSFORM)
    client = client_for(SAGEMAKER_BATCH="true")
    response = client.post("/invocations", data=b"a,1\r\nb,2\n\nc,3", content_type="text/csv",
                           headers={"Accept": "text/csv"})
    assert (response.status_code, response.data) == (200, b"A,1\nB,2\n\nC,3\n")
    assert sys.modules["inference"].SEEN[-1] == ["a,1", "b,2", "", "c,3"]
    response = client.post("/invocations", data=b"drop\nx\ny\n", content_type="text/csv")
    assert response.status_code == 500
    assert "the handler returned 2 output records for 3 input records" in response.json["message"]
    response = client.post("/invocations", data=b"", content_type="text/csv")
    assert response.status_code == 400 and "no records" in response.json["message"]
    # a type without framing goes the ordinary way: the handler gets the body itself
    response = client.post("/invocations", data=b'{"a": 1}', content_type="application/json")
    assert (response.status_code, sys.modules["inference"].SEEN[-1]) == (200, '{"a": 1}')


def test_output_fn_may_answer_a_framed_body_or_a_list(tmp_path: Path, client_for) -> None:
    write_module(tmp_path, """
        import json
        def model_fn(model_dir): return None
        def input_fn(data, content_type):
            assert isinstance(data, list)
            return [json.loads(line) for line in data]
        def predict_fn(rows, model): return [row["v"] * 2 for row in rows]
        def output_fn(prediction, accept):
            if accept == "text/csv":
                return "".join(f"{p}\\n" for p in prediction), "text/csv"
            if accept == "application/x-bad":
                return [f"{p}\\nmore" for p in prediction]
            return prediction
    """)
    client = client_for(SMBYOC_BATCH_RECORDS="true")
    body = b'{"v": 1}\n{"v": 2}\n{"v": 3}\n'
    response = client.post("/invocations", data=body, content_type="application/jsonlines",
                           headers={"Accept": "text/csv"})
    assert (response.status_code, response.data, response.content_type) == (200, b"2\n4\n6\n", "text/csv")
    response = client.post("/invocations", data=body, content_type="application/jsonlines",
                           headers={"Accept": "application/jsonlines"})
    assert response.data == b"2\n4\n6\n"
    response = client.post("/invocations", data=body, content_type="application/jsonlines",
                           headers={"Accept": "application/x-bad"})
    assert response.status_code == 500 and "output record 1 holds a line break" in response.json["message"]


def test_recordio_records_in_and_out(tmp_path: Path, client_for) -> None:
    write_module(tmp_path, """
        batch_records = True
        def model_fn(model_dir): return None
        def transform_fn(model, data, content_type, accept):
            assert all(isinstance(record, bytes) for record in data)
            return [record[::-1] for record in data], content_type
    """)
    magic = struct.pack("<I", records.RECORDIO_MAGIC)
    payloads = [b"abc", b"", b"1234" + magic + b"5678", b"x" * 1000]
    body = b"".join(records.write_recordio(p) for p in payloads)
    response = client_for(SAGEMAKER_BATCH="true").post(
        "/invocations", data=body, content_type="application/x-recordio-protobuf")
    assert response.status_code == 200, response.data
    assert records.read_recordio(response.data) == [p[::-1] for p in payloads]
    response = client_for(SAGEMAKER_BATCH="true").post(
        "/invocations", data=body[:-3], content_type="application/x-recordio-protobuf")
    assert response.status_code == 400
    assert "RecordIO record 4 at byte" in response.json["message"] and "declares 1000 bytes" in response.json["message"]


def test_default_onnx_handler_in_batch_one_row_per_record(tmp_path: Path, client_for) -> None:
    w = write_onnx(tmp_path)
    rows = np.array([[1, 2], [3, 4], [5, 6]], dtype=np.float32)
    csv = "".join(f"{a},{b}\n" for a, b in rows).encode()
    expected = (rows @ w).ravel()
    for env in ({"SAGEMAKER_BATCH": "true"}, {"SAGEMAKER_BATCH": "true", "SMBYOC_BATCH_RECORDS": "true"}):
        client = client_for(**env)
        response = client.post("/invocations", data=csv, content_type="text/csv", headers={"Accept": "text/csv"})
        assert response.data.decode().splitlines() == [str(v) for v in expected], env
        response = client.post("/invocations", data=b"[1, 2]\n[3, 4]\n[5, 6]\n", content_type="application/jsonlines",
                               headers={"Accept": "application/jsonlines"})
        assert [json.loads(line) for line in response.data.splitlines()] == [[v] for v in expected], env
    client = client_for(SAGEMAKER_BATCH="true", SMBYOC_BATCH_RECORDS="true")
    response = client.post("/invocations", data=csv, content_type="text/csv", headers={"Accept": "application/json"})
    assert response.data == b"".join(f"[{v}]\n".encode() for v in expected)
    response = client.post("/invocations", data=b"1,2\n", content_type="text/csv", headers={"Accept": "text/csv"})
    assert response.data == f"{expected[0]}\n".encode()
    response = client.post("/invocations", data=b"1,2\n\n3,4\n", content_type="text/csv")
    assert response.status_code == 400 and "3 CSV records parse as 2 rows" in response.json["message"]
    response = client.post("/invocations", data=records.write_recordio(b"x"),
                           content_type="application/x-recordio-protobuf")
    assert response.status_code == 415 and "no default decoder" in response.json["message"]


def test_default_csv_decoding_keeps_one_column_batches_2d(tmp_path: Path, client_for) -> None:
    w = write_onnx(tmp_path, features=1)
    response = client_for().post("/invocations", data=b"1\n2\n3\n", content_type="text/csv")
    assert response.status_code == 400  # sagemaker-inference's decoding: a 1-D array, read as one record
    client = client_for(SMBYOC_BATCH_RECORDS="true")
    response = client.post("/invocations", data=b"1\n2\n3\n", content_type="text/csv", headers={"Accept": "text/csv"})
    assert response.status_code == 200, response.data
    assert response.data.decode().splitlines() == [str(v) for v in (np.array([[1], [2], [3]], np.float32) @ w).ravel()]


# ------------------------------------------------------------------------------------------- framing


def test_recordio_framing_matches_the_emulators_reader() -> None:
    from smbyoc.emulator.transform import records as emulator

    magic = struct.pack("<I", records.RECORDIO_MAGIC)
    payloads = [b"", b"a", b"abcd", magic, b"ab" + magic + b"cd", magic + b"1234" + magic + magic, b"\0" * 7]
    for payload in payloads:
        assert records.write_recordio(payload) == emulator.encode_recordio(payload), payload
    body = b"".join(records.write_recordio(p) for p in payloads)
    framed = list(emulator.read_records(io.BytesIO(body), "RecordIO", source="body"))
    assert [emulator.recordio_payload(f) for f in framed] == records.read_recordio(body) == payloads
    for broken, message in [(b"\0" * 8, "bad magic number"), (records.write_recordio(b"abcdef")[:6], "shorter than"),
                            (struct.pack("<II", records.RECORDIO_MAGIC, 2 << 29), "continuation flag 2 out of order")]:
        with pytest.raises(Exception, match=message):
            records.read_recordio(broken)


def test_lines_framing() -> None:
    assert records.split_lines("a\r\nb\n\nc") == ["a", "b", "", "c"]
    assert records.split_lines("a\n") == ["a"] and records.split_lines("") == [] and records.split_lines("\n") == [""]
    assert records.join([b"a", b""], records.LINES) == b"a\n\n"
