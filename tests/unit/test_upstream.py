"""The front's upstream client (smbyoc.emulator.upstream) against real local servers: an aiohttp server for the
ordinary cases, a raw asyncio socket server that writes exact bytes for the odd ones. Connections are counted on
the server's side."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import pytest
from aiohttp import web

from helpers import run_on_front_loop
from smbyoc.emulator.front import FrontError, post
from smbyoc.emulator.upstream import Headers, UpstreamError, UpstreamLimits, UpstreamPool

LOCAL = "127.0.0.1"


pytestmark = pytest.mark.usefixtures("front_event_loop")




def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return run_on_front_loop(coro, timeout=30)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


# ------------------------------------------------------------------------------------------------ servers
class RawServer:
    """Reads requests (Content-Length bodies) and lets ``answer(writer, index, head, body)`` write the bytes;
    ``index`` counts requests on the connection; answer returns False to close it."""

    Answer = Callable[[asyncio.StreamWriter, int, bytes, bytes], Awaitable[bool]]

    def __init__(self, answer: RawServer.Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.closed = 0
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._handle, LOCAL, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    def url(self, path: str = "/invocations") -> str:
        return f"http://{LOCAL}:{self.port}{path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        index = 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                keep = await self.answer(writer, index, head, body)
                await writer.drain()
                index += 1
                if not keep:
                    break
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self.closed += 1


def fixed(*answers: bytes, keep: bool = True) -> RawServer.Answer:
    """Answer request i on a connection with answers[i] (the last one repeated)."""

    async def answer(writer: asyncio.StreamWriter, index: int, head: bytes, body: bytes) -> bool:
        writer.write(answers[min(index, len(answers) - 1)])
        return keep

    return answer


OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


class AppServer:
    """An aiohttp server; ``peers`` are the client ports it saw (one per connection)."""

    def __init__(self) -> None:
        self.peers: set[int] = set()
        self.in_flight = 0
        self.most_in_flight = 0
        self.heads: list[dict[str, str]] = []
        self.delay = 0.0
        self.port = 0
        app = web.Application()
        app.router.add_post("/echo", self.echo)
        app.router.add_get("/resource", self.resource)
        app.router.add_get("/empty", self.empty)
        app.router.add_get("/close", self.close)
        app.router.add_get("/chunked", self.chunked)
        self.runner = web.AppRunner(app, access_log=None)

    async def __aenter__(self) -> AppServer:
        await self.runner.setup()
        site = web.TCPSite(self.runner, LOCAL, 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()

    def url(self, path: str) -> str:
        return f"http://{LOCAL}:{self.port}{path}"

    def _seen(self, request: web.Request) -> None:
        self.peers.add(request.transport.get_extra_info("peername")[1])  # type: ignore[union-attr]
        self.heads.append(dict(request.headers))

    async def echo(self, request: web.Request) -> web.Response:
        self._seen(request)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)  # the server's work, not synchronisation
            body = await request.read()
        finally:
            self.in_flight -= 1
        return web.Response(body=body, headers={"Content-Type": request.content_type, "X-Seen": "1"})

    async def resource(self, request: web.Request) -> web.Response:  # GET and HEAD
        self._seen(request)
        return web.Response(body=b"x" * 100, content_type="application/octet-stream")

    async def empty(self, request: web.Request) -> web.Response:
        self._seen(request)
        return web.Response(status=204)

    async def close(self, request: web.Request) -> web.Response:
        self._seen(request)
        response = web.Response(body=b"bye")
        response.force_close()
        return response

    async def chunked(self, request: web.Request) -> web.StreamResponse:
        self._seen(request)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in (b"one,", b"two,", b"three"):
            await response.write(part)
        await response.write_eof()
        return response


@contextlib.asynccontextmanager
async def pool_of(**limits: Any) -> AsyncIterator[UpstreamPool]:
    pool = UpstreamPool(UpstreamLimits(**limits))
    try:
        yield pool
    finally:
        await pool.close()


# ------------------------------------------------------------------------------------------------ tests
def test_keep_alive_reuses_one_connection_and_sends_only_the_given_headers() -> None:
    async def main() -> None:
        async with AppServer() as server, pool_of() as pool:
            for i in range(20):
                status, headers, body = await pool.request(
                    "POST", server.url("/echo"), f"body {i}".encode(), {"Content-Type": "text/csv"}, timeout=5)
                assert (status, body) == (200, f"body {i}".encode())
                assert headers["content-type"].startswith("text/csv") and headers["X-SEEN"] == "1"
                assert "x-seen" in headers and "X-Absent" not in headers
            assert len(server.peers) == 1 and pool.stats()["opened"] == 1
            seen = server.heads[0]
            assert seen["Host"] == f"{LOCAL}:{server.port}" and seen["Content-Length"] == "6"
            assert set(seen) == {"Host", "Content-Type", "Content-Length"}  # no User-Agent, Accept-Encoding...

    run(main())


def test_chunked_body_with_trailers_arriving_in_pieces() -> None:
    answer = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
              b"4;name=value\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Checksum: abc\r\n"
              b"X-Other: 1\r\n\r\n")

    async def dribble(writer: asyncio.StreamWriter, index: int, head: bytes, body: bytes) -> bool:
        for i in range(0, len(answer), 7):  # the parser must resume at any byte
            writer.write(answer[i:i + 7])
            await writer.drain()
        return True

    async def main() -> None:
        async with RawServer(dribble) as server, pool_of() as pool:
            for _ in range(2):
                status, headers, body = await pool.request("POST", server.url(), b"x", {}, timeout=5)
                assert status == 200 and body == b"Wikipedia in\r\n\r\nchunks."
                assert headers.trailers is not None and dict(headers.trailers) == {"X-Checksum": "abc", "X-Other": "1"}
                assert "X-Checksum" not in headers  # trailers are kept apart
            assert server.connections == 1

    run(main())


def test_chunked_answer_of_a_real_server_and_no_trailers() -> None:
    async def main() -> None:
        async with AppServer() as server, pool_of() as pool:
            status, headers, body = await pool.request("GET", server.url("/chunked"), timeout=5)
            assert (status, body) == (200, b"one,two,three") and headers["Transfer-Encoding"] == "chunked"
            assert headers.trailers is None
            await pool.request("GET", server.url("/chunked"), timeout=5)
            assert len(server.peers) == 1

    run(main())


def test_body_delimited_by_the_close() -> None:
    async def main() -> None:
        answer = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the close"
        async with RawServer(fixed(answer, keep=False)) as server, pool_of() as pool:
            for _ in range(2):
                status, _, body = await pool.request("POST", server.url(), b"x", {}, timeout=5)
                assert (status, body) == (200, b"until the close")
            assert server.connections == 2  # such a connection is never reused

    run(main())


def test_head_204_and_304_have_no_body_and_keep_the_connection() -> None:
    async def main() -> None:
        async with AppServer() as server, pool_of() as pool:
            status, headers, body = await pool.request("HEAD", server.url("/resource"), timeout=5)
            assert (status, body, headers["Content-Length"]) == (200, b"", "100")
            status, _, body = await pool.request("GET", server.url("/empty"), timeout=5)
            assert (status, body) == (204, b"")
            status, _, body = await pool.request("GET", server.url("/resource"), timeout=5)
            assert (status, body) == (200, b"x" * 100)
            assert len(server.peers) == 1
        not_modified = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\nETag: \"1\"\r\n\r\n"
        async with RawServer(fixed(not_modified, OK)) as raw, pool_of() as pool:
            assert (await pool.request("GET", raw.url(), timeout=5))[::2] == (304, b"")
            assert (await pool.request("GET", raw.url(), timeout=5))[::2] == (200, b"ok")
            assert raw.connections == 1

    run(main())


def test_connection_close_is_honoured() -> None:
    async def main() -> None:
        async with AppServer() as server, pool_of() as pool:
            for _ in range(3):
                status, headers, body = await pool.request("GET", server.url("/close"), timeout=5)
                assert (status, body, headers["Connection"].lower()) == (200, b"bye", "close")
            assert len(server.peers) == 3
            await until(lambda: pool.stats() == {"opened": 3, "idle": 0, "busy": 0})
        # a server that says close but would go on: the client must not send a second request on it
        answer = b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 2\r\n\r\nok"
        async with RawServer(fixed(answer)) as raw, pool_of() as pool:
            for _ in range(3):
                assert (await pool.request("POST", raw.url(), b"x", {}, timeout=5)).body == b"ok"
            assert raw.connections == 3
        # HTTP/1.0 keeps the connection only when asked to
        answer = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
        async with RawServer(fixed(answer)) as raw, pool_of() as pool:
            for _ in range(2):
                assert (await pool.request("POST", raw.url(), b"x", {}, timeout=5)).body == b"ok"
            assert raw.connections == 2
        answer = b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok"
        async with RawServer(fixed(answer)) as raw, pool_of() as pool:
            for _ in range(2):
                assert (await pool.request("POST", raw.url(), b"x", {}, timeout=5)).body == b"ok"
            assert raw.connections == 1

    run(main())


def test_interim_1xx_answers_are_skipped() -> None:
    async def main() -> None:
        interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK
        async with RawServer(fixed(interim)) as server, pool_of() as pool:
            status, headers, body = await pool.request("POST", server.url(), b"x", {}, timeout=5)
            assert (status, body, "Link" in headers) == (200, b"ok", False)

    run(main())


def test_a_connection_the_server_closed_while_idle_is_not_used() -> None:
    async def main() -> None:
        async with RawServer(fixed(OK, keep=False)) as server, pool_of() as pool:
            # no Connection: close, so the pool keeps it; then the server closes it (its keep-alive timeout)
            assert (await pool.request("POST", server.url(), b"1", {}, timeout=5)).status == 200
            await until(lambda: server.closed == 1 and pool.stats()["idle"] == 0)
            assert (await pool.request("POST", server.url(), b"2", {}, timeout=5)).status == 200
            assert len(server.requests) == 2 and server.connections == 2  # a new connection, no resend

    run(main())


def test_idle_connections_expire_before_the_servers_keep_alive_timeout() -> None:
    async def main() -> None:
        hinted = b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=1, max=100\r\nContent-Length: 2\r\n\r\nok"
        async with RawServer(fixed(hinted)) as server, pool_of() as pool:  # 1 s hint: kept for 0 s
            for _ in range(2):
                assert (await pool.request("POST", server.url(), b"x", {}, timeout=5)).body == b"ok"
            assert server.connections == 2
        async with RawServer(fixed(OK)) as server, pool_of(idle_timeout=0.05) as pool:
            assert (await pool.request("POST", server.url(), b"x", {}, timeout=5)).body == b"ok"
            assert (await pool.request("POST", server.url(), b"x", {}, timeout=5)).body == b"ok"
            assert server.connections == 1
            used = time.monotonic()
            await until(lambda: time.monotonic() > used + 0.1)  # the idle time is what is tested
            assert (await pool.request("POST", server.url(), b"x", {}, timeout=5)).body == b"ok"
            assert server.connections == 2

    run(main())


def crossing_close() -> RawServer.Answer:
    """Answer the first request of a connection; read the second and close without a byte (the close that crosses a
    request on the wire, or a server that died on it)."""

    async def answer(writer: asyncio.StreamWriter, index: int, head: bytes, body: bytes) -> bool:
        if index == 0:
            writer.write(OK)
            return True
        return False

    return answer


def test_idempotent_request_is_resent_once_when_a_reused_connection_ends_without_answer() -> None:
    async def main() -> None:
        async with RawServer(crossing_close()) as server, pool_of() as pool:
            assert (await pool.request("DELETE", server.url("/models/a"), timeout=5)).status == 200
            assert (await pool.request("DELETE", server.url("/models/a"), timeout=5)).status == 200
            assert len(server.requests) == 3 and server.connections == 2

    run(main())


def test_post_is_not_resent_when_a_reused_connection_ends_without_answer() -> None:
    async def main() -> None:
        async with RawServer(crossing_close()) as server, pool_of() as pool:
            assert (await pool.request("POST", server.url(), b"1", {}, timeout=5)).status == 200
            with pytest.raises(UpstreamError, match="closed the connection without answering"):
                await pool.request("POST", server.url(), b"2", {}, timeout=5)
            assert len(server.requests) == 2  # the model saw it once; the client decides whether to retry
            assert (await pool.request("POST", server.url(), b"3", {}, timeout=5)).status == 200

    run(main())


def test_fresh_connection_ending_without_answer_is_not_resent() -> None:
    async def main() -> None:
        async with RawServer(fixed(b"", keep=False)) as server, pool_of() as pool:
            with pytest.raises(UpstreamError, match="without answering"):
                await pool.request("GET", server.url(), timeout=5)
            assert len(server.requests) == 1

    run(main())


@pytest.mark.parametrize(("answer", "message"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789", "after 10 of the 100 body bytes"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", "middle of its answer's chunked"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", "middle of its answer's chunked"),
    (b"HTTP/1.1 200 OK\r\nContent-Ty", "middle of its answer's header section"),
])
def test_a_server_closing_mid_answer_is_an_error_not_a_short_answer(answer: bytes, message: str) -> None:
    async def main() -> None:
        async with RawServer(fixed(answer, keep=False)) as server, pool_of() as pool:
            with pytest.raises(UpstreamError, match=message):
                await pool.request("POST", server.url(), b"x", {}, timeout=5)

    run(main())


@pytest.mark.parametrize(("answer", "message"), [
    (b"HTTP/2 200 OK\r\n\r\n", "malformed status line"),
    (b"HTTP/1.1 20 OK\r\n\r\n", "malformed status line"),
    (b"HTTP/1.1 099 Low\r\n\r\n", "malformed status line"),
    (b"ICY 200 OK\r\n\r\n", "malformed status line"),
    (b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", "header section"),  # bare LF: no end of the head found
    (b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok", "malformed header line"),
    (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 2\r\n\r\nok", "malformed header line"),
    (b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok", "control character"),
    (b"HTTP/1.1 200 OK\r\nX-A: a\nb\r\nContent-Length: 2\r\n\r\nok", "control character"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", "malformed Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok", "malformed Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0x2\r\n\r\nok", "malformed Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", "both"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", "unsupported Transfer-Encoding"),
    (b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "HTTP/1.0 answer with Transfer"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk-size line"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n", "does not end with CRLF"),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", "switched protocols"),
])
def test_malformed_answers_are_refused(answer: bytes, message: str) -> None:
    async def main() -> None:
        async with RawServer(fixed(answer, keep=False)) as server, pool_of(max_head_bytes=1024) as pool:
            with pytest.raises(UpstreamError, match=message):
                await pool.request("POST", server.url(), b"x", {}, timeout=5)

    run(main())


def test_repeated_equal_content_lengths_are_one_length() -> None:
    async def main() -> None:
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 2, 2\r\n\r\nok"
        async with RawServer(fixed(answer)) as server, pool_of() as pool:
            status, headers, body = await pool.request("POST", server.url(), b"x", {}, timeout=5)
            assert (status, body, headers.get_all("CONTENT-LENGTH")) == (200, b"ok", ["2", "2, 2"])

    run(main())


@pytest.mark.parametrize(("answer", "message"), [
    (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n", "header section is over 1,024 bytes"),
    (b"HTTP/1.1 200 OK\r\n" + b"X-A: 1\r\n" * 11 + b"Content-Length: 0\r\n\r\n", "more than 10 header fields"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n", "over the limit of 100 bytes"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n" + b"a" * 64 + b"\r\n40\r\n", "limit of 100"),
    (b"HTTP/1.1 200 OK\r\n\r\n" + b"a" * 101, "over the limit of 100 bytes"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: " + b"t" * 2000 + b"\r\n\r\n", "trailer"),
])
def test_oversized_answers_are_refused(answer: bytes, message: str) -> None:
    async def main() -> None:
        async with RawServer(fixed(answer, keep=False)) as server, \
                pool_of(max_head_bytes=1024, max_header_fields=10, max_body_bytes=100) as pool:
            with pytest.raises(UpstreamError, match=message):
                await pool.request("POST", server.url(), b"x", {}, timeout=5)

    run(main())


def test_stray_bytes_after_an_answer_end_the_connection() -> None:
    async def main() -> None:
        async with RawServer(fixed(OK + b"HTTP/1.1 200 OK\r\n")) as server, pool_of() as pool:
            for _ in range(2):
                assert (await pool.request("POST", server.url(), b"x", {}, timeout=5)).body == b"ok"
            assert server.connections == 2

    run(main())


def silent() -> RawServer.Answer:
    async def answer(writer: asyncio.StreamWriter, index: int, head: bytes, body: bytes) -> bool:
        await asyncio.Event().wait()  # never answers (cancelled when the server closes)
        return False

    return answer


def test_timeouts_cover_the_answer_and_the_wait_for_a_connection() -> None:
    async def main() -> None:
        async with RawServer(silent()) as server, pool_of(max_connections_per_host=1) as pool:
            began = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await pool.request("POST", server.url(), b"x", {}, timeout=0.3)
            assert 0.25 < time.monotonic() - began < 3
            first = asyncio.ensure_future(pool.request("POST", server.url(), b"y", {}, timeout=1))
            await until(lambda: len(server.requests) == 2)
            began = time.monotonic()
            with pytest.raises(asyncio.TimeoutError, match="no free connection"):  # the one slot is busy
                await pool.request("POST", server.url(), b"z", {}, timeout=0.2)
            assert time.monotonic() - began < 2
            with pytest.raises(asyncio.TimeoutError):
                await first
            assert pool.stats()["busy"] == 0
        for bad in (0, -1, float("nan")):
            with pytest.raises(ValueError, match="timeout"):
                await UpstreamPool().request("GET", "http://127.0.0.1:1/", timeout=bad)

    run(main())


def test_unreachable_container_and_bad_requests() -> None:
    from helpers import free_port

    async def main() -> None:
        async with pool_of() as pool:
            with pytest.raises(UpstreamError, match="cannot connect to 127.0.0.1"):
                await pool.request("GET", f"http://127.0.0.1:{free_port()}/ping", timeout=5)
            for url in ("https://127.0.0.1/", "ftp://x/", "http://u:p@127.0.0.1/", "http://127.0.0.1/a b"):
                with pytest.raises(ValueError, match="http"):
                    await pool.request("GET", url, timeout=5)
            with pytest.raises(ValueError, match="control character"):
                await pool.request("POST", "http://127.0.0.1:1/", b"", {"X-A": "a\r\nX-Injected: 1"}, timeout=5)
            with pytest.raises(ValueError, match="sets it itself"):
                await pool.request("POST", "http://127.0.0.1:1/", b"", {"Content-Length": "5"}, timeout=5)

    run(main())


def test_many_tasks_share_a_bounded_pool() -> None:
    async def main() -> None:
        async with AppServer() as server, pool_of(max_connections_per_host=4) as pool:
            server.delay = 0.01

            async def one(i: int) -> None:
                status, _, body = await pool.request("POST", server.url("/echo"), str(i).encode(),
                                                     {"Content-Type": "text/plain"}, timeout=20)
                assert (status, body) == (200, str(i).encode())

            await asyncio.gather(*(one(i) for i in range(200)))
            assert server.most_in_flight == 4 and len(server.peers) == 4
            assert pool.stats() == {"opened": 4, "idle": 4, "busy": 0}

    run(main())


def test_a_cancelled_request_frees_its_connection() -> None:
    async def main() -> None:
        async with RawServer(silent()) as server, pool_of(max_connections_per_host=1) as pool:
            task = asyncio.ensure_future(pool.request("POST", server.url(), b"x", {}, timeout=10))
            await until(lambda: len(server.requests) == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert pool.stats()["busy"] == 0
            waiting = asyncio.ensure_future(pool.request("POST", server.url(), b"y", {}, timeout=10))
            await until(lambda: len(server.requests) == 2)  # the slot was free again
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting

    run(main())


def test_close_fails_requests_in_flight() -> None:
    async def main() -> None:
        async with RawServer(silent()) as server:
            pool = UpstreamPool()
            task = asyncio.ensure_future(pool.request("POST", server.url(), b"x", {}, timeout=10))
            await until(lambda: len(server.requests) == 1)
            await pool.close()
            with pytest.raises(UpstreamError):
                await task
            with pytest.raises(UpstreamError, match="closed"):
                await pool.request("POST", server.url(), b"x", {}, timeout=10)

    run(main())


def test_large_bodies_both_ways() -> None:
    async def main() -> None:
        payload = bytes(range(256)) * 40_000  # 10 MB, over the 64 KiB single-write threshold
        async with AppServer() as server, pool_of() as pool:
            server.runner.app._client_max_size = 1 << 30
            status, _, body = await pool.request("POST", server.url("/echo"), payload,
                                                 {"Content-Type": "application/octet-stream"}, timeout=20)
            assert status == 200 and body == payload

    run(main())


def test_post_maps_errors_as_the_platform_does() -> None:
    from helpers import free_port

    async def main() -> None:
        async with RawServer(silent()) as server, pool_of() as pool:
            with pytest.raises(FrontError) as info:
                await post(pool, server.url(), b"x", {}, timeout=0.2, what="container a")
            assert (info.value.status, info.value.code) == (424, "ModelError")
            assert "container a" in info.value.message
            with pytest.raises(FrontError) as info:
                await post(pool, f"http://127.0.0.1:{free_port()}/invocations", b"x", {}, timeout=5)
            assert (info.value.status, info.value.code) == (503, "ServiceUnavailable")
            with pytest.raises(FrontError) as info:
                await post(pool, server.url(), b"x", {}, timeout=0)
            assert info.value.code == "ModelError"
        async with AppServer() as app, pool_of() as pool:
            reply = await post(pool, app.url("/echo"), b"[1]", {"Content-Type": "application/json"})
            assert (reply.status, reply.body, reply.content_type) == (200, b"[1]", "application/json")
            assert "X-Seen" not in reply.headers  # only the headers InvokeEndpoint returns

    run(main())


def test_headers_mapping() -> None:
    headers = Headers([("Content-Type", "a"), ("X-Multi", "1"), ("x-multi", "2")])
    assert headers["content-type"] == "a" and headers.get("X-MULTI") == "1, 2"
    assert list(headers) == ["Content-Type", "X-Multi"] and len(headers) == 2
    assert headers.get_all("x-multi") == ["1", "2"] and headers.get("missing") is None


def test_a_request_under_64_kib_goes_out_in_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """Head and body in one ``send()`` (one segment, one wakeup of the container's nginx); a larger body is written
    after the head as it is, not copied into it. Counted on asyncio's own transport, whose ``write`` is Python."""
    from asyncio import selector_events

    writes: list[int] = []
    original = selector_events._SelectorSocketTransport.write
    ports: list[int] = []

    def write(self: Any, data: Any) -> None:
        if self.get_extra_info("peername")[1] in ports:  # the client's side only (the server shares the loop)
            writes.append(len(data))
        original(self, data)

    async def main() -> None:
        async with AppServer() as server, pool_of() as pool:
            ports.append(server.port)
            monkeypatch.setattr(selector_events._SelectorSocketTransport, "write", write)
            for size in (1, 1024, 65535, 65536, 300_000):
                del writes[:]
                body = b"x" * size
                status, _, answer = await pool.request("POST", server.url("/echo"), body,
                                                       {"Content-Type": "text/csv"}, timeout=10)
                assert (status, answer) == (200, body)
                assert len(writes) == (1 if size < 65536 else 2) and writes[-1] >= size, (size, writes)

    asyncio.run(main())
