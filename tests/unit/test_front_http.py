"""The endpoint front's HTTP/1.1 server (smbyoc.emulator.http_server) over real sockets: keep-alive, pipelining,
strict parsing (the bar of gunicorn's message.py), body limits, Expect, timeouts, the front's routes. Every test
runs on asyncio's event loop and on uvloop's (the front's default when installed)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from helpers import free_port
from smbyoc.emulator import front as front_module
from smbyoc.emulator.front import Call, Front, FrontError, Reply, new_event_loop
from smbyoc.emulator.http_server import HttpServer, Request, Response, ServerLimits, plain
from smbyoc.errors import ConfigError

pytestmark = pytest.mark.usefixtures("front_event_loop")


# ------------------------------------------------------------------------------------------------ helpers
class Conn:
    """A raw client connection: ``send`` bytes, ``answer()`` reads one response."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> Conn:
        self.sock.sendall(data)
        return self

    def answer(self, head: bool = False) -> tuple[int, dict[str, str], bytes]:
        line = self.file.readline()
        assert line.startswith(b"HTTP/1.1 "), f"no status line: {line!r}"
        status = int(line.split()[1])
        headers: dict[str, str] = {}
        while True:
            field = self.file.readline()
            if field in (b"\r\n", b""):
                break
            name, _, value = field.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = b"" if head or status in (100, 204, 304) else self.file.read(int(headers.get("content-length", "0")))
        return status, headers, body

    def closed(self, within: float = 10.0) -> bool:
        """Whether the server closes the connection within ``within`` seconds (nothing else arriving)."""
        self.sock.settimeout(within)
        try:
            return self.file.read(1) == b""
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def post(path: str, body: bytes = b"x", *headers: str, version: str = "1.1") -> bytes:
    lines = [f"POST {path} HTTP/{version}", "Host: test", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Echo:
    """A router answering with what it was given; ``X-Amzn-SageMaker-Custom-Attributes: delay=S`` waits first."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.finished = 0

    async def open(self, session: Any) -> None:
        pass

    async def close(self) -> None:
        pass

    async def invoke(self, call: Call) -> Reply:
        self.calls.append(call)
        attributes = call.header("X-Amzn-SageMaker-Custom-Attributes") or ""
        if attributes.startswith("delay="):
            await asyncio.sleep(float(attributes[6:]))
        if attributes == "fail":
            raise FrontError(503, "ServiceUnavailable", "down")
        if attributes == "crlf":
            return Reply(200, b"x", {"Content-Type": "text/plain\r\nX-Injected: 1"})
        self.finished += 1
        return Reply(200, json.dumps({"body": call.body.decode("latin-1"), "headers": dict(call.headers)}).encode(),
                     {"Content-Type": "application/json"})


@pytest.fixture
def echo_front() -> Iterator[tuple[Front, Echo]]:
    router = Echo()
    front = Front(router, port=free_port(), endpoint_name="ep")
    front.start()
    try:
        yield front, router
    finally:
        front.stop()


class ServerThread:
    """An :class:`HttpServer` with its own handler, in a thread with its own event loop."""

    def __init__(self, handler: Callable[[Request], Awaitable[Response]], kind: str, **kwargs: Any) -> None:
        self.loop = new_event_loop(kind)
        self.server = HttpServer(handler, host="127.0.0.1", port=0, **kwargs)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        self.port = self.server.port

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def server_of(front_event_loop: str) -> Iterator[Callable[..., ServerThread]]:
    made: list[ServerThread] = []

    def make(handler: Callable[[Request], Awaitable[Response]] | None = None, **kwargs: Any) -> ServerThread:
        async def echo(request: Request) -> Response:
            return Response(200, request.body, {"X-Method": request.method, "X-Path": request.path})

        made.append(ServerThread(handler or echo, front_event_loop, **kwargs))
        return made[-1]

    yield make
    for server in made:
        server.close()


# ------------------------------------------------------------------------------------------------ connections
def test_keep_alive_answers_many_requests_on_one_connection(echo_front: tuple[Front, Echo]) -> None:
    front, router = echo_front
    conn = Conn(front.port)
    for i in range(3):
        status, headers, body = conn.send(post("/endpoints/ep/invocations", f"row {i}".encode(),
                                               "Content-Type: text/csv")).answer()
        assert status == 200 and json.loads(body)["body"] == f"row {i}"
        assert headers["x-amzn-invoked-production-variant"] == "AllTraffic" and "connection" not in headers
    assert front.loop_name == front_module.DEFAULT_EVENT_LOOP
    conn.close()


def test_pipelined_requests_are_answered_in_order(echo_front: tuple[Front, Echo]) -> None:
    front, _ = echo_front
    conn = Conn(front.port)
    slow_then_fast = (post("/invocations", b"first", "X-Amzn-SageMaker-Custom-Attributes: delay=0.3")
                      + post("/invocations", b"second") + b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n")
    conn.send(slow_then_fast)
    answers = [conn.answer() for _ in range(3)]
    assert [json.loads(a[2])["body"] for a in answers[:2]] == ["first", "second"]
    assert answers[2][:1] == (200,) and json.loads(answers[2][2]) == {"status": "Healthy"}
    conn.close()


@pytest.mark.parametrize(("request_bytes", "closes", "connection"), [
    (post("/ping", b"", version="1.0").replace(b"POST", b"GET"), True, "close"),
    (post("/ping", b"", "Connection: keep-alive", version="1.0").replace(b"POST", b"GET"), False, "keep-alive"),
    (post("/ping", b"", "Connection: close").replace(b"POST", b"GET"), True, "close"),
])
def test_connection_header_and_http_1_0(echo_front: tuple[Front, Echo], request_bytes: bytes, closes: bool,
                                        connection: str) -> None:
    conn = Conn(echo_front[0].port)
    status, headers, _ = conn.send(request_bytes).answer()
    assert status == 200 and headers["connection"] == connection
    assert conn.closed(within=1.0 if not closes else 10.0) is closes
    conn.close()


def test_repeated_headers_are_joined_and_only_invoke_endpoint_headers_pass(echo_front: tuple[Front, Echo]) -> None:
    front, router = echo_front
    conn = Conn(front.port)
    status, _, body = conn.send(post("/endpoints/ep/invocations", b"{}", "Content-Type: application/json",
                                     "Accept: text/csv", "accept: application/json", "X-Other: dropped")).answer()
    assert status == 200
    assert json.loads(body)["headers"] == {"Content-Type": "application/json", "Accept": "text/csv, application/json"}
    conn.close()


def test_chunked_request_body_is_decoded_and_its_trailers_dropped(echo_front: tuple[Front, Echo]) -> None:
    front, router = echo_front
    conn = Conn(front.port)
    conn.send(b"POST /invocations HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Type: text/csv\r\n\r\n"
              b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\nContent-Type: evil\r\n\r\n")
    status, _, body = conn.answer()
    assert status == 200 and json.loads(body) == {"body": "abcde", "headers": {"Content-Type": "text/csv"}}
    assert conn.send(post("/invocations", b"again")).answer()[0] == 200  # still in step
    conn.close()


def test_a_client_that_leaves_does_not_cancel_its_invocation(echo_front: tuple[Front, Echo]) -> None:
    front, router = echo_front
    conn = Conn(front.port)
    conn.send(post("/invocations", b"x", "X-Amzn-SageMaker-Custom-Attributes: delay=0.2"))
    deadline = time.monotonic() + 10
    while not router.calls and time.monotonic() < deadline:
        time.sleep(0.01)
    conn.close()
    while router.finished < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert router.finished == 1
    assert Conn(front.port).send(post("/invocations")).answer()[0] == 200


# ------------------------------------------------------------------------------------------------ strict parsing
@pytest.mark.parametrize(("request_bytes", "status", "message"), [
    (b"POST /invocations HTTP/1.1\r\nBad Name: x\r\nContent-Length: 1\r\n\r\nx", 400, "Invalid header token"),
    (b"POST /invocations HTTP/1.1\r\nHost : x\r\nContent-Length: 1\r\n\r\nx", 400, "Invalid header token"),
    (b"POST /invocations HTTP/1.1\r\nX-A: a\x00b\r\nContent-Length: 1\r\n\r\nx", 400, "header line 'X-A: a\\x00b'"),
    (b"POST /invocations HTTP/1.1\r\nX-A: a\x01b\r\nContent-Length: 1\r\n\r\nx", 400, "Invalid header value char"),
    (b"POST /invocations HTTP/1.1\r\nX-A: a\rb\r\nContent-Length: 1\r\n\r\nx", 400, "header line"),
    (b"POST /invocations HTTP/1.1\nHost: x\nContent-Length: 1\n\nx", 400, "Bad Request"),
    (b"POST /invocations HTTP/1.1\r\nX-A: a\r\n b\r\nContent-Length: 1\r\n\r\nx", 400, "header line ' b'"),
    (b"POST /invocations HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
     400, "Transfer-Encoding can't be present with Content-Length"),
    (b"POST /invocations HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx", 400,
     "Duplicate Content-Length"),
    (b"POST /invocations HTTP/1.1\r\nContent-Length: +1\r\n\r\nx", 400, "Invalid character in Content-Length"),
    (b"POST /invocations HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n", 501,
     "Transfer-Encoding 'gzip, chunked' (only chunked)"),
    (b"POST /invocations HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\nx", 501, "Transfer-Encoding 'gzip'"),
    (b"POST /invocations HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n", 400, "HTTP/1.0"),
    (b"POST /invocations HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nx\r\n0\r\n\r\n", 400, "chunk size"),
    (b"POST /invocations HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxy\r\n0\r\n\r\n", 400, "chunk"),
    (b"POST /invocations HTTP/2.0\r\nContent-Length: 1\r\n\r\nx", 505, "HTTP/2.0"),
    (b"POST /invocations HTTP/1.2\r\nContent-Length: 1\r\n\r\nx", 400, "Invalid HTTP version"),
    (b"BREW /invocations HTTP/1.1\r\n\r\n", 501, "method"),
    (b"POST /a b HTTP/1.1\r\n\r\n", 400, "Bad Request"),
    (b"POST /invocations HTTP/1.1\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\nx", 417, "'200-ok'"),
])
def test_malformed_requests_get_one_line_and_the_close(echo_front: tuple[Front, Echo], request_bytes: bytes,
                                                       status: int, message: str) -> None:
    front, router = echo_front
    conn = Conn(front.port)
    got, headers, body = conn.send(request_bytes).answer()
    assert got == status and headers["connection"] == "close" and headers["content-type"].startswith("text/plain")
    text = body.decode()
    assert message in text and text.count("\n") == 1, text
    assert conn.closed() and not router.calls
    conn.close()


def test_an_error_after_a_good_pipelined_request_comes_after_its_answer(echo_front: tuple[Front, Echo]) -> None:
    conn = Conn(echo_front[0].port)
    conn.send(post("/invocations", b"ok", "X-Amzn-SageMaker-Custom-Attributes: delay=0.2") + b"BAD\r\n\r\n")
    assert conn.answer()[0] == 200 and conn.answer()[0] in (400, 501) and conn.closed()
    conn.close()


def test_upgrades_are_answered_not_switched(echo_front: tuple[Front, Echo]) -> None:
    conn = Conn(echo_front[0].port)
    status, headers, _ = conn.send(b"GET /ping HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                                   b"\r\n").answer()
    assert status == 200 and headers["connection"] == "close" and conn.closed()
    conn.close()


def test_head_and_field_count_limits(server_of: Callable[..., ServerThread]) -> None:
    server = server_of(limits=ServerLimits(max_head_bytes=1024, max_header_fields=8))
    conn = Conn(server.port)
    status, _, body = conn.send(b"GET / HTTP/1.1\r\n" + b"X-A: 1\r\n" * 9 + b"\r\n").answer()
    assert status == 431 and b"more than 8 header fields" in body and conn.closed()
    conn = Conn(server.port)
    status, _, body = conn.send(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n").answer()
    assert status == 431 and b"over 1,024 bytes" in body and conn.closed()
    conn = Conn(server.port)  # a header line that never ends is cut off too (memory): 431 or, mid-send, a reset
    try:
        conn.sock.sendall(b"GET / HTTP/1.1\r\nX-Endless: ")
        for _ in range(200):
            conn.sock.sendall(b"a" * 4096)
        status, _, body = conn.answer()
        assert status == 431 and b"over 1,024 bytes" in body and conn.closed()
    except (ConnectionResetError, BrokenPipeError):
        pass  # the server closed while the client was sending
    conn.close()
    with pytest.raises(ConfigError, match="max_head_bytes"):
        ServerLimits(max_head_bytes=0)


# ------------------------------------------------------------------------------------------------ bodies
def test_a_body_over_6_mb_is_validation_error_413_and_the_connection_survives(echo_front: tuple[Front, Echo]) -> None:
    front, router = echo_front
    conn = Conn(front.port)
    status, headers, body = conn.send(post("/endpoints/ep/invocations", b"x" * (6 * 1024 * 1024 + 1))).answer()
    assert status == 413 and headers["x-amzn-errortype"] == "ValidationError"
    assert json.loads(body)["Message"] == "the request body has 6,291,457 bytes; the limit is 6,291,456 (6 MB)"
    chunked = b"POST /invocations HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    for _ in range(7):
        chunked += b"100000\r\n" + b"y" * 0x100000 + b"\r\n"
    status, headers, body = conn.send(chunked + b"0\r\n\r\n").answer()
    assert status == 413 and "over the limit of 6,291,456 bytes" in json.loads(body)["Message"]
    status, _, body = conn.send(post("/endpoints/ep/async-invocations", b"z" * (6 * 1024 * 1024 + 1))).answer()
    assert status == 400 and json.loads(body)["Message"] == "the request body is over the front's limit"
    assert conn.send(post("/invocations", b"fine")).answer()[0] == 200 and len(router.calls) == 1
    conn.close()


def test_a_body_over_the_drain_limit_is_answered_at_once_and_closed(server_of: Callable[..., ServerThread]) -> None:
    server = server_of(max_body=100, drain_limit=1000)
    conn = Conn(server.port)
    status, _, _ = conn.send(b"POST / HTTP/1.1\r\nContent-Length: 500\r\n\r\n" + b"a" * 500).answer()
    assert status == 413  # drained: the connection stays
    assert conn.send(b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nok").answer()[:1] == (200,)
    status, headers, _ = conn.send(b"POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n").answer()
    assert status == 413 and headers["connection"] == "close" and conn.closed()
    conn.close()
    conn = Conn(server.port)
    conn.send(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"100\r\n" + b"b" * 256 + b"\r\n")
    for _ in range(4):
        conn.send(b"100\r\n" + b"b" * 256 + b"\r\n")
    status, headers, _ = conn.answer()
    assert status == 413 and headers["connection"] == "close" and conn.closed()
    conn.close()


def test_expect_100_continue(echo_front: tuple[Front, Echo]) -> None:
    conn = Conn(echo_front[0].port)
    conn.send(b"POST /invocations HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
    assert conn.answer()[0] == 100
    status, _, body = conn.send(b"body").answer()
    assert status == 200 and json.loads(body)["body"] == "body"
    conn.send(b"POST /invocations HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 7000000\r\n\r\n")
    status, headers, body = conn.answer()  # refused before the body is sent: no 100, the close
    assert status == 413 and headers["connection"] == "close" and conn.closed()
    conn.close()


# ------------------------------------------------------------------------------------------------ timeouts
def test_slow_heads_slow_bodies_and_idle_connections_time_out(server_of: Callable[..., ServerThread]) -> None:
    server = server_of(limits=ServerLimits(head_timeout=1, body_timeout=1, keep_alive_timeout=1))
    slow_head = Conn(server.port).send(b"POST / HTTP/1.1\r\nX-A: 1\r\n")
    slow_body = Conn(server.port).send(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
    idle = Conn(server.port)
    assert idle.send(b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nok").answer()[0] == 200
    began = time.monotonic()
    for conn, what in ((slow_head, b"head"), (slow_body, b"body")):
        status, headers, body = conn.answer()
        assert status == 408 and what in body and headers["connection"] == "close" and conn.closed()
    assert idle.closed() and time.monotonic() - began < 8
    for conn in (slow_head, slow_body, idle):
        conn.close()


# ------------------------------------------------------------------------------------------------ answers
def test_handler_errors_and_unsendable_answers_are_500(server_of: Callable[..., ServerThread]) -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/raise":
            raise RuntimeError("boom")
        if request.path == "/inject":
            return Response(200, b"x", {"X-A": "a\r\nX-Injected: 1"})
        if request.path == "/own":
            return Response(200, b"x", {"Content-Length": "99"})
        return Response(204, b"ignored")

    server = server_of(handler)
    conn = Conn(server.port)
    for path in ("/raise", "/inject", "/own"):
        status, headers, body = conn.send(f"GET {path} HTTP/1.1\r\n\r\n".encode()).answer()
        assert status == 500 and "x-injected" not in headers and body == b"500 Internal Server Error\n"
    status, headers, body = conn.send(b"GET /none HTTP/1.1\r\n\r\n").answer()
    assert status == 204 and "content-length" not in headers
    status, headers, body = conn.send(b"HEAD /x HTTP/1.1\r\n\r\n").answer(head=True)
    assert status == 204
    conn.close()


def test_close_waits_for_requests_in_progress(front_event_loop: str) -> None:
    release = threading.Event()

    async def handler(request: Request) -> Response:
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 10)
        return plain(200, "done")

    server = ServerThread(handler, front_event_loop, limits=ServerLimits(shutdown_grace=10))
    busy = Conn(server.port).send(b"GET / HTTP/1.1\r\n\r\n")
    idle = Conn(server.port)
    deadline = time.monotonic() + 10
    while (server.server.stats()["in_progress"] < 1 or server.server.stats()["connections"] < 2) and \
            time.monotonic() < deadline:  # (an idle connection not accepted yet would never hear of the close)
        time.sleep(0.01)
    closing = threading.Thread(target=server.close)
    closing.start()
    assert idle.closed()
    release.set()
    status, headers, body = busy.answer()
    assert (status, body, headers["connection"]) == (200, b"done\n", "close")
    closing.join(30)
    assert not closing.is_alive()


# ------------------------------------------------------------------------------------------------ routes
@pytest.mark.parametrize(("raw", "status", "check"), [
    (b"GET /ping HTTP/1.1\r\n\r\n", 200, lambda h, b: json.loads(b) == {"status": "Healthy"}),
    (b"HEAD /ping HTTP/1.1\r\n\r\n", 200, lambda h, b: b == b"" and h["content-length"] == "21"),
    (b"POST /ping HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405, lambda h, b: h["allow"] == "GET, HEAD"),
    (b"GET /invocations HTTP/1.1\r\n\r\n", 405, lambda h, b: h["allow"] == "POST"),
    (b"GET /endpoints/ep/invocations HTTP/1.1\r\n\r\n", 405, lambda h, b: h["allow"] == "POST"),
    (b"GET /nowhere HTTP/1.1\r\n\r\n", 404, lambda h, b: b == b"404: Not Found\n"),
    (b"GET /endpoints/ep/other HTTP/1.1\r\n\r\n", 404, lambda h, b: True),
    (b"GET /invocations/ HTTP/1.1\r\n\r\n", 404, lambda h, b: True),
    (post("/endpoints/other/invocations"), 400,
     lambda h, b: h["x-amzn-errortype"] == "ValidationError" and "Endpoint other of" in json.loads(b)["Message"]),
    (post("/endpoints/e%70/invocations"), 200, lambda h, b: json.loads(b)["body"] == "x"),  # %70 is p
    (post("http://example/endpoints/ep/invocations"), 200, lambda h, b: True),  # absolute-form
    (post("/endpoints/ep/invocations?x=1"), 200, lambda h, b: True),
    (post("/endpoints/ep/async-invocations"), 400, lambda h, b: "not an asynchronous endpoint" in b.decode()),
    (b"GET /_smbyoc/endpoints/ep HTTP/1.1\r\n\r\n", 400, lambda h, b: "Could not find endpoint" in b.decode()),
    (post("/invocations", b"x", "X-Amzn-SageMaker-Custom-Attributes: fail"), 503,
     lambda h, b: h["x-amzn-errortype"] == "ServiceUnavailable" and json.loads(b) == {"Message": "down"}),
    (post("/invocations", b"x", "X-Amzn-SageMaker-Custom-Attributes: crlf"), 500, lambda h, b: "x-injected" not in h),
    (post("/endpoints/ep/invocations", b"x", "X-Amzn-SageMaker-Target-Variant: " + "v" * 64), 400,
     lambda h, b: "X-Amzn-SageMaker-Target-Variant: the value has 64 characters" in b.decode()),
])
def test_routes(echo_front: tuple[Front, Echo], raw: bytes, status: int, check: Callable[..., bool]) -> None:
    conn = Conn(echo_front[0].port)
    got, headers, body = conn.send(raw).answer(head=raw.startswith(b"HEAD"))
    assert got == status and check(headers, body), (headers, body)
    assert "date" in headers
    conn.close()


def test_an_unknown_event_loop_is_refused() -> None:
    with pytest.raises(ConfigError, match="event_loop"):
        Front(Echo(), event_loop="trio")


# ------------------------------------------------------------------------------------------------ upstream timeouts
def test_long_upstream_timeouts_are_enforced_by_the_sweep(front_event_loop: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Timeouts from COARSE_TIMEOUT up are not a timer per request but a sweep of the busy connections."""
    from smbyoc.emulator import upstream

    monkeypatch.setattr(upstream, "COARSE_TIMEOUT", 0.2)
    monkeypatch.setattr(upstream, "SWEEP_SECONDS", 0.05)

    async def main() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1)  # reads the request, never answers
            await asyncio.sleep(30)

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = upstream.UpstreamPool()
        try:
            began = time.monotonic()
            with pytest.raises(asyncio.TimeoutError, match="no complete answer from 127.0.0.1:.* within 0.3 s"):
                await pool.request("POST", f"http://127.0.0.1:{port}/invocations", b"x", timeout=0.3)
            assert 0.3 <= time.monotonic() - began < 3
            assert pool.stats()["busy"] == 0
        finally:
            await pool.close()
            server.close()

    loop = new_event_loop(front_event_loop)
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 30))
    finally:
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()
        if left:
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        loop.close()
