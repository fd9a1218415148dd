"""The Flask app and the handler contract, through Flask's test client (no servers)."""

from __future__ import annotations

import io
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from smbyoc.serving.app import create_app
from smbyoc.serving.env import ServingEnv
from smbyoc.serving.fast_path import fast_path
from smbyoc.serving.handler import Handler
from smbyoc.serving.model_holder import DEFAULT_MODEL, ModelHolder, ModelState


def make_env(tmp_path: Path, **kw: object) -> ServingEnv:
    environ = {"SAGEMAKER_BASE_DIR": str(tmp_path), "SAGEMAKER_MODEL_SERVER_WORKERS": "1"}
    environ.update({k: str(v) for k, v in kw.items()})
    return ServingEnv.from_env(environ)


def write_module(tmp_path: Path, source: str, name: str = "inference.py") -> None:
    code = tmp_path / "model" / "code"
    code.mkdir(parents=True, exist_ok=True)
    (code / name).write_text(textwrap.dedent(source))


@pytest.fixture(autouse=True)
def _forget_user_modules():
    before = set(sys.modules)
    path = list(sys.path)
    yield
    for name in set(sys.modules) - before:
        if name in ("inference", "custom", "broken", "transform_style") or name.startswith("inference"):
            del sys.modules[name]
    sys.path[:] = path


_APP_KIND = ["flask"]


@pytest.fixture(autouse=True, params=["flask", "fast-path"])
def app_kind(request):
    """Every test runs against the Flask app and against the WSGI fast path gunicorn serves: same answers."""
    _APP_KIND[0] = request.param
    yield request.param
    _APP_KIND[0] = "flask"


def client_for(tmp_path: Path, **kw: object):
    env = make_env(tmp_path, **kw)
    holder = ModelHolder()
    holder.add(DEFAULT_MODEL, Handler(env))
    entry = holder.load(DEFAULT_MODEL)
    app = create_app(env, holder)
    if _APP_KIND[0] == "fast-path":
        from werkzeug.test import Client

        return Client(fast_path(env, holder, app)), entry
    return app.test_client(), entry


TRIO = """
    import json
    import numpy as np

    def model_fn(model_dir):
        return {"scale": 2.0, "dir": model_dir}

    def input_fn(input_data, content_type):
        assert isinstance(input_data, str), type(input_data)
        return np.array(json.loads(input_data))

    def predict_fn(data, model):
        return data * model["scale"]

    def output_fn(prediction, accept):
        return json.dumps(prediction.tolist()), accept
"""


def test_sagemaker_inference_style_trio(tmp_path: Path) -> None:
    write_module(tmp_path, TRIO)
    client, entry = client_for(tmp_path)
    assert entry.state is ModelState.READY
    assert client.get("/ping").status_code == 200
    r = client.post("/invocations", data="[1, 2]", content_type="application/json")
    assert r.status_code == 200, r.data
    assert r.json == [2.0, 4.0]
    assert r.headers["Content-Type"] == "application/json"


CONTEXT_STYLE = """
    import numpy as np

    def model_fn(model_dir, context):
        assert context.system_properties["model_dir"] == model_dir
        return 3

    def predict_fn(data, model, context):
        attrs = context.request_processor[0].get_request_properties().get("X-Amzn-SageMaker-Custom-Attributes")
        context.set_response_header(0, "X-Amzn-SageMaker-Custom-Attributes", "echo=" + (attrs or ""))
        return np.asarray(data) * model
"""


def test_context_argument_and_custom_attributes(tmp_path: Path) -> None:
    write_module(tmp_path, CONTEXT_STYLE)
    client, _ = client_for(tmp_path)
    r = client.post(
        "/invocations", data="1,2\n3,4", content_type="text/csv", headers={"Accept": "text/csv",
        "X-Amzn-SageMaker-Custom-Attributes": "trace=abc"},
    )
    assert r.status_code == 200, r.data
    assert r.data == b"3.0,6.0\n9.0,12.0\n"
    assert r.headers["X-Amzn-SageMaker-Custom-Attributes"] == "echo=trace=abc"


def test_transform_fn_and_mixing_is_refused(tmp_path: Path) -> None:
    write_module(tmp_path, """
        def model_fn(model_dir):
            return "m"
        def transform_fn(model, input_data, content_type, accept):
            return "%s|%s|%s|%s" % (model, input_data.decode(), content_type, accept), "text/plain"
    """)
    client, _ = client_for(tmp_path)
    r = client.post("/invocations", data=b"raw", content_type="application/octet-stream",
                    headers={"Accept": "*/*"})
    assert r.data == b"m|raw|application/octet-stream|application/json"
    assert r.headers["Content-Type"].startswith("text/plain")


def test_transform_fn_with_input_fn_fails_to_load(tmp_path: Path) -> None:
    write_module(tmp_path, """
        def model_fn(model_dir): return 1
        def input_fn(data, ct): return data
        def transform_fn(model, data, ct, accept): return data
    """)
    client, entry = client_for(tmp_path)
    assert entry.state is ModelState.FAILED
    r = client.get("/ping")
    assert r.status_code == 503
    assert "transform_fn cannot be used together" in r.json["message"]


def test_model_fn_failure_makes_ping_503_with_reason(tmp_path: Path, caplog) -> None:
    write_module(tmp_path, """
        def model_fn(model_dir):
            raise RuntimeError("weights are corrupt")
    """)
    client, entry = client_for(tmp_path)
    r = client.get("/ping")
    assert r.status_code == 503
    assert "weights are corrupt" in r.json["message"]
    assert "Traceback" in caplog.text and "weights are corrupt" in caplog.text
    assert client.post("/invocations", data="[1]", content_type="application/json").status_code == 503


def test_import_error_vs_module_not_found(tmp_path: Path, caplog) -> None:
    write_module(tmp_path, "import package_that_does_not_exist_xyz\n")
    client, entry = client_for(tmp_path)
    assert entry.state is ModelState.FAILED
    assert "error importing handler module" in entry.reason
    assert "package_that_does_not_exist_xyz" in entry.reason
    assert "Traceback" not in entry.reason and "\n" not in entry.reason  # one line: clients see it
    for answer in (client.get("/ping"), client.post("/invocations", data="[1]", content_type="application/json")):
        assert answer.status_code == 503 and "package_that_does_not_exist_xyz" in answer.json["message"]
        assert "Traceback" not in answer.get_data(as_text=True)
    assert "Traceback" in caplog.text and 'File "' in caplog.text  # the log has where it failed

    other = tmp_path / "other"
    _, entry2 = client_for(other, SAGEMAKER_PROGRAM="custom.py")
    assert "handler module not found" in entry2.reason
    assert "custom.py" in entry2.reason


def test_no_user_code_and_no_model_is_a_clear_failure(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    _, entry = client_for(tmp_path)
    assert entry.state is ModelState.FAILED
    assert "model.onnx" in entry.reason and "model.pt" in entry.reason


def test_dlr_dir_without_dlr_is_one_clear_error(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    # an ELF header for this machine (the python executable's), so the check after it is the runtime's
    (model / "compiled.so").write_bytes(Path(sys.executable).resolve().read_bytes()[:64])
    (model / "compiled.params").write_bytes(b"\0")
    (model / "compiled_model.json").write_text("{}")
    _, entry = client_for(tmp_path)
    assert entry.state is ModelState.FAILED
    assert "dlr" in entry.reason


def test_status_codes_and_json_errors(tmp_path: Path, caplog) -> None:
    write_module(tmp_path, """
        class Bad(Exception):
            status_code = 422
        def model_fn(model_dir): return None
        def predict_fn(data, model):
            if data.size == 1:
                raise ValueError("secret detail in traceback only")
            if data.size == 2:
                raise Bad("toolkit-style error")
            return data
    """)
    client, _ = client_for(tmp_path)
    cases = [
        (dict(data="[1,2,3]", content_type="image/png"), 415, "image/png"),
        (dict(data="[1,2,3]", content_type="application/json", headers={"Accept": "image/png"}), 406, "image/png"),
        (dict(data="[1,2", content_type="application/json"), 400, "application/json"),
        (dict(data="[1]", content_type="application/json"), 500, "ValueError"),
        (dict(data="[1,2]", content_type="application/json"), 422, "toolkit-style error"),
    ]
    for kwargs, status, needle in cases:
        r = client.post("/invocations", **kwargs)
        assert r.status_code == status, (kwargs, r.data)
        assert r.headers["Content-Type"] == "application/json"
        assert needle in r.json["message"]
        assert "Traceback" not in r.get_data(as_text=True)
    assert "Traceback" in caplog.text
    assert client.get("/nope").status_code == 404
    assert client.get("/nope").json["error"] == "Not Found"
    assert client.get("/invocations").status_code == 405


def test_execution_parameters_env_and_handler(tmp_path: Path) -> None:
    write_module(tmp_path, """
        def model_fn(model_dir): return 1
        def execution_parameters_fn():
            return {"MaxConcurrentTransforms": 3, "BatchStrategy": "SINGLE_RECORD"}
    """)
    client, _ = client_for(tmp_path, SAGEMAKER_MAX_PAYLOAD_IN_MB=12)
    assert client.get("/execution-parameters").json == {
        "MaxConcurrentTransforms": 3, "BatchStrategy": "SINGLE_RECORD", "MaxPayloadInMB": 12,
    }
    sys.modules.pop("inference", None)
    client, _ = client_for(tmp_path, SAGEMAKER_BATCH_STRATEGY="MULTI_RECORD", SAGEMAKER_MAX_CONCURRENT_TRANSFORMS=8)
    assert client.get("/execution-parameters").json["BatchStrategy"] == "MULTI_RECORD"
    assert client.get("/execution-parameters").json["MaxConcurrentTransforms"] == 8


def test_default_onnx_handler_all_codecs(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.array([[1.0], [2.0]], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    (tmp_path / "model").mkdir()
    onnx.save(model, str(tmp_path / "model" / "model.onnx"))
    client, entry = client_for(tmp_path)
    assert entry.state is ModelState.READY, entry.reason
    npy = io.BytesIO()
    np.save(npy, np.array([[1.0, 1.0]]))
    r = client.post("/invocations", data=npy.getvalue(), content_type="application/x-npy",
                    headers={"Accept": "application/x-npy"})
    np.testing.assert_array_equal(np.load(io.BytesIO(r.data)), [[3.0]])
    r = client.post("/invocations", data="1,2\n", content_type="text/csv", headers={"Accept": "application/jsonlines"})
    assert r.data == b"[5.0]\n"
    r = client.post("/invocations", data='{"x": [[0, 1]]}\n', content_type="application/jsonlines",
                    headers={"Accept": "text/csv;q=0.1, application/json"})
    assert r.status_code == 400  # a dict line makes an object array; the model wants numbers
    assert "cannot convert" in r.json["message"]
    r = client.post("/invocations", data=json.dumps({"x": [[0, 1]]}), content_type="application/json")
    assert r.json == [[2.0]]
    r = client.post("/invocations", data="[[1, 2, 3]]", content_type="application/json")
    assert r.status_code == 400 and "does not fit the model" in r.json["message"]


def test_fast_path_answers_hot_requests_itself_and_hands_the_rest_to_flask(tmp_path: Path) -> None:
    from werkzeug.test import Client

    write_module(tmp_path, TRIO)
    env = make_env(tmp_path, SAGEMAKER_MODEL_SERVER_TIMEOUT=1)  # the not-loaded invocation waits 1 s
    holder = ModelHolder()
    holder.add(DEFAULT_MODEL, Handler(env))
    flask_app = create_app(env, holder)
    calls: list[str] = []

    def counting(environ, start_response):
        calls.append(environ["PATH_INFO"])
        return flask_app(environ, start_response)

    client = Client(fast_path(env, holder, counting))
    r = client.get("/ping")
    assert r.status_code == 503 and r.json["status"] == 503  # not loaded yet, answered without Flask
    assert client.post("/invocations", data="[1]", content_type="application/json").status_code == 503  # by Flask
    holder.load(DEFAULT_MODEL)
    assert client.get("/ping").status_code == 200
    r = client.post("/invocations", data="[1, 2]", content_type="application/json")
    assert r.status_code == 200 and r.get_json() == [2.0, 4.0]
    assert client.post("/invocations", data="[1", content_type="application/json").status_code == 500
    assert client.get("/execution-parameters").status_code == 200
    assert client.get("/nope").status_code == 404
    assert calls == ["/invocations", "/execution-parameters", "/nope"]


ODD_PREDICTIONS = """
    import numpy as np

    def model_fn(model_dir):
        return None

    def predict_fn(data, model):
        return {1: {"a": np.arange(2), "b": np.arange(2)}, 2: np.array([np.nan, 1.0]),
                3: np.array([1 + 2j])}[int(data)]
"""


def test_default_encoders_on_predictions_their_type_cannot_hold(tmp_path: Path) -> None:
    write_module(tmp_path, ODD_PREDICTIONS)
    client, _ = client_for(tmp_path)
    r = client.post("/invocations", data="1", content_type="application/json", headers={"Accept": "text/csv"})
    assert r.status_code == 406 and "a dict of outputs (keys 'a', 'b') has no CSV form" in r.json["message"]
    r = client.post("/invocations", data="2", content_type="application/json")
    assert r.status_code == 200 and r.data == b"[null, 1.0]"  # NaN is not JSON: null
    r = client.post("/invocations", data="3", content_type="application/json")
    assert r.status_code == 406 and "complex value (1+2j)" in r.json["message"]
    r = client.post("/invocations", data="3", content_type="application/json", headers={"Accept": "application/x-npy"})
    assert r.status_code == 200 and np.load(io.BytesIO(r.data))[0] == 1 + 2j


def test_user_output_that_cannot_be_encoded_stays_500(tmp_path: Path) -> None:
    write_module(tmp_path, """
        def model_fn(model_dir): return None
        def transform_fn(model, data, content_type, accept): return {"z": 1j}
    """)
    client, _ = client_for(tmp_path)
    r = client.post("/invocations", data="1", content_type="application/json")
    assert r.status_code == 500 and "complex value" in r.json["message"]


def test_npz_bomb_and_unknown_charset_through_the_app(tmp_path: Path) -> None:
    from test_serving_decode_limits import npz_bomb

    write_module(tmp_path, TRIO.replace("def input_fn", "def unused_input_fn"))
    client, _ = client_for(tmp_path, SMBYOC_MAX_DECODED_PAYLOAD_IN_MB=2)
    r = client.post("/invocations", data=npz_bomb(1), content_type="application/x-npz")
    assert r.status_code == 413
    assert "over the limit of 2097152 bytes (SMBYOC_MAX_DECODED_PAYLOAD_IN_MB=2)" in r.json["message"]
    r = client.post("/invocations", data="[1]", content_type="application/json; charset=punycode")
    assert r.status_code == 415 and "charset 'punycode'" in r.json["message"]
    r = client.post("/invocations", data=b"[1, 2, 3]", content_type="application/json; charset=utf-16")
    assert r.status_code == 400 and "utf-16" in r.json["message"]
