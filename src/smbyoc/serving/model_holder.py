"""Named models and their state (loading → ready | failed, with the reason).

Single-model endpoints hold one model named :data:`DEFAULT_MODEL`; multi-model endpoints add and remove
more by name (:mod:`smbyoc.serving.multi_model`). State reads take no lock (one attribute read), so
``/ping`` never waits behind a load or a prediction; only adding and removing names is serialised.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "model"


class ModelState(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass
class ModelEntry:
    """One named model; ``handler`` is whatever serves it (a :class:`~smbyoc.serving.handler.Handler`)."""

    name: str
    handler: Any
    state: ModelState = ModelState.LOADING
    reason: str = "model is loading"
    started: float = field(default_factory=time.monotonic)
    load_seconds: float | None = None
    done: threading.Event = field(default_factory=threading.Event)
    #: The type of the exception a failed load raised (it decides a multi-model load's status); the
    #: exception itself is not kept: its traceback would keep whatever the load allocated alive.
    error_type: type[BaseException] | None = None
    #: Multi-model endpoints: the registration this copy was loaded from (a new one means reload).
    token: str = ""

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY


class ModelHolder:
    """Thread-safe registry of named models."""

    def __init__(self) -> None:
        self._models: dict[str, ModelEntry] = {}
        self._lock = threading.Lock()

    def add(self, name: str, handler: Any) -> ModelEntry:
        with self._lock:
            if name in self._models:
                raise KeyError(f"model {name!r} is already held")
            entry = ModelEntry(name, handler)
            self._models = {**self._models, name: entry}
            return entry

    def remove(self, name: str) -> ModelEntry:
        with self._lock:
            models = dict(self._models)
            entry = models.pop(name)
            self._models = models
            return entry

    def get(self, name: str = DEFAULT_MODEL) -> ModelEntry | None:
        return self._models.get(name)

    def names(self) -> list[str]:
        return list(self._models)

    def entries(self) -> list[ModelEntry]:
        return list(self._models.values())

    def load(self, name: str, loader: Callable[[], None] | None = None) -> ModelEntry:
        """Run ``loader`` (default ``entry.handler.load``) and record ready, or failed with the reason."""
        entry = self._models[name]
        entry.state, entry.reason, entry.started = ModelState.LOADING, "model is loading", time.monotonic()
        entry.done.clear()
        try:
            (loader or entry.handler.load)()
        except Exception as e:
            entry.error_type = type(e)
            entry.reason = f"model {name!r} failed to load: {type(e).__name__}: {e}"
            entry.state = ModelState.FAILED
            logger.exception("model %r failed to load", name)
        else:
            entry.load_seconds = time.monotonic() - entry.started
            entry.reason = ""
            entry.state = ModelState.READY
            logger.info("model %r loaded in %.3f s", name, entry.load_seconds)
        entry.done.set()
        return entry

    def load_in_background(self, name: str) -> threading.Thread:
        thread = threading.Thread(target=self.load, args=(name,), name=f"load-{name}", daemon=True)
        thread.start()
        return thread
