"""``upstream``: a gunicorn worker for the one client it ever has, nginx on a private unix socket.

Behind nginx, every request a worker sees was already parsed, checked and fully buffered by nginx
(``proxy_request_buffering on``: a request body always arrives whole, with a ``Content-Length``, never
chunked) and arrives over a socket in ``serve``'s private runtime directory. gunicorn's sync worker
still treats each of those requests as if it came from the internet: a general HTTP parser with every
check, a ``Request`` and a ``Response`` object, a body reader, and a lingering close. In a profile at
concurrency 8 that machinery took more of a worker's time than the model (docs/serving.md).

This worker keeps everything of gunicorn that matters for running workers — the master, worker
restarts, heartbeat timeouts, graceful SIGTERM, ``max_requests``, the server hooks — and replaces the
per-request part with a small HTTP/1.x reader for requests of that one shape and a writer that sends
each response with one write, then closes (``Connection: close``; one connection per request, so that
all workers share one accept queue and a request never waits behind another worker's). Anything that
does not fit that shape is answered with a 4xx/5xx JSON error, never guessed at: the reader is as strict as
gunicorn's own (``gunicorn/http/message.py``: RFC 9110 token header names and methods, no control characters
in values or targets, one ASCII-digit ``Content-Length``), so a request nginx would never send is refused
rather than trusted. A response whose iterable fails after it started is never completed: the connection is
closed without the rest (nginx then answers 502, or cuts its client off), never a clean-looking truncated 200.
It is only used behind nginx, over a socket in a private runtime directory (the supervisor refuses a shared
one); ``serve --no-nginx`` keeps gunicorn's own sync worker facing clients directly.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import re
import select
import sys
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote_to_bytes

from gunicorn.workers import base

from smbyoc import environment_variables as ev
from smbyoc.serving.env import body_limit
from smbyoc.serving.error_body import error_body

logger = logging.getLogger(__name__)

#: The most a request head (request line + headers) may take; nginx's own default is 4 buffers of 8 KiB.
MAX_HEAD_BYTES = 64 * 1024
#: The most header fields a request may have (gunicorn's default ``limit_request_fields``).
MAX_HEADER_FIELDS = 100
#: A response is held back until its iterable is exhausted or this many bytes are waiting; a failure before
#: then costs the request nothing but a 502 from nginx (nothing was sent), after it the connection is cut.
STREAM_BUFFER = 1024 * 1024
# RFC 9110 §5.6.2 token; methods as gunicorn takes them by default (no lower case or '#', 3-20 characters).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_METHOD = re.compile(r"[!$%&'*+\-.^_`|~0-9A-Z]{3,20}")
# RFC 9110 §5.5: control characters other than TAB are invalid and dangerous in a field value;
# RFC 9112 §3.2: a request target is printable ASCII.
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_BAD_TARGET = re.compile(r"[^\x21-\x7e]")
_RECV = 64 * 1024
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                         "trailers", "transfer-encoding", "upgrade"})
_NO_BODY_STATUS = ("1", "204", "304")
_REASONS = {s.value: s.phrase for s in HTTPStatus}
_SPECIAL_HEADERS = {"CONTENT-TYPE": "CONTENT_TYPE", "CONTENT-LENGTH": "CONTENT_LENGTH"}


class MalformedRequest(Exception):
    """A request this worker will not serve; ``status`` is the answer it gets."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ConnectionClosed(Exception):
    """The peer closed the connection before a whole request arrived."""


class ResponseFailed(Exception):
    """The application's response failed after it started; the connection must end without the rest."""


def error_bytes(status: int, message: str) -> bytes:
    """A complete HTTP response with the JSON error body every other answer also uses."""
    reason = _REASONS.get(status, "Error")
    body = error_body(status, message)
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("latin-1") + body


def read_head(recv: Callable[[int], bytes]) -> tuple[bytes, bytes]:
    """Read up to the end of the request head; returns ``(head, the bytes after it)``."""
    data = recv(_RECV)
    if not data:
        raise ConnectionClosed
    while True:
        end = data.find(b"\r\n\r\n")
        if end > MAX_HEAD_BYTES or (end < 0 and len(data) > MAX_HEAD_BYTES):
            raise MalformedRequest(f"request head larger than {MAX_HEAD_BYTES} bytes", 431)
        if end >= 0:
            return data[:end], data[end + 4:]
        more = recv(_RECV)
        if not more:
            raise ConnectionClosed
        data += more


def parse_head(head: bytes, server: tuple[str, str]) -> dict[str, Any]:
    """The WSGI environ (without ``wsgi.input``) of a request head, PEP 3333 rules.

    The rules are gunicorn's (``gunicorn/http/message.py``). Raises :class:`MalformedRequest` (400 unless said)
    for: a request line that is not ``METHOD TARGET HTTP/1.x`` with a token method and a printable-ASCII
    target; a header name that is not an RFC 9110 token (spaces, NUL, ``@``...), which also refuses folded
    lines; a control character (NUL, CR, LF...) in a value; a ``Content-Length`` that is not ASCII digits or
    comes twice; more than :data:`MAX_HEADER_FIELDS` fields (431); and any ``Transfer-Encoding`` (501:
    nginx always sends a buffered body with a length, so there is none to decode).
    """
    text = head.decode("latin-1")
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if (len(parts) != 3 or not _METHOD.fullmatch(parts[0]) or parts[2] not in ("HTTP/1.1", "HTTP/1.0")
            or not parts[1] or _BAD_TARGET.search(parts[1])):
        raise MalformedRequest(f"malformed request line {lines[0][:100]!r}")
    if len(lines) - 1 > MAX_HEADER_FIELDS:
        raise MalformedRequest(f"more than {MAX_HEADER_FIELDS} header fields", 431)
    method, target, protocol = parts
    if not target.startswith("/"):
        if "://" not in target:
            raise MalformedRequest(f"malformed request target {target[:100]!r}")
        target = "/" + target.split("://", 1)[1].partition("/")[2]
    path, _, query = target.partition("?")
    path = path.partition("#")[0]
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1") if "%" in path else path,
        "QUERY_STRING": query,
        "RAW_URI": target,
        "REQUEST_URI": target,
        "SERVER_PROTOCOL": protocol,
        "SERVER_NAME": server[0],
        "SERVER_PORT": server[1],
        "REMOTE_ADDR": "",
    }
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            raise MalformedRequest(f"malformed header line {line[:100]!r}: the name is not an RFC 9110 token")
        if _BAD_VALUE.search(value):
            raise MalformedRequest(f"header {name[:100]!r} has a control character (NUL, CR, LF...) in its value")
        upper = name.upper()
        if "_" in upper:  # as nginx and gunicorn: never let X_Forwarded_For pose as X-Forwarded-For
            continue
        key = _SPECIAL_HEADERS.get(upper) or "HTTP_" + upper.replace("-", "_")
        value = value.strip(" \t")
        if key in environ:
            if key == "CONTENT_LENGTH":
                raise MalformedRequest("more than one Content-Length header")
            value = f"{environ[key]},{value}"
        environ[key] = value
    if "HTTP_TRANSFER_ENCODING" in environ:
        raise MalformedRequest("Transfer-Encoding is not accepted here (nginx sends buffered bodies)", 501)
    length = environ.get("CONTENT_LENGTH")
    if length is not None and not (length.isascii() and length.isdigit()):  # "²".isdigit() is True
        raise MalformedRequest(f"bad Content-Length {length[:40]!r}: not ASCII digits")
    return environ


def read_body(recv_into: Callable[[memoryview], int], start: bytes, length: int) -> bytes:
    """``length`` bytes of body, of which ``start`` already arrived with the head."""
    if len(start) >= length:
        return start[:length]
    buffer = bytearray(length)
    buffer[: len(start)] = start
    view = memoryview(buffer)
    got = len(start)
    while got < length:
        n = recv_into(view[got:])
        if not n:
            raise ConnectionClosed
        got += n
    return bytes(buffer)


def response_head(
    status: str, headers: list[tuple[str, str]], date: str | None = None, *, chunked: bool = False
) -> bytes:
    """The response head: the application's headers less hop-by-hop ones, then ``Connection: close``
    (and ``Transfer-Encoding: chunked`` when the worker frames the body itself).

    A CR or LF inside a name or value (header injection) raises ``ValueError``.
    """
    kept = [f"{name}: {value}\r\n" for name, value in headers if name.lower() not in _HOP_BY_HOP]
    text = "".join(kept)
    if text.count("\n") != len(kept) or text.count("\r") != len(kept):
        raise ValueError("a response header name or value contains CR or LF")
    dated = f"Date: {date}\r\n" if date else ""
    framing = "Transfer-Encoding: chunked\r\n" if chunked else ""
    return f"HTTP/1.1 {status}\r\n{text}{dated}{framing}Connection: close\r\n\r\n".encode("latin-1")


class ResponseWriter:
    """``start_response`` and the response's bytes for one request.

    The response is held back until the application's iterable is exhausted, then leaves as one write
    (head and body, with a ``Content-Length`` when the application gave none). Only a response that grows
    past ``buffer_limit`` is sent while it is produced: with the application's ``Content-Length``, or else
    chunked, so that nginx can always tell a complete response from a cut one. Any failure of the
    response (the iterable raising, a body longer or shorter than its ``Content-Length``) raises
    :class:`ResponseFailed`; the caller then closes the connection without completing it.
    """

    __slots__ = ("_buffer", "_buffered", "_date", "_declared", "_limit", "_send", "chunked", "head_only",
                 "headers", "no_body", "sent", "sent_head", "status")

    def __init__(
        self, send: Callable[[bytes], Any], date: Callable[[], str], head_only: bool,
        buffer_limit: int = STREAM_BUFFER,
    ) -> None:
        self._send = send
        self._date = date
        self._limit = buffer_limit
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._declared: int | None = None
        self.head_only = head_only  # a HEAD request: the head only, with the length the body would have
        self.no_body = False  # 1xx, 204, 304: no body and no length
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.sent_head = False
        self.chunked = False
        self.sent = 0

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.sent_head:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
            self._buffer, self._buffered = [], 0  # an error response replaces what was held back
        elif self.status is not None:
            raise AssertionError("start_response called twice without exc_info")
        self.status = status
        self.headers = headers
        self.no_body = status.startswith(_NO_BODY_STATUS)
        self._declared = None
        for name, value in headers:
            if name.lower() == "content-length":
                if not (value.isascii() and value.isdigit()):
                    raise ValueError(f"the application's Content-Length {value[:40]!r} is not a number")
                self._declared = int(value)
        return self.write

    def write(self, data: bytes) -> None:
        if self.status is None:
            raise AssertionError("write() before start_response()")
        if not data:
            return
        if not self.sent_head:
            self._buffer.append(data)
            self._buffered += len(data)
            if self._buffered > self._limit:
                self._start_streaming()
            return
        self._send_body(data)

    def _start_streaming(self) -> None:
        assert self.status is not None
        self.chunked = self._declared is None and not (self.head_only or self.no_body)
        body = b"".join(self._buffer)
        self._buffer, self._buffered = [], 0
        head = response_head(self.status, self.headers, self._date(), chunked=self.chunked)
        self.sent_head = True
        self._send(head + self._framed(body))

    def _framed(self, data: bytes) -> bytes:
        if self.head_only or self.no_body or not data:
            return b""
        self.sent += len(data)
        if self._declared is not None and self.sent > self._declared:
            raise ResponseFailed(f"the application sent more than its Content-Length of {self._declared} bytes")
        return b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data

    def _send_body(self, data: bytes) -> None:
        framed = self._framed(data)
        if framed:
            self._send(framed)

    def finish(self, result: Iterable[bytes]) -> None:
        """Send what the application returned; raises :class:`ResponseFailed` if the response fails."""
        try:
            for chunk in result:
                self.write(chunk)
        except (OSError, ResponseFailed):
            raise
        except Exception as e:
            raise ResponseFailed(f"the response iterable raised {type(e).__name__}: {e}") from e
        if self.status is None:
            raise AssertionError("the application returned without calling start_response()")
        if self.sent_head:
            if self.chunked:
                self._send(b"0\r\n\r\n")
            elif self._declared is not None and not self.head_only and self.sent != self._declared:
                raise ResponseFailed(f"the application sent {self.sent} of its Content-Length of "
                                     f"{self._declared} bytes")
            return
        body = b"".join(self._buffer)
        headers = self.headers
        if self._declared is None and not self.no_body:
            headers = [*headers, ("Content-Length", str(len(body)))]
        elif self._declared is not None and not self.head_only and len(body) != self._declared:
            raise ResponseFailed(f"the application sent {len(body)} bytes with a Content-Length of {self._declared}")
        head = response_head(self.status, headers, self._date())
        self.sent_head = True
        self._send(head if self.head_only or self.no_body else head + body)


class UpstreamWorker(base.Worker):  # type: ignore[misc]
    """gunicorn worker class ``smbyoc.serving.worker.UpstreamWorker`` (module docstring)."""

    alive: bool
    nr: int
    _max_body: int
    _max_body_source: str

    def run(self) -> None:
        from gunicorn import util  # its http_date, which serve's post_worker_init hook caches per second

        self._http_date = util.http_date
        server = ("localhost", str(ev.SAGEMAKER_BIND_TO_PORT.get(os.environ)))  # what clients connect to
        limit_mb, self._max_body_source = body_limit(os.environ)  # nginx's limit, again; 0: none
        self._max_body = limit_mb * 1024 * 1024 or sys.maxsize
        self._base_environ = {
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": self.cfg.workers > 1,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
            "SERVER_SOFTWARE": "smbyoc",
        }
        timeout = self.timeout or 0.5
        for listener in self.sockets:
            listener.setblocking(False)
        listeners = [listener.sock for listener in self.sockets]
        while self.alive:
            self.notify()
            served = False
            for listener in listeners:
                try:
                    client, _ = listener.accept()
                except OSError as e:
                    if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                        raise
                    continue
                served = True
                self.handle(client, server)
                self.nr += 1
                if self.nr >= self.max_requests:
                    self.log.info("Autorestarting worker after current request.")
                    self.alive = False
                    break
            if served or not self.alive:
                continue  # accept again before sleeping: under load the queue is rarely empty
            if self.ppid != os.getppid():
                self.log.info("Parent changed, shutting down: %s", self)
                return
            try:
                ready = select.select(self.wait_fds, [], [], timeout)[0]
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                if e.errno == errno.EBADF:  # the listener was closed: the master is stopping us
                    return
                raise
            if self.PIPE[0] in ready:  # a signal arrived (gunicorn's wake-up pipe)
                with contextlib.suppress(BlockingIOError):
                    os.read(self.PIPE[0], 64)

    def handle(self, client: Any, server: tuple[str, str]) -> None:
        """Read one request from ``client``, answer it, close the connection."""
        client.setblocking(True)
        try:
            try:
                head, rest = read_head(client.recv)
                environ = parse_head(head, server)
                length = int(environ.get("CONTENT_LENGTH") or 0)
                if length > self._max_body:
                    raise MalformedRequest(f"request body of {length} bytes exceeds {self._max_body_source} "
                                     f"({self._max_body} bytes)", 413)
                body = read_body(client.recv_into, rest, length) if length else b""
            except MalformedRequest as e:
                logger.warning("rejected a request on the upstream socket: %s", e)
                client.sendall(error_bytes(e.status, str(e)))
                return
            environ["wsgi.input"] = io.BytesIO(body)
            environ.update(self._base_environ)
            self.serve_request(client, environ)
        except ConnectionClosed:
            logger.debug("the peer closed the connection before a whole request arrived")
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                logger.exception("socket error while serving a request")
        except Exception as e:  # a bug here must cost one request, not the worker
            logger.exception("error while reading a request on the upstream socket")
            with contextlib.suppress(OSError):
                client.sendall(error_bytes(500, f"{type(e).__name__}: {e}"))
        finally:
            with contextlib.suppress(OSError):
                client.close()

    def serve_request(self, client: Any, environ: dict[str, Any]) -> None:
        """Run the application for one parsed request and send its answer.

        An application that raises before its response started gets a 500 JSON error; a response that
        fails after it started (:class:`ResponseFailed`) is not completed: ``handle`` closes the
        connection, and nginx answers 502 (its error page) or cuts off a response already under way.
        """
        writer = ResponseWriter(client.sendall, self._http_date, environ["REQUEST_METHOD"] == "HEAD")
        result: Any = None
        try:
            try:
                result = self.wsgi(environ, writer.start_response)
            except OSError:
                raise
            except Exception as e:
                logger.exception("error while serving %s %s", environ["REQUEST_METHOD"], environ["PATH_INFO"])
                client.sendall(error_bytes(500, f"{type(e).__name__}: {e}"))
                return
            try:
                writer.finish(result)
            except ValueError as e:  # a header the application set cannot be sent (CR or LF in it)
                logger.error("error while serving %s %s: %s", environ["REQUEST_METHOD"], environ["PATH_INFO"], e)
                if not writer.sent_head:
                    client.sendall(error_bytes(500, str(e)))
            except ResponseFailed as e:
                logger.error("the response to %s %s failed after it started (%s); closing the connection "
                             "without completing it", environ["REQUEST_METHOD"], environ["PATH_INFO"], e,
                             exc_info=e.__cause__ or e)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
