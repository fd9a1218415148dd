"""Request decoders, response encoders and Accept negotiation.

JSON, CSV and NPY decode exactly as sagemaker-inference's ``decoder.decode`` (the unit tests use it as
an oracle): ``np.array(json.loads(s))``, ``np.genfromtxt(StringIO(s), delimiter=",")`` and
``np.load(BytesIO(b))``. One deliberate difference: NPY object arrays are unpickled only when
``SMBYOC_NPY_ALLOW_PICKLE`` is true (sagemaker-inference always unpickles, which lets any caller run
code in the server). ``application/x-npz`` decodes to a ``scipy.sparse`` matrix when the archive was
written by ``scipy.sparse.save_npz`` and scipy is importable (as sagemaker-inference does), otherwise
to a ``dict`` of arrays (``numpy.load``). ``application/jsonlines`` decodes to an array of the lines'
values (a list when they are ragged); ``application/octet-stream`` passes the bytes through.

Hostile bodies (:mod:`smbyoc.serving.arrays`): NPY headers and zip member sizes are read before anything
is allocated or decompressed and checked against a decoded-size limit (``SMBYOC_MAX_DECODED_PAYLOAD_IN_MB``,
413 above it), zip members are read through a stream bounded by their declared size, and every failure of
a decoder on a body is a 400 naming the type and the problem. The default encoders write non-finite
floats as JSON ``null`` and answer 406 naming the value for predictions the requested type cannot hold
(docs/serving.md).
"""

from __future__ import annotations

import codecs as _codecs
import functools
import io
import json
import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from smbyoc.serving import arrays
from smbyoc.serving.errors import (
    BadRequest,
    NotAcceptable,
    ServingHTTPError,
    UnsupportedMediaType,
    clip,
)

JSON = "application/json"
CSV = "text/csv"
NPY = "application/x-npy"
NPZ = "application/x-npz"
JSONLINES = "application/jsonlines"
OCTET_STREAM = "application/octet-stream"
ANY = "*/*"

#: Types whose body reaches ``input_fn`` as ``str`` (sagemaker-inference ``UTF8_TYPES`` plus JSON Lines).
TEXT_TYPES = frozenset({JSON, CSV, JSONLINES})
#: Aliases accepted on requests (the SageMaker SDK's JSON Lines serializer uses the first).
ALIASES = {"application/x-jsonlines": JSONLINES, "application/jsonl": JSONLINES, "application/x-json": JSON}


@functools.lru_cache(maxsize=256)
def media_type(header: str | None) -> tuple[str, Mapping[str, str]]:
    """Split a Content-Type header into the lower-cased media type and its (read-only) parameters.

    Cached: clients send the same few headers over and over."""
    if not header:
        return OCTET_STREAM, _NO_PARAMS
    kind, _, rest = header.partition(";")
    params: dict[str, str] = {}
    for part in rest.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            params[key.strip().lower()] = value.strip().strip('"')
    kind = kind.strip().lower()
    return ALIASES.get(kind, kind), MappingProxyType(params)


_NO_PARAMS: Mapping[str, str] = MappingProxyType({})

#: Python codecs that are not character sets a client can mean (``b"".decode`` accepts them all).
_NOT_CHARSETS = frozenset({"undefined", "punycode", "idna", "unicode-escape", "raw-unicode-escape", "palmos"})


@functools.lru_cache(maxsize=64)
def text_encoding(charset: str) -> str:
    """The Python codec for a Content-Type ``charset``; 415 for one that is unknown or not a text encoding
    (``rot13``, ``base64``) or a Python-only pseudo-charset (``undefined``, ``punycode``, ``idna``...)."""
    try:
        info = _codecs.lookup(charset)
    except (LookupError, ValueError):
        info = None
    if info is None or not getattr(info, "_is_text_encoding", True) or info.name in _NOT_CHARSETS:
        raise UnsupportedMediaType(clip(f"charset {charset!r} is not a supported text encoding; use utf-8"))
    return info.name


def decode_text(body: bytes, content_type: str, charset: str | None) -> str:
    """A text body (JSON, CSV, JSON Lines) as ``str``: 415 for an unknown charset, 400 if it does not decode."""
    encoding = "utf-8" if not charset else text_encoding(charset)
    try:
        return body.decode(encoding)
    except ValueError as e:  # UnicodeError and friends
        raise BadRequest(clip(f"request body is not valid {content_type} text in {encoding}: {e}")) from e


# ------------------------------------------------------------------------------------------ decoding


def _json(data: str | bytes) -> Any:
    return np.array(json.loads(data))


def _csv(data: str | bytes) -> Any:
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    fast = _simple_csv(text)
    return fast if fast is not None else np.genfromtxt(io.StringIO(text), delimiter=",")


def _simple_csv(text: str) -> Any:
    """Plain numeric CSV (no comments, quotes or missing values, the same number of fields on every
    row) parsed directly: the same array ``np.genfromtxt(..., delimiter=",")`` gives, several times
    faster. None for anything else, which then goes through genfromtxt itself."""
    if "#" in text or '"' in text:
        return None
    try:
        rows = [[float(field) for field in line.split(",")] for line in text.splitlines() if line.strip()]
    except ValueError:
        return None
    if not rows or any(len(row) != len(rows[0]) for row in rows):
        return None
    return np.array(rows, dtype=float).squeeze()


def _raw(data: str | bytes) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else data


def _npy(data: str | bytes) -> Any:
    return arrays.read_npy(_raw(data), "the NPY body")


def _npz(data: str | bytes) -> Any:
    return arrays.read_npz(_raw(data))


#: Set once per process from the serving environment (see :mod:`smbyoc.serving.arrays`).
configure = arrays.configure
allow_pickle = arrays.allow_pickle


def _jsonlines(data: str | bytes) -> Any:
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    try:
        return np.array(rows)
    except ValueError:  # ragged
        return rows


def _octet(data: str | bytes) -> Any:
    return data.encode("utf-8") if isinstance(data, str) else data


DECODERS: dict[str, Callable[[str | bytes], Any]] = {
    JSON: _json, CSV: _csv, NPY: _npy, NPZ: _npz, JSONLINES: _jsonlines, OCTET_STREAM: _octet,
}


def decode(data: str | bytes, content_type: str) -> Any:
    """Decode a request body; 415 for an unknown type, 413 for one that would decode to more than
    ``SMBYOC_MAX_DECODED_PAYLOAD_IN_MB``, 400 for a body that does not parse.

    Every exception a decoder raises on a body is the body's fault (a broken zip, a zlib error, an
    encrypted member, a bad NPY header, JSON nested too deeply...), so all of them are 400 here."""
    kind = ALIASES.get(content_type, content_type)
    decoder = DECODERS.get(kind)
    if decoder is None:
        raise UnsupportedMediaType(
            clip(f"Content-Type {content_type!r} is not supported; supported: {', '.join(sorted(DECODERS))}")
        )
    try:
        return decoder(data)
    except (ServingHTTPError, MemoryError):
        raise
    except RecursionError as e:
        raise BadRequest(f"request body is not valid {kind}: it is nested too deeply") from e
    except Exception as e:
        raise BadRequest(clip(f"request body is not valid {kind}: {describe(e)}")) from e


def describe(error: BaseException) -> str:
    """``message`` of an exception, or its type name when the message is empty (``zlib.error()``...)."""
    text = str(error)
    name = type(error).__name__
    return f"{name}: {text}" if text and name not in ("ValueError", "JSONDecodeError") else (text or name)


# ------------------------------------------------------------------------------------------ encoding


def _finite(obj: Any) -> Any:
    """``obj`` with every NaN and infinity replaced by None (JSON has no literal for them)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (list, tuple)):
        return [_finite(item) for item in obj]
    if isinstance(obj, dict):
        return {key: _finite(value) for key, value in obj.items()}
    return obj


def _default(obj: Any) -> Any:
    if isinstance(obj, (complex, np.complexfloating)):
        raise TypeError(f"complex value {obj!r} has no JSON form; ask for {NPY}, {NPZ} or {CSV}")
    if hasattr(obj, "tolist"):
        return _finite(obj.tolist())
    if isinstance(obj, (bytes, bytearray, memoryview)):
        try:
            return bytes(obj).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(
                f"bytes value {bytes(obj)[:24]!r} is not UTF-8 text; ask for {OCTET_STREAM} or {NPY}"
            ) from None
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _to_plain(obj: Any) -> Any:
    return obj.tolist() if isinstance(obj, np.ndarray) else obj


def _dumps(obj: Any) -> bytes:
    """Strict JSON: non-finite floats become ``null`` (the first attempt is the fast, common case)."""
    try:
        return json.dumps(obj, default=_default, allow_nan=False).encode("utf-8")
    except ValueError as e:
        if "Out of range float" not in str(e):
            raise
    return json.dumps(_finite(obj), default=_default, allow_nan=False).encode("utf-8")


def encode_json(obj: Any) -> bytes:
    """JSON as sagemaker-inference writes it, except that NaN and infinities are written as ``null``
    (bare ``NaN`` is not JSON); complex numbers and non-UTF-8 bytes raise, naming the value."""
    return _dumps(_to_plain(obj))


def encode_csv(obj: Any) -> bytes:
    """What ``np.savetxt(..., delimiter=",", fmt="%s")`` writes (sagemaker-inference's CSV encoder): a 2-D
    array row by row, a 1-D array as one column. Non-empty 1-D/2-D arrays of numbers or booleans are
    formatted here directly (the same ``str`` of each numpy scalar, about 7x faster for one row);
    anything else goes through ``np.savetxt`` itself. A dict (several named outputs) has no CSV form."""
    if isinstance(obj, Mapping):
        keys = ", ".join(repr(k) for k in list(obj)[:5])
        raise ValueError(f"a dict of outputs (keys {keys}) has no CSV form; ask for {JSON}, {JSONLINES} or {NPZ}")
    array = np.asarray(obj)
    if array.ndim in (1, 2) and array.size and array.dtype.kind in "biuf":
        rows = array.reshape(-1, 1) if array.ndim == 1 else array
        return "".join([",".join(map(str, row)) + "\n" for row in rows]).encode("utf-8")
    stream = io.StringIO()
    np.savetxt(stream, array, delimiter=",", fmt="%s")
    return stream.getvalue().encode("utf-8")


def encode_npy(obj: Any) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(obj))
    return buffer.getvalue()


def encode_npz(obj: Any) -> bytes:
    buffer = io.BytesIO()
    if isinstance(obj, dict):
        arrays: dict[str, Any] = {str(k): np.asarray(v) for k, v in obj.items()}
        np.savez(buffer, **arrays)
    elif hasattr(obj, "tocsr") and hasattr(obj, "nnz"):  # scipy sparse
        import scipy.sparse

        scipy.sparse.save_npz(buffer, obj)
    else:
        np.savez(buffer, np.asarray(obj))
    return buffer.getvalue()


def encode_jsonlines(obj: Any) -> bytes:
    rows = _to_plain(obj)
    if not isinstance(rows, list):
        rows = [rows]
    return b"".join(_dumps(row) + b"\n" for row in rows)


def encode_octet(obj: Any) -> bytes:
    """Bytes and text as they are, arrays as their raw buffer; object values have none (their buffer
    would be the server's memory addresses)."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj)
    if isinstance(obj, str):
        return obj.encode("utf-8")
    array = np.ascontiguousarray(obj)
    if array.dtype.hasobject:
        raise ValueError(f"a {type(obj).__name__} of Python objects has no raw-bytes form; ask for {JSON}")
    return array.tobytes()


ENCODERS: dict[str, Callable[[Any], bytes]] = {
    JSON: encode_json, CSV: encode_csv, NPY: encode_npy, NPZ: encode_npz,
    JSONLINES: encode_jsonlines, OCTET_STREAM: encode_octet,
}


def encode(obj: Any, content_type: str) -> bytes:
    """Encode a prediction as ``content_type`` (one of :data:`ENCODERS`); 406 otherwise, and 406 naming
    the value for a prediction that type cannot hold (a dict as CSV, complex numbers as JSON...)."""
    encoder = ENCODERS.get(content_type)
    if encoder is None:
        raise NotAcceptable(clip(f"cannot encode a response as {content_type!r}"))
    try:
        return encoder(obj)
    except (TypeError, ValueError, OverflowError) as e:
        raise NotAcceptable(clip(f"cannot encode the prediction as {content_type}: {e}")) from e


# --------------------------------------------------------------------------------------- negotiation


@functools.lru_cache(maxsize=256)
def parse_accept(accept: str) -> tuple[tuple[str, float], ...]:
    """Media ranges of an Accept header with their q-values, best first (stable for equal q); cached."""
    ranges: list[tuple[str, float, int]] = []
    for index, part in enumerate(accept.split(",")):
        kind, params = media_type(part) if part.strip() else ("", _NO_PARAMS)
        if not kind:
            continue
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 1.0
        if q > 0:
            ranges.append((kind, q, index))
    ranges.sort(key=lambda r: (-r[1], r[2]))
    return tuple((kind, q) for kind, q, _ in ranges)


@functools.lru_cache(maxsize=256)
def negotiate(accept: str | None, default_accept: str, supported: tuple[str, ...] | None = None) -> str:
    """The response type for an Accept header: the best supported match, 406 when there is none.

    A missing Accept or ``*/*`` means ``default_accept`` (``SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT``),
    as in sagemaker-inference; ``type/*`` matches supported types in the order of ``supported``.
    """
    offered = supported if supported is not None else tuple(ENCODERS)
    if not accept or accept.strip() in ("", ANY):
        return default_accept
    for kind, _ in parse_accept(accept):
        if kind == ANY:
            return default_accept if default_accept in offered else offered[0]
        if kind.endswith("/*"):
            prefix = kind[:-1]
            if default_accept.startswith(prefix) and default_accept in offered:
                return default_accept
            for candidate in offered:
                if candidate.startswith(prefix):
                    return candidate
        elif kind in offered:
            return kind
    raise NotAcceptable(f"Accept {accept!r} cannot be satisfied; supported: {', '.join(offered)}")
