"""Codecs and Accept negotiation; JSON/CSV/NPY decoding compared with sagemaker-inference's decoder."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import scipy.sparse
from hypothesis import given, settings
from hypothesis import strategies as st
from sagemaker_inference import decoder as it_decoder
from sagemaker_inference import encoder as it_encoder

from smbyoc.serving import codecs
from smbyoc.serving.errors import BadRequest, NotAcceptable, UnsupportedMediaType

finite = st.floats(allow_nan=False, allow_infinity=False, width=32)
matrices = st.integers(1, 4).flatmap(
    lambda n: st.lists(st.lists(finite, min_size=n, max_size=n), min_size=1, max_size=5)
)


def same(a: object, b: object) -> None:
    a_arr, b_arr = np.asarray(a), np.asarray(b)
    assert a_arr.dtype == b_arr.dtype
    assert a_arr.shape == b_arr.shape
    np.testing.assert_array_equal(a_arr, b_arr)


@pytest.mark.oracle
@settings(max_examples=60, deadline=None)
@given(matrices)
def test_json_decode_equals_sagemaker_inference(rows: list[list[float]]) -> None:
    text = json.dumps(rows)
    same(codecs.decode(text, codecs.JSON), it_decoder.decode(text, "application/json"))


@pytest.mark.oracle
@settings(max_examples=60, deadline=None)
@given(matrices)
def test_csv_decode_equals_sagemaker_inference(rows: list[list[float]]) -> None:
    text = "\n".join(",".join(repr(v) for v in row) for row in rows)
    same(codecs.decode(text, codecs.CSV), it_decoder.decode(text, "text/csv"))


@pytest.mark.oracle
@pytest.mark.parametrize("array", [np.arange(6, dtype=np.float32).reshape(2, 3), np.array(["a", "b"]), np.array(3)])
def test_npy_decode_equals_sagemaker_inference(array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    same(codecs.decode(buffer.getvalue(), codecs.NPY), it_decoder.decode(buffer.getvalue(), "application/x-npy"))


@pytest.mark.oracle
def test_sparse_npz_decodes_like_sagemaker_inference() -> None:
    matrix = scipy.sparse.random(5, 4, density=0.4, format="csr", random_state=1)
    buffer = io.BytesIO()
    scipy.sparse.save_npz(buffer, matrix)
    ours = codecs.decode(buffer.getvalue(), codecs.NPZ)
    theirs = it_decoder.decode(buffer.getvalue(), "application/x-npz")
    assert scipy.sparse.issparse(ours)
    np.testing.assert_array_equal(ours.toarray(), theirs.toarray())


def test_plain_npz_decodes_to_dict_of_arrays() -> None:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.ones((2, 3)), y=np.arange(3))
    decoded = codecs.decode(buffer.getvalue(), codecs.NPZ)
    assert set(decoded) == {"x", "y"}
    np.testing.assert_array_equal(decoded["y"], np.arange(3))


@pytest.mark.oracle
@pytest.mark.parametrize("kind", [codecs.JSON, codecs.CSV, codecs.NPY])
def test_encoders_match_sagemaker_inference(kind: str) -> None:
    array = np.array([[1.5, 2.0], [3.0, -4.25]], dtype=np.float32)
    theirs = it_encoder.encode(array, kind)
    theirs = theirs.encode() if isinstance(theirs, str) else theirs
    ours = codecs.encode(array, kind)
    if kind == codecs.NPY:
        same(np.load(io.BytesIO(ours)), np.load(io.BytesIO(theirs)))
    else:
        assert ours == theirs


def test_jsonlines_round_trip_and_ragged() -> None:
    body = codecs.encode(np.array([[1, 2], [3, 4]]), codecs.JSONLINES)
    assert body == b"[1, 2]\n[3, 4]\n"
    same(codecs.decode(body.decode(), codecs.JSONLINES), np.array([[1, 2], [3, 4]]))
    assert codecs.decode('{"a": 1}\n[1, 2, 3]\n', codecs.JSONLINES) == [{"a": 1}, [1, 2, 3]]


def test_npz_and_octet_stream_encoders() -> None:
    decoded = np.load(io.BytesIO(codecs.encode({"y": np.arange(3)}, codecs.NPZ)))
    np.testing.assert_array_equal(decoded["y"], np.arange(3))
    assert codecs.encode(b"raw", codecs.OCTET_STREAM) == b"raw"
    assert codecs.encode(np.array([1], dtype=np.uint8), codecs.OCTET_STREAM) == b"\x01"
    assert codecs.decode(b"\x00\x01", codecs.OCTET_STREAM) == b"\x00\x01"


@pytest.mark.parametrize(
    ("kind", "body"),
    [(codecs.JSON, "[1, 2"), (codecs.NPY, b"not npy"), (codecs.NPZ, b"PK junk"), (codecs.JSONLINES, "{x}\n")],
)
def test_malformed_body_is_400(kind: str, body: str | bytes) -> None:
    with pytest.raises(BadRequest, match=kind):
        codecs.decode(body, kind)


def test_unknown_content_type_is_415() -> None:
    with pytest.raises(UnsupportedMediaType, match="image/png"):
        codecs.decode(b"", "image/png")


def test_media_type_parsing() -> None:
    assert codecs.media_type("Application/JSON; charset=UTF-8") == ("application/json", {"charset": "UTF-8"})
    assert codecs.media_type(None) == (codecs.OCTET_STREAM, {})
    assert codecs.media_type("application/x-jsonlines")[0] == codecs.JSONLINES


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "application/json"),
        ("*/*", "application/json"),
        ("text/csv", "text/csv"),
        ("image/png, text/csv", "text/csv"),
        ("text/csv;q=0.5, application/x-npy", "application/x-npy"),
        ("text/*", "text/csv"),
        ("application/*", "application/json"),
        ("image/png, */*", "application/json"),
    ],
)
def test_negotiate(accept: str | None, expected: str) -> None:
    assert codecs.negotiate(accept, "application/json") == expected


def test_negotiate_default_accept_and_406() -> None:
    assert codecs.negotiate("*/*", "text/csv") == "text/csv"
    with pytest.raises(NotAcceptable, match="image/png"):
        codecs.negotiate("image/png", "application/json")
    with pytest.raises(NotAcceptable):
        codecs.negotiate("text/csv;q=0", "application/json")


def test_npy_object_arrays_need_opt_in() -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BadRequest, match="x-npy"):
        codecs.decode(buffer.getvalue(), codecs.NPY)
    codecs.allow_pickle(True)
    try:
        assert codecs.decode(buffer.getvalue(), codecs.NPY)[0] == {"a": 1}
    finally:
        codecs.allow_pickle(False)


@pytest.mark.parametrize(
    "text",
    ["1,2,3", "1,2\n3,4\n", "5", "1\n2\n3", " 1.5 , -2e3 \r\n4,nan\n\n", "1,2\n3", "1,,3", "# c\n1,2",
     '"1",2', "a,b\n1,2", "1_000,2", "inf,-inf"],
)
def test_simple_csv_fast_path_equals_genfromtxt(text: str) -> None:
    import io as _io

    from smbyoc.serving.codecs import _csv

    try:
        expected = np.genfromtxt(_io.StringIO(text), delimiter=",")
    except ValueError:
        with pytest.raises(ValueError):
            _csv(text)
        return
    got = _csv(text)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def _savetxt(array: np.ndarray) -> bytes:
    stream = io.StringIO()
    np.savetxt(stream, array, delimiter=",", fmt="%s")
    return stream.getvalue().encode("utf-8")


arrays = st.sampled_from([np.float32, np.float64, np.int64, np.int8, np.uint16, np.bool_]).flatmap(
    lambda dtype: st.tuples(st.integers(1, 2), st.integers(1, 4), st.integers(1, 5)).flatmap(
        lambda shape: st.lists(
            st.floats(allow_nan=True, allow_infinity=True, width=32) if dtype in (np.float32, np.float64)
            else st.integers(0, 100) if dtype in (np.int8, np.uint16) else st.integers(-(2**40), 2**40)
            if dtype is np.int64 else st.booleans(),
            min_size=shape[1] * shape[2], max_size=shape[1] * shape[2],
        ).map(lambda values: np.array(values, dtype=dtype).reshape(
            (shape[1] * shape[2],) if shape[0] == 1 else (shape[1], shape[2])))
    )
)


@settings(max_examples=150, deadline=None)
@given(arrays)
def test_csv_encode_fast_path_equals_savetxt(array: np.ndarray) -> None:
    assert codecs.encode_csv(array) == _savetxt(array)
    assert codecs.encode_csv(array.tolist()) == _savetxt(np.asarray(array.tolist()))


@pytest.mark.oracle
@pytest.mark.parametrize("obj", [np.array([[0.1, 0.2]], dtype=np.float32), np.array([1.5, 2.5]), [[1, 2], [3, 4]],
                                 np.zeros((0, 3)), np.array([["a", "b"]]), np.array([1 + 2j])])
def test_csv_encode_equals_sagemaker_inference(obj: object) -> None:
    expected = it_encoder.encode(obj, "text/csv")
    assert codecs.encode_csv(obj) == (expected.encode("utf-8") if isinstance(expected, str) else expected)
