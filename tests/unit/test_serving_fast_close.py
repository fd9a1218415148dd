"""close_without_linger: immediate close when the request was fully read, gunicorn's lingering close otherwise."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from smbyoc.serving import wsgi


@pytest.fixture
def graceful_calls(monkeypatch: pytest.MonkeyPatch) -> list[socket.socket]:
    calls: list[socket.socket] = []

    def graceful(sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        calls.append(sock)
        sock.close()

    monkeypatch.setitem(wsgi._state, "graceful_close", graceful)
    return calls


def test_nothing_unread_closes_at_once(graceful_calls: list[socket.socket]) -> None:
    server, peer = socket.socketpair()
    with peer:
        peer.sendall(b"request")
        assert server.recv(100) == b"request"
        server.sendall(b"response")
        wsgi.close_without_linger(server)
        assert server.fileno() == -1
        assert graceful_calls == []
        peer.settimeout(2)
        assert peer.recv(100) == b"response"
        assert peer.recv(100) == b""  # EOF, not a reset


def test_unread_request_data_uses_the_lingering_close(graceful_calls: list[socket.socket]) -> None:
    server, peer = socket.socketpair()
    with peer:
        peer.sendall(b"body the app never read")
        wsgi.close_without_linger(server)
        assert graceful_calls == [server]


def test_install_replaces_gunicorn_close_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from gunicorn import util

    original = getattr(util, "close_graceful", None)
    if original is None:  # gunicorn < 26.0 closes without lingering: nothing to replace
        wsgi.install_fast_close()
        assert not hasattr(util, "close_graceful")
        return
    monkeypatch.setattr(util, "close_graceful", original)
    monkeypatch.setitem(wsgi._state, "graceful_close", None)
    wsgi.install_fast_close()
    wsgi.install_fast_close()
    assert util.close_graceful is wsgi.close_without_linger
    assert wsgi._state["graceful_close"] is original
