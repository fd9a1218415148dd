"""Batch transform records: splitting (None, Line, RecordIO, TFRecord), Gzip objects, mini-batches.

RecordIO files are built here byte by byte with :mod:`struct` (MXNet/dmlc-core layout), independently of the
encoder under test; TFRecord is checked against a record written by TensorFlow's framing with a reference
CRC32C (vector below).
"""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smbyoc.emulator.transform import records as records_module
from smbyoc.emulator.transform.records import (
    MiniBatch,
    RecordError,
    crc32c,
    encode_recordio,
    encode_tfrecord,
    masked_crc32c,
    mini_batches,
    open_object,
    read_records,
    recordio_payload,
    split_output,
    tfrecord_payload,
)
from smbyoc.errors import ConfigError, SmbyocError, TransformError

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)

# TFRecord of b"hello" as TensorFlow writes it: uint64 length 5, masked crc32c(length) 0x3E04B2EA, the data,
# masked crc32c(b"hello") 0x191C1FBB. The CRCs were computed with google-crc32c 1.x (pip, scratch venv):
#   mask(c) = (((c >> 15) | (c << 17)) + 0xA282EAD8) % 2**32
TFRECORD_HELLO = bytes.fromhex("0500000000000000" "eab2043e" "68656c6c6f" "bb1f1c19")


def recordio_frame(payload: bytes, flag: int = 0) -> bytes:
    """One MXNet RecordIO frame, built by hand: magic, (flag << 29 | length), payload, zero padding."""
    return struct.pack("<II", MAGIC, (flag << 29) | len(payload)) + payload + b"\0" * (-len(payload) % 4)


def read_all(data: bytes, split_type: str, source: str = "in.bin") -> list[bytes]:
    return list(read_records(io.BytesIO(data), split_type, source=source))


# ------------------------------------------------------------------------------------------------ crc


def test_crc32c_check_value_and_tfrecord_vector():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C catalogue check value
    assert crc32c(b"") == 0
    assert encode_tfrecord(b"hello") == TFRECORD_HELLO
    assert masked_crc32c(b"hello") == 0x191C1FBB


def test_transform_error_is_rooted():
    assert issubclass(RecordError, TransformError)
    assert issubclass(TransformError, SmbyocError)


# ---------------------------------------------------------------------------------------- None / Line


def test_split_none_is_the_whole_object():
    assert read_all(b"a\nb\n", "None") == [b"a\nb\n"]
    assert read_all(b"", "None") == []


def test_split_line_keeps_newlines_and_a_last_line_without_one():
    assert read_all(b"1,2\n3,4\r\n\n5,6", "Line") == [b"1,2\n", b"3,4\r\n", b"\n", b"5,6"]
    assert read_all(b"1\n2\n", "Line") == [b"1\n", b"2\n"]
    assert read_all(b"", "Line") == []


def test_split_line_across_chunk_boundaries(monkeypatch):
    monkeypatch.setattr(records_module, "_CHUNK", 3)
    lines = [b"abcdefgh\n", b"\n", b"x\n", b"yz\n", b"0123456"]
    assert read_all(b"".join(lines), "Line") == lines


class CountingStream(io.RawIOBase):
    """A long stream of lines that counts how many bytes were read from it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.served = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.size - self.served)
        chunk = (b"0123456789abcde\n" * (n // 16 + 1))[:n]
        buffer[:n] = chunk
        self.served += n
        return n


def test_split_line_streams_instead_of_reading_the_whole_object():
    stream = CountingStream(64 * 1024 * 1024)
    first = next(read_records(stream, "Line", source="big.csv"))  # type: ignore[arg-type]
    assert first == b"0123456789abcde\n"
    assert stream.served <= records_module._CHUNK


def test_unknown_split_type_is_a_config_error():
    with pytest.raises(ConfigError, match="SplitType.*'Lines'"):
        read_all(b"x", "Lines")


# ------------------------------------------------------------------------------------------- RecordIO


def test_recordio_yields_frames_as_in_the_file():
    frames = [recordio_frame(b"abc"), recordio_frame(b""), recordio_frame(b"12345678"), recordio_frame(b"xyzzy")]
    data = b"".join(frames)
    assert read_all(data, "RecordIO") == frames
    assert [recordio_payload(f) for f in frames] == [b"abc", b"", b"12345678", b"xyzzy"]
    assert encode_recordio(b"abc") == frames[0]


def test_recordio_multipart_record_puts_the_magic_back():
    magic = struct.pack("<I", MAGIC)
    payload = b"abcd" + magic + b"efgh" + magic + b"ij"
    # dmlc-core writes a payload holding aligned magics as parts with flags 1, 2, 3
    parts = recordio_frame(b"abcd", 1) + recordio_frame(b"efgh", 2) + recordio_frame(b"ij", 3)
    assert encode_recordio(payload) == parts
    data = parts + recordio_frame(b"next")
    records = read_all(data, "RecordIO")
    assert records == [parts, recordio_frame(b"next")]
    assert recordio_payload(records[0]) == payload


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda good: good + struct.pack("<II", 0xDEADBEEF, 4) + b"abcd", "record 2: bad RecordIO magic 0xDEADBEEF"),
        (lambda good: good + struct.pack("<I", MAGIC) + b"\x01", "record 2: truncated RecordIO header"),
        (lambda good: good + struct.pack("<II", MAGIC, 100) + b"short", "record 2: truncated RecordIO payload"),
        (lambda good: good + recordio_frame(b"abcd", 2), "record 2: RecordIO continuation flag 2"),
        (lambda good: good + recordio_frame(b"abcd", 1), "record 2: truncated RecordIO header"),
        (lambda good: good + recordio_frame(b"abcd", 1) + recordio_frame(b"x", 0), "record 2: RecordIO continuation"),
        (lambda good: good + struct.pack("<II", MAGIC, 5 << 29), "record 2: RecordIO continuation flag 5"),
    ],
)
def test_recordio_corruption_names_file_and_record(damage, message):
    data = damage(recordio_frame(b"good"))
    with pytest.raises(RecordError, match=rf"^data/train\.rec: {message}"):
        read_all(data, "RecordIO", source="data/train.rec")


# ------------------------------------------------------------------------------------------- TFRecord


def test_tfrecord_reads_a_tensorflow_written_record():
    data = TFRECORD_HELLO + encode_tfrecord(b"") + encode_tfrecord(b"\x00" * 1000)
    records = read_all(data, "TFRecord")
    assert records == [TFRECORD_HELLO, encode_tfrecord(b""), encode_tfrecord(b"\x00" * 1000)]
    assert [tfrecord_payload(r) for r in records] == [b"hello", b"", b"\x00" * 1000]


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1:]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda rec: flip(rec, 0), "corrupt TFRecord length"),  # length byte, its crc no longer matches
        (lambda rec: flip(rec, 9), "corrupt TFRecord length"),  # the length's crc
        (lambda rec: flip(rec, 13), "corrupt TFRecord data"),  # a data byte
        (lambda rec: flip(rec, len(rec) - 1), "corrupt TFRecord data"),  # the data's crc
        (lambda rec: rec[:-2], "truncated TFRecord data"),
        (lambda rec: rec[:5], "truncated TFRecord header"),
    ],
)
def test_tfrecord_corruption_names_file_and_record(damage, message):
    data = TFRECORD_HELLO + damage(encode_tfrecord(b"world!"))
    with pytest.raises(RecordError, match=rf"^in\.tfrecord: record 2: {message}"):
        read_all(data, "TFRecord", source="in.tfrecord")


# ------------------------------------------------------------------------------------------------ Gzip


def test_gzip_object_is_decompressed(tmp_path: Path):
    lines = [b"%d,%d\n" % (i, i * i) for i in range(5000)]
    path = tmp_path / "in.csv.gz"
    path.write_bytes(gzip.compress(b"".join(lines)))
    with open_object(path, "Gzip") as stream:
        assert list(read_records(stream, "Line", source=str(path))) == lines
    plain = tmp_path / "in.csv"
    plain.write_bytes(b"a\nb")
    with open_object(plain, "None") as stream:
        assert stream.read() == b"a\nb"


def test_gzip_that_is_not_gzip_names_the_file(tmp_path: Path):
    path = tmp_path / "plain.csv"
    path.write_bytes(b"1,2,3\n")
    with pytest.raises(RecordError, match=r"plain\.csv: CompressionType is Gzip but the object is not gzip"):
        open_object(path, "Gzip")


@pytest.mark.parametrize("damage", [lambda z: z[:-6], lambda z: flip(z, len(z) - 6)], ids=["truncated", "bad-crc"])
def test_corrupt_gzip_fails_on_read_naming_the_file(tmp_path: Path, damage):
    path = tmp_path / "in.csv.gz"
    path.write_bytes(damage(gzip.compress(b"1,2\n" * 1000)))
    with (
        open_object(path, "Gzip", source="s3://bucket/in.csv.gz") as stream,
        pytest.raises(RecordError, match=r"^s3://bucket/in\.csv\.gz: not a valid gzip stream"),
    ):
        list(read_records(stream, "Line", source="s3://bucket/in.csv.gz"))


def test_unknown_compression_is_a_config_error(tmp_path: Path):
    path = tmp_path / "x"
    path.write_bytes(b"")
    with pytest.raises(ConfigError, match="CompressionType.*'Zip'"):
        open_object(path, "Zip")


# ---------------------------------------------------------------------------------------- mini-batches


def batches(records: list[bytes], split_type: str = "Line", strategy: str = "MultiRecord", limit: int = 10):
    return list(mini_batches(records, split_type=split_type, strategy=strategy, max_payload_bytes=limit,
                             source="in.csv"))


def test_multirecord_packs_in_order_up_to_the_limit():
    records = [b"aaa\n", b"bb\n", b"cccc\n", b"d\n", b"eeeeeeeee\n", b"f\n"]
    assert batches(records) == [
        MiniBatch(b"aaa\nbb\n", 0, 2),
        MiniBatch(b"cccc\nd\n", 2, 2),
        MiniBatch(b"eeeeeeeee\n", 4, 1),
        MiniBatch(b"f\n", 5, 1),
    ]


def test_zero_limit_is_unlimited():
    records = [b"x" * 1000 + b"\n"] * 50
    assert batches(records, limit=0) == [MiniBatch(b"".join(records), 0, 50)]
    assert len(batches(records, strategy="SingleRecord", limit=0)) == 50


@pytest.mark.parametrize("strategy", ["SingleRecord", "MultiRecord"])
def test_a_record_over_the_limit_is_named(strategy):
    with pytest.raises(RecordError, match=r"^in\.csv: record 3 is 11 bytes, over MaxPayloadInMB \(10 bytes\)"):
        batches([b"a\n", b"b\n", b"0123456789\n", b"c\n"], strategy=strategy)


def test_single_record_sends_binary_payloads_without_framing_or_padding():
    recordio = [encode_recordio(b"abcde"), encode_recordio(b"xy")]
    assert [b.payload for b in batches(recordio, "RecordIO", "SingleRecord", 0)] == [b"abcde", b"xy"]
    tfrecords = [encode_tfrecord(b"hello"), encode_tfrecord(b"x")]
    assert [b.payload for b in batches(tfrecords, "TFRecord", "SingleRecord", 5)] == [b"hello", b"x"]
    # MultiRecord keeps the framing and padding: the body is itself a valid RecordIO stream
    (multi,) = batches(recordio, "RecordIO", "MultiRecord", 0)
    assert multi.payload == b"".join(recordio)
    assert [recordio_payload(r) for r in read_all(multi.payload, "RecordIO")] == [b"abcde", b"xy"]


def test_multirecord_needs_a_split_type_and_known_values():
    with pytest.raises(ValueError, match="MultiRecord needs SplitType"):
        batches([b"x"], "None", "MultiRecord")
    with pytest.raises(ValueError, match="BatchStrategy"):
        batches([b"x"], "Line", "MULTI_RECORD")
    assert batches([b"whole object"], "None", "SingleRecord", 0) == [MiniBatch(b"whole object", 0, 1)]


@settings(max_examples=200, deadline=None)
@given(
    records=st.lists(st.binary(min_size=1, max_size=40).map(lambda b: b.replace(b"\n", b"") + b"\n"), max_size=60),
    limit=st.integers(min_value=0, max_value=200),
)
def test_property_batches_partition_the_records(records, limit):
    limit = max(limit, max((len(r) for r in records), default=0)) if limit else 0
    result = batches(records, limit=limit)
    assert b"".join(b.payload for b in result) == b"".join(records)
    assert sum(b.count for b in result) == len(records)
    assert [b.first_record for b in result] == [sum(b.count for b in result[:i]) for i in range(len(result))]
    assert all(limit == 0 or len(b.payload) <= limit for b in result)
    # a batch is closed only when the next record would not fit
    for this, following in zip(result, result[1:], strict=False):
        assert limit and len(this.payload) + len(records[following.first_record]) > limit


# ----------------------------------------------------------------------------------- split, then join


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=17))
def test_property_line_split_then_join_gives_back_the_input(data, chunk):
    records_module_chunk = records_module._CHUNK
    records_module._CHUNK = chunk  # small chunks exercise every boundary; restored below
    try:
        assert b"".join(read_all(data, "Line")) == data
    finally:
        records_module._CHUNK = records_module_chunk


MAGIC_PAYLOADS = st.sampled_from([MAGIC_BYTES * 3, b"ab" + MAGIC_BYTES, b"abcd" + MAGIC_BYTES])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=40) | MAGIC_PAYLOADS))
def test_property_recordio_round_trip(payloads):
    data = b"".join(encode_recordio(p) for p in payloads)
    records = read_all(data, "RecordIO")
    assert b"".join(records) == data
    assert [recordio_payload(r) for r in records] == payloads


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=60)))
def test_property_tfrecord_round_trip(payloads):
    data = b"".join(encode_tfrecord(p) for p in payloads)
    records = read_all(data, "TFRecord")
    assert b"".join(records) == data
    assert [tfrecord_payload(r) for r in records] == payloads


# -------------------------------------------------------------------------------------------- outputs


def test_split_output_lines():
    assert split_output(b"0.1\n0.2\n0.3\n", "Line", 3) == [b"0.1", b"0.2", b"0.3"]
    assert split_output(b"0.1\n0.2\n0.3", "Line", 3) == [b"0.1", b"0.2", b"0.3"]
    assert split_output(b"0.1,0.2,0.3\n", "Line", 3) is None
    assert split_output(b'{"a": 1,\n "b": 2}\n', "Line", 1) == [b'{"a": 1,\n "b": 2}']
    assert split_output(b"whole", "None", 1) == [b"whole"]
    assert split_output(b"whole", "None", 2) is None


def test_split_output_binary():
    body = encode_recordio(b"one") + encode_recordio(b"two")
    assert split_output(body, "RecordIO", 2) == [encode_recordio(b"one"), encode_recordio(b"two")]
    assert split_output(body, "RecordIO", 3) is None
    assert split_output(b"not recordio", "RecordIO", 1) is None
    assert split_output(TFRECORD_HELLO, "TFRecord", 1) == [TFRECORD_HELLO]


# ------------------------------------------------------------------------------------------------ hostile lengths
def tfrecord_header(length: int) -> bytes:
    size = struct.pack("<Q", length)
    return size + struct.pack("<I", masked_crc32c(size))


def test_a_length_claiming_more_than_the_object_holds_costs_what_it_holds() -> None:
    # 2**60 bytes claimed with a valid CRC, 5 there: truncated (read a chunk at a time), never a MemoryError
    with pytest.raises(RecordError, match=r"in.tfr: record 1: truncated TFRecord data at byte 12 \(5 of "):
        read_all(tfrecord_header(2**60) + b"hello", "TFRecord", "in.tfr")
    with pytest.raises(RecordError, match="truncated RecordIO payload"):
        read_all(struct.pack("<II", MAGIC, (1 << 29) - 1) + b"abc", "RecordIO")


@pytest.mark.parametrize(("data", "split_type"), [
    (tfrecord_header(2**40) + b"x" * 100, "TFRecord"),
    (recordio_frame(b"x" * 64, 1) + recordio_frame(b"y" * 64, 3), "RecordIO"),  # 128 bytes over two frames
])
def test_a_record_over_the_limit_is_refused_from_its_header(data: bytes, split_type: str) -> None:
    with pytest.raises(RecordError, match=r"in.bin: record 1 is over MaxPayloadInMB \(100 bytes\)"):
        list(read_records(io.BytesIO(data), split_type, source="in.bin", limit=100))


def test_a_line_over_the_limit_is_refused_before_its_end_is_read(monkeypatch) -> None:
    monkeypatch.setattr(records_module, "_CHUNK", 16)

    class Endless(io.RawIOBase):  # one line that never ends: reading it whole would never return
        reads = 0

        def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
            Endless.reads += 1
            buffer[:len(buffer)] = b"x" * len(buffer)
            return len(buffer)

        def readable(self) -> bool:
            return True

    lines = read_records(io.BufferedReader(Endless(), 16), "Line", source="in.csv", limit=100)
    with pytest.raises(RecordError, match=r"in.csv: record 1 is over MaxPayloadInMB \(100 bytes\)"):
        list(lines)
    assert Endless.reads < 20
    got = list(read_records(io.BytesIO(b"ok\n" + b"y" * 50 + b"\nlast"), "Line", source="in.csv", limit=100))
    assert got == [b"ok\n", b"y" * 50 + b"\n", b"last"]
