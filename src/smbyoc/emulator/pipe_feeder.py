"""Pipe input mode, host side: stream a channel into ``<channel>_<epoch>`` FIFOs, one epoch after another.

For every Pipe-mode channel of a host, a thread creates the FIFO ``<channel>_0`` in the host's
``input/data`` directory (bind-mounted into the container, or the ``SAGEMAKER_BASE_DIR`` tree in process
mode), waits for the program to open it, writes every object of the channel (this host's share under
``ShardedByS3Key``; ``CompressionType=Gzip`` objects decompressed; with ``RecordWrapperType=RecordIO``
each object framed as one RecordIO record), closes it, removes it, and creates ``<channel>_1`` — for as
many epochs as the program reads, until the job ends (contract.md §1.4). A reader that closes early
(``EPIPE``) ends that epoch. Waiting for the reader never blocks a stop: the FIFO is opened
non-blocking and polled.

Where the FIFOs lie is the feeder's ``pattern`` (default ``{channel}_{epoch}``, training's names), a path
relative to ``data_dir``: processing jobs lay theirs next to an input's ``LocalPath``
(:mod:`smbyoc.emulator.processing_pipes`).
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import logging
import os
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, cast

from smbyoc.training.pipe import RECORDIO_MAGIC, encode_recordio

log = logging.getLogger(__name__)

CHUNK = 1 << 20
POLL = 0.02
_MAGIC = struct.pack("<I", RECORDIO_MAGIC)
_MAX_LENGTH = (1 << 29) - 1
#: Where a channel's FIFO of one epoch lies, relative to the data directory (training: contract.md §1.4).
DEFAULT_PATTERN = "{channel}_{epoch}"


@dataclass(frozen=True)
class PipeSource:
    """What one host's FIFOs of one channel carry."""

    channel: str
    objects: tuple[Path, ...]
    record_wrapper: str = "None"
    compression: str = "None"


def _open_object(path: Path, compression: str) -> IO[bytes]:
    if compression == "Gzip":
        return cast(IO[bytes], gzip.open(path, "rb"))
    return open(path, "rb")


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def frame_recordio(payload: bytes) -> list[bytes]:
    """One object as one RecordIO record (the bytes of :func:`encode_recordio`), without copying the
    payload when it holds no magic word (the common case; the general encoder scans in Python)."""
    if len(payload) <= _MAX_LENGTH and _MAGIC not in payload:
        return [struct.pack("<II", RECORDIO_MAGIC, len(payload)), payload, b"\0" * (-len(payload) % 4)]
    return [encode_recordio(payload)]


def stream_objects(fd: int, source: PipeSource) -> int:
    """Write the channel's objects to ``fd``; returns the bytes written (raises BrokenPipeError on EPIPE)."""
    total = 0
    for path in source.objects:
        with _open_object(path, source.compression) as stream:
            if source.record_wrapper == "RecordIO":
                for part in frame_recordio(stream.read()):
                    _write_all(fd, part)
                    total += len(part)
                continue
            if source.compression == "None":
                # Plain files: the kernel copies file -> pipe without Python buffers.
                size = os.fstat(stream.fileno()).st_size
                offset = 0
                while offset < size:
                    sent = os.sendfile(fd, stream.fileno(), offset, min(size - offset, 1 << 30))
                    if sent == 0:
                        break
                    offset += sent
                total += offset
                continue
            while chunk := stream.read(CHUNK):
                _write_all(fd, chunk)
                total += len(chunk)
    return total


@dataclass
class PipeFeeder:
    """Feeds one channel of one host through ``<data_dir>/<pattern>`` FIFOs (default ``<channel>_<epoch>``)
    in a daemon thread."""

    source: PipeSource
    data_dir: Path
    host: str = "algo-1"
    #: ``{channel}`` and ``{epoch}`` are replaced; may hold folders (created as needed).
    pattern: str = DEFAULT_PATTERN
    epochs_done: int = 0
    bytes_written: int = 0
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def fifo(self, epoch: int) -> Path:
        return self.data_dir / self.pattern.format(channel=self.source.channel, epoch=epoch)

    def start(self) -> PipeFeeder:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name=f"pipe-{self.host}-{self.source.channel}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.pattern == DEFAULT_PATTERN:
            leftovers = [p for p in self.data_dir.glob(f"{self.source.channel}_*")
                         if p.name.removeprefix(f"{self.source.channel}_").isdigit()]
        else:  # the FIFO of the epoch being fed (and the next, should the thread still be creating it)
            leftovers = [self.fifo(e) for e in (self.epochs_done, self.epochs_done + 1)
                         if self.fifo(e).is_fifo()]
        for leftover in leftovers:
            with contextlib.suppress(OSError):
                leftover.unlink()

    def _open_writer(self, path: Path) -> int | None:
        """Open the FIFO for writing once a reader has it open; None when stopped first."""
        while not self._stop.is_set():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as e:
                if e.errno == errno.ENXIO:  # no reader yet
                    time.sleep(POLL)
                    continue
                raise
            os.set_blocking(fd, True)
            return fd
        return None

    def _run(self) -> None:
        epoch = 0
        try:
            while not self._stop.is_set():
                path = self.fifo(epoch)
                path.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                os.mkfifo(path, 0o644)
                os.chmod(path, 0o644)  # readable by a non-root container user whatever the umask
                fd = self._open_writer(path)
                if fd is None:
                    return
                try:
                    self.bytes_written += stream_objects(fd, self.source)
                except BrokenPipeError:
                    log.debug("%s: %s closed epoch %d early", self.host, path.name, epoch)
                finally:
                    os.close(fd)
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                log.debug("%s: %s done", self.host, path.name)
                epoch += 1
                self.epochs_done = epoch
        except BaseException as e:  # reported by the job; the thread must not die silently
            self.error = e
            log.error("%s: Pipe-mode feeder for channel %s failed: %s", self.host, self.source.channel, e)


def start_feeders(sources: Sequence[PipeSource], data_dir: Path, host: str,
                  patterns: Sequence[str] | None = None) -> list[PipeFeeder]:
    """One started feeder per source; ``patterns[i]`` (default :data:`DEFAULT_PATTERN`) places source i's FIFOs."""
    return [PipeFeeder(source, data_dir, host, DEFAULT_PATTERN if patterns is None else patterns[i]).start()
            for i, source in enumerate(sources)]


def stop_feeders(feeders: Sequence[PipeFeeder]) -> None:
    for feeder in feeders:
        feeder.stop()
