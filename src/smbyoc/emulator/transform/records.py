"""Splitting transform input objects into records, decompressing them, and packing mini-batches.

SageMaker batch transform reads each input object, gunzips it when ``CompressionType`` is ``Gzip``, splits
it by ``SplitType`` and POSTs the records one by one (``BatchStrategy`` ``SingleRecord``) or packed into
mini-batches up to ``MaxPayloadInMB`` (``MultiRecord``) (contract.md §4, BOTO ``TransformInput``)::

    with open_object(path, "Gzip") as stream:
        records = read_records(stream, "Line", source=str(path))
        for batch in mini_batches(records, split_type="Line", strategy="MultiRecord",
                                  max_payload_bytes=6 * 1024 * 1024, source=str(path)):
            post(batch.payload)

Framings (standard library only, streamed: an object is never read whole except for ``SplitType`` None):

* ``Line``: records end at ``b"\\n"``, which stays part of the record; the last one may lack it. Empty lines are
  records too (SageMaker splits "on a newline character boundary").
* ``RecordIO``: MXNet's (dmlc-core ``recordio``): a little-endian ``uint32`` magic ``0xCED7230A``, a ``uint32``
  whose upper 3 bits are a continuation flag and lower 29 bits the length, the payload zero-padded to 4 bytes.
  A payload holding the magic at an aligned offset is written as parts (flags 1, 2..., 3); the reader puts
  the magic back between them.
* ``TFRecord``: ``uint64`` length (LE), masked CRC32C of those 8 bytes (``uint32`` LE), the data, the masked
  CRC32C of the data. Mask: ``((crc >> 15) | (crc << 17)) + 0xA282EAD8`` modulo 2**32.

``read_records`` yields binary records with their framing (and padding) as they stand in the file, so that a
``MultiRecord`` mini-batch is a valid RecordIO/TFRecord stream; a ``SingleRecord`` request carries the bare
payload, padding removed (BOTO ``SplitType``: "padding is removed if ... SingleRecord ... not removed if ...
MultiRecord"). Record numbers in messages count from 1 (record 1 is the first record, like line 1).
"""

from __future__ import annotations

import functools
import gzip
import io
import logging
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from smbyoc.errors import ConfigError, TransformError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

log = logging.getLogger(__name__)

SPLIT_TYPES = ("None", "Line", "RecordIO", "TFRecord")
BATCH_STRATEGIES = ("SingleRecord", "MultiRecord")
COMPRESSION_TYPES = ("None", "Gzip")

RECORDIO_MAGIC = 0xCED7230A
_RECORDIO_MAGIC_BYTES = struct.pack("<I", RECORDIO_MAGIC)
_RECORDIO_HEADER = struct.Struct("<II")
_RECORDIO_MAX_LENGTH = (1 << 29) - 1
_TFRECORD_HEADER = struct.Struct("<QI")
_CRC = struct.Struct("<I")
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20


class RecordError(TransformError):
    """A corrupt record/header or a record over the payload limit; the message names file and record number."""


# --------------------------------------------------------------------------------------------- objects


class _CheckedGzip(io.RawIOBase):
    """A gzip stream whose decompression errors become :class:`RecordError` naming the object."""

    def __init__(self, raw: BinaryIO, source: str) -> None:
        self._raw = raw
        self._gzip = gzip.GzipFile(fileobj=raw, mode="rb")
        self._source = source

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        try:
            return self._gzip.readinto(buffer)
        except (OSError, EOFError, zlib.error) as e:
            raise RecordError(f"{self._source}: not a valid gzip stream (CompressionType Gzip): {e}") from e

    def close(self) -> None:
        if not self.closed:
            try:
                self._gzip.close()
            finally:
                self._raw.close()
        super().close()


def open_object(path: Path, compression: str, *, source: str | None = None) -> BinaryIO:
    """Open the object at ``path`` for reading its (gunzipped when ``compression == "Gzip"``) bytes.

    A ``Gzip`` object that does not start with the gzip magic fails here; one that is corrupt further on
    fails on the read that reaches the damage. Both raise :class:`RecordError` naming ``source`` (default:
    the path).
    """
    name = source or str(path)
    if compression not in COMPRESSION_TYPES:
        raise ConfigError(f"{compression!r} is not one of {', '.join(COMPRESSION_TYPES)}", key="CompressionType")
    raw = path.open("rb")
    if compression == "None":
        return raw
    head = raw.read(2)
    if head != _GZIP_MAGIC:
        raw.close()
        raise RecordError(f"{name}: CompressionType is Gzip but the object is not gzip (starts with {head!r})")
    raw.seek(0)
    return io.BufferedReader(_CheckedGzip(raw, name), buffer_size=_CHUNK)


# -------------------------------------------------------------------------------------------- crc32c


@functools.lru_cache(maxsize=1)
def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) of ``data``; ``crc32c(b"123456789") == 0xE3069283``."""
    table = _crc32c_table()
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The masked CRC32C TFRecord stores (TensorFlow ``crc32c::Mask``)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ------------------------------------------------------------------------------------------- encoders


def encode_recordio(payload: bytes) -> bytes:
    """``payload`` as MXNet RecordIO frames (split at aligned magics, zero-padded to 4 bytes)."""
    if len(payload) > _RECORDIO_MAX_LENGTH:
        raise ValueError(f"RecordIO records are under 2**29 bytes, this one is {len(payload)}")
    out = bytearray()
    start = 0
    for i in range(0, len(payload) - len(payload) % 4, 4):
        if payload[i:i + 4] == _RECORDIO_MAGIC_BYTES:
            out += _RECORDIO_HEADER.pack(RECORDIO_MAGIC, ((1 if start == 0 else 2) << 29) | (i - start))
            out += payload[start:i]
            start = i + 4
    out += _RECORDIO_HEADER.pack(RECORDIO_MAGIC, ((3 if start else 0) << 29) | (len(payload) - start))
    out += payload[start:]
    out += b"\0" * (-len(payload) % 4)
    return bytes(out)


def encode_tfrecord(data: bytes) -> bytes:
    """``data`` framed as one TFRecord."""
    length = struct.pack("<Q", len(data))
    return length + _CRC.pack(masked_crc32c(length)) + data + _CRC.pack(masked_crc32c(data))


# -------------------------------------------------------------------------------------------- readers


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    """``n`` bytes, or fewer only at the end of the stream; read :data:`_CHUNK` at a time, so that a corrupt
    length claiming more than the object holds costs what the object holds, not what it claims."""
    data = stream.read(min(n, _CHUNK))
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = stream.read(min(n - got, _CHUNK))
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _over(source: str, number: int, limit: int) -> RecordError:
    return RecordError(f"{source}: record {number} is over MaxPayloadInMB ({limit} bytes); raise MaxPayloadInMB or "
                       "split the object into smaller records")


def _lines(stream: BinaryIO, source: str = "", limit: int = 0) -> Iterator[bytes]:
    """The lines of ``stream`` (each with its ``\\n``; the last one as it ends); a line growing past ``limit``
    bytes (0: none) is refused as soon as it does, without reading the rest of it."""
    rest = bytearray()
    number = 0
    while chunk := stream.read(_CHUNK):
        lines = chunk.split(b"\n")
        if len(lines) == 1:  # no line ends here: the current line goes on
            rest += chunk
            if limit and len(rest) > limit:
                raise _over(source, number + 1, limit)
            continue
        number += len(lines) - 1
        first = lines[0] + b"\n"
        yield bytes(rest) + first if rest else first
        for line in lines[1:-1]:
            yield line + b"\n"
        rest = bytearray(lines[-1])
    if rest:
        yield bytes(rest)


def _recordio(stream: BinaryIO, source: str, limit: int = 0) -> Iterator[bytes]:
    number = 0
    offset = 0
    while True:
        number += 1
        frames: list[bytes] = []
        while True:
            header = _read_exact(stream, 8)
            if not header and not frames:
                return
            if len(header) < 8:
                raise RecordError(f"{source}: record {number}: truncated RecordIO header at byte {offset}")
            magic, lrecord = _RECORDIO_HEADER.unpack(header)
            if magic != RECORDIO_MAGIC:
                raise RecordError(
                    f"{source}: record {number}: bad RecordIO magic 0x{magic:08X} at byte {offset} "
                    f"(expected 0x{RECORDIO_MAGIC:08X})"
                )
            flag, length = lrecord >> 29, lrecord & _RECORDIO_MAX_LENGTH
            expected = (2, 3) if frames else (0, 1)
            if flag not in expected:
                raise RecordError(
                    f"{source}: record {number}: RecordIO continuation flag {flag} at byte {offset} "
                    f"(expected {' or '.join(map(str, expected))})"
                )
            if limit and sum(len(f) - 8 for f in frames) + length > limit:
                raise _over(source, number, limit)
            padded = length + (-length % 4)
            body = _read_exact(stream, padded)
            if len(body) < padded:
                raise RecordError(
                    f"{source}: record {number}: truncated RecordIO payload at byte {offset + 8} "
                    f"({len(body)} of {padded} bytes)"
                )
            frames.append(header + body)
            offset += 8 + padded
            if flag in (0, 3):
                break
        yield frames[0] if len(frames) == 1 else b"".join(frames)


def _tfrecord(stream: BinaryIO, source: str, limit: int = 0) -> Iterator[bytes]:
    number = 0
    offset = 0
    while True:
        number += 1
        header = _read_exact(stream, 12)
        if not header:
            return
        if len(header) < 12:
            raise RecordError(f"{source}: record {number}: truncated TFRecord header at byte {offset}")
        length, length_crc = _TFRECORD_HEADER.unpack(header)
        if masked_crc32c(header[:8]) != length_crc:
            raise RecordError(f"{source}: record {number}: corrupt TFRecord length (CRC mismatch) at byte {offset}")
        if limit and length > limit:
            raise _over(source, number, limit)
        body = _read_exact(stream, length + 4)
        if len(body) < length + 4:
            raise RecordError(
                f"{source}: record {number}: truncated TFRecord data at byte {offset + 12} "
                f"({len(body)} of {length + 4} bytes)"
            )
        (data_crc,) = _CRC.unpack_from(body, length)
        if masked_crc32c(body[:length]) != data_crc:
            raise RecordError(f"{source}: record {number}: corrupt TFRecord data (CRC mismatch) at byte {offset + 12}")
        offset += 12 + length + 4
        yield header + body


def read_records(stream: BinaryIO, split_type: str, *, source: str, limit: int = 0) -> Iterator[bytes]:
    """The records of ``stream`` split by ``split_type``; binary records keep their framing (module docstring).

    ``None`` yields the whole object as one record (nothing for an empty object). Corrupt or truncated
    framing raises :class:`RecordError` ``"<source>: record <n>: ..."``, and so does a record (line, RecordIO or
    TFRecord payload) over ``limit`` bytes (0: no limit), as soon as it is known to be, before it is read whole.
    """
    if split_type == "None":
        data = stream.read()
        return iter([data] if data else [])
    if split_type == "Line":
        return _lines(stream, source, limit)
    if split_type == "RecordIO":
        return _recordio(stream, source, limit)
    if split_type == "TFRecord":
        return _tfrecord(stream, source, limit)
    raise ConfigError(f"{split_type!r} is not one of {', '.join(SPLIT_TYPES)}", key="SplitType")


def recordio_payload(framed: bytes) -> bytes:
    """The payload of one framed RecordIO record (``read_records`` output): headers and padding removed."""
    parts = []
    pos = 0
    while pos < len(framed):
        _, lrecord = _RECORDIO_HEADER.unpack_from(framed, pos)
        length = lrecord & _RECORDIO_MAX_LENGTH
        parts.append(framed[pos + 8:pos + 8 + length])
        pos += 8 + length + (-length % 4)
    return _RECORDIO_MAGIC_BYTES.join(parts)


def tfrecord_payload(framed: bytes) -> bytes:
    """The data of one framed TFRecord record (``read_records`` output)."""
    return framed[12:-4]


def _payload(record: bytes, split_type: str) -> bytes:
    if split_type == "RecordIO":
        return recordio_payload(record)
    if split_type == "TFRecord":
        return tfrecord_payload(record)
    return record


# ------------------------------------------------------------------------------------------ batching


@dataclass(frozen=True)
class MiniBatch:
    """One request body of a transform job and where its records sit in the object."""

    payload: bytes  #: what is POSTed
    first_record: int  #: 0-based index of its first record in the object
    count: int  #: records in it


def _too_big(source: str, index: int, size: int, limit: int) -> RecordError:
    return RecordError(
        f"{source}: record {index + 1} is {size} bytes, over MaxPayloadInMB ({limit} bytes); "
        "raise MaxPayloadInMB or split the object into smaller records"
    )


def mini_batches(
    records: Iterable[bytes], *, split_type: str, strategy: str, max_payload_bytes: int, source: str
) -> Iterator[MiniBatch]:
    """Pack ``records`` into request bodies.

    ``SingleRecord``: one record per batch (RecordIO/TFRecord: the bare payload). ``MultiRecord``: consecutive
    records concatenated as they are while the body stays ``<= max_payload_bytes`` (``0``: no limit, the whole
    object in one batch). A single record over the limit raises :class:`RecordError` naming it.
    ``MultiRecord`` with ``split_type`` ``None`` raises ``ValueError`` (job validation refuses it first).
    """
    if split_type not in SPLIT_TYPES:
        raise ValueError(f"SplitType {split_type!r} is not one of {SPLIT_TYPES}")
    if strategy not in BATCH_STRATEGIES:
        raise ValueError(f"BatchStrategy {strategy!r} is not one of {BATCH_STRATEGIES}")
    if max_payload_bytes < 0:
        raise ValueError(f"max_payload_bytes must be >= 0, not {max_payload_bytes}")
    limit = max_payload_bytes
    if strategy == "SingleRecord":
        for index, record in enumerate(records):
            payload = _payload(record, split_type)
            if limit and len(payload) > limit:
                raise _too_big(source, index, len(payload), limit)
            yield MiniBatch(payload, index, 1)
        return
    if split_type == "None":
        raise ValueError("BatchStrategy MultiRecord needs SplitType Line, RecordIO or TFRecord, not None")
    pending: list[bytes] = []
    size = 0
    first = 0
    index = -1
    for index, record in enumerate(records):
        if limit:
            if len(record) > limit:
                raise _too_big(source, index, len(record), limit)
            if pending and size + len(record) > limit:
                yield MiniBatch(b"".join(pending), first, len(pending))
                pending, size, first = [], 0, index
        pending.append(record)
        size += len(record)
    if pending:
        yield MiniBatch(b"".join(pending), first, len(pending))
    log.debug("%s: %d records batched", source, index + 1)


def split_output(body: bytes, split_type: str, count: int) -> list[bytes] | None:
    """Split the response to a ``count``-record mini-batch into per-record outputs, or ``None`` if it cannot.

    ``Line``: the response's lines, without their ``b"\\n"`` (one trailing newline of the body is not an extra
    record); ``count == 1`` always gives ``[body]`` minus one trailing newline. RecordIO/TFRecord: the framed
    records of the body. ``None`` split: ``[body]`` when ``count == 1``.
    """
    if count < 1:
        return [] if not body else None
    if split_type == "Line":
        text = body[:-1] if body.endswith(b"\n") else body
        if count == 1:
            return [text]
        lines = text.split(b"\n")
        return lines if len(lines) == count else None
    if split_type in ("RecordIO", "TFRecord"):
        try:
            records = list(read_records(io.BytesIO(body), split_type, source="response"))
        except RecordError:
            return None
        return records if len(records) == count else None
    if split_type == "None":
        return [body] if count == 1 else None
    raise ValueError(f"SplitType {split_type!r} is not one of {SPLIT_TYPES}")
