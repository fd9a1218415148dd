"""Multi-model endpoints (``SAGEMAKER_MULTI_MODEL=true``, contract.md §5): load, list, describe, unload and
invoke models by name, in every gunicorn worker of one ``serve``.

**The registry.** Which models are loaded is kept in a directory shared by all workers
(:mod:`smbyoc.serving.model_registry`): a worker loads a model, then registers it; every other worker sees the
change with one ``stat`` per request, drops the models no longer registered (or registered anew) and loads a
registered model it does not hold on its first invoke there.

**Limits.** ``SMBYOC_MME_MAX_MODELS`` and the memory budget (:mod:`smbyoc.serving.memory`) answer 507,
as SageMaker's containers do when out of memory; the emulator then unloads the least recently used model
and retries, as SageMaker does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import uuid
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from smbyoc.serving.env import MME_REGISTRY_DIR, ServingEnv
from smbyoc.serving.errors import BadRequest, Conflict, InsufficientStorage, NotFound, ServingHTTPError, clip
from smbyoc.serving.handler import Handler, HandlerResult
from smbyoc.serving.memory import MemoryBudget, directory_size, release_memory
from smbyoc.serving.model_holder import ModelEntry, ModelHolder
from smbyoc.serving.model_registry import Registration, Registry
from smbyoc.serving.responses import invoke as run_invoke

logger = logging.getLogger(__name__)

#: The longest model name (bytes of UTF-8), as InvokeEndpoint's TargetModel.
MAX_NAME_BYTES = 1024
#: ``GET /models``: the default and the largest page (MMS ``ListModels``).
PAGE_LIMIT = 100
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_name(name: object) -> str:
    """A model name: an opaque key (SageMaker sends a hash), refused with 400 when it could be a path."""
    if not isinstance(name, str) or not name:
        raise BadRequest("model_name is required (a non-empty string)")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise BadRequest(f"model_name is longer than {MAX_NAME_BYTES} bytes")
    if _CONTROL.search(name):
        raise BadRequest(f"model_name {name[:100]!r} contains a control character")
    if "/" in name or ".." in name:
        raise BadRequest(f"model_name {name[:100]!r} contains '/' or '..'")
    return name


def check_url(root: Path, url: object) -> Path:
    """The model directory ``url`` names, symbolic links resolved; it must be a directory under ``root``
    (the multi-model directory, ``<SAGEMAKER_BASE_DIR>/models``), else 400 naming it."""
    if not isinstance(url, str) or not url:
        raise BadRequest(f"url is required (the model's directory under {root})")
    if _CONTROL.search(url):
        raise BadRequest(f"url {url[:200]!r} contains a control character")
    given = Path(url.removeprefix("file://"))
    if not given.is_absolute():
        raise BadRequest(f"url {url[:200]!r} is not an absolute path (a directory under {root})")
    try:
        base = root.resolve(strict=True)
    except (OSError, RuntimeError):
        raise BadRequest(f"url {url[:200]!r}: the multi-model directory {root} does not exist") from None
    try:
        path = given.resolve(strict=True)
    except (OSError, RuntimeError):
        raise BadRequest(f"url {url[:200]!r} does not exist (a directory under {root} is expected)") from None
    if path == base or base not in path.parents:
        raise BadRequest(f"url {url[:200]!r} is not under the multi-model directory {root} "
                         f"(it resolves to {path})")
    if not path.is_dir():
        raise BadRequest(f"url {url[:200]!r} is not a directory")
    return path


def split_model_path(rest: str) -> tuple[str, str | None]:
    """``<name>`` or ``<name>/invoke`` (what follows ``/models/``) as ``(name, "invoke" or None)``; a name
    with a ``/`` in it comes back whole, for :func:`check_name` to refuse."""
    if rest.endswith("/invoke") and len(rest) > len("/invoke"):
        return rest[: -len("/invoke")], "invoke"
    return rest, None


def register_params(query: Mapping[str, str], body: bytes) -> tuple[object, object]:
    """``POST /models``' ``model_name`` and ``url``: from the JSON body SageMaker sends, or from the query
    parameters multi-model-server also takes (the body wins)."""
    name: object = query.get("model_name")
    url: object = query.get("url")
    if body.strip():
        try:
            data = json.loads(body)
        except ValueError as e:
            raise BadRequest(f"the body is not JSON: {e}") from None
        if not isinstance(data, dict):
            raise BadRequest('the body must be a JSON object {"model_name": ..., "url": ...}')
        name, url = data.get("model_name", name), data.get("url", url)
    return name, url


def page(registrations: Mapping[str, Registration], limit: str | None, token: str | None) -> dict[str, Any]:
    """``GET /models``: MMS's pagination (``limit`` 1-100, default 100; out of range means 100;
    ``next_page_token`` an offset) with ``nextPageToken`` only when more models follow."""
    size = _int_param("limit", limit, PAGE_LIMIT)
    if not 1 <= size <= PAGE_LIMIT:
        size = PAGE_LIMIT
    start = max(0, _int_param("next_page_token", token, 0))
    names = sorted(registrations)
    answer: dict[str, Any] = {"models": [registrations[n].describe() for n in names[start:start + size]]}
    if start + size < len(names):
        answer["nextPageToken"] = str(start + size)
    return answer


def _int_param(key: str, value: str | None, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise BadRequest(f"query parameter {key} must be an integer, not {value[:40]!r}") from None


class MultiModelServer:
    """One worker's side of a multi-model endpoint: the shared :class:`Registry` and the models this worker
    holds (in a :class:`~smbyoc.serving.model_holder.ModelHolder`, by name)."""

    def __init__(self, env: ServingEnv, holder: ModelHolder, registry: Registry,
                 budget: MemoryBudget | None = None) -> None:
        self.env = env
        self.holder = holder
        self.registry = registry
        self._budget = budget
        self._seen = -1
        self._registered: dict[str, Registration] = {}
        self._lock = threading.RLock()
        #: Called after this worker changed the registry (gunicorn: wake the other workers).
        self.on_change: Callable[[], None] | None = None
        #: Held while a model loads (gunicorn: keep the worker's heartbeat going, so a load may take longer
        #: than --timeout, up to :data:`~smbyoc.serving.env.MME_LOAD_TIMEOUT`).
        self.load_guard: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext

    @classmethod
    def from_env(cls, env: ServingEnv, holder: ModelHolder) -> MultiModelServer:
        """The registry in ``SMBYOC_SERVE_RUNTIME_DIR`` (where ``serve`` created it), else in a new private
        temporary directory (one process, e.g. an app built by hand; removed when this object goes)."""
        if env.runtime_dir is not None:
            directory = env.runtime_dir / MME_REGISTRY_DIR
            directory.mkdir(mode=0o700, exist_ok=True)
            return cls(env, holder, Registry(directory))
        temp = Path(tempfile.mkdtemp(prefix="smbyoc-mme-"))
        server = cls(env, holder, Registry(temp))
        weakref.finalize(server, shutil.rmtree, temp, True)
        return server

    @property
    def budget(self) -> MemoryBudget:
        if self._budget is None:
            self._budget = MemoryBudget.from_env(self.env.mme_memory_budget_mb)
            logger.info("multi-model memory budget: %.0f MiB (%s), measured as %s",
                        self._budget.limit / 2**20, self._budget.source, self._budget.meter)
        return self._budget

    # --------------------------------------------------------------------------------- registry view
    def sync(self) -> None:
        """Catch up with the registry when it changed (one ``stat`` otherwise): drop the models this worker
        holds that are no longer registered, or were registered anew."""
        generation = self.registry.generation()
        if generation == self._seen:
            return
        with self._lock:
            generation = self.registry.generation()
            registered = self.registry.read()
            self._registered, self._seen = registered, generation
            for entry in self.holder.entries():
                current = registered.get(entry.name)
                if current is None or current.token != entry.token:
                    self._drop(entry.name)

    def _drop(self, name: str) -> None:
        try:
            entry = self.holder.remove(name)
        except KeyError:
            return
        entry.handler.unload()
        del entry
        release_memory()
        logger.info("model %r unloaded in worker %d", name, os.getpid())

    # ------------------------------------------------------------------------------------ the routes
    def register(self, name: object, url: object) -> dict[str, str]:
        """``POST /models``: load ``url`` as ``name`` in this worker, then register it for all workers."""
        name = check_name(name)
        path = check_url(self.env.model_dir, url)
        assert isinstance(url, str)
        self.sync()
        if name in self._registered:
            raise Conflict(f"model {name!r} is already loaded")
        with self.registry.loading(name), self._lock:
            self.sync()
            if name in self._registered:
                raise Conflict(f"model {name!r} is already loaded")
            registration = Registration(name, url, str(path), uuid.uuid4().hex)
            self._load(registration, registered=len(self._registered))
            try:
                added = self.registry.add(registration)
            except BaseException:  # (the registry could not be written: a full disk) not held unregistered
                self._drop(name)
                raise
            if not added:
                self._drop(name)
                raise Conflict(f"model {name!r} is already loaded")
        self._changed()
        return {"status": f'Model "{name}" registered'}

    def unregister(self, name: str) -> dict[str, str]:
        """``DELETE /models/<name>``."""
        check_name(name)
        if not self.registry.remove(name):
            raise NotFound(f"Model not found: {name}")
        with self._lock:
            self._registered.pop(name, None)
            self._drop(name)
        self._changed()
        return {"status": f'Model "{name}" unregistered'}

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:
                logger.exception("telling the other workers about a registry change failed")

    def describe(self, name: str) -> dict[str, str]:
        """``GET /models/<name>``."""
        check_name(name)
        self.sync()
        registration = self._registered.get(name)
        if registration is None:
            raise NotFound(f"Model not found: {name}")
        return registration.describe()

    def models(self, limit: str | None, token: str | None) -> dict[str, Any]:
        """``GET /models``."""
        self.sync()
        return page(self._registered, limit, token)

    def loaded(self, name: str) -> ModelEntry | None:
        """The ready copy of registered ``name`` in this worker, or None (not registered, or not loaded here
        yet): the fast path's one question."""
        self.sync()
        entry = self.holder.get(name)
        registration = self._registered.get(name)
        if entry is None or registration is None or not entry.ready or entry.token != registration.token:
            return None
        return entry

    def entry(self, name: str) -> ModelEntry:
        """The ready copy of ``name``, loaded here first when another worker registered it (404 when nobody
        did; 507 when it does not fit in this worker; 500 when its load fails here)."""
        check_name(name)
        entry = self.loaded(name)
        if entry is not None:
            return entry
        with self._lock:
            self.sync()
            registration = self._registered.get(name)
            if registration is None:
                raise NotFound(f"Model not found: {name}")
            entry = self.holder.get(name)
            if entry is not None and entry.ready and entry.token == registration.token:
                return entry
            self._drop(name)
            return self._load(registration)

    def invoke(self, name: str, body: bytes, content_type: str | None, headers: Any) -> HandlerResult:
        """``POST /models/<name>/invoke``."""
        result: HandlerResult = run_invoke(self.entry(name), body, content_type, headers)
        return result

    # ---------------------------------------------------------------------------------------- loading
    def _load(self, registration: Registration, registered: int = 0) -> ModelEntry:
        """Load ``registration`` into this worker within the limits (507), or raise (500) naming the error."""
        name = registration.name
        cap = self.env.mme_max_models
        held = len(self.holder.names())
        if cap and max(held, registered) >= cap:
            raise InsufficientStorage(f"out of memory: {max(held, registered)} models are loaded, the most "
                                      f"this endpoint holds (SMBYOC_MME_MAX_MODELS={cap})")
        refusal = self.budget.refuse_before(name, directory_size(Path(registration.path)))
        if refusal is not None:
            raise InsufficientStorage(refusal)
        handler = Handler(self.env, name, model_dir=Path(registration.path))
        entry = self.holder.add(name, handler)
        entry.token = registration.token
        with self.load_guard():
            self.holder.load(name)
        if not entry.ready:
            reason, error_type = entry.reason, entry.error_type
            self._drop(name)
            reason = reason.split("\nTraceback (most recent call last):")[0]  # the traceback: the log only
            if error_type is not None and issubclass(error_type, MemoryError):
                raise InsufficientStorage(clip(f"out of memory: {reason}"))
            raise ServingHTTPError(clip(reason), code=500)
        refusal = self.budget.refuse_after(name)
        if refusal is not None:
            self._drop(name)
            raise InsufficientStorage(refusal)
        logger.info("model %r (%s) loaded in worker %d in %.3f s", name, registration.path, os.getpid(),
                    entry.load_seconds or 0.0)
        return entry
