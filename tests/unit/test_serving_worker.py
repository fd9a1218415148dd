"""The pure parts of the ``upstream`` worker: request-head parsing, body reading, the response writer."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from smbyoc.serving.worker import (
    MAX_HEAD_BYTES,
    MAX_HEADER_FIELDS,
    ConnectionClosed,
    MalformedRequest,
    ResponseFailed,
    ResponseWriter,
    error_bytes,
    parse_head,
    read_body,
    read_head,
    response_head,
)

SERVER = ("localhost", "8080")
NGINX_HEAD = (
    b"POST /invocations?x=1&y=%41 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Length: 11\r\n"
    b"Content-Type: application/json\r\nAccept: text/csv\r\nX-Amzn-SageMaker-Custom-Attributes: a=1"
)


def feeder(*chunks: bytes) -> Callable[[int], bytes]:
    pending = list(chunks)
    return lambda _n: pending.pop(0) if pending else b""


def test_parse_head_of_a_request_as_nginx_sends_it() -> None:
    environ = parse_head(NGINX_HEAD, SERVER)
    assert environ["REQUEST_METHOD"] == "POST" and environ["PATH_INFO"] == "/invocations"
    assert environ["QUERY_STRING"] == "x=1&y=%41" and environ["SCRIPT_NAME"] == ""
    assert environ["CONTENT_LENGTH"] == "11" and environ["CONTENT_TYPE"] == "application/json"
    assert environ["HTTP_ACCEPT"] == "text/csv" and environ["HTTP_HOST"] == "127.0.0.1:8080"
    assert environ["HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES"] == "a=1"
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1" and environ["SERVER_PORT"] == "8080"
    assert "HTTP_CONTENT_LENGTH" not in environ and "HTTP_CONTENT_TYPE" not in environ


def test_parse_head_pep3333_details() -> None:
    environ = parse_head(
        b"GET /models/caf%C3%A9%20x HTTP/1.0\r\nAccept: a/b\r\naccept: c/d\r\nX_Spoofed: 1\r\nX-E:  spaced \t", SERVER
    )
    assert environ["PATH_INFO"] == "/models/café x".encode().decode("latin-1")  # bytes as latin-1
    assert environ["HTTP_ACCEPT"] == "a/b,c/d"  # repeated headers joined with a comma
    assert "HTTP_X_SPOOFED" not in environ  # underscores are dropped, as nginx and gunicorn do
    assert environ["HTTP_X_E"] == "spaced" and environ["SERVER_PROTOCOL"] == "HTTP/1.0"
    absolute = parse_head(b"GET http://example.com/ping?q HTTP/1.1\r\nHost: x", SERVER)
    assert absolute["PATH_INFO"] == "/ping" and absolute["QUERY_STRING"] == "q"


@pytest.mark.parametrize(("head", "status", "needle"), [
    (b"POST /invocations HTTP/2.0\r\nHost: x", 400, "request line"),
    (b"POST  /invocations HTTP/1.1\r\nHost: x", 400, "request line"),
    (b"GARBAGE", 400, "request line"),
    (b"POST invocations HTTP/1.1\r\nHost: x", 400, "request target"),
    (b"POST /invocations HTTP/1.1\r\nNo colon here", 400, "header line"),
    (b"POST /invocations HTTP/1.1\r\nHost: x\r\n folded", 400, "header line"),
    (b"POST /invocations HTTP/1.1\r\nBad : x", 400, "header line"),
    (b"POST /invocations HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1", 400, "more than one Content-Length"),
    (b"POST /invocations HTTP/1.1\r\nContent-Length: -1", 400, "bad Content-Length '-1'"),
    (b"POST /invocations HTTP/1.1\r\nTransfer-Encoding: chunked", 501, "Transfer-Encoding"),
    # gunicorn's rules (gunicorn/http/message.py): names are RFC 9110 tokens, values have no controls,
    # Content-Length is ASCII digits ("\xb2" is latin-1 for "²", which str.isdigit() accepts).
    (b"POST /invocations HTTP/1.1\r\nContent-Length: \xb2", 400, "not ASCII digits"),
    (b"POST /invocations HTTP/1.1\r\nContent-Length: \xb9\xb2", 400, "not ASCII digits"),
    (b"POST /invocations HTTP/1.1\r\nContent-Length: +1", 400, "not ASCII digits"),
    (b"POST /invocations HTTP/1.1\r\nContent-Length: 1 1", 400, "not ASCII digits"),
    (b"POST /invocations HTTP/1.1\r\nContent-Length: ", 400, "not ASCII digits"),
    (b"POST /invocations HTTP/1.1\r\ncontent-length: 1\r\nContent-Length: 2", 400, "more than one"),
    (b"POST /invocations HTTP/1.1\r\nX Name: x", 400, "not an RFC 9110 token"),
    (b"POST /invocations HTTP/1.1\r\nX-Na\x00me: x", 400, "not an RFC 9110 token"),
    (b"POST /invocations HTTP/1.1\r\nX-N@me: x", 400, "not an RFC 9110 token"),
    (b"POST /invocations HTTP/1.1\r\nX-\xe9: x", 400, "not an RFC 9110 token"),
    (b"POST /invocations HTTP/1.1\r\n: x", 400, "not an RFC 9110 token"),
    (b"POST /invocations HTTP/1.1\r\nX-A: a\x00b", 400, "control character"),
    (b"POST /invocations HTTP/1.1\r\nX-A: a\rb", 400, "control character"),
    (b"POST /invocations HTTP/1.1\r\nX-A: a\nX-B: b", 400, "control character"),  # a bare LF
    (b"POST /invocations HTTP/1.1\r\nX-A: a\x7f", 400, "control character"),
    (b"post /invocations HTTP/1.1\r\nHost: x", 400, "request line"),
    (b"P\x00ST /invocations HTTP/1.1\r\nHost: x", 400, "request line"),
    (b"POST /invo\x01cations HTTP/1.1\r\nHost: x", 400, "request line"),
    (b"POST /caf\xe9 HTTP/1.1\r\nHost: x", 400, "request line"),
    (b"POST /invocations HTTP/1.1" + b"\r\nX-A: 1" * (MAX_HEADER_FIELDS + 1), 431, "header fields"),
])
def test_parse_head_rejects(head: bytes, status: int, needle: str) -> None:
    with pytest.raises(MalformedRequest, match=needle) as caught:
        parse_head(head, SERVER)
    assert caught.value.status == status


def test_read_head_across_chunks_and_limits() -> None:
    assert read_head(feeder(b"GET / HTTP/1.1\r\nHo", b"st: x\r\n\r\nBODY")) == (b"GET / HTTP/1.1\r\nHost: x", b"BODY")
    with pytest.raises(ConnectionClosed):
        read_head(feeder())
    with pytest.raises(ConnectionClosed):
        read_head(feeder(b"GET / HTTP/1.1\r\n"))
    with pytest.raises(MalformedRequest) as caught:
        read_head(feeder(*[b"X-Filler: " + b"a" * 1000 + b"\r\n"] * (MAX_HEAD_BYTES // 1000 + 2)))
    assert caught.value.status == 431


def test_read_body_uses_what_came_with_the_head_and_reads_the_rest() -> None:
    assert read_body(lambda _v: 0, b"abcdef", 4) == b"abcd"
    pieces = [b"cde", b"fgh"]

    def recv_into(view: memoryview) -> int:
        piece = pieces.pop(0)
        view[: len(piece)] = piece
        return len(piece)

    assert read_body(recv_into, b"ab", 8) == b"abcdefgh"
    with pytest.raises(ConnectionClosed):
        read_body(lambda _v: 0, b"ab", 8)


def test_response_head() -> None:
    head = response_head("200 OK", [("Content-Type", "text/csv"), ("Connection", "keep-alive"),
                                    ("Transfer-Encoding", "chunked"), ("X-A", "1")], "DATE")
    assert head == (b"HTTP/1.1 200 OK\r\nContent-Type: text/csv\r\nX-A: 1\r\nDate: DATE\r\n"
                    b"Connection: close\r\n\r\n")
    for bad in ([("X-A", "1\r\nSet-Cookie: x=1")], [("X-A\n", "1")], [("X-A", "1\r")]):
        with pytest.raises(ValueError, match="CR or LF"):
            response_head("200 OK", bad)


def collect(head_only: bool = False) -> tuple[ResponseWriter, list[bytes]]:
    writes: list[bytes] = []
    return ResponseWriter(writes.append, lambda: "D", head_only), writes


def test_writer_sends_a_list_body_with_its_head_in_one_write() -> None:
    writer, writes = collect()
    writer.start_response("200 OK", [("Content-Type", "application/json")])
    writer.finish([b'{"a":', b" 1}"])
    assert len(writes) == 1
    assert writes[0].endswith(b"\r\n\r\n{\"a\": 1}") and b"Content-Length: 8\r\n" in writes[0]


def test_writer_holds_an_iterator_back_until_it_ends() -> None:
    writer, writes = collect()
    writer.start_response("200 OK", [("Content-Type", "text/plain")])
    writer.finish(iter([b"", b"ab", b"cd"]))
    assert len(writes) == 1 and writes[0].endswith(b"\r\n\r\nabcd") and b"Content-Length: 4\r\n" in writes[0]


def streaming(limit: int = 3) -> tuple[ResponseWriter, list[bytes]]:
    writes: list[bytes] = []
    return ResponseWriter(writes.append, lambda: "D", False, buffer_limit=limit), writes


def test_writer_streams_past_its_buffer_chunked_so_a_cut_shows() -> None:
    writer, writes = streaming()
    writer.start_response("200 OK", [("Content-Type", "text/plain"), ("Transfer-Encoding", "gzip")])
    writer.finish(iter([b"ab", b"cd", b"e"]))
    assert b"Transfer-Encoding: chunked\r\n" in writes[0] and b"gzip" not in writes[0]
    assert writes[0].endswith(b"\r\n\r\n4\r\nabcd\r\n") and writes[1:] == [b"1\r\ne\r\n", b"0\r\n\r\n"]


def test_writer_streams_with_the_applications_length() -> None:
    writer, writes = streaming()
    writer.start_response("200 OK", [("Content-Length", "5")])
    writer.finish(iter([b"ab", b"cd", b"e"]))
    assert b"chunked" not in writes[0] and writes[0].endswith(b"\r\n\r\nabcd") and writes[1:] == [b"e"]


def failing(*chunks: bytes):  # type: ignore[no-untyped-def]
    yield from chunks
    raise RuntimeError("stream broke")


@pytest.mark.parametrize("limit", [3, 1024])
def test_writer_never_completes_a_failed_response(limit: int) -> None:
    writer, writes = streaming(limit)
    writer.start_response("200 OK", [("Content-Type", "text/plain")])
    with pytest.raises(ResponseFailed, match="RuntimeError: stream broke"):
        writer.finish(failing(b"ab", b"cd"))
    if limit > 4:
        assert writes == []  # nothing left: nginx gets no header and answers 502
    else:
        assert writes == [writes[0]] and not writes[0].endswith(b"0\r\n\r\n")  # no last chunk: a cut


@pytest.mark.parametrize(("limit", "chunks"), [(1024, [b"ab"]), (1024, [b"abcdef"]), (3, [b"ab", b"cd"]),
                                               (3, [b"ab", b"cd", b"ef"])])
def test_writer_refuses_a_body_that_is_not_its_content_length(limit: int, chunks: list[bytes]) -> None:
    writer, writes = streaming(limit)
    writer.start_response("200 OK", [("Content-Length", "5")])
    with pytest.raises(ResponseFailed, match="Content-Length"):
        writer.finish(iter(chunks))
    assert not writes or len(b"".join(writes).partition(b"\r\n\r\n")[2]) < 5


def test_writer_refuses_a_content_length_that_is_not_a_number() -> None:
    writer, _ = collect()
    with pytest.raises(ValueError, match="not a number"):
        writer.start_response("200 OK", [("Content-Length", "\u00b2")])


def test_writer_head_and_no_body_statuses() -> None:
    for status, head_only in (("200 OK", True), ("204 No Content", False), ("304 Not Modified", False)):
        writer, writes = collect(head_only)
        writer.start_response(status, [("Content-Length", "3")])
        writer.finish([b"abc"])
        assert len(writes) == 1 and writes[0].endswith(b"\r\n\r\n")
    writer, writes = collect()
    writer.start_response("200 OK", [])
    writer.finish(iter([]))
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and writes[0].endswith(b"\r\n\r\n")


def test_writer_start_response_rules() -> None:
    writer, writes = collect()
    with pytest.raises(AssertionError):
        writer.write(b"x")
    writer.start_response("200 OK", [])
    writer.write(b"held back")
    with pytest.raises(AssertionError, match="twice"):
        writer.start_response("200 OK", [])
    try:
        raise KeyError("boom")
    except KeyError as e:
        writer.start_response("500 Internal Server Error", [], (type(e), e, e.__traceback__))
    assert writer.status == "500 Internal Server Error"
    writer.write(b"x")
    writer._start_streaming()  # the head is out
    try:
        raise KeyError("late")
    except KeyError as e:
        with pytest.raises(KeyError, match="late"):
            writer.start_response("500 Internal Server Error", [], (type(e), e, e.__traceback__))
    writer.write(b"y")
    assert writes[0].endswith(b"1\r\nx\r\n") and writes[1:] == [b"1\r\ny\r\n"]  # not "held back"
    assert writes[0].startswith(b"HTTP/1.1 500 ")


def test_error_bytes_is_a_whole_json_response() -> None:
    raw = error_bytes(431, "too big")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert f"Content-Length: {len(body)}".encode() in head and b"Connection: close" in head
    assert json.loads(body) == {"error": "Request Header Fields Too Large", "message": "too big", "status": 431}
