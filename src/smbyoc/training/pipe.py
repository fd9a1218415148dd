"""Pipe-mode input: one FIFO per channel and epoch, ``/opt/ml/input/data/<channel>_<epoch>``.

In Pipe mode SageMaker streams a channel through FIFOs ``<channel>_0``, ``<channel>_1``, ... A program
opens epoch 0, reads it to the end (or closes it early), then waits for the next FIFO, which may not
exist yet (contract.md §1.4). :class:`PipeChannel` does that waiting with a bound
(``SMBYOC_PIPE_WAIT_TIMEOUT``, default 600 s)::

    from smbyoc.training import TrainingEnv
    from smbyoc.training.pipe import PipeChannel

    channel = PipeChannel(TrainingEnv.from_env(), "train")
    for epoch, stream in channel.epochs(count=3):
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            ...
    # RecordIO-wrapped channels (RecordWrapperType=RecordIO): one payload per S3 object/record
    for record in channel.records(epoch=0):
        ...

Opening a FIFO blocks until the writer (SageMaker, or the emulator) opens its end; only the wait for the
FIFO to *appear* is bounded. RecordIO framing is MXNet's (dmlc-core ``recordio``): a little-endian
``uint32`` magic ``0xCED7230A``, a ``uint32`` whose upper 3 bits are a continuation flag and lower 29 bits
the length, the payload padded with zeros to 4 bytes. A payload that contains the magic at a 4-byte
aligned offset is split there into parts (flags 1, 2, ..., 3) and the magic is re-inserted on reading.
"""

from __future__ import annotations

import logging
import stat
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from smbyoc.environment_variables import SMBYOC_PIPE_WAIT_TIMEOUT
from smbyoc.errors import ConfigError, SmbyocError
from smbyoc.paths import Paths, check_channel_name

log = logging.getLogger(__name__)

RECORDIO_MAGIC = 0xCED7230A
_HEADER = struct.Struct("<II")
_MAX_LENGTH = (1 << 29) - 1
_MAGIC_BYTES = struct.pack("<I", RECORDIO_MAGIC)


class PipeWaitTimeout(SmbyocError, TimeoutError):
    """The FIFO of an epoch did not appear in time."""


class RecordIOError(SmbyocError):
    """A RecordIO stream is malformed (bad magic, truncated header or payload)."""


class PipeChannel:
    """The FIFOs of one Pipe-mode channel.

    ``env`` is a :class:`~smbyoc.training.env.TrainingEnv` (the channel must be declared in
    ``inputdataconfig.json``; a channel whose ``TrainingInputMode`` is not ``Pipe`` is refused) or a
    :class:`~smbyoc.paths.Paths` (no check).
    """

    def __init__(
        self,
        env: Any,
        name: str,
        *,
        timeout: float | None = None,
        poll_interval: float = 0.1,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        check_channel_name(name)
        self.name = name
        self.record_wrapper_type = "None"
        if isinstance(env, Paths):
            self.paths = env
        else:
            self.paths = env.paths
            channels = env.channels
            if name not in channels:
                known = ", ".join(sorted(channels)) or "none"
                raise ConfigError(f"no such channel in inputdataconfig.json (channels: {known})",
                                  key=f"channel {name!r}")
            channel = channels[name]
            if channel.input_mode != "Pipe":
                raise ConfigError(f"TrainingInputMode is {channel.input_mode!r}, not 'Pipe'; read "
                                  f"{channel.path} as files instead", key=f"channel {name!r}")
            self.record_wrapper_type = channel.record_wrapper_type
        self.timeout = SMBYOC_PIPE_WAIT_TIMEOUT.get(environ) if timeout is None else timeout
        self.poll_interval = poll_interval

    def fifo_path(self, epoch: int) -> Path:
        return self.paths.pipe_path(self.name, epoch)

    def wait_for_epoch(self, epoch: int, timeout: float | None = None) -> Path:
        """Poll until ``<channel>_<epoch>`` exists; raises :class:`PipeWaitTimeout` after ``timeout`` s."""
        path = self.fifo_path(epoch)
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            try:
                mode = path.stat().st_mode
            except FileNotFoundError:
                if time.monotonic() >= deadline:
                    raise PipeWaitTimeout(
                        f"{path}: the Pipe-mode FIFO for channel {self.name!r} epoch {epoch} did not appear "
                        f"within {limit:g} s (SMBYOC_PIPE_WAIT_TIMEOUT)") from None
                time.sleep(self.poll_interval)
                continue
            if not stat.S_ISFIFO(mode):
                log.debug("%s is not a FIFO; reading it as a regular file", path)
            return path

    def open_epoch(self, epoch: int, timeout: float | None = None) -> IO[bytes]:
        """Wait for the FIFO of ``epoch`` and open it for binary reading (blocks until the writer opens)."""
        path = self.wait_for_epoch(epoch, timeout)
        return open(path, "rb")  # the caller owns (and closes) the stream

    def epochs(self, count: int | None = None, start: int = 0) -> Iterator[tuple[int, IO[bytes]]]:
        """Yield ``(epoch, stream)`` for epochs ``start, start+1, ...``; each stream is closed on advancing.

        With ``count`` exactly that many epochs are yielded (a missing FIFO raises
        :class:`PipeWaitTimeout`). Without it the generator ends when the FIFO of a later epoch does not
        appear within the timeout; the first epoch missing still raises.
        """
        epoch = start
        while count is None or epoch < start + count:
            try:
                stream = self.open_epoch(epoch)
            except PipeWaitTimeout:
                if count is None and epoch > start:
                    log.info("channel %s: no epoch %d after %g s; ending", self.name, epoch, self.timeout)
                    return
                raise
            with stream:
                yield epoch, stream
            epoch += 1

    def records(self, epoch: int = 0, timeout: float | None = None) -> Iterator[bytes]:
        """The RecordIO payloads of one epoch (for channels with ``RecordWrapperType=RecordIO``)."""
        if self.record_wrapper_type not in ("RecordIO", "None"):  # pragma: no cover - defensive
            raise ConfigError(f"unknown RecordWrapperType {self.record_wrapper_type!r}", key=self.name)
        with self.open_epoch(epoch, timeout) as stream:
            yield from read_recordio(stream)


def _read_exact(read: Callable[[int], bytes], n: int) -> bytes:
    chunks = []
    remaining = n
    while remaining:
        chunk = read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_recordio(stream: IO[bytes]) -> Iterator[bytes]:
    """Yield the payloads of an MXNet RecordIO stream until end of file."""
    record = bytearray()
    in_multipart = False
    offset = 0
    while True:
        header = _read_exact(stream.read, _HEADER.size)
        if not header:
            if in_multipart:
                raise RecordIOError(f"RecordIO stream ended inside a multi-part record at byte {offset}")
            return
        if len(header) < _HEADER.size:
            raise RecordIOError(f"RecordIO stream ends with a truncated header at byte {offset}")
        magic, lrec = _HEADER.unpack(header)
        if magic != RECORDIO_MAGIC:
            raise RecordIOError(f"bad RecordIO magic 0x{magic:08X} at byte {offset} (expected 0x{RECORDIO_MAGIC:08X})")
        cflag = (lrec >> 29) & 7
        length = lrec & _MAX_LENGTH
        padded = (length + 3) & ~3
        payload = _read_exact(stream.read, padded)
        if len(payload) < padded:
            raise RecordIOError(f"RecordIO record at byte {offset} is truncated ({len(payload)} of {padded} bytes)")
        offset += _HEADER.size + padded
        record += payload[:length]
        if cflag in (0, 3):
            yield bytes(record)
            record.clear()
            in_multipart = False
        else:
            record += _MAGIC_BYTES
            in_multipart = True


def encode_recordio(payload: bytes) -> bytes:
    """Frame one payload as MXNet RecordIO (splitting at aligned magic words, as dmlc-core does)."""
    if len(payload) > _MAX_LENGTH:
        raise RecordIOError(f"RecordIO payloads are limited to {_MAX_LENGTH} bytes, got {len(payload)}")
    out = bytearray()
    start = 0
    for i in range(0, len(payload) - len(payload) % 4, 4):
        if payload[i:i + 4] == _MAGIC_BYTES:
            out += _HEADER.pack(RECORDIO_MAGIC, ((1 if start == 0 else 2) << 29) | (i - start))
            out += payload[start:i]
            start = i + 4
    out += _HEADER.pack(RECORDIO_MAGIC, ((3 if start else 0) << 29) | (len(payload) - start))
    out += payload[start:]
    out += b"\0" * (-len(payload) % 4)
    return bytes(out)


def write_recordio(stream: IO[bytes], payload: bytes) -> None:
    """Write one RecordIO-framed payload to ``stream``."""
    stream.write(encode_recordio(payload))
