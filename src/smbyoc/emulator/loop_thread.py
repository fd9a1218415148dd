"""An asyncio server on an event loop of its own thread, so that its owner (the CLI, ``smbyoc api``) stays
synchronous: the endpoint front and the ``smbyoc api`` server both run this way.

The owner gives an ``open`` coroutine that starts what it serves and pushes the matching closes onto an
:class:`~contextlib.AsyncExitStack` (they run in reverse order: push the last to close first). :meth:`LoopThread.start`
returns once ``open`` has finished, or raises what it raised (an ``OSError``, such as a taken port, as one
:class:`~smbyoc.errors.ServingError` line); :meth:`LoopThread.stop` ends the serving, runs the closes and waits
for the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable

from smbyoc.errors import ServingError

log = logging.getLogger(__name__)

#: ``open``: start serving, pushing what closes it onto the stack.
Opener = Callable[[contextlib.AsyncExitStack], Awaitable[None]]


class LoopThread:
    """One thread running one event loop that serves until :meth:`stop`.

    ``what`` names the server in errors and log lines (``smbyoc api``, ``the endpoint front``); ``name`` is the
    thread's; ``new_loop`` makes the event loop (in the thread; what it raises is raised by :meth:`start`)."""

    def __init__(self, open: Opener, *, what: str, name: str,
                 new_loop: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop) -> None:
        self._open = open
        self.what = what
        self.name = name
        self._new_loop = new_loop
        #: The running loop (set in the thread before ``open`` runs; kept after the thread ends).
        self.loop: asyncio.AbstractEventLoop | None = None
        #: The running thread; None before :meth:`start`, after a failed start and after :meth:`stop`.
        self.thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    def start(self, address: str) -> None:
        """Run the thread and wait until ``open`` finished; re-raise what it raised (``address``, ``host:port``,
        names where an ``OSError`` happened)."""
        ready = threading.Event()
        failure: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, args=(ready, failure), name=self.name, daemon=True)
        self.thread.start()
        ready.wait()
        if failure:
            self.thread.join()
            self.thread = None
            error = failure[0]
            if isinstance(error, OSError):
                raise ServingError(f"{self.what} cannot listen on {address}: {error.strerror or error}") from error
            raise error

    def stop(self) -> None:
        """End the serving (the closes ``open`` pushed run in the thread) and wait up to 30 s for the thread."""
        loop, stopped, thread = self.loop, self._stopped, self.thread
        if loop is None or stopped is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            loop.call_soon_threadsafe(stopped.set)
        thread.join(30)
        self.thread = None

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        try:
            loop = self._new_loop()
        except BaseException as e:
            failure.append(e)
            ready.set()
            return
        self.loop = loop
        try:
            loop.run_until_complete(self._serve(ready, failure))
        except BaseException as e:  # pragma: no cover - _serve reports its own failures
            if not ready.is_set():
                failure.append(e)
                ready.set()
            log.exception("%s stopped", self.what)
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self, ready: threading.Event, failure: list[BaseException]) -> None:
        self._stopped = asyncio.Event()
        async with contextlib.AsyncExitStack() as stack:
            try:
                await self._open(stack)
            except BaseException as e:
                failure.append(e)
                ready.set()
                return  # the stack closes what ``open`` opened
            ready.set()
            await self._stopped.wait()
