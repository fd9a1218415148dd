"""NPY and NPZ request bodies, read with their declared sizes checked first.

An NPY header declares shape and dtype, a zip member its uncompressed size: both are read before anything
is allocated or decompressed and checked against the decoded-size limit (``SMBYOC_MAX_DECODED_PAYLOAD_IN_MB``,
:class:`~smbyoc.serving.errors.PayloadTooLarge` above it); zip members are read through a stream bounded by
their declared size. Object arrays are unpickled only when ``SMBYOC_NPY_ALLOW_PICKLE`` is true. The limits
are set once per process by :func:`configure` (the app and the fast path call it at start).
"""

from __future__ import annotations

import io
import math
import sys
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from smbyoc.serving.errors import PayloadTooLarge

NPZ = "application/x-npz"

MIB = 1024 * 1024


@dataclass
class DecodeLimits:
    """Set once per process from the serving environment (:func:`configure`)."""

    allow_pickle: bool = False
    max_decoded_mb: int = 24  # 4 x the default SAGEMAKER_MAX_PAYLOAD_IN_MB

    @property
    def max_decoded_bytes(self) -> int:
        """The limit in bytes; 0 MiB means none (a body without a size limit, docs/serving.md)."""
        return self.max_decoded_mb * MIB if self.max_decoded_mb else sys.maxsize


LIMITS = DecodeLimits()


def configure(*, allow_pickle: bool, max_decoded_mb: int) -> None:
    """``SMBYOC_NPY_ALLOW_PICKLE`` and ``SMBYOC_MAX_DECODED_PAYLOAD_IN_MB`` for this process's decoders."""
    LIMITS.allow_pickle = allow_pickle
    LIMITS.max_decoded_mb = max_decoded_mb


def allow_pickle(enabled: bool) -> None:
    """sagemaker-inference loads NPY with ``allow_pickle=True``; smbyoc only when this is enabled."""
    LIMITS.allow_pickle = enabled


def _too_large(what: str, size: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"{what} would decode to {size} bytes, over the limit of {LIMITS.max_decoded_bytes} bytes "
        f"(SMBYOC_MAX_DECODED_PAYLOAD_IN_MB={LIMITS.max_decoded_mb})"
    )


def read_npy(raw: bytes, what: str) -> Any:
    """``numpy.load`` of one NPY blob, with its header read and checked first: the declared size against
    :attr:`DecodeLimits.max_decoded_bytes` (413) and against the data present (400 when truncated), so a
    hostile header cannot make the worker allocate more than the limit."""
    if not raw.startswith(npy_format.MAGIC_PREFIX):
        if raw.startswith(b"PK"):
            raise ValueError(f"{what} is a zip archive, not an NPY array: send it as {NPZ}")
        if LIMITS.allow_pickle:  # sagemaker-inference's np.load(allow_pickle=True) also loads plain pickles
            return np.load(io.BytesIO(raw), allow_pickle=True)
        raise ValueError(f"{what} does not start with the NPY magic string \\x93NUMPY")
    stream = io.BytesIO(raw)
    version = npy_format.read_magic(stream)
    if version == (1, 0):
        shape, fortran_order, dtype = npy_format.read_array_header_1_0(stream)
    elif version in ((2, 0), (3, 0)):  # 3.0 only changes the header's text encoding (utf-8 field names)
        shape, fortran_order, dtype = npy_format.read_array_header_2_0(stream)
    else:
        raise ValueError(f"{what}: unsupported NPY format version {version[0]}.{version[1]}")
    if dtype.hasobject:
        if not LIMITS.allow_pickle:
            raise ValueError(f"{what} holds Python objects ({dtype}); only SMBYOC_NPY_ALLOW_PICKLE=true unpickles them")
        return np.load(io.BytesIO(raw), allow_pickle=True)
    if any(n < 0 for n in shape):
        raise ValueError(f"{what}: the header declares a negative dimension in shape {shape}")
    count = math.prod(shape)
    size = count * dtype.itemsize
    if size > LIMITS.max_decoded_bytes:
        raise _too_large(f"{what} (shape {shape}, dtype {dtype})", size)
    offset = stream.tell()
    if len(raw) - offset < size:
        raise ValueError(
            f"{what} is truncated: its header declares shape {shape} of {dtype} ({size} bytes) "
            f"but {len(raw) - offset} bytes of data follow"
        )
    if dtype.shape or dtype.itemsize == 0:  # sub-array and empty dtypes: numpy's own reader (size is checked)
        return np.load(io.BytesIO(raw), allow_pickle=False)
    flat = np.frombuffer(raw, dtype=dtype, count=count, offset=offset).copy()  # what np.load returns
    if fortran_order:
        return flat.reshape(shape[::-1]).transpose()
    return flat.reshape(shape)


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """One member's bytes through a stream bounded by its declared size (the sum of those is checked)."""
    with archive.open(info) as stream:
        blob = stream.read(info.file_size + 1)
    if len(blob) > info.file_size:  # zipfile stops at the declared size; this states the invariant
        raise _too_large(f"npz member {info.filename!r}", len(blob))
    return blob


def read_npz(raw: bytes) -> Any:
    """An ``application/x-npz`` body: a ``scipy.sparse`` matrix when scipy wrote it (and is importable),
    else a ``dict`` of arrays; member sizes checked before anything is decompressed."""
    arrays: dict[str, Any] = {}
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        members = archive.infolist()
        declared = sum(info.file_size for info in members)
        if declared > LIMITS.max_decoded_bytes:
            raise _too_large(f"the npz archive ({len(members)} members)", declared)
        for info in members:
            blob = _read_member(archive, info)
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            is_npy = blob.startswith(npy_format.MAGIC_PREFIX)
            arrays[name] = read_npy(blob, f"npz member {info.filename!r}") if is_npy else blob
    if {"format", "shape"} <= arrays.keys():
        try:
            import scipy.sparse
        except ImportError:
            pass
        else:  # the members were checked above, so reading them again is bounded too
            matrix = scipy.sparse.load_npz(io.BytesIO(raw))
            check = getattr(matrix, "check_format", None)
            if check is not None:
                check(full_check=True)  # out-of-range indices would make later operations read out of bounds
            return matrix
    return arrays
