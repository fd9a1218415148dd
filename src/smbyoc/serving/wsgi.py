"""gunicorn entry: the app factory and the server hooks (``--config python:smbyoc.serving.wsgi``).

With ``--preload`` the master imports numpy, werkzeug and the request path once (``create_wsgi_app``),
so forked workers — including ones restarted after a crash — are serving within milliseconds. Flask
itself (about 60 ms of imports) is left out of that start-up path: the fast path answers ``/ping`` and
the invocations of a loaded model without it, and each worker builds the Flask app right after its model
loaded, or at the first request that needs it, whichever comes first. The model is *not* loaded in the
master: every worker loads its own copy after the fork, in a background thread
(:func:`post_worker_init`), because runtimes such as onnxruntime and torch do not survive ``fork`` with
their thread pools (importing onnxruntime before the fork even makes workers abort at exit),
and so that ``/ping`` answers 503 "loading" at once instead of hanging.
docs/serving.md has the measurements behind this choice.

On a multi-model endpoint no model is loaded at start: each worker holds a
:class:`~smbyoc.serving.multi_model.MultiModelServer` (built in the master, so all share one registry
directory), and ``/ping`` is ready as soon as a worker runs. A worker that loads or unloads a model wakes
its idle siblings (:func:`wake_siblings`), which check the registry at their next heartbeat and so free
an unloaded model's memory at once rather than at their next request; a worker loading a model keeps its
heartbeat going meanwhile (:func:`heartbeat_during_load`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from smbyoc.logs import configure_logging
from smbyoc.serving import gpu
from smbyoc.serving.env import MME_LOAD_TIMEOUT, ServingEnv
from smbyoc.serving.fast_path import fast_path
from smbyoc.serving.handler import Handler
from smbyoc.serving.model_holder import DEFAULT_MODEL, ModelHolder
from smbyoc.serving.multi_model import MultiModelServer
from smbyoc.serving.nginx import READY_FILE

logger = logging.getLogger(__name__)

_state: dict[str, Any] = {}


class LazyApp:
    """The Flask app, built (and Flask imported) on first use; thread-safe."""

    def __init__(self, env: ServingEnv, holder: ModelHolder, mme: MultiModelServer | None = None) -> None:
        self.env = env
        self.holder = holder
        self.mme = mme
        self._app: Any = None
        self._lock = threading.Lock()

    def load(self) -> Any:
        with self._lock:
            if self._app is None:
                from smbyoc.serving.app import create_app

                self._app = create_app(self.env, self.holder, self.mme)
            return self._app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        return (self._app or self.load())(environ, start_response)


def build(env: ServingEnv | None = None) -> tuple[LazyApp, ModelHolder]:
    """The (lazy) Flask app and its holder with the default model added (not loaded); on a multi-model
    endpoint an empty holder and the app's :class:`MultiModelServer` (``LazyApp.mme``)."""
    env = env or ServingEnv.from_env()
    holder = ModelHolder()
    mme = None
    if env.multi_model:
        mme = MultiModelServer.from_env(env, holder)
    else:
        holder.add(DEFAULT_MODEL, Handler(env, DEFAULT_MODEL))
    return LazyApp(env, holder, mme), holder


def create_wsgi_app() -> Any:
    """gunicorn app factory (runs once in the master with ``--preload``): the lazy Flask app behind
    :func:`smbyoc.serving.fast_path.fast_path`."""
    env = ServingEnv.from_env()
    configure_logging(env.log_level)
    gpu.announce_cpu_fallback()  # onnxruntime-gpu without a GPU: said once here, not once per forked worker
    flask_app, holder = build(env)
    app = fast_path(env, holder, flask_app, flask_app.mme)
    _state["holder"] = holder
    _state["flask_app"] = flask_app
    _state["mme"] = flask_app.mme
    _state["runtime_dir"] = env.runtime_dir if env.use_nginx else None
    _state["behind_nginx"] = env.use_nginx
    _state["protocol"] = env.protocol
    return app


def load_models() -> None:
    """Start loading every held model in the background (called in each worker after the fork); once they
    are loaded, build the Flask app too (off the path to readiness)."""
    holder: ModelHolder | None = _state.get("holder")
    if holder is None:
        return
    runtime_dir = _state.get("runtime_dir")
    flask_app: LazyApp | None = _state.get("flask_app")
    if _state.get("mme") is not None and runtime_dir is not None:
        (runtime_dir / READY_FILE).touch()  # a multi-model endpoint is ready once a worker runs

    def load(names: list[str]) -> None:
        for name in names:
            entry = holder.load(name)
            if entry.ready and runtime_dir is not None:
                (runtime_dir / READY_FILE).touch()
        if flask_app is not None:
            flask_app.load()

    threading.Thread(target=load, args=(holder.names(),), name="load-models", daemon=True).start()


def close_without_linger(sock: socket.socket, *args: Any, **kwargs: Any) -> None:
    """Close a connection at once when nothing unread is pending, else gunicorn's lingering close.

    gunicorn (>= 26.0) closes every connection "gracefully": shutdown(SHUT_WR), then it blocks reading until
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


def install_single_write() -> None:
    """Send a plain response's headers and its first body bytes with one write instead of two.

    gunicorn's ``Response.write`` sends the header block and the body with separate ``sendall`` calls:
    two system calls and two wake-ups of nginx per request. For the first write of a response that is
    neither chunked, nor body-less, nor longer than its Content-Length, this sends both at once with the
    same bytes and bookkeeping; every other case (and ``sendfile``, ``close``) stays gunicorn's own.
    """
    from gunicorn import util
    from gunicorn.http import wsgi as gwsgi

    response = gwsgi.Response
    if getattr(response, "_smbyoc_single_write", False):
        return
    original_write = response.write

    def write(self: Any, arg: Any) -> None:
        if (self.headers_sent or self.chunked or not isinstance(arg, bytes) or not arg
                or getattr(self, "_omits_body", False)
                or (self.response_length is not None and self.sent + len(arg) > self.response_length)):
            original_write(self, arg)
            return
        tosend = self.default_headers()
        tosend.extend([f"{k}: {v}\r\n" for k, v in self.headers])
        head = util.to_bytestring("{}\r\n".format("".join(tosend)), "latin-1")
        self.headers_sent = True
        self.sent += len(arg)
        util.write(self.sock, head + arg)

    response.write = write
    response._smbyoc_single_write = True


def install_date_cache() -> None:
    """Format the ``Date`` header once per second instead of once per response (it has 1-s resolution)."""
    import time

    from gunicorn import util

    original = util.http_date
    if getattr(original, "_smbyoc_cached", False):
        return
    cache: list[Any] = [None, ""]

    def http_date(timestamp: float | None = None) -> str:
        if timestamp is not None:
            return str(original(timestamp))
        now = int(time.time())
        if cache[0] != now:
            cache[0], cache[1] = now, original(now)
        return str(cache[1])

    http_date._smbyoc_cached = True  # type: ignore[attr-defined]
    util.http_date = http_date


def freeze_preloaded_objects() -> None:
    """Move everything imported before the fork (Flask, numpy, the app) out of the garbage collector's
    reach: collections then only scan what requests allocate, which keeps pauses out of the latency tail
    (and keeps copy-on-write pages shared between workers)."""
    import gc

    gc.freeze()


def sibling_workers(master: int, me: int, proc: str = "/proc") -> list[int]:
    """The other children of gunicorn's ``master`` (its workers), from ``/proc``."""
    try:
        with open(f"{proc}/{master}/task/{master}/children") as f:
            pids = [int(p) for p in f.read().split()]
    except OSError:  # a kernel without CONFIG_PROC_CHILDREN: every process's parent
        pids = []
        for name in os.listdir(proc):
            if name.isdigit():
                try:
                    with open(f"{proc}/{name}/stat") as f:
                        fields = f.read().rpartition(")")[2].split()
                except OSError:
                    continue
                if len(fields) > 1 and fields[1] == str(master):
                    pids.append(int(name))
    return [p for p in pids if p != me]


def wake_siblings() -> None:
    """Send SIGWINCH to this worker's siblings after a registry change. A gunicorn worker ignores SIGWINCH,
    but every signal it handles writes to its wake-up pipe, which ends its idle wait (up to half of
    ``--timeout``): it runs its heartbeat, and with it :func:`install_multi_model_hooks`, at once."""
    for pid in sibling_workers(os.getppid(), os.getpid()):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGWINCH)


@contextlib.contextmanager
def heartbeat_during_load(worker: Any, limit: float = MME_LOAD_TIMEOUT, every: float = 1.0) -> Iterator[None]:
    """Keep ``worker``'s heartbeat going from a thread while a model loads in the request, for up to
    ``limit`` seconds: gunicorn would otherwise kill a worker whose load takes longer than ``--timeout``
    (SAGEMAKER_MODEL_SERVER_TIMEOUT, 60 s), while SageMaker lets an MME load take 360 s. A load still running
    after ``limit`` is treated as hung: the heartbeat stops and gunicorn restarts the worker."""
    stop = threading.Event()

    def beat() -> None:
        deadline = time.monotonic() + limit
        while not stop.wait(every) and time.monotonic() < deadline:
            worker.tmp.notify()

    thread = threading.Thread(target=beat, name="load-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def install_multi_model_hooks(worker: Any, mme: MultiModelServer) -> None:
    """Hook a worker's :class:`MultiModelServer` into gunicorn: it catches up with the registry (and frees
    the models another worker unloaded) at each heartbeat too, not only at its next request (one ``stat``
    when nothing changed); it wakes its siblings after a change; and a load keeps the heartbeat going."""
    original = worker.notify

    def notify() -> None:
        original()
        try:
            mme.sync()
        except Exception:
            logger.exception("checking the multi-model registry failed")

    worker.notify = notify
    # a system call the wake-up interrupts (in the model's own threads too) is restarted, not failed (EINTR)
    signal.siginterrupt(signal.SIGWINCH, False)
    mme.on_change = wake_siblings
    mme.load_guard = lambda: heartbeat_during_load(worker)


def throttle_heartbeat(worker: Any, every: float = 1.0) -> None:
    """Touch the worker's heartbeat file at most once a second instead of once per request.

    gunicorn's master kills a worker whose heartbeat is older than ``--timeout`` (60 s); a sync worker
    updates it (a ``utime`` system call) on every pass of its accept loop, which shows in profiles.
    """
    import time

    original = worker.notify
    last = [0.0]

    def notify() -> None:
        now = time.monotonic()
        if now - last[0] >= every:
            last[0] = now
            original()

    worker.notify = notify


# ------------------------------------------------------------------------------ gunicorn server hooks


def post_worker_init(worker: Any) -> None:
    if _state.get("protocol") != "uwsgi":  # the uwsgi path runs gunicorn's own code, unpatched
        if _state.get("behind_nginx") and type(worker).__name__ == "SyncWorker":
            install_fast_close()
            install_single_write()
        install_date_cache()
        throttle_heartbeat(worker)
    if _state.get("mme") is not None:
        install_multi_model_hooks(worker, _state["mme"])
    freeze_preloaded_objects()
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
