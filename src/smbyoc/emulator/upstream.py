"""The endpoint front's HTTP/1.1 client for its calls to containers (the "upstream" of the front).

The front makes one upstream call per hop of every invocation, to containers on loopback or local addresses. A
general client (aiohttp's ``ClientSession``) costs 270-420 µs of the front's CPU per call on a 2-core machine
(bench/README.md); this one does what the front needs and nothing more:

* a pool per ``(host, port)`` of keep-alive connections (an :class:`asyncio.Protocol` each, one write per
  request, the response parsed as it arrives and handed over through one future), at most
  :attr:`UpstreamLimits.max_connections_per_host` per host (callers past it wait, within their timeout);
* strict response parsing, to the bar of gunicorn's request parser: ``HTTP/1.x`` status lines, token-checked
  header names, no control characters, CRLF line ends, no line folding, size limits on the header section and on
  the body; ``Content-Length`` bodies (repeated lengths must agree), ``chunked`` bodies (trailers kept apart in
  ``headers.trailers``), bodies until the close for answers without a length; no body for ``HEAD``, 204, 304;
  1xx interim answers skipped; a length together with ``Transfer-Encoding`` or another transfer coding is refused;
* ``Connection: close`` (and HTTP/1.0 without ``keep-alive``) honoured: that connection is not reused, nor one
  whose answer came before the whole request was written or was followed by stray bytes;
* one timeout for all of it (waiting for a pooled connection, connecting, sending, receiving), as aiohttp's
  ``ClientTimeout(total=...)``; a timeout of 0 or less is refused (aiohttp would read it as "no timeout"). The wait
  for the answer of a request with a timeout of :data:`COARSE_TIMEOUT` or more (the front's 60 s) is enforced by
  a sweep four times a second rather than by a timer per request.

Stale connections. A server closes a keep-alive connection that stayed idle past its keep-alive timeout (nginx:
75 s in smbyoc's image). The pool sees that close at once when it happens while the connection is idle (the
connection leaves the pool), drops connections idle longer than :attr:`UpstreamLimits.idle_timeout` (15 s, as
aiohttp) or than the server's ``Keep-Alive: timeout=N`` hint, before the server does. What remains is a close that
crosses the request on the wire: the request is written, then the connection ends with no byte of an answer. That
request is sent again, once, on a new connection, **only if its method is idempotent** (GET, HEAD, PUT, DELETE,
OPTIONS, TRACE; the front's DELETE of a multi-model unload). A ``POST /invocations`` is not resent: from the
client's side, "closed while idle, request never read" and "request read, then the server or its worker died
before answering" look the same (a FIN, no byte), and resending in the second case runs the model twice (a crash
twice, or a side effect twice). Go's net/http and aiohttp make the same choice. The caller gets
:class:`UpstreamError` (the front answers 503 ServiceUnavailable, which botocore retries itself).

Errors: :class:`UpstreamError` when the container cannot be reached or its answer is broken or over a limit;
:class:`asyncio.TimeoutError` when the timeout ran out; :class:`ValueError` for a request the caller built wrong.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import re
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

from smbyoc.errors import ConfigError, SmbyocError

log = logging.getLogger(__name__)

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
#: Headers the client writes itself; a caller's are refused.
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "te", "upgrade",
                               "keep-alive", "trailer", "expect"})
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN_STR = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_BAD_VALUE_STR = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]")
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: [\t \x21-\x7e\x80-\xff]*)?")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[\t \x21-\x7e\x80-\xff]*)?")
_KEEP_ALIVE_TIMEOUT = re.compile(r"(?:^|[,;\s])timeout\s*=\s*([0-9]+)", re.I)
_MAX_CHUNK_LINE = 4096
#: Timeouts of this many seconds or more are enforced by a sweep every :data:`SWEEP_SECONDS` (up to that much late)
#: instead of a timer per request; shorter ones by a timer.
COARSE_TIMEOUT = 5.0
SWEEP_SECONDS = 0.25
#: Methods and header names already checked (tokens, not reserved): most requests repeat the same few.
_GOOD_NAMES: set[str] = {"GET", "HEAD", "POST", "PUT", "DELETE", "Content-Type", "Accept"}


class UpstreamError(SmbyocError):
    """The container cannot be reached, or its answer is broken, incomplete or over a limit."""


class _NoAnswer(UpstreamError):
    """The connection ended (closed or reset) before any byte of the answer arrived."""


@dataclass(frozen=True)
class UpstreamLimits:
    """The pool's limits (the defaults suit a front in front of containers on one machine)."""

    #: Connections to one ``(host, port)``, in use or idle; requests past it wait for one (within their timeout).
    max_connections_per_host: int = 256
    #: Seconds an idle connection is kept (shorter than a server's keep-alive timeout: nginx's is 75 s).
    idle_timeout: float = 15.0
    #: Bytes of a status line and header section (and, apart, of a chunked body's trailer section).
    max_head_bytes: int = 64 * 1024
    #: Header fields in one header (or trailer) section.
    max_header_fields: int = 128
    #: Bytes of one response body.
    max_body_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        for name in ("max_connections_per_host", "max_head_bytes", "max_header_fields", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"must be at least 1, not {getattr(self, name)!r}", key=name)
        if not self.idle_timeout > 0:
            raise ConfigError(f"must be more than 0 s, not {self.idle_timeout!r}", key="idle_timeout")


class Headers(Mapping[str, str]):
    """A response's header fields: case-insensitive lookup, repeated fields joined with ``", "`` (``get_all`` gives
    them apart), names as the server spelled them. ``trailers``: a chunked body's trailer fields."""

    __slots__ = ("_fields", "_names", "_values", "trailers")

    def __init__(self, fields: list[tuple[str, str]] | None = None, trailers: Headers | None = None) -> None:
        self._fields = fields or []
        self._values: dict[str, str] = {}
        self._names: dict[str, str] = {}
        for name, value in self._fields:
            key = name.lower()
            if key in self._values:
                self._values[key] += ", " + value
            else:
                self._values[key] = value
                self._names[key] = name
        self.trailers = trailers

    def __getitem__(self, name: str) -> str:
        return self._values[name.lower()]

    def get(self, name: str, default: Any = None) -> Any:  # (Mapping's, without the exception)
        return self._values.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._names.values())

    def __len__(self) -> int:
        return len(self._values)

    def get_all(self, name: str) -> list[str]:
        key = name.lower()
        return [value for field, value in self._fields if field.lower() == key]

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"


class UpstreamResponse(NamedTuple):
    status: int
    headers: Headers
    body: bytes


# ------------------------------------------------------------------------------------------------ parsing
_HEAD, _LENGTH, _CLOSE, _CHUNK_SIZE_LINE, _CHUNK_DATA, _TRAILERS, _DONE = range(7)


_FIELD_NAME = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
#: A header section (fields, each ending with CRLF): token names, no control characters (CR, LF, NUL...) in values.
#: One field line, at the start of a line: its name and its value without the whitespace around it. A section is
#: valid when every line is one (as many matches as line ends: a bare LF or CR, a folded line, a space before the
#: colon or a control character leaves a line unmatched).
_FIELD_LINE = re.compile(
    rf"(?m)^({_FIELD_NAME}):[ \t]*((?:[^\x00-\x08\x0a-\x1f\x7f]*[^\x00-\x20\x7f])?)[ \t]*\r\n")


def _parse_fields(block: bytes, limits: UpstreamLimits) -> list[tuple[str, str]]:
    """The fields of a header (or trailer) section ``block``, its lines without the blank line that ends it."""
    if not block:
        return []
    text = block.decode("utf-8", "surrogateescape") + "\r\n"
    if text.count("\r\n") > limits.max_header_fields:
        raise UpstreamError(f"the answer has more than {limits.max_header_fields} header fields")
    fields = _FIELD_LINE.findall(text)
    if len(fields) != text.count("\n"):
        for line in text.split("\r\n")[:-1]:  # name the culprit
            name, colon, value = line.partition(":")
            if not colon or not re.fullmatch(_FIELD_NAME, name):  # also a folded line, a space before ':'
                raise UpstreamError(f"malformed header line {line[:100]!r}")
            if re.search(r"[\x00-\x08\x0a-\x1f\x7f]", value):
                raise UpstreamError(f"header {name}: a control character in the value")
        raise UpstreamError(f"malformed header section {text[:100]!r}")  # pragma: no cover - a line is named above
    return fields


class _Parser:
    """One response, parsed incrementally: ``feed`` returns the response once complete, ``feed_eof`` at the close."""

    def __init__(self, limits: UpstreamLimits, head_only: bool) -> None:
        self.limits = limits
        self.head_only = head_only
        self.buf = bytearray()
        self.state = _HEAD
        self.scanned = 0  # bytes of buf already searched for the end of the head
        self.head_bytes = 0  # head bytes so far (1xx interim answers count)
        self.status = 0
        self.headers = Headers()
        self.keep_alive = True
        self.keep_alive_timeout: float | None = None
        self.length = 0  # _LENGTH: the body's length; _CHUNK_DATA: what is left of the chunk
        self.body = bytearray()  # a chunked body so far

    def feed(self, data: bytes) -> UpstreamResponse | None:
        buf = self.buf
        buf += data
        while True:
            state = self.state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n", max(0, self.scanned - 3))
                if end < 0:
                    if self.head_bytes + len(buf) > self.limits.max_head_bytes:
                        raise UpstreamError(f"the answer's header section is over {self.limits.max_head_bytes:,} "
                                            "bytes")
                    self.scanned = len(buf)
                    return None
                self.head_bytes += end + 4
                if self.head_bytes > self.limits.max_head_bytes:
                    raise UpstreamError(f"the answer's header section is over {self.limits.max_head_bytes:,} bytes")
                head = bytes(buf[:end])
                del buf[:end + 4]
                self.scanned = 0
                self._head(head)
            elif state == _LENGTH:
                if len(buf) < self.length:
                    return None
                if len(buf) == self.length:
                    body = bytes(buf)
                    buf.clear()
                else:
                    with memoryview(buf) as view:
                        body = bytes(view[:self.length])
                    del buf[:self.length]
                return self._done(body)
            elif state == _CLOSE:
                if len(buf) > self.limits.max_body_bytes:
                    raise self._too_large()
                return None
            elif state == _CHUNK_SIZE_LINE:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > _MAX_CHUNK_LINE:
                        raise UpstreamError("malformed chunked body: a chunk-size line is too long")
                    return None
                found = _CHUNK_SIZE.fullmatch(bytes(buf[:end]))
                if found is None:
                    raise UpstreamError(f"malformed chunked body: chunk-size line {bytes(buf[:min(end, 100)])!r}")
                del buf[:end + 2]
                self.length = int(found.group(1), 16)
                if len(self.body) + self.length > self.limits.max_body_bytes:
                    raise self._too_large()
                self.state = _CHUNK_DATA if self.length else _TRAILERS
            elif state == _CHUNK_DATA:
                if self.length:
                    take = min(len(buf), self.length)
                    self.body += buf[:take]
                    del buf[:take]
                    self.length -= take
                    if self.length:
                        return None
                if len(buf) < 2:
                    return None
                if buf[:2] != b"\r\n":
                    raise UpstreamError("malformed chunked body: a chunk's data does not end with CRLF")
                del buf[:2]
                self.state = _CHUNK_SIZE_LINE
            elif state == _TRAILERS:
                if len(buf) < 2:
                    return None
                if buf[:2] == b"\r\n":
                    del buf[:2]
                    return self._done(bytes(self.body))
                end = buf.find(b"\r\n\r\n")
                if (end + 4 if end >= 0 else len(buf)) > self.limits.max_head_bytes:
                    raise UpstreamError(f"the answer's trailer section is over {self.limits.max_head_bytes:,} bytes")
                if end < 0:
                    return None
                trailers = _parse_fields(bytes(buf[:end]), self.limits)
                del buf[:end + 4]
                self.headers.trailers = Headers(trailers)
                return self._done(bytes(self.body))
            else:  # _DONE: a head that needs no body
                return self._done(b"")

    def feed_eof(self, received: int) -> UpstreamResponse:
        """The server closed the connection: the response, when the close ends it; else UpstreamError."""
        if self.state == _CLOSE:
            self.keep_alive = False
            return self._done(bytes(self.buf), stray=False)
        if self.state == _HEAD and received == 0:
            raise _NoAnswer("the container closed the connection without answering")
        if self.state == _HEAD:
            raise UpstreamError("the container closed the connection in the middle of its answer's header section")
        if self.state == _LENGTH:
            raise UpstreamError(f"the container closed the connection after {len(self.buf):,} of the "
                                f"{self.length:,} body bytes its answer announced")
        raise UpstreamError("the container closed the connection in the middle of its answer's chunked body")

    def _head(self, head: bytes) -> None:
        first, _, block = head.partition(b"\r\n")
        status_line = _STATUS_LINE.fullmatch(first)
        if status_line is None or status_line.group(2) < b"100":
            raise UpstreamError(f"malformed status line {first[:100]!r}")
        status = int(status_line.group(2))
        fields = _parse_fields(block, self.limits)
        if status < 200:
            if status == 101:
                raise UpstreamError("the container switched protocols (101), which was not asked for")
            return  # an interim answer (100 Continue, 103 Early Hints): the final one follows
        self.status = status
        self.headers = headers = Headers(fields)
        http10 = status_line.group(1) == b"0"
        connection = headers.get("Connection")
        if connection is None:
            self.keep_alive = not http10
        elif connection == "keep-alive":  # (nginx's; the common case without the set)
            self.keep_alive = True
        else:
            tokens = {t.strip().lower() for t in connection.split(",")}
            self.keep_alive = "keep-alive" in tokens if http10 else "close" not in tokens
        hint = headers.get("Keep-Alive")
        if hint is not None:
            found = _KEEP_ALIVE_TIMEOUT.search(hint)
            if found is not None:
                self.keep_alive_timeout = float(found.group(1))
        encodings = headers.get("Transfer-Encoding")
        lengths = headers.get("Content-Length")
        if self.head_only or status in (204, 304):
            self.state = _DONE
        elif encodings is not None:
            if lengths is not None:
                raise UpstreamError("the answer has both Content-Length and Transfer-Encoding")
            if http10:
                raise UpstreamError("an HTTP/1.0 answer with Transfer-Encoding")
            if [t.strip().lower() for t in encodings.split(",")] != ["chunked"]:
                raise UpstreamError(f"unsupported Transfer-Encoding {encodings[:100]!r} (only chunked)")
            self.state = _CHUNK_SIZE_LINE
        elif lengths is not None:
            if lengths.isdigit() and lengths.isascii():  # the common case: one length
                self.length = int(lengths)
            else:
                values = {v.strip() for v in lengths.split(",")}
                value = values.pop()
                if values or not value.isascii() or not value.isdigit():
                    raise UpstreamError(f"malformed Content-Length {lengths[:100]!r}")
                self.length = int(value)
            if self.length > self.limits.max_body_bytes:
                raise self._too_large()
            self.state = _LENGTH
        else:
            self.keep_alive = False
            self.state = _CLOSE

    def _done(self, body: bytes, stray: bool = True) -> UpstreamResponse:
        if stray and self.buf:  # bytes after the answer: the connection's framing cannot be trusted
            self.keep_alive = False
        self.state = _DONE
        return UpstreamResponse(self.status, self.headers, body)

    def _too_large(self) -> UpstreamError:
        return UpstreamError(f"the answer's body is over the limit of {self.limits.max_body_bytes:,} bytes")


# ------------------------------------------------------------------------------------------------ connections
class _Connection(asyncio.Protocol):
    """One keep-alive connection; at most one request in flight."""

    def __init__(self, host: _Host, limits: UpstreamLimits) -> None:
        self.host = host
        self.limits = limits
        self.transport: asyncio.Transport | None = None
        self.parser: _Parser | None = None
        self.waiter: asyncio.Future[UpstreamResponse] | None = None
        self.received = 0
        self.closed = False
        self.reused = False
        self.expires = math.inf
        #: The request in flight: when the sweep expires it, and its timeout (for the message).
        self.deadline = math.inf
        self.timeout = 0.0

    # protocol callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's transports are not asyncio's classes)

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if parser is None:  # bytes while idle: nothing can be trusted on this connection any more
            self._abort()
            return
        self.received += len(data)
        try:
            response = parser.feed(data)
        except UpstreamError as e:
            self._fail(e)
            return
        if response is not None:
            self._finish(response)

    def eof_received(self) -> bool:
        self.closed = True
        if self.parser is not None:
            try:
                self._finish(self.parser.feed_eof(self.received))
            except UpstreamError as e:
                self._fail(e)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.parser is not None:
            if exc is None:
                self.eof_received()
            elif self.received:
                self._fail(UpstreamError(f"the connection to the container broke in the middle of its answer: "
                                         f"{exc}"))
            else:
                self._fail(_NoAnswer(f"the connection to the container broke before its answer: {exc}"))
        else:
            self.host.pool._lost_idle(self)

    # the pool's side
    def send(self, data: bytes, body: bytes, head_only: bool) -> asyncio.Future[UpstreamResponse]:
        assert self.transport is not None
        self.parser = _Parser(self.limits, head_only)
        self.received = 0
        self.waiter = waiter = self.host.pool._loop().create_future()
        self.transport.write(data)
        if body:
            self.transport.write(body)
        return waiter

    def expire(self, timeout: float) -> None:
        if self.waiter is not None and not self.waiter.done():
            host, port = self.host.address
            self.waiter.set_exception(asyncio.TimeoutError(f"no complete answer from {host}:{port} within "
                                                           f"{timeout:g} s"))
        self._abort()

    def reusable(self, now: float) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing() and \
            now < self.expires

    def _finish(self, response: UpstreamResponse) -> None:
        parser, waiter = self.parser, self.waiter
        assert parser is not None
        self.parser = None
        if not parser.keep_alive or (self.transport is not None and self.transport.get_write_buffer_size()):
            self.closed = True  # the server answered before reading all of the request, or asked for the close
        else:
            timeout = self.limits.idle_timeout
            if parser.keep_alive_timeout is not None:
                timeout = min(timeout, parser.keep_alive_timeout - 1.0)
            self.expires = self.host.pool._loop().time() + timeout
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def _fail(self, error: UpstreamError) -> None:
        self.parser = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)
        self._abort()

    def _abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


@dataclass(eq=False)
class _Host:
    pool: UpstreamPool
    address: tuple[str, int]
    #: Connections open or being opened, plus slots promised to waiters.
    total: int = 0
    #: Idle connections, the most recently used last.
    idle: collections.deque[_Connection] = field(default_factory=collections.deque)
    busy: set[_Connection] = field(default_factory=set)
    #: Requests waiting for a connection (handed one) or a slot (handed None).
    waiters: collections.deque[asyncio.Future[_Connection | None]] = field(default_factory=collections.deque)


class _Target(NamedTuple):
    address: tuple[str, int]
    host_header: str
    path: str


class UpstreamPool:
    """Keep-alive connections per ``(host, port)`` and :meth:`request` over them; for one event loop. The front
    makes one and passes it to its routers (the "session" of :class:`smbyoc.emulator.front.Router`)."""

    def __init__(self, limits: UpstreamLimits | None = None) -> None:
        self.limits = limits or UpstreamLimits()
        self._hosts: dict[tuple[str, int], _Host] = {}
        self._targets: dict[str, _Target] = {}
        self._closed = False
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._opened = 0
        self._sweeper: asyncio.TimerHandle | None = None

    async def request(self, method: str, url: str, body: bytes = b"", headers: Mapping[str, str] | None = None, *,
                      timeout: float) -> UpstreamResponse:
        """Send one request; the whole answer (any status). Raises :class:`UpstreamError`, or
        :class:`asyncio.TimeoutError` when no complete answer came within ``timeout`` seconds (> 0)."""
        if not timeout > 0 or timeout == math.inf:
            raise ValueError(f"timeout must be a number of seconds above 0, not {timeout!r}")
        if self.closed:
            raise UpstreamError("the upstream pool is closed")
        target = self._target(url)
        data = self._encode(method, target, body, headers or {})
        loop = self._loop()
        deadline = loop.time() + timeout
        host = self._hosts.get(target.address)
        if host is None:
            host = self._hosts[target.address] = _Host(self, target.address)
        conn = self._take_idle(host, deadline - timeout) or await self._acquire(host, deadline, fresh=False)
        try:
            return await self._exchange(conn, data, body, method, deadline, timeout)
        except _NoAnswer as e:
            if not conn.reused or method not in IDEMPOTENT_METHODS:
                raise
            log.debug("%s %s: a reused connection ended before the answer (%s); sending once more on a new one",
                      method, url, e)
        conn = await self._acquire(host, deadline, fresh=True)
        return await self._exchange(conn, data, body, method, deadline, timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> dict[str, int]:
        """Connections opened so far, and those idle and in use now (all hosts)."""
        return {"opened": self._opened, "idle": sum(len(h.idle) for h in self._hosts.values()),
                "busy": sum(len(h.busy) for h in self._hosts.values())}

    async def close(self) -> None:
        """Close every connection; requests in flight fail with :class:`UpstreamError`."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for host in self._hosts.values():
            for waiter in host.waiters:
                if not waiter.done():
                    waiter.set_exception(UpstreamError("the upstream pool is closed"))
            for conn in [*host.idle, *host.busy]:
                conn._abort()
        await asyncio.sleep(0)  # let the transports call connection_lost
        self._hosts.clear()

    # ---------------------------------------------------------------------------------------- internals
    def _loop(self) -> asyncio.AbstractEventLoop:
        if self._event_loop is None:
            self._event_loop = asyncio.get_running_loop()
        return self._event_loop

    def _target(self, url: str) -> _Target:
        target = self._targets.get(url)
        if target is not None:
            return target
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or parts.username is not None or parts.password is not None:
            raise ValueError(f"{url!r}: the upstream client speaks plain http://host[:port]/path only")
        try:
            port = parts.port or 80
        except ValueError as e:
            raise ValueError(f"{url!r}: {e}") from e
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if _BAD_TARGET.search(path):
            raise ValueError(f"{url!r}: spaces or control characters in the path")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        target = _Target((parts.hostname, port), host if port == 80 else f"{host}:{port}", path)
        if len(self._targets) >= 4096:
            self._targets.clear()
        self._targets[url] = target
        return target

    @staticmethod
    def _encode(method: str, target: _Target, body: bytes, headers: Mapping[str, str]) -> bytes:
        if method not in _GOOD_NAMES and not _TOKEN_STR.fullmatch(method):
            raise ValueError(f"{method!r} is not an HTTP method")
        lines = [f"{method} {target.path} HTTP/1.1\r\nHost: {target.host_header}\r\n"]
        for name, value in headers.items():
            if name not in _GOOD_NAMES:
                if not _TOKEN_STR.fullmatch(name):
                    raise ValueError(f"request header {name!r}: an invalid name")
                if name.lower() in _RESERVED_HEADERS:
                    raise ValueError(f"request header {name}: the upstream client sets it itself")
                if len(_GOOD_NAMES) < 1024:
                    _GOOD_NAMES.add(name)
            if _BAD_VALUE_STR.search(value):
                raise ValueError(f"request header {name!r}: a control character in the value")
            lines.append(f"{name}: {value}\r\n")
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.append("\r\n")
        head = "".join(lines).encode("utf-8", "surrogateescape")
        return head + body if len(body) < 65536 else head

    async def _exchange(self, conn: _Connection, data: bytes, body: bytes, method: str, deadline: float,
                        timeout: float) -> UpstreamResponse:
        loop = self._loop()
        waiter = conn.send(data, body if len(body) >= 65536 else b"", method == "HEAD")
        timer: asyncio.TimerHandle | None = None
        if timeout < COARSE_TIMEOUT:
            timer = loop.call_at(deadline, conn.expire, timeout)
        else:  # the sweep's (a timer per request costs the front a heap push and pop)
            conn.deadline, conn.timeout = deadline, timeout
            if self._sweeper is None:
                self._sweeper = loop.call_later(SWEEP_SECONDS, self._sweep)
        try:
            response = await waiter
        except BaseException:
            conn._abort()
            self._discard(conn)
            raise
        finally:
            if timer is not None:
                timer.cancel()
            conn.deadline = math.inf
        self._release(conn)
        return response

    def _sweep(self) -> None:
        """Expire the requests past their (coarse) deadline; again in :data:`SWEEP_SECONDS` while the pool is open."""
        now = self._loop().time()
        for host in self._hosts.values():
            for conn in [c for c in host.busy if c.deadline <= now]:
                conn.expire(conn.timeout)
        self._sweeper = None if self.closed else self._loop().call_later(SWEEP_SECONDS, self._sweep)

    @staticmethod
    def _take_idle(host: _Host, now: float) -> _Connection | None:
        """The most recently used idle connection to ``host`` that can still be used (the others are closed)."""
        while host.idle:
            conn = host.idle.pop()
            if conn.reusable(now):
                conn.reused = True
                host.busy.add(conn)
                return conn
            conn._abort()
            host.total -= 1  # no request can be waiting for a slot while a connection is idle
        return None

    async def _acquire(self, host: _Host, deadline: float, *, fresh: bool) -> _Connection:
        """A connection to ``host``: an idle one (unless ``fresh``), else a new one, waiting for a slot when
        ``host`` is at its limit."""
        loop = self._loop()
        if self.closed:
            raise UpstreamError("the upstream pool is closed")
        if not fresh:
            idle = self._take_idle(host, loop.time())
            if idle is not None:
                return idle
        if host.total < self.limits.max_connections_per_host:
            host.total += 1
        else:
            got = await self._wait(host, deadline)
            if got is not None:
                if not fresh:
                    got.reused = True
                    host.busy.add(got)
                    return got
                got._abort()  # keep its slot for a new connection
        try:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise asyncio.TimeoutError(f"no connection to {host.address[0]}:{host.address[1]} in time")
            conn = _Connection(host, self.limits)
            try:
                await asyncio.wait_for(loop.create_connection(lambda: conn, *host.address), remaining)
            except OSError as e:
                raise UpstreamError(f"cannot connect to {host.address[0]}:{host.address[1]}: "
                                    f"{e.strerror or e}") from e
        except BaseException:
            self._free_slot(host)
            raise
        self._opened += 1
        if self._hosts.get(host.address) is not host:  # the pool was closed meanwhile
            conn._abort()
            raise UpstreamError("the upstream pool is closed")
        host.busy.add(conn)
        return conn

    async def _wait(self, host: _Host, deadline: float) -> _Connection | None:
        """Wait for a connection handed over by a request that finished (or None: a slot to open one)."""
        loop = self._loop()
        waiter: asyncio.Future[_Connection | None] = loop.create_future()
        host.waiters.append(waiter)

        def expire() -> None:
            if not waiter.done():
                waiter.set_exception(asyncio.TimeoutError(
                    f"no free connection to {host.address[0]}:{host.address[1]} in time (all "
                    f"{self.limits.max_connections_per_host} in use)"))

        timer = loop.call_at(deadline, expire)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                got = waiter.result()  # handed over, but this task is leaving: pass it on
                if got is None:
                    self._free_slot(host)
                else:
                    host.busy.add(got)
                    self._release(got)
            raise
        finally:
            timer.cancel()

    def _release(self, conn: _Connection) -> None:
        """A request on ``conn`` finished: keep it for the next one, or close it."""
        host = conn.host
        host.busy.discard(conn)
        if self.closed or not conn.reusable(self._loop().time()):
            conn._abort()
            self._free_slot(host)
            return
        while host.waiters:
            waiter = host.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        host.idle.append(conn)
        now = self._loop().time()
        while host.idle and not host.idle[0].reusable(now):  # the oldest first
            self._lost_idle(host.idle[0])

    def _discard(self, conn: _Connection) -> None:
        """``conn`` failed in use: its slot is free."""
        if conn in conn.host.busy:
            conn.host.busy.discard(conn)
            self._free_slot(conn.host)

    def _lost_idle(self, conn: _Connection) -> None:
        """An idle ``conn`` closed (by the server, or expired): out of the pool."""
        host = conn.host
        try:
            host.idle.remove(conn)
        except ValueError:
            return
        conn._abort()
        self._free_slot(host)

    def _free_slot(self, host: _Host) -> None:
        while host.waiters:
            waiter = host.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to the waiter
                return
        host.total -= 1
