"""Fuzzing ``POST /invocations``: hostile or malformed requests get a 4xx, never a 5xx.

The requests go through the app built by ``create_app`` and through the WSGI fast path gunicorn serves
(werkzeug's test client, no servers), for two handlers: the default ONNX handler (no user code) and the
bundled example's ``inference.py``. Neither raises for bad input on purpose, so every 5xx is a bug.
The run is derandomized (the same examples every time) and bounded, so it is part of the normal suite.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx  # a dev dependency: missing is a failure, not a skip
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smbyoc.examples import default_example
from smbyoc.serving.app import create_app
from smbyoc.serving.env import ServingEnv
from smbyoc.serving.fast_path import fast_path
from smbyoc.serving.handler import Handler
from smbyoc.serving.model_holder import DEFAULT_MODEL, ModelHolder, ModelState

# ------------------------------------------------------------------------------------------ requests

TYPES = [
    "application/json", "text/csv", "application/x-npy", "application/x-npz", "application/jsonlines",
    "application/x-jsonlines", "application/octet-stream", "text/plain", "image/png", "application/*", "",
]
CHARSETS = ["utf-8", "UTF-16", "latin-1", "ascii", "undefined", "punycode", "idna", "rot13", "base64",
            "unicode_escape", "utf-7", "no-such-charset", "", '"utf-8"']
ACCEPTS = [None, "*/*", "application/json", "text/csv", "application/x-npy", "application/x-npz",
           "application/jsonlines", "application/octet-stream", "image/png", "text/*", "application/*",
           "text/csv;q=0.1, application/json", "application/json;q=0", "*/*;q=nan", ",,,", "text/csv;q=x"]


def _npy_bytes(array: Any) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _npz_bytes(arrays: dict[str, Any], compressed: bool) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


def npy_header(descr: str, shape: tuple[int, ...], fortran: bool = False) -> bytes:
    """An NPY 1.0 header for any declared dtype and shape (the data is whatever the caller appends)."""
    text = repr({"descr": descr, "fortran_order": fortran, "shape": shape}).encode("latin1")
    pad = 64 - (10 + len(text) + 1) % 64
    text += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text


small_arrays = st.builds(
    lambda rows, cols, dtype, fill: np.full((rows, cols), fill).astype(dtype),
    st.integers(0, 4), st.integers(0, 4), st.sampled_from(["<f4", "<f8", "<i8", "|b1", "<U3", "<c8"]),
    st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 5),
)


@st.composite
def corrupted(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` truncated, with bytes flipped, or both."""
    if data and draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data) - 1))]
    if data and draw(st.booleans()):
        buf = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
        data = bytes(buf)
    return data


@st.composite
def crafted_npy(draw: st.DrawFn) -> bytes:
    descr = draw(st.sampled_from(["<f8", "<f4", "|u1", "<U10", "|O", "|V0", "<i8", "bogus", "|S1000000"]))
    shape = tuple(draw(st.lists(st.sampled_from([0, 1, 2, 3, 10**6, 10**9, 2**40, -1]), max_size=4)))
    fortran = draw(st.booleans())
    return npy_header(descr, shape, fortran) + draw(st.binary(max_size=64))


@st.composite
def crafted_zip(draw: st.DrawFn) -> bytes:
    """A small zip whose first member is an NPY (or junk), then damaged in one of the ways the fuzzer found."""
    payload = draw(st.sampled_from([
        _npy_bytes(np.zeros((2, 2))), npy_header("<f8", (2**31,)), b"not npy", npy_header("<f8", (4,)) + b"\0" * 8,
    ]))
    method = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        archive.writestr(draw(st.sampled_from(["x.npy", "format.npy", "x", "../x.npy"])), payload)
    data = bytearray(buffer.getvalue())
    damage = draw(st.sampled_from(["none", "encrypted", "method", "deflate-junk", "sizes"]))
    central = data.rfind(b"PK\x01\x02")
    if damage == "encrypted":  # general purpose flag bit 0 in the local and the central header
        data[6] |= 1
        data[central + 8] |= 1
    elif damage == "method":  # an unsupported compression method
        data[8:10] = data[central + 10:central + 12] = struct.pack("<H", 99)
    elif damage == "deflate-junk" and method == zipfile.ZIP_DEFLATED:
        name_len, extra_len = struct.unpack("<HH", data[26:30])
        start = 30 + name_len + extra_len
        data[start:start + 4] = b"\xff\xff\xff\xff"
    elif damage == "sizes":  # a declared size that does not match the data
        size = draw(st.sampled_from([0, 1, 2**31, 2**32 - 1]))
        data[22:26] = data[central + 24:central + 28] = struct.pack("<I", size)
    return bytes(data)


def deep_json(depth: int, kind: str) -> str:
    if kind == "list":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=12,
)
csv_cells = st.sampled_from(["1", "0", "-2.5", "1e400", "nan", "inf", "", "x", '"', '"1,2"', "\0", "#", " ", "1_0"])
csv_text = st.lists(st.lists(csv_cells, min_size=1, max_size=4), min_size=1, max_size=4).map(
    lambda rows: "\n".join(",".join(row) for row in rows)
)
huge_int = st.integers(300, 5000).map(lambda digits: "9" * digits)

def _typed(strategy: st.SearchStrategy[bytes], kind: str) -> st.SearchStrategy[tuple[bytes, str]]:
    return strategy.map(lambda body: (body, kind))


JSON, CSV, NPY, NPZ = "application/json", "text/csv", "application/x-npy", "application/x-npz"
#: Bodies with the Content-Type they were made for (the request uses it most of the time).
bodies = st.one_of(
    _typed(st.binary(max_size=300), "application/octet-stream"),
    _typed(st.text(max_size=100).map(lambda t: t.encode("utf-8")), "text/plain"),
    _typed(json_values.map(lambda v: json.dumps(v).encode()), JSON),
    _typed(json_values.map(lambda v: json.dumps(v).encode() + b"\n"), "application/jsonlines"),
    _typed(st.lists(st.lists(st.floats(), min_size=2, max_size=3), min_size=1, max_size=3)
           .map(lambda v: json.dumps(v).encode()), JSON),
    _typed(st.builds(deep_json, st.integers(1, 3000), st.sampled_from(["list", "object"])).map(str.encode), JSON),
    _typed(huge_int.map(lambda n: f"[[{n}, 1]]".encode()), JSON),
    _typed(huge_int.map(lambda n: f'{{"instances": [[{n}, 1, 2]]}}'.encode()), JSON),
    _typed(huge_int.map(lambda n: f"{n},1,2\n".encode()), CSV),
    _typed(csv_text.map(str.encode), CSV),
    _typed(small_arrays.map(_npy_bytes).flatmap(corrupted), NPY),
    _typed(small_arrays.map(lambda a: _npz_bytes({"x": a}, True)).flatmap(corrupted), NPZ),
    _typed(small_arrays.map(lambda a: _npz_bytes({"x": a, "y": a}, False)).flatmap(corrupted), NPZ),
    _typed(crafted_npy(), NPY),
    _typed(crafted_zip(), NPZ),
)

#: Header text: what an HTTP client can put in a header value (latin-1, no control characters).
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=12)


@st.composite
def fuzzed_request(draw: st.DrawFn) -> tuple[bytes, str | None, str | None]:
    """(body, Content-Type or None, Accept or None); the body's own Content-Type three times in four."""
    body, kind = draw(bodies)
    if draw(st.integers(0, 3)) == 0:
        kind = draw(st.sampled_from(TYPES) | header_text)
    if draw(st.integers(0, 3)) == 0:
        kind += "; charset=" + draw(st.sampled_from(CHARSETS))
    content_type = None if draw(st.integers(0, 19)) == 0 else kind
    accept = draw(st.sampled_from(ACCEPTS) | header_text)
    return body, content_type, accept


requests = fuzzed_request()

# ------------------------------------------------------------------------------------------- servers


def _write_onnx(path: Path, n_in: int, n_out: int, softmax: bool) -> None:
    from onnx import TensorProto, helper, numpy_helper

    weights = np.linspace(-1.0, 1.0, n_in * n_out, dtype=np.float32).reshape(n_in, n_out)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["logits" if softmax else "y"])]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["y"], axis=1))
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n_out])],
        [numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _forget_inference_module() -> None:
    sys.modules.pop("inference", None)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One werkzeug client per (handler, app kind)."""
    from werkzeug.test import Client

    onnx_base = tmp_path_factory.mktemp("onnx-default")
    (onnx_base / "model").mkdir()
    _write_onnx(onnx_base / "model" / "model.onnx", 2, 1, softmax=False)
    example_base = tmp_path_factory.mktemp("example")
    (example_base / "model" / "code").mkdir(parents=True)
    _write_onnx(example_base / "model" / "model.onnx", 3, 2, softmax=True)
    (example_base / "model" / "model.json").write_text(
        json.dumps({"feature_names": ["a", "b", "c"], "class_names": ["neg", "pos"]})
    )
    shutil.copy(default_example().source_dir / "inference.py", example_base / "model" / "code" / "inference.py")
    saved_path = list(sys.path)
    clients: dict[str, Any] = {}
    try:
        for name, base in (("onnx", onnx_base), ("example", example_base)):
            _forget_inference_module()
            env = ServingEnv.from_env({"SAGEMAKER_BASE_DIR": str(base), "SAGEMAKER_MODEL_SERVER_WORKERS": "1",
                                       "SMBYOC_ONNX_THREADS": "1"})
            holder = ModelHolder()
            holder.add(DEFAULT_MODEL, Handler(env))
            entry = holder.load(DEFAULT_MODEL)
            assert entry.state is ModelState.READY, entry.reason
            app = create_app(env, holder)
            clients[f"{name}-flask"] = app.test_client()
            clients[f"{name}-fast-path"] = Client(fast_path(env, holder, app))
        yield clients
    finally:
        _forget_inference_module()
        sys.path[:] = saved_path


def send(client: Any, body: bytes, content_type: str | None, accept: str | None) -> Any:
    headers = {} if accept is None else {"Accept": accept}
    if content_type is not None:
        headers["Content-Type"] = content_type
    return client.post("/invocations", data=body, headers=headers)


@pytest.mark.parametrize("target", ["onnx-flask", "onnx-fast-path", "example-flask", "example-fast-path"])
def test_fuzzed_invocations_never_answer_5xx(servers: dict[str, Any], target: str) -> None:
    client = servers[target]

    @settings(max_examples=300, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(requests)
    def check(request: tuple[bytes, str | None, str | None]) -> None:
        body, content_type, accept = request
        r = send(client, body, content_type, accept)
        assert r.status_code < 500, (r.status_code, r.get_data()[:300], content_type, accept, body[:200])
        if r.status_code >= 400:
            assert r.headers["Content-Type"] == "application/json"
            assert json.loads(r.get_data())["status"] == r.status_code
        elif r.headers["Content-Type"] == "application/json":
            strict_json(r.get_data())

    check()


def strict_json(data: bytes) -> Any:
    """``json.loads`` that refuses the bare NaN / Infinity Python's encoder writes by default."""
    def refuse(name: str) -> Any:
        raise AssertionError(f"non-standard JSON constant {name} in {data[:200]!r}")

    return json.loads(data, parse_constant=refuse)


# Inputs that answered 500 (or bare NaN) before, each pinned with its expected status (both handlers, both paths).
PINNED = [
    ("onnx", b"PK\x03\x04junk", "application/x-npz", None, 400),
    ("onnx", deep_json(1200, "list").encode(), "application/json", None, 400),
    ("onnx", deep_json(1200, "list").encode(), "application/jsonlines", None, 400),
    ("onnx", f"[[{'9' * 400}, 1]]".encode(), "application/json", None, 400),
    ("onnx", b"[[1, 2]]", "application/json; charset=undefined", None, 415),
    ("onnx", b"[[1, 2]]", "application/json; charset=punycode", None, 415),
    ("onnx", b"[[1, 2]]", "application/json; charset=rot13", None, 415),
    ("onnx", npy_header("<f8", (2**40,)), "application/x-npy", None, 413),
    ("onnx", npy_header("<f8", (4, 2)) + b"\0" * 8, "application/x-npy", None, 400),
    ("onnx", npy_header("<f8", (-1, 2)) + b"\0" * 16, "application/x-npy", None, 400),
    ("onnx", b"[[1, 2]]", "application/json", "application/octet-stream", 200),
    ("onnx", _npy_bytes(np.array([[1 + 1j, 2]])), "application/x-npy", None, 400),  # was cast, dropping 1j
    ("onnx", b"[[NaN, 1], [Infinity, 1]]", "application/json", None, 200),  # answered NaN: not JSON
    ("example", deep_json(1200, "list").encode(), "application/json", None, 400),
    ("example", b"1,2,3\r4,5,6\n", "text/csv", None, 400),
    ("example", b"1,2," + b"9" * 200_000 + b"\n", "text/csv", None, 400),
    ("example", f"[[{'9' * 400}, 1, 2]]".encode(), "application/json", None, 400),
    ("example", b"[[1e300, 1, 2]]", "application/json", None, 400),
]


@pytest.mark.parametrize("kind", ["flask", "fast-path"])
@pytest.mark.parametrize(("handler", "body", "content_type", "accept", "status"), PINNED)
def test_inputs_that_were_mishandled_before(
    servers: dict[str, Any], kind: str, handler: str, body: bytes, content_type: str, accept: str | None,
    status: int,
) -> None:
    r = send(servers[f"{handler}-{kind}"], body, content_type, accept)
    assert r.status_code == status, r.get_data()[:500]
    if r.headers["Content-Type"] == "application/json":
        strict_json(r.get_data())
    if status >= 400:
        message = json.loads(r.get_data())["message"]
        assert message and len(message) < 1200
