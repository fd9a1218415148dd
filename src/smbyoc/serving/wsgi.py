"""gunicorn entry: the app factory and the server hooks (``--config python:smbyoc.serving.wsgi``).

With ``--preload`` the master imports Flask, numpy and the app once (``create_wsgi_app``), so forked
workers — including ones restarted after a crash — are serving within milliseconds. The model is
*not* loaded in the master: every worker loads its own copy after the fork, in a background thread
(:func:`post_worker_init`), because runtimes such as onnxruntime and torch do not survive ``fork`` with
their thread pools (importing onnxruntime before the fork even makes workers abort at exit),
and so that ``/ping`` answers 503 "loading" at once instead of hanging.
docs/serving.md has the measurements behind this choice.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from typing import Any

from flask import Flask

from smbyoc.logs import configure_logging
from smbyoc.serving.app import create_app
from smbyoc.serving.env import ServingEnv
from smbyoc.serving.handler import Handler
from smbyoc.serving.model_holder import DEFAULT_MODEL, ModelHolder
from smbyoc.serving.nginx import READY_FILE

logger = logging.getLogger(__name__)

_state: dict[str, Any] = {}


def build(env: ServingEnv | None = None) -> tuple[Flask, ModelHolder]:
    """The app and its holder with the default model added (not loaded)."""
    env = env or ServingEnv.from_env()
    holder = ModelHolder()
    if not env.multi_model:
        holder.add(DEFAULT_MODEL, Handler(env, DEFAULT_MODEL))
    return create_app(env, holder), holder


def create_wsgi_app() -> Flask:
    """gunicorn app factory (runs once in the master with ``--preload``)."""
    env = ServingEnv.from_env()
    configure_logging(env.log_level)
    app, holder = build(env)
    _state["holder"] = holder
    _state["runtime_dir"] = env.runtime_dir if env.use_nginx and not env.multi_model else None
    _state["behind_nginx"] = env.use_nginx
    return app


def load_models() -> None:
    """Start loading every held model in the background (called in each worker after the fork)."""
    holder: ModelHolder | None = _state.get("holder")
    if holder is None:
        return
    runtime_dir = _state.get("runtime_dir")

    def load(name: str) -> None:
        entry = holder.load(name)
        if entry.ready and runtime_dir is not None:
            (runtime_dir / READY_FILE).touch()

    for name in holder.names():
        threading.Thread(target=load, args=(name,), name=f"load-{name}", daemon=True).start()


def close_without_linger(sock: socket.socket, *args: Any, **kwargs: Any) -> None:
    """Close a connection at once when nothing unread is pending, else gunicorn's lingering close.

    gunicorn (>= 23) closes every connection "gracefully": shutdown(SHUT_WR), then it blocks reading until
    the peer closes. Behind nginx that is one wait for nginx's event loop per request in a sync worker —
    a quarter of the worker's time in a profile at concurrency 8 (bench/README.md). The linger only matters
    when request data is still unread (closing would reset the connection); that is checked here first.
    """
    try:
        pending = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        pending = b""  # nothing unread, the peer is still open
    except OSError:
        pending = b""
    if pending:
        _state["graceful_close"](sock, *args, **kwargs)
        return
    with contextlib.suppress(OSError):
        sock.close()


def install_fast_close() -> None:
    """Use :func:`close_without_linger` for gunicorn's per-request close (sync worker behind nginx only)."""
    from gunicorn import util

    original = getattr(util, "close_graceful", None)
    if original is None or original is close_without_linger:
        return
    _state["graceful_close"] = original
    util.close_graceful = close_without_linger


# ------------------------------------------------------------------------------ gunicorn server hooks


def post_worker_init(worker: Any) -> None:
    if _state.get("behind_nginx") and type(worker).__name__ == "SyncWorker":
        install_fast_close()
    load_models()


def when_ready(server: Any) -> None:
    logger.info("gunicorn is accepting connections")


def worker_exit(server: Any, worker: Any) -> None:
    """End the worker without interpreter finalization once gunicorn is done with it.

    onnxruntime's thread pools abort the process ("terminate called ... std::system_error") when
    Python finalizes after a fork, which makes a graceful stop look like a crash (SIGABRT). gunicorn
    calls this hook last, in the worker, while its SystemExit propagates; we keep that exit status.
    """
    import os
    import sys

    exc = sys.exc_info()[1]
    code = exc.code if isinstance(exc, SystemExit) else (1 if exc is not None else 0)
    status = code if isinstance(code, int) else (0 if code is None else 1)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
