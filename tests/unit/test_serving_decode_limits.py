"""Hostile request bodies: decompression bombs, lying NPY headers and zip members, broken archives,
unknown charsets; and what the default encoders do with values their type cannot hold.

The bombs are real: a 1 MB npz whose member inflates to 1 GiB, built here from a repeated deflate block.
The decoder's peak memory is measured in a fresh interpreter (``ru_maxrss``), so the test fails if the
bomb is ever inflated again.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse

from smbyoc.serving import codecs
from smbyoc.serving.env import ServingEnv
from smbyoc.serving.errors import BadRequest, NotAcceptable, PayloadTooLarge, UnsupportedMediaType

MIB = 1024 * 1024


def npy_header(descr: str, shape: tuple[int, ...], fortran: bool = False) -> bytes:
    text = repr({"descr": descr, "fortran_order": fortran, "shape": shape}).encode("latin1")
    text += b" " * (64 - (10 + len(text) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text


def deflate_zeros(prefix: bytes, megabytes: int) -> tuple[bytes, int, int]:
    """A raw deflate stream of ``prefix`` then ``megabytes`` MiB of zeros, with its CRC-32 and size.

    After a full flush the compressor starts over, so one compressed MiB repeated is a valid stream of
    the repeated MiB: a 1 GiB member costs a millisecond to build instead of seconds."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = compressor.compress(prefix) + compressor.flush(zlib.Z_FULL_FLUSH)
    chunk = bytes(MIB)
    piece = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(prefix)
    for _ in range(megabytes):
        crc = zlib.crc32(chunk, crc)
    return head + piece * megabytes + compressor.flush(), crc, len(prefix) + megabytes * MIB


def zip_of(members: list[tuple[str, bytes, int, int]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip written by hand from (name, compressed data, crc, declared size): sizes may lie."""
    local_part, central_part = b"", b""
    for name, data, crc, size in members:
        encoded = name.encode()
        offset = len(local_part)
        local_part += struct.pack(
            "<4s5H3I2H", b"PK\x03\x04", 20, 0, method, 0, 0, crc, len(data), size, len(encoded), 0
        ) + encoded + data
        central_part += struct.pack(
            "<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, method, 0, 0, crc, len(data), size, len(encoded),
            0, 0, 0, 0, 0, offset,
        ) + encoded
    end = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central_part),
                      len(local_part), 0)
    return local_part + central_part + end


def npz_bomb(gibibytes: int = 1) -> bytes:
    data, crc, size = deflate_zeros(npy_header("<f8", (gibibytes * 1024 * MIB // 8,)), gibibytes * 1024)
    return zip_of([("x.npy", data, crc, size)])


MEASURE = textwrap.dedent("""
    import json, resource, sys
    body = open(sys.argv[1], "rb").read()
    from smbyoc.serving import codecs
    import numpy, scipy.sparse
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        decoded = codecs.decode(body, sys.argv[2])
        outcome = {"status": 200, "shapes": {k: list(v.shape) for k, v in decoded.items()}}
    except Exception as e:
        outcome = {"status": getattr(e, "code", None), "message": getattr(e, "description", str(e))}
    outcome["growth_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(json.dumps(outcome))
""")


def decode_in_fresh_process(tmp_path: Path, body: bytes, kind: str = codecs.NPZ) -> dict[str, object]:
    path = tmp_path / "body"
    path.write_bytes(body)
    done = subprocess.run([sys.executable, "-c", MEASURE, str(path), kind], capture_output=True, text=True,
                          check=True)
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_npz_bomb_is_413_without_inflating(tmp_path: Path) -> None:
    body = npz_bomb(1)
    assert len(body) < 1.1 * MIB
    result = decode_in_fresh_process(tmp_path, body)
    assert result["status"] == 413, result
    assert "1073741952 bytes" in str(result["message"])  # 1 GiB and the NPY header
    assert "SMBYOC_MAX_DECODED_PAYLOAD_IN_MB=24" in str(result["message"])
    assert float(str(result["growth_mib"])) < 32, result  # inflating it costs 1024 MiB


def test_a_member_larger_than_it_declares_is_read_only_to_its_declared_size(tmp_path: Path) -> None:
    header = npy_header("<f8", (16,))
    data, _, _ = deflate_zeros(header, 1024)  # inflates to 1 GiB; the zip says 128 + 16 * 8 bytes
    declared = len(header) + 16 * 8
    honest_crc = zlib.crc32(header + bytes(16 * 8))
    result = decode_in_fresh_process(tmp_path, zip_of([("x.npy", data, honest_crc, declared)]))
    assert result["status"] == 200 and result["shapes"] == {"x": [16]}, result
    assert float(str(result["growth_mib"])) < 32, result
    wrong_crc = zip_of([("x.npy", data, 0, declared)])
    with pytest.raises(BadRequest, match="CRC"):
        codecs.decode(wrong_crc, codecs.NPZ)


def test_members_are_summed_before_any_is_inflated() -> None:
    data, crc, size = deflate_zeros(npy_header("<u1", (4 * MIB,)), 4)
    body = zip_of([(f"m{i}.npy", data, crc, size) for i in range(7)])  # 7 x 4 MiB > 24 MiB
    with pytest.raises(PayloadTooLarge, match="7 members.*29361024 bytes"):
        codecs.decode(body, codecs.NPZ)
    codecs.configure(allow_pickle=False, max_decoded_mb=64)
    try:
        assert len(codecs.decode(body, codecs.NPZ)) == 7
    finally:
        codecs.configure(allow_pickle=False, max_decoded_mb=24)


def test_npy_header_declaring_a_huge_shape_is_413_not_memory_error(tmp_path: Path) -> None:
    result = decode_in_fresh_process(tmp_path, npy_header("<f8", (2**40,)), codecs.NPY)
    assert result["status"] == 413, result
    assert "8796093022208 bytes" in str(result["message"]) and "(1099511627776,)" in str(result["message"])


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (npy_header("<f8", (4, 2)) + bytes(8), "truncated: its header declares shape (4, 2)"),
        (npy_header("<f8", (-1, 2)) + bytes(16), "negative dimension"),
        (npy_header("bogus", (2,)) + bytes(16), "descr"),
        (b"\x93NUMPY\x09\x00" + bytes(64), "version"),
        (b"PK\x03\x04 not npy", "zip archive"),
        (b"\x80\x04 a pickle", "magic"),
    ],
)
def test_bad_npy_is_400_naming_the_problem(body: bytes, needle: str) -> None:
    with pytest.raises(BadRequest, match="application/x-npy") as info:
        codecs.decode(body, codecs.NPY)
    assert needle in str(info.value.description)


@pytest.mark.parametrize(
    "array",
    [
        np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
        np.zeros((0, 3)),
        np.array(7.5),
        np.array([(1, 2.0)], dtype=[("a", "<i4"), ("b", "<f8")]),
        np.zeros((2,), dtype=("<f4", (3,))),
        np.array([b"", b""], dtype="S0"),
        np.arange(4, dtype=">i2"),
    ],
)
def test_npy_decodes_like_numpy_load(array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    for version in (None, (2, 0)):
        if version is not None:
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, array, version=version)
        expected = np.load(io.BytesIO(buffer.getvalue()))
        got = codecs.decode(buffer.getvalue(), codecs.NPY)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert got.flags.f_contiguous == expected.flags.f_contiguous and got.flags.writeable
        np.testing.assert_array_equal(got, expected)


def _damaged_zips() -> list[tuple[str, bytes]]:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=np.arange(100.0))
    good = buffer.getvalue()
    central = good.rfind(b"PK\x01\x02")
    encrypted = bytearray(good)
    encrypted[6] |= 1
    encrypted[central + 8] |= 1
    method = bytearray(good)
    method[8:10] = method[central + 10:central + 12] = struct.pack("<H", 99)
    name_len, extra_len = struct.unpack("<HH", good[26:30])
    start = 30 + name_len + extra_len
    junk = bytearray(good)
    junk[start:start + 8] = b"\xff" * 8  # BTYPE 11: an invalid deflate block
    return [("encrypted", bytes(encrypted)), ("method", bytes(method)), ("zlib", bytes(junk)),
            ("truncated", good[: len(good) // 2]), ("not a zip", b"PK\x03\x04junk")]


@pytest.mark.parametrize(("case", "body"), _damaged_zips())
def test_broken_zips_are_400(case: str, body: bytes) -> None:
    with pytest.raises(BadRequest, match="application/x-npz"):
        codecs.decode(body, codecs.NPZ)


def test_sparse_matrix_with_out_of_range_indices_is_400() -> None:
    matrix = scipy.sparse.csr_matrix(np.eye(3))
    matrix.indices[0] = 10**6
    buffer = io.BytesIO()
    scipy.sparse.save_npz(buffer, matrix)
    with pytest.raises(BadRequest, match="application/x-npz"):
        codecs.decode(buffer.getvalue(), codecs.NPZ)


def test_non_npy_members_stay_bytes_as_numpy_load_gives_them() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", b"hello")
        archive.writestr("x.npy", buffer_of(np.arange(3)))
    assert codecs.decode(buffer.getvalue(), codecs.NPZ)["notes.txt"] == b"hello"


def buffer_of(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def test_deep_json_is_400() -> None:
    with pytest.raises(BadRequest, match="nested too deeply"):
        codecs.decode("[" * 5000 + "]" * 5000, codecs.JSON)
    with pytest.raises(BadRequest, match="application/json"):
        codecs.decode("[" * 100 + "]" * 100, codecs.JSON)  # deeper than numpy's 64 dimensions


def test_error_messages_are_clipped() -> None:
    with pytest.raises(BadRequest) as info:
        codecs.decode("x" * 100_000, codecs.JSON)
    assert len(str(info.value.description)) <= 1100


@pytest.mark.parametrize("charset", ["undefined", "punycode", "idna", "rot13", "base64", "unicode_escape", "nope"])
def test_unknown_or_non_text_charsets_are_415(charset: str) -> None:
    with pytest.raises(UnsupportedMediaType, match=charset):
        codecs.decode_text(b"[1]", codecs.JSON, charset)


def test_charsets_decode_and_bad_text_is_400() -> None:
    assert codecs.decode_text("[1, 2]".encode("utf-16"), codecs.JSON, "UTF-16") == "[1, 2]"
    assert codecs.decode_text(b"caf\xe9", codecs.CSV, "latin-1") == "café"
    with pytest.raises(BadRequest, match="utf-8"):
        codecs.decode_text(b"\xff\xfe\xfd", codecs.CSV, None)


# ----------------------------------------------------------------------------------------- encoders


def test_non_finite_floats_are_json_null() -> None:
    values = np.array([[np.nan, 1.0], [np.inf, -np.inf]], dtype=np.float32)
    assert json.loads(codecs.encode(values, codecs.JSON)) == [[None, 1.0], [None, None]]
    assert codecs.encode({"a": float("nan"), "b": [np.float32("inf")]}, codecs.JSON) == b'{"a": null, "b": [null]}'
    assert codecs.encode(values, codecs.JSONLINES) == b"[null, 1.0]\n[null, null]\n"
    assert codecs.encode(np.array([1.5]), codecs.JSON) == b"[1.5]"


@pytest.mark.parametrize(
    ("value", "kind", "needle"),
    [
        (np.array([1 + 2j]), codecs.JSON, "complex value (1+2j) has no JSON form"),
        ({"k": np.complex64(1j)}, codecs.JSONLINES, "complex value"),
        ({"raw": b"\xff\xfe"}, codecs.JSON, "bytes value b'\\xff\\xfe' is not UTF-8 text"),
        ({"a": np.arange(2), "b": np.arange(2)}, codecs.CSV, "a dict of outputs (keys 'a', 'b') has no CSV form"),
        ({"a": 1}, codecs.OCTET_STREAM, "Python objects has no raw-bytes form"),
        (np.zeros((2, 2, 2)), codecs.CSV, "text/csv"),
    ],
)
def test_values_a_type_cannot_hold_are_406_naming_them(value: object, kind: str, needle: str) -> None:
    with pytest.raises(NotAcceptable) as info:
        codecs.encode(value, kind)
    assert needle in str(info.value.description)


def test_complex_csv_and_bytes_json_still_encode() -> None:
    assert codecs.encode(np.array([1 + 2j]), codecs.CSV) == b" (1.0+2.0j)\n"  # np.savetxt's form
    assert codecs.encode({"text": b"ok"}, codecs.JSON) == b'{"text": "ok"}'


# ----------------------------------------------------------------------------------------- settings


def test_decoded_limit_comes_from_the_environment() -> None:
    assert ServingEnv.from_env({}).max_decoded_payload_mb == 24
    assert ServingEnv.from_env({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "10"}).max_decoded_payload_mb == 40
    assert ServingEnv.from_env({"SMBYOC_MAX_DECODED_PAYLOAD_IN_MB": "3"}).max_decoded_payload_mb == 3
    with pytest.raises(Exception, match="SMBYOC_MAX_DECODED_PAYLOAD_IN_MB"):
        ServingEnv.from_env({"SMBYOC_MAX_DECODED_PAYLOAD_IN_MB": "0"})
