"""The endpoint front's HTTP/1.1 server: an :class:`asyncio.Protocol` over httptools' request parser.

httptools wraps llhttp, the parser of Node.js (and of uvicorn); it is the only C code on the path. aiohttp's
server cost the front's thread ≈124 µs of CPU per request on the 2-vCPU machine of bench/README.md, more than
the whole budget a front has there; this one does what the front needs and nothing more:

* HTTP/1.0 and 1.1, keep-alive (1.1 unless ``Connection: close``; 1.0 with ``Connection: keep-alive``) and
  pipelining: the requests of one connection are answered in order, one at a time, and reading pauses while a
  complete request waits for the one before it (so a pipelining client cannot queue work without bound);
* strict parsing, the bar of gunicorn's ``http/message.py``. llhttp in its strict mode (no leniency flags)
  refuses header names that are not tokens, CR, LF, NUL and the other control characters in values, bare LF line
  ends, obs-fold continuation lines, whitespace before the colon, ``Content-Length`` together with
  ``Transfer-Encoding``, repeated or malformed lengths, malformed chunk-size lines and unknown methods (501).
  On top of it: HTTP versions other than 1.0 and 1.1 (505), a transfer coding other than ``chunked`` alone
  (501), ``Transfer-Encoding`` in HTTP/1.0 (400), a head over :attr:`ServerLimits.max_head_bytes` or with more
  than :attr:`ServerLimits.max_header_fields` fields (431), an expectation other than ``100-continue`` (417).
  Upgrades (``Connection: upgrade``, ``CONNECT``) are not switched: the request is answered, then the connection
  closes. Repeated header fields are joined with ``", "`` (RFC 9110 §5.3); chunked trailers are dropped;
* bodies: ``Content-Length`` or ``chunked`` (decoded). A body over ``max_body`` gets the ``refuse`` callback's
  answer: a body up to ``drain_limit`` bytes is read and dropped first (so that a client still sending gets the
  answer, not a reset), a larger one is answered at once and the connection closes;
* ``Expect: 100-continue``: ``100 Continue`` when the announced body is acceptable, else the refusal at once
  (and the close, the body never having been read);
* timeouts without a timer per request: one sweep a second closes connections whose request head has not
  arrived within :attr:`ServerLimits.head_timeout` of its first byte (slowloris), whose body made no progress for
  :attr:`ServerLimits.body_timeout`, or which stayed idle past :attr:`ServerLimits.keep_alive_timeout`
  (408 for the first two);
* an error in the request: one ``text/plain`` line naming what is wrong (the header line, when one is at fault),
  then the connection closes. A handler's exception is logged and answered 500.

The handler is called with a complete :class:`Request` (the whole body read) and returns a :class:`Response`;
handlers are not cancelled when their client goes away (aiohttp's default too): an invocation that reached a
container runs to its end.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import http
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from smbyoc.errors import ConfigError, ServingError

try:
    import httptools
except ImportError:  # pragma: no cover - the front's extra is not installed; HttpServer says so
    httptools = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
#: Response headers the server writes itself; a handler's are refused.
_OWN_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "date", "keep-alive", "upgrade"})
_NO_BODY_STATUSES = frozenset({204, 304})
#: Extra bytes a head may take in the coarse memory guard beyond ``max_head_bytes`` (one read of a transport).
_READ_SLACK = 256 * 1024


@dataclass(frozen=True)
class ServerLimits:
    """The server's limits and timeouts (the defaults suit an endpoint front)."""

    #: Bytes of a request line and header section.
    max_head_bytes: int = 64 * 1024
    #: Header fields in one request.
    max_header_fields: int = 128
    #: Seconds from a request's first byte to the end of its head.
    head_timeout: float = 30.0
    #: Seconds a request body may go without a byte arriving.
    body_timeout: float = 60.0
    #: Seconds an idle keep-alive connection is kept (nginx's and aiohttp's default).
    keep_alive_timeout: float = 75.0
    #: Seconds :meth:`HttpServer.close` waits for requests in progress before it cuts them off.
    shutdown_grace: float = 10.0

    def __post_init__(self) -> None:
        for name in ("max_head_bytes", "max_header_fields"):
            if getattr(self, name) < 1:
                raise ConfigError(f"must be at least 1, not {getattr(self, name)!r}", key=name)
        for name in ("head_timeout", "body_timeout", "keep_alive_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"must be more than 0 s, not {getattr(self, name)!r}", key=name)
        if self.shutdown_grace < 0:
            raise ConfigError(f"must be at least 0 s, not {self.shutdown_grace!r}", key="shutdown_grace")


class Request:
    """One request. ``headers``: lower-case names, repeated fields joined with ``", "``; ``path`` as sent
    (percent-escapes kept), ``query`` without its ``?``; ``content_length`` as announced (None: chunked or none);
    ``body``: the whole body (empty until complete)."""

    __slots__ = ("body", "close", "content_length", "headers", "keep_alive", "method", "path", "query", "refused",
                 "version")

    def __init__(self, method: str, path: str, query: str, version: str, headers: dict[str, str],
                 content_length: int | None, keep_alive: bool) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.version = version
        self.headers = headers
        self.content_length = content_length
        self.keep_alive = keep_alive
        self.body = b""
        #: Over the body limit: answered by the ``refuse`` callback.
        self.refused = False
        #: The connection closes after the answer (an upgrade request, an undrained refused body).
        self.close = False

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path}>"


class Response:
    """An answer: ``headers`` must not set Content-Length, Transfer-Encoding, Connection or Date (the server does);
    ``close``: close the connection after it."""

    __slots__ = ("body", "close", "headers", "status")

    def __init__(self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None, *,
                 close: bool = False) -> None:
        self.status = status
        self.body = body
        self.headers = headers if headers is not None else {}
        self.close = close

    def __repr__(self) -> str:
        return f"<Response {self.status}, {len(self.body)} bytes>"


Handler = Callable[[Request], Awaitable[Response]]
Refuse = Callable[[Request], Response]


def plain(status: int, message: str, *, close: bool = False) -> Response:
    """A ``text/plain`` answer of one line (the server's own errors; aiohttp's ``404: Not Found`` shape)."""
    return Response(status, f"{message}\n".encode("utf-8", "replace"),
                    {"Content-Type": "text/plain; charset=utf-8"}, close=close)


_STATUS_LINES: dict[int, bytes] = {}


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        if not 100 <= status <= 999:
            raise ValueError(f"{status!r} is not an HTTP status code")
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {phrase}\r\n".encode("ascii")
    return line


class _Refusal(Exception):
    """Raised from a parser callback: answer ``status`` with ``message`` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_IDLE, _HEAD, _BODY = range(3)


class _Connection(asyncio.Protocol):
    """One client connection (the parser's callbacks are its ``on_*`` methods)."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.limits = server.limits
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        #: Complete requests (and, last, a refusal) waiting to be answered, in order.
        self.pending: collections.deque[Request | Response] = collections.deque()
        self.task: asyncio.Task[None] | None = None
        self.dead = False  # closing or closed: nothing more is read or started
        self.stopped = False  # nothing more is parsed (an error, an upgrade): the answers due, then the close
        self.reading_paused = False
        self.writing_paused = False
        self.phase = _IDLE
        self.since = server.now  # _IDLE: the last answer; _HEAD: the request's first byte; _BODY: the last byte
        self.head_seen = 0  # bytes received while in a head (a coarse guard against an endless header line)
        # the request being parsed
        self.url = b""
        self.fields = 0
        self.head_bytes = 0
        self.headers: dict[str, str] = {}
        self.request: Request | None = None
        self.parts: list[bytes] = []
        self.body_size = 0

    # ---------------------------------------------------------------------------------------- transport
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's transports are not asyncio's classes)
        self.server.connections.add(self)
        if self.server.closing:
            self._abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.dead = True
        self.server.connections.discard(self)
        self.pending.clear()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._next()

    def data_received(self, data: bytes) -> None:
        if self.dead or self.stopped:
            return
        if self.phase == _BODY:
            self.since = self.server.now
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._stop_reading()  # the upgrade request is complete: it is answered (not switched), then the close
        except httptools.HttpParserCallbackError as e:
            refusal = e.__context__
            if not isinstance(refusal, _Refusal):  # pragma: no cover - a bug in a callback
                log.exception("the HTTP server failed a request", exc_info=refusal)
                refusal = _Refusal(500, "500 Internal Server Error")
            self._refuse(refusal.status, refusal.message)
        except httptools.HttpParserInvalidMethodError:
            self._refuse(501, "501 Not Implemented: the request method is not one this server knows")
        except httptools.HttpParserError as e:
            self._refuse(400, f"400 Bad Request: {e}{_culprit(data, str(e))}")
        else:
            if self.phase == _HEAD:
                self.head_seen += len(data)
                if self.head_seen > self.limits.max_head_bytes + _READ_SLACK:
                    self._refuse(431, f"431 Request Header Fields Too Large: the head is over "
                                      f"{self.limits.max_head_bytes:,} bytes")
        if self.pending:
            self._next()

    # ---------------------------------------------------------------------------------------- parser callbacks
    def on_message_begin(self) -> None:
        self.phase = _HEAD
        self.since = self.server.now
        self.head_seen = 0
        self.url = b""
        self.fields = 0
        self.head_bytes = 0
        self.headers = {}
        self.request = None
        self.parts = []
        self.body_size = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)
        if self.head_bytes > self.limits.max_head_bytes:
            raise _Refusal(414, f"414 URI Too Long: the request target is over {self.limits.max_head_bytes:,} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields += 1
        self.head_bytes += len(name) + len(value) + 4
        if self.fields > self.limits.max_header_fields:
            raise _Refusal(431, f"431 Request Header Fields Too Large: more than {self.limits.max_header_fields} "
                                "header fields")
        if self.head_bytes > self.limits.max_head_bytes:
            raise _Refusal(431, f"431 Request Header Fields Too Large: the head is over "
                                f"{self.limits.max_head_bytes:,} bytes")
        if self.request is not None:
            return  # a chunked body's trailer field: dropped
        key = name.decode("ascii").lower()  # llhttp let only token characters through
        text = value.decode("utf-8", "surrogateescape")
        headers = self.headers
        if key in headers:
            headers[key] += ", " + text
        else:
            headers[key] = text

    def on_headers_complete(self) -> None:
        parser = self.parser
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise _Refusal(505, f"505 HTTP Version Not Supported: HTTP/{version}")
        headers = self.headers
        url = self.url
        if url[:1] == b"/":
            path, _, query = url.partition(b"?")
        else:  # absolute-form (RFC 9112 §3.2.2), or * and authority-form, which no route takes
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError as e:
                raise _Refusal(400, f"400 Bad Request: request target {url[:100]!r}: {e}") from None
            path, query = parsed.path or b"/", parsed.query or b""
        length: int | None = None
        coding = headers.get("transfer-encoding")
        if coding is not None:
            if version == "1.0":
                raise _Refusal(400, "400 Bad Request: Transfer-Encoding in an HTTP/1.0 request")
            if coding.strip().lower() != "chunked":
                raise _Refusal(501, f"501 Not Implemented: Transfer-Encoding {coding[:100]!r} (only chunked)")
        else:
            text = headers.get("content-length")
            if text is not None:
                length = int(text)  # llhttp let digits only through
        request = self.request = Request(parser.get_method().decode("ascii"), path.decode("latin-1"),
                                         query.decode("latin-1"), version, headers, length,
                                         parser.should_keep_alive())
        max_body = self.server.max_body
        too_large = max_body is not None and length is not None and length > max_body
        if too_large:
            request.refused = True
            if length is not None and length > self.server.drain_limit:
                request.close = True
        expect = headers.get("expect")
        if expect is not None:
            if expect.strip().lower() != "100-continue":
                raise _Refusal(417, f"417 Expectation Failed: {expect[:100]!r} (only 100-continue)")
            if too_large:
                request.close = True  # answered before the body is sent, so the body is never read
            elif version == "1.1" and self.transport is not None and self.task is None and not self.pending:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if request.close:
            self._complete(request)
            raise _Refusal(0, "")  # stop parsing: the answer is queued, the connection closes after it
        self.phase = _BODY
        self.since = self.server.now

    def on_body(self, body: bytes) -> None:
        request = self.request
        assert request is not None
        self.body_size += len(body)
        if request.refused:
            if self.body_size > self.server.drain_limit:
                request.close = True
                self._complete(request)
                raise _Refusal(0, "")
            return
        max_body = self.server.max_body
        if max_body is not None and self.body_size > max_body:  # a chunked body grew past the limit
            request.refused = True
            self.parts = []
            return
        self.parts.append(body)

    def on_message_complete(self) -> None:
        request = self.request
        assert request is not None
        parts = self.parts
        if parts:
            request.body = parts[0] if len(parts) == 1 else b"".join(parts)
        self._complete(request)

    def _complete(self, request: Request) -> None:
        self.phase = _IDLE
        self.since = self.server.now
        self.parts = []
        self.request = None
        self.pending.append(request)
        if (self.task is not None or len(self.pending) > 1) and not self.reading_paused:
            self.reading_paused = True
            assert self.transport is not None
            self.transport.pause_reading()

    # ---------------------------------------------------------------------------------------- answering
    def _next(self) -> None:
        """Start answering the next pending request, unless one is in progress or the client does not read."""
        pending = self.pending
        while pending and self.task is None and not self.writing_paused and not self.dead:
            item = pending.popleft()
            if isinstance(item, Response):  # a refusal: the last thing on this connection
                self._send(None, item)
                return
            if item.refused:
                try:
                    response = self.server.refuse(item)
                except Exception:
                    log.exception("the HTTP server's refusal failed")
                    response = plain(413, "413 Content Too Large", close=True)
                self._send(item, response)
                continue
            self.task = self.server.loop.create_task(self._run(item))
            return
        if not pending and self.reading_paused and not self.dead and not self.stopped and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()

    async def _run(self, request: Request) -> None:
        try:
            response = await self.server.handler(request)
        except Exception:
            log.exception("the HTTP server's handler failed %s %s", request.method, request.path)
            response = plain(500, "500 Internal Server Error")
        self.task = None
        self._send(request, response)
        if self.pending or self.reading_paused:
            self._next()

    def _send(self, request: Request | None, response: Response) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        keep_alive = (request is not None and request.keep_alive and not request.close and not response.close
                      and not self.server.closing and not (self.stopped and not self.pending))
        try:
            head = _head(response, self.server.date, keep_alive, request is not None and request.version == "1.0")
        except ValueError as e:
            log.error("the HTTP server's handler answered something that cannot be sent: %s", e)
            response = plain(500, "500 Internal Server Error")
            head = _head(response, self.server.date, keep_alive, False)
        body = response.body
        if (request is not None and request.method == "HEAD") or response.status in _NO_BODY_STATUSES:
            transport.write(head)
        elif len(body) < 65536:
            transport.write(head + body)
        else:
            transport.write(head)
            transport.write(body)
        if not keep_alive:
            self.dead = True
            self.pending.clear()
            transport.close()
        elif self.phase == _IDLE:
            self.since = self.server.now

    def _refuse(self, status: int, message: str) -> None:
        """Answer an unparsable request (after the answers before it) and close."""
        if status:
            self.pending.append(plain(status, message, close=True))
        self._stop_reading()
        self._next()

    def _stop_reading(self) -> None:
        self.phase = _IDLE
        self.stopped = True
        if self.transport is not None and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        if not self.pending and self.task is None:
            self.dead = True
            if self.transport is not None:
                self.transport.close()

    def _abort(self) -> None:
        self.dead = True
        if self.transport is not None:
            self.transport.abort()

    # ---------------------------------------------------------------------------------------- the sweep
    def sweep(self, now: float) -> None:
        """Called once a second: the head, body and keep-alive timeouts."""
        if self.dead or self.task is not None or self.pending:
            return
        phase, limits = self.phase, self.limits
        if phase == _HEAD and now - self.since > limits.head_timeout:
            self._refuse(408, f"408 Request Timeout: the request head did not arrive within {limits.head_timeout:g} s")
        elif phase == _BODY and now - self.since > limits.body_timeout:
            self._refuse(408, f"408 Request Timeout: no byte of the request body for {limits.body_timeout:g} s")
        elif phase == _IDLE and now - self.since > limits.keep_alive_timeout:
            self.dead = True
            if self.transport is not None:
                self.transport.close()


def _head(response: Response, date: bytes, keep_alive: bool, http10: bool) -> bytes:
    lines = []
    for name, value in response.headers.items():
        if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
            raise ValueError(f"response header {name[:100]!r}: an invalid name or a control character in the value")
        if name.lower() in _OWN_HEADERS:
            raise ValueError(f"response header {name}: the server sets it itself")
        lines.append(f"{name}: {value}\r\n")
    if response.status not in _NO_BODY_STATUSES:
        lines.append(f"Content-Length: {len(response.body)}\r\n")
    if not keep_alive:
        lines.append("Connection: close\r\n")
    elif http10:
        lines.append("Connection: keep-alive\r\n")
    return b"".join((_status_line(response.status), "".join(lines).encode("utf-8", "surrogateescape"), date))


def _culprit(data: bytes, reason: str) -> str:
    """The header line a parse error is about, when one in ``data`` is at fault (the error path only)."""
    if "header" not in reason.lower() and "Content-Length" not in reason and "Transfer-Encoding" not in reason:
        return ""
    head = data.split(b"\r\n\r\n", 1)[0]
    for line in re.split(rb"\r\n|\n|\r", head)[1:]:
        name, colon, value = line.partition(b":")
        bad = (not colon or not re.fullmatch(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", name)
               or re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", value) is not None)
        if bad or (name.lower() in (b"content-length", b"transfer-encoding") and
                   ("Content-Length" in reason or "Transfer-Encoding" in reason)):
            return f" (header line {line[:100].decode('latin-1')!r})"
    return ""


class HttpServer:
    """Serves ``handler`` on ``host:port`` in the running event loop: ``await start()``, ``await close()``.

    ``max_body`` (None: no limit) and ``drain_limit`` bound request bodies; a body over ``max_body`` is answered
    with ``refuse(request)`` (module docstring)."""

    def __init__(self, handler: Handler, *, host: str, port: int, refuse: Refuse | None = None,
                 max_body: int | None = None, drain_limit: int = 64 * 1024 * 1024,
                 limits: ServerLimits | None = None, backlog: int = 1024) -> None:
        if httptools is None:
            raise ServingError("the endpoint front needs httptools, which is not installed; "
                               "pip install 'smbyoc[front]'")
        self.handler = handler
        self.refuse = refuse or (lambda request: plain(413, "413 Content Too Large: the request body is over "
                                                            f"{max_body:,} bytes"))
        self.host = host
        self.port = port
        self.max_body = max_body
        self.drain_limit = max(drain_limit, max_body or 0)
        self.limits = limits or ServerLimits()
        self.backlog = backlog
        self.connections: set[_Connection] = set()
        self.closing = False
        self.now = 0.0
        self.date = b""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    async def start(self) -> None:
        """Listen (raises OSError when that fails)."""
        self._loop = asyncio.get_running_loop()
        self._tick()
        self._server = await self._loop.create_server(lambda: _Connection(self), self.host, self.port,
                                                      reuse_address=True, backlog=self.backlog)
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]

    def _tick(self) -> None:
        loop = self.loop
        self.now = loop.time()
        self.date = f"Date: {email.utils.formatdate(usegmt=True)}\r\n\r\n".encode("ascii")
        for connection in list(self.connections):
            connection.sweep(self.now)
        self._sweeper = loop.call_later(1.0, self._tick)

    async def close(self) -> None:
        """Stop listening, close idle connections, give requests in progress ``shutdown_grace`` seconds, then cut
        the rest off."""
        self.closing = True
        if self._loop is None:  # never started
            return
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            if connection.task is None and not connection.pending:
                connection._abort()
        deadline = self.loop.time() + self.limits.shutdown_grace
        while any(c.task is not None for c in self.connections) and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        tasks = [c.task for c in self.connections if c.task is not None]
        for connection in list(self.connections):
            connection._abort()
        for task in tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
        await asyncio.sleep(0)  # let the transports call connection_lost

    def stats(self) -> dict[str, Any]:
        return {"connections": len(self.connections),
                "in_progress": sum(1 for c in self.connections if c.task is not None)}
