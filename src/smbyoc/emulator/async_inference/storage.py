"""Where an asynchronous request's payload is read and its result written: a local file or an S3 object.

A :data:`Location` is a :class:`~pathlib.Path` (an absolute local path, what a local path or a ``file://`` URI
stands for) or a :class:`~smbyoc.s3.uri.S3Uri`. A queue record stores it as text (``str()`` of either: an
absolute path never starts with ``s3://``) and :func:`from_text` reads it back; clients see :func:`as_uri`
(``file:///...`` or ``s3://...``).

:class:`Storage` does the blocking part (call it from a worker thread, never from the event loop): local files
as before (atomic writes), S3 objects through :class:`smbyoc.s3.transfer.S3Transfers` (one ``GetObject`` after a
``HeadObject`` that checks the payload limit; one ``PutObject`` per result). Nothing touches S3, boto3 or the
credential chain until the first S3 location.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from smbyoc.emulator.async_inference.queue import write_atomic
from smbyoc.errors import ConfigError, SmbyocError
from smbyoc.s3.uri import S3Uri, is_s3_uri

if TYPE_CHECKING:
    from smbyoc.s3.transfer import S3Transfers

#: A payload or result location.
Location = Path | S3Uri


def from_text(text: str) -> Location:
    """The location a queue record stores as ``text`` (module docstring)."""
    return S3Uri.parse(text) if is_s3_uri(text) else Path(text)


def as_uri(location: Location) -> str:
    """What clients see: the ``s3://`` URI, or the ``file://`` URI of a local path."""
    return str(location) if isinstance(location, S3Uri) else location.as_uri()


def below(base: Location, parts: tuple[str, ...], name: str) -> Location:
    """``name`` under ``base`` and the relative ``parts`` (an S3 prefix is joined with ``/``)."""
    if isinstance(base, S3Uri):
        return base.child("/".join((*parts, name)))
    return base.joinpath(*parts, name)


def describe(error: BaseException) -> str:
    """The one line an error reading or writing a location becomes in a failure reason (which names the location
    itself: a ConfigError's culprit is left out)."""
    if isinstance(error, OSError):
        return str(error.strerror or error)
    if isinstance(error, ConfigError) and error.key:
        return str(error).removeprefix(f"{error.key}: ")
    return str(error)


class Storage:
    """Reads payloads and writes results at local paths or S3 locations (blocking; thread-safe).

    ``endpoint_url`` names an S3-compatible store (else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, read by
    botocore, else Amazon S3); it is checked now, the client is made on the first S3 location."""

    def __init__(self, *, endpoint_url: str | None = None) -> None:
        from smbyoc.s3.transfer import check_endpoint_url

        self.endpoint_url = check_endpoint_url(endpoint_url)
        self._transfers: S3Transfers | None = None
        self._lock = threading.Lock()

    @property
    def transfers(self) -> S3Transfers:
        """The S3 side, made once (the credential chain is checked then: an AwsError line when it is empty)."""
        with self._lock:
            if self._transfers is None:
                from smbyoc.s3.transfer import S3Transfers

                transfers = S3Transfers(endpoint_url=self.endpoint_url)
                transfers.client  # noqa: B018 - made under the lock, not by two worker threads at once
                self._transfers = transfers
            return self._transfers

    def read(self, location: Location, *, limit: int) -> bytes:
        """The payload at ``location``, at most ``limit`` bytes (checked before reading): OSError for a local
        file, :class:`~smbyoc.errors.SmbyocError` (ConfigError, AwsError) for an S3 object."""
        if isinstance(location, S3Uri):
            return self.transfers.read_bytes(location, what="InputLocation", limit=limit)
        if not location.is_file():
            raise FileNotFoundError(2, "no such file (it was removed or replaced after the request was accepted)")
        size = location.stat().st_size
        if size > limit:
            raise OSError(27, f"{size:,} bytes; the limit is {limit:,}")
        return location.read_bytes()

    def write(self, location: Location, data: bytes, *, content_type: str | None = None) -> None:
        """Store ``data`` at ``location`` whole or not at all (a local file is written under a temporary name,
        fsynced and renamed; an S3 object is one PutObject with ``content_type``)."""
        if isinstance(location, S3Uri):
            self.transfers.put_bytes(location, data, content_type=content_type)
        else:
            write_atomic(location, data)

    def check(self, location: Location, *, what: str) -> None:
        """An S3 location's bucket answers (credentials, existence), said when the endpoint starts rather than
        with the first result; nothing for a local directory (created when the first result is written)."""
        if isinstance(location, S3Uri):
            self.transfers.check_bucket(location, what=what)


#: What :meth:`Storage.read` and :meth:`Storage.write` raise for a location that cannot be used.
StorageErrors = (OSError, SmbyocError)
