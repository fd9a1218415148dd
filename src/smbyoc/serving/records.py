"""Batch records mode: a MultiRecord mini-batch split into its records, and one output record per input.

With ``SMBYOC_BATCH_RECORDS=true`` (or ``batch_records = True`` in the handler module) a request body of a
framed type is split into records by its Content-Type — ``text/csv`` and JSON Lines into lines, the
RecordIO types into MXNet RecordIO records (the framing of ``application/x-recordio-protobuf``) — the
handler gets the list of records, and its answer is checked to hold exactly one record per input record
and joined with the framing of the response type (lines for CSV / JSON Lines, RecordIO for the RecordIO
types, otherwise the framing of the request). A count that differs is the handler's bug: 500 naming both
counts. docs/serving.md has the whole contract.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from smbyoc.serving import codecs
from smbyoc.serving.errors import BadRequest, ModelError, UnsupportedMediaType, clip

LINES = "lines"
RECORDIO = "recordio"
RECORDIO_TYPES = frozenset({"application/x-recordio-protobuf", "application/x-recordio"})
LINE_TYPES = frozenset({codecs.CSV, codecs.JSONLINES})
#: MXNet/dmlc RecordIO: magic word, then a word holding a 3-bit continuation flag and a 29-bit length.
RECORDIO_MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", RECORDIO_MAGIC)
_LENGTH_MASK = (1 << 29) - 1


def framing(content_type: str) -> str | None:
    """How records of ``content_type`` (a media type without parameters) are framed; None: not framed."""
    kind = codecs.ALIASES.get(content_type, content_type)
    if kind in LINE_TYPES:
        return LINES
    if kind in RECORDIO_TYPES:
        return RECORDIO
    return None


# --------------------------------------------------------------------------------------------- framing


def split_lines(text: str) -> list[str]:
    """Lines without their ``\\n`` (or ``\\r\\n``); a final line break ends the last record, no more."""
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _split_line_bytes(data: bytes) -> list[bytes]:
    """:func:`split_lines` for a body already encoded."""
    if not data:
        return []
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def read_recordio(body: bytes) -> list[bytes]:
    """The payloads of the RecordIO records in ``body`` (padding removed, multi-part records joined as
    dmlc's reader does); 400 naming the record and offset for anything that is not RecordIO."""
    records: list[bytes] = []
    parts: list[bytes] | None = None
    offset = 0
    while offset < len(body):
        where = f"RecordIO record {len(records) + 1} at byte {offset}"
        if len(body) - offset < 8:
            raise BadRequest(f"{where}: {len(body) - offset} bytes left, shorter than a record header")
        magic, word = struct.unpack_from("<II", body, offset)
        if magic != RECORDIO_MAGIC:
            raise BadRequest(f"{where}: bad magic number 0x{magic:08X} (expected 0x{RECORDIO_MAGIC:08X})")
        flag, length = word >> 29, word & _LENGTH_MASK
        start = offset + 8
        if start + length > len(body):
            raise BadRequest(f"{where}: declares {length} bytes but {len(body) - start} are left")
        payload = body[start : start + length]
        offset = start + ((length + 3) & ~3)
        if flag == 0 and parts is None:
            records.append(payload)
        elif flag == 1 and parts is None:
            parts = [payload]
        elif flag in (2, 3) and parts is not None:
            parts.append(payload)
            if flag == 3:
                records.append(_MAGIC_BYTES.join(parts))
                parts = None
        else:
            raise BadRequest(f"{where}: continuation flag {flag} out of order")
    if parts is not None:
        raise BadRequest(f"RecordIO record {len(records) + 1}: multi-part record without its last part")
    return records


def write_recordio(payload: bytes) -> bytes:
    """One RecordIO record as dmlc's writer frames it: split where the magic word sits 4-aligned in the
    payload (the reader puts it back), each part padded to 4 bytes."""
    if len(payload) > _LENGTH_MASK:
        raise ModelError(f"an output record of {len(payload)} bytes is too long for RecordIO (at most {_LENGTH_MASK})")
    out = bytearray()
    start = 0
    cut = 0
    while (found := payload.find(_MAGIC_BYTES, cut)) != -1:
        if found % 4:
            cut = found + 1
            continue
        out += struct.pack("<II", RECORDIO_MAGIC, ((1 if start == 0 else 2) << 29) | (found - start))
        out += payload[start:found]
        start = cut = found + 4
    tail = payload[start:]
    out += struct.pack("<II", RECORDIO_MAGIC, ((3 if start else 0) << 29) | len(tail))
    out += tail + b"\0" * (-len(tail) % 4)
    return bytes(out)


def split_body(body: bytes, content_type: str, charset: str | None, kind: str) -> list[Any]:
    """The request's records: ``str`` lines for the line types (decoded with the charset), ``bytes``
    payloads for RecordIO."""
    if kind == RECORDIO:
        return list(read_recordio(body))
    return list(split_lines(codecs.decode_text(body, content_type, charset)))


def join(records: Sequence[bytes], kind: str) -> bytes:
    if kind == RECORDIO:
        return b"".join(write_recordio(record) for record in records)
    return b"".join(record + b"\n" for record in records)


# ------------------------------------------------------------------------------------ default handlers


def decode_default(records: list[Any], content_type: str) -> Any:
    """What the default ``input_fn`` makes of a mini-batch: a 2-D array with one row per record for CSV
    (a one-column or one-line batch stays 2-D), one item per line for JSON Lines."""
    kind = codecs.ALIASES.get(content_type, content_type)
    count = len(records)
    if kind == codecs.CSV:
        array = np.asarray(codecs.decode("\n".join(records), codecs.CSV))
        if array.ndim < 2:
            try:
                array = array.reshape(count, -1)
            except ValueError:
                raise BadRequest(f"{count} CSV records do not parse as {count} rows (a blank line?)") from None
        if array.shape[0] != count:
            raise BadRequest(f"{count} CSV records parse as {array.shape[0]} rows (a blank line?)")
        return array
    if kind == codecs.JSONLINES:
        rows = []
        for number, line in enumerate(records, 1):
            try:
                rows.append(json.loads(line))
            except ValueError as e:
                raise BadRequest(clip(f"JSON Lines record {number} is not JSON: {e}")) from e
        try:
            return np.array(rows)
        except ValueError:  # ragged
            return rows
    raise UnsupportedMediaType(
        f"there is no default decoder for {content_type} records; define input_fn or transform_fn "
        "(with batch records on they receive the list of record payloads)"
    )


def per_record(prediction: Any, count: int) -> list[Any]:
    """The prediction of each record: rows of an array or list, or one dict per record of a dict of outputs."""
    if isinstance(prediction, Mapping):
        columns = {key: list(value) for key, value in prediction.items()}
        lengths = {key: len(value) for key, value in columns.items()}
        if any(length != count for length in lengths.values()):
            raise ModelError(f"the model's outputs have {lengths} rows for {count} input records")
        return [{key: value[i] for key, value in columns.items()} for i in range(count)]
    if isinstance(prediction, np.ndarray) and prediction.ndim == 0:
        rows: list[Any] = [prediction.item()]
    else:
        rows = list(prediction)
    if len(rows) != count:
        raise ModelError(f"the model returned {len(rows)} predictions for {count} input records")
    return rows


def encode_default(prediction: Any, accept: str, count: int) -> list[bytes]:
    """The default ``output_fn`` in records mode: one encoded record per input record."""
    if accept == codecs.CSV and isinstance(prediction, np.ndarray) and prediction.ndim and len(prediction) == count:
        array = prediction.reshape(count, -1)  # one CSV line per row, also for a 1-D prediction
        return _split_line_bytes(codecs.encode(array, codecs.CSV))
    rows = per_record(prediction, count)
    if accept == codecs.CSV:
        return _split_line_bytes(codecs.encode(rows, codecs.CSV))
    kind = codecs.JSON if accept == codecs.JSONLINES else accept
    return [codecs.encode(row, kind) for row in rows]


# --------------------------------------------------------------------------------------------- answers


def _record_bytes(item: Any, number: int, kind: str) -> bytes:
    if isinstance(item, (bytes, bytearray, memoryview)):
        data = bytes(item)
    elif isinstance(item, str):
        data = item.encode("utf-8")
    else:
        data = codecs.encode_json(item)
    if kind == LINES:
        data = data[:-1] if data.endswith(b"\n") else data
        data = data[:-1] if data.endswith(b"\r") else data
        if b"\n" in data:
            raise ModelError(f"output record {number} holds a line break, so it cannot be sent as one line")
    return data


def output_records(payload: Any, count: int, response_type: str, request_kind: str) -> bytes:
    """The response body: the handler's answer as records (a list, or a body in the response type's
    framing), checked to be one per input record and joined in that framing."""
    kind = framing(codecs.media_type(response_type)[0]) or request_kind
    if isinstance(payload, (bytes, bytearray, memoryview, str)):
        data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        items = read_recordio(data) if kind == RECORDIO else _split_line_bytes(data)
    elif isinstance(payload, (list, tuple, np.ndarray)):
        items = [_record_bytes(item, number, kind) for number, item in enumerate(payload, 1)]
    else:
        raise ModelError(
            f"with batch records on the handler must answer a list of records (or a {kind}-framed body), "
            f"not {type(payload).__name__}"
        )
    if len(items) != count:
        raise ModelError(
            f"the handler returned {len(items)} output records for {count} input records; with batch records "
            "on it must answer exactly one record per input record"
        )
    return join(items, kind)
