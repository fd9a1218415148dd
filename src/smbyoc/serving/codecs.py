"""Request decoders, response encoders and Accept negotiation.

JSON, CSV and NPY decode exactly as sagemaker-inference's ``decoder.decode`` (the unit tests use it as
an oracle): ``np.array(json.loads(s))``, ``np.genfromtxt(StringIO(s), delimiter=",")`` and
``np.load(BytesIO(b))``. One deliberate difference: NPY object arrays are unpickled only when
``SMBYOC_NPY_ALLOW_PICKLE`` is true (sagemaker-inference always unpickles, which lets any caller run
code in the server). ``application/x-npz`` decodes to a ``scipy.sparse`` matrix when the archive was
written by ``scipy.sparse.save_npz`` and scipy is importable (as sagemaker-inference does), otherwise
to a ``dict`` of arrays (``numpy.load``). ``application/jsonlines`` decodes to an array of the lines'
values (a list when they are ragged); ``application/octet-stream`` passes the bytes through.
"""

from __future__ import annotations

import functools
import io
import json
import pickle
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from smbyoc.serving.errors import BadRequest, NotAcceptable, UnsupportedMediaType

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


def _npy(data: str | bytes) -> Any:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return np.load(io.BytesIO(raw), allow_pickle=_ALLOW_PICKLE[0])


#: Whether NPY object arrays may be unpickled (set once from SMBYOC_NPY_ALLOW_PICKLE by the app).
_ALLOW_PICKLE = [False]


def allow_pickle(enabled: bool) -> None:
    """sagemaker-inference loads NPY with ``allow_pickle=True``; smbyoc only when this is enabled."""
    _ALLOW_PICKLE[0] = enabled


def _npz(data: str | bytes) -> Any:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
        names = set(archive.files)
        if {"format", "shape"} <= names:
            try:
                import scipy.sparse
            except ImportError:
                pass
            else:
                return scipy.sparse.load_npz(io.BytesIO(raw))
        return {name: archive[name] for name in archive.files}


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
    """Decode a request body; 415 for an unknown type, 400 for a body that does not parse."""
    kind = ALIASES.get(content_type, content_type)
    decoder = DECODERS.get(kind)
    if decoder is None:
        raise UnsupportedMediaType(
            f"Content-Type {content_type!r} is not supported; supported: {', '.join(sorted(DECODERS))}"
        )
    try:
        return decoder(data)
    except (ValueError, TypeError, OSError, EOFError, UnicodeDecodeError, pickle.UnpicklingError) as e:
        raise BadRequest(f"request body is not valid {kind}: {e}") from e


# ------------------------------------------------------------------------------------------ encoding


def _default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, bytes):
        return obj.decode("utf-8")
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _to_plain(obj: Any) -> Any:
    return obj.tolist() if isinstance(obj, np.ndarray) else obj


def encode_json(obj: Any) -> bytes:
    return json.dumps(_to_plain(obj), default=_default).encode("utf-8")


def encode_csv(obj: Any) -> bytes:
    """What ``np.savetxt(..., delimiter=",", fmt="%s")`` writes (sagemaker-inference's CSV encoder): a 2-D
    array row by row, a 1-D array as one column. Non-empty 1-D/2-D arrays of numbers or booleans are
    formatted here directly (the same ``str`` of each numpy scalar, about 7x faster for one row);
    anything else goes through ``np.savetxt`` itself."""
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
    return b"".join(json.dumps(row, default=_default).encode("utf-8") + b"\n" for row in rows)


def encode_octet(obj: Any) -> bytes:
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj)
    if isinstance(obj, str):
        return obj.encode("utf-8")
    return np.ascontiguousarray(obj).tobytes()


ENCODERS: dict[str, Callable[[Any], bytes]] = {
    JSON: encode_json, CSV: encode_csv, NPY: encode_npy, NPZ: encode_npz,
    JSONLINES: encode_jsonlines, OCTET_STREAM: encode_octet,
}


def encode(obj: Any, content_type: str) -> bytes:
    """Encode a prediction as ``content_type`` (one of :data:`ENCODERS`); 406 otherwise."""
    encoder = ENCODERS.get(content_type)
    if encoder is None:
        raise NotAcceptable(f"cannot encode a response as {content_type!r}")
    return encoder(obj)


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
