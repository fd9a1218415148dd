"""What every group of checks gets: the engine, the image's facts, the options, and a way to be stopped.

A group runs in a worker thread with a deadline. What it starts (a training job, an endpoint) is
registered with its :class:`Canceller` while it runs, so the suite can kill it when the deadline passes
or on Ctrl-C; the group's own ``finally`` blocks then remove the containers, networks and trees.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smbyoc.validate.image import ImageFacts

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
LOG_TAIL_LINES = 15


class Canceller:
    """Kill actions of what a group has running now; :meth:`cancel` runs them all, once and for later ones too."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._actions: dict[int, Callable[[], None]] = {}
        self._ids = itertools.count()
        self.cancelled = threading.Event()

    @contextlib.contextmanager
    def active(self, kill: Callable[[], None]) -> Iterator[None]:
        """``kill`` is called if the group is cancelled while the block runs (at once if it already was)."""
        with self._lock:
            key = next(self._ids)
            self._actions[key] = kill
        if self.cancelled.is_set():
            _quietly(kill)
        try:
            yield
        finally:
            with self._lock:
                self._actions.pop(key, None)

    def cancel(self) -> None:
        self.cancelled.set()
        with self._lock:
            actions = list(self._actions.values())
        for kill in actions:
            _quietly(kill)


def _quietly(action: Callable[[], None]) -> None:
    try:
        action()
    except Exception as e:  # the thing is already gone
        log.debug("cancel: %s", e)


class LogTail:
    """The last lines a container printed (they go into a failed check's ``log``)."""

    def __init__(self, lines: int = LOG_TAIL_LINES) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=lines)

    def __call__(self, *parts: str) -> None:
        self.lines.append(parts[-1])

    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass(frozen=True)
class ValidateContext:
    client: Any
    facts: ImageFacts
    #: Where temporary trees and artifacts go; removed by the suite at the end.
    work_dir: Path
    #: Instance type for the containers' CPU and memory limits (``local``: none).
    instance_type: str = "local"
    #: Seconds one training job or endpoint step may take before it is stopped and its check fails.
    timeout: float = 600.0
    progress: Progress | None = None
    canceller: Canceller = field(default_factory=Canceller)

    @property
    def image(self) -> str:
        return self.facts.ref

    def say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)
        else:
            log.info("%s", message)
