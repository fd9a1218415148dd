"""Multi-model endpoints, SageMaker's side (contract.md §5): from ``InvokeEndpoint(TargetModel=...)`` to the
container's ``/models`` API.

A directory of ``*.tar.gz`` stands for the endpoint's S3 prefix (:class:`ModelSource`). On an invocation for a
TargetModel the container does not hold, the emulator does what SageMaker does: it fetches the artifact into the
instance's model cache (here: extracts it safely into ``<models>/<key>/model``, mounted read-only at
``/opt/ml/models`` in the container), asks the container to load it (``POST /models`` with an opaque
``model_name``, the key), and when the container answers 507 (out of memory) it unloads the least recently used
model that no request is using and tries again. The invocation then goes to ``POST /models/<key>/invoke`` with
the original TargetModel in ``X-Amzn-SageMaker-Target-Model``. An invocation waits for a load at most the
invocation timeout (60 s); past that it gets ``ModelNotReadyException`` (429) while the load goes on, up to the
load timeout (360 s), and later invocations wait for the same load.

Extracted artifacts stay on disk after an unload (SageMaker keeps them in the instance's cache until the disk
is needed), so a model evicted from memory loads again without another download.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from smbyoc.archives import safe_extract
from smbyoc.emulator.endpoint import (
    DockerEndpoint,
    Endpoint,
    EndpointSpec,
    LineSink,
    ProcessEndpoint,
    _print_line,
    check_container_route,
)
from smbyoc.emulator.front import (
    INVOCATION_TIMEOUT,
    Call,
    Front,
    FrontError,
    Reply,
    post,
    send,
    validation_error,
)
from smbyoc.errors import ArchiveError, ConfigError
from smbyoc.images.builder import MULTI_MODELS_LABEL
from smbyoc.serving.ports import free_port

log = logging.getLogger(__name__)

#: SageMaker keeps loading a model up to 360 s after the invocation that asked for it timed out.
LOAD_TIMEOUT = 360.0
#: InvokeEndpoint's TargetModel: 1-1024 characters (BOTO ``TargetModelHeader``).
MAX_TARGET_MODEL = 1024
#: Where the container sees the model cache.
CONTAINER_MODELS_DIR = "/opt/ml/models"
#: The most models unloaded to make room for one load (then the 507 goes to the client).
MAX_EVICTIONS = 64


def model_key(target_model: str) -> str:
    """The opaque ``model_name`` the container gets for ``target_model`` (SageMaker also sends a hash, not the
    TargetModel; which hash it uses is not documented)."""
    return hashlib.sha256(target_model.encode("utf-8")).hexdigest()[:40]


class ModelSource:
    """A local directory standing for the endpoint's S3 model prefix."""

    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise ConfigError("not a directory (expected a directory of model .tar.gz files)",
                              key=f"--multi-model {root}")
        self.root = root.resolve()

    def artifact(self, target_model: str) -> Path:
        """The archive ``target_model`` names; a ``ValidationError`` when it is malformed or not there."""
        if not target_model:
            raise validation_error("TargetModel is required for a multi-model endpoint (header "
                                   "X-Amzn-SageMaker-Target-Model)")
        if len(target_model) > MAX_TARGET_MODEL:
            raise validation_error(f"TargetModel has {len(target_model)} characters; the limit is {MAX_TARGET_MODEL}")
        if not target_model.isprintable() or "\\" in target_model:
            raise validation_error(f"TargetModel {target_model[:100]!r} has a control character or a backslash")
        parts = target_model.split("/")
        if target_model.startswith("/") or any(part in ("", ".", "..") for part in parts):
            raise validation_error(f"TargetModel {target_model[:100]!r} must be a relative path under the model "
                                   "prefix without '.', '..' or empty components")
        path = self.root.joinpath(*parts)
        try:
            resolved = path.resolve(strict=True)
        except (OSError, RuntimeError):
            resolved = None
        if resolved is None or not resolved.is_file() or not resolved.is_relative_to(self.root):
            raise validation_error(f"TargetModel {target_model!r}: no model artifact at {path} (the model prefix is "
                                   f"{self.root})")
        return resolved

    def names(self) -> list[str]:
        """The TargetModel of every ``*.tar.gz`` under the prefix, sorted (as ListObjects would list them)."""
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*.tar.gz") if p.is_file())


@dataclass
class _Model:
    target: str
    key: str
    in_flight: int = 0
    loaded: bool = False


@dataclass
class Counters:
    """What the router did, for logs and tests."""

    loads: int = 0
    load_failures: int = 0
    evictions: int = 0
    not_ready: int = 0
    invocations: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class MultiModelRouter:
    """The :class:`~smbyoc.emulator.front.Router` of a multi-model endpoint (module docstring)."""

    def __init__(self, source: ModelSource, container_url: str, cache_dir: Path, *,
                 container_models_dir: str = CONTAINER_MODELS_DIR, invocation_timeout: float = INVOCATION_TIMEOUT,
                 load_timeout: float = LOAD_TIMEOUT, max_loaded: int = 0) -> None:
        self.source = source
        self.max_loaded = max_loaded
        self.container_url = container_url.rstrip("/")
        self.cache_dir = cache_dir
        self.container_models_dir = container_models_dir.rstrip("/")
        self.invocation_timeout = invocation_timeout
        self.load_timeout = load_timeout
        self.counters = Counters()
        self._session: Any = None
        self._models: dict[str, _Model] = {}
        #: Loaded models, least recently used first.
        self._lru: collections.OrderedDict[str, _Model] = collections.OrderedDict()
        self._loads: dict[str, asyncio.Task[None]] = {}
        self._lock: asyncio.Lock | None = None

    # ---------------------------------------------------------------------------------- Router
    async def open(self, session: Any) -> None:
        self._session = session
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        for task in list(self._loads.values()):
            task.cancel()
        self._loads.clear()

    async def invoke(self, call: Call) -> Reply:
        target = call.header("X-Amzn-SageMaker-Target-Model") or ""
        key = model_key(target)
        model = self._models.get(key)
        # a loaded model's TargetModel was checked when it loaded; only a load resolves the artifact again
        artifact = None if model is not None and model.loaded else self.source.artifact(target)
        if model is None:
            model = self._models[key] = _Model(target, key)
        model.in_flight += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.invocation_timeout  # one limit for the whole invocation: waits, loads, retries
        reply: Reply | None = None
        try:
            self.counters.invocations += 1
            for _attempt in range(3):
                if not model.loaded:
                    await self._wait_loaded(model, artifact or self.source.artifact(target), deadline - loop.time())
                if key not in self._lru:  # forgotten meanwhile (another request's 404): load it again
                    continue
                self._lru.move_to_end(key)
                reply = await post(self._session, f"{self.container_url}/models/{key}/invoke", call.body,
                                   call.headers, timeout=deadline - loop.time(), what="the multi-model container")
                if reply.status == 404:  # unloaded behind our back (the container restarted): load it again
                    self._forget(model)
                    continue
                if reply.status == 507 and await self._evict(keep=key):  # a worker could not load it lazily
                    continue
                return reply
            if reply is None:  # unloaded by other requests each time it was loaded for this one
                raise FrontError(503, "ServiceUnavailable", f"Model {target!r} was unloaded again while this request "
                                 "waited for it; retry the request")
            return reply
        finally:
            model.in_flight -= 1

    # ---------------------------------------------------------------------------------- loading
    async def _wait_loaded(self, model: _Model, artifact: Path, timeout: float) -> None:
        """Wait up to ``timeout`` seconds (what is left of the invocation's) for ``model``'s load, starting it
        when none runs."""
        task = self._loads.get(model.key)
        if task is None:
            task = asyncio.ensure_future(asyncio.wait_for(self._load(model, artifact), self.load_timeout))
            self._loads[model.key] = task
            key = model.key

            def done(_task: asyncio.Task[None]) -> None:
                self._loads.pop(key, None)

            task.add_done_callback(done)
        try:
            await asyncio.wait_for(asyncio.shield(task), max(timeout, 0.0))
        except asyncio.TimeoutError as e:
            if task.done():  # it ended as the invocation timeout fired: what it ended with is the answer
                if task.cancelled():
                    raise self._load_timeout(model) from e
                failure = task.exception()
                if failure is None:
                    return  # loaded just in time
                if isinstance(failure, asyncio.TimeoutError):  # the load itself timed out (load_timeout)
                    raise self._load_timeout(model) from e
                raise failure from None
            self.counters.not_ready += 1
            raise FrontError(429, "ModelNotReadyException",
                             f"Model {model.target!r} is still loading; it was not ready within the invocation "
                             f"timeout of {self.invocation_timeout:g} s. Retry the request.") from e
        except asyncio.CancelledError:
            if task.cancelled():
                raise self._load_timeout(model) from None
            raise

    def _load_timeout(self, model: _Model) -> FrontError:
        return FrontError(424, "ModelError", f"Model {model.target!r} did not load within {self.load_timeout:g} s.",
                          OriginalStatusCode=504)

    async def _load(self, model: _Model, artifact: Path) -> None:
        directory = await asyncio.get_running_loop().run_in_executor(None, self._fetch, model, artifact)
        url = f"{self.container_models_dir}/{model.key}/model"
        while self.max_loaded and len(self._lru) >= self.max_loaded and await self._evict(keep=model.key):
            pass  # the instance's capacity in models (max_loaded), reached: make room as for a 507
        body = json.dumps({"model_name": model.key, "url": url}).encode("utf-8")
        evicted = 0
        while True:
            reply = await post(self._session, f"{self.container_url}/models", body,
                               {"Content-Type": "application/json",
                                "X-Amzn-SageMaker-Target-Model": model.target},
                               timeout=self.load_timeout, what="the multi-model container")
            if reply.ok or reply.status == 409:  # 409: it holds the model already (loaded before a restart)
                break
            if reply.status == 507 and evicted < MAX_EVICTIONS and await self._evict(keep=model.key):
                evicted += 1
                continue
            self.counters.load_failures += 1
            message = reply.body.decode("utf-8", "replace")
            log.warning("loading %s (%s) failed: %s %s", model.target, directory, reply.status, message[:500])
            raise FrontError(424, "ModelError", f"Received {'server' if reply.status >= 500 else 'client'} error "
                             f"({reply.status}) while loading model {model.target!r} with message \"{message}\". "
                             "See the endpoint's log for more information.",
                             OriginalStatusCode=reply.status, OriginalMessage=message)
        model.loaded = True
        self._lru[model.key] = model
        self._lru.move_to_end(model.key)
        self.counters.loads += 1
        log.info("loaded model %s as %s (%d loaded)", model.target, model.key, len(self._lru))

    def _fetch(self, model: _Model, artifact: Path) -> Path:
        """The model's directory in the cache, extracted from ``artifact`` now if it is not there yet."""
        directory = self.cache_dir / model.key / "model"
        if directory.is_dir():
            return directory
        staging = Path(tempfile.mkdtemp(prefix=f".{model.key}-", dir=self.cache_dir))
        try:
            try:
                safe_extract(artifact, staging / "model")
            except ArchiveError as e:
                raise validation_error(f"TargetModel {model.target!r}: the artifact cannot be used: {e}") from e
            for path in [staging, *staging.rglob("*")]:  # readable by whatever user the container runs as
                if not path.is_symlink():
                    path.chmod(path.stat().st_mode | 0o444 | (0o111 if path.is_dir() else 0))
            staging.rename(self.cache_dir / model.key)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return directory

    async def _evict(self, keep: str) -> bool:
        """Unload the least recently used model no request is using (not ``keep``); False when there is none."""
        assert self._lock is not None
        async with self._lock:
            victim = next((m for k, m in self._lru.items() if k != keep and m.in_flight == 0), None)
            if victim is None:
                return False
            self._forget(victim)
            answer = await send(self._session, "DELETE", f"{self.container_url}/models/{victim.key}", b"", {},
                                timeout=self.load_timeout, what="the multi-model container")
            if answer.status not in (200, 404):
                log.warning("unloading %s answered %s", victim.target, answer.status)
            self.counters.evictions += 1
            log.info("unloaded model %s (least recently used) to make room", victim.target)
            return True

    def _forget(self, model: _Model) -> None:
        model.loaded = False
        self._lru.pop(model.key, None)

    def loaded_models(self) -> list[str]:
        """The TargetModels loaded now, least recently used first."""
        return [m.target for m in self._lru.values()]



class _MultiModelDocker(DockerEndpoint):
    """The container of a multi-model endpoint: the model cache read-only at /opt/ml/models."""

    def container_args(self) -> dict[str, Any]:
        args = super().container_args()
        args["volumes"] = {str(self.root / "models"): {"bind": CONTAINER_MODELS_DIR, "mode": "ro"}}
        return args


@dataclass(frozen=True)
class MultiModelSpec:
    """A multi-model endpoint: ``endpoint`` is the user's port and settings, ``models`` the model prefix."""

    endpoint: EndpointSpec
    models: Path
    invocation_timeout: float = INVOCATION_TIMEOUT
    load_timeout: float = LOAD_TIMEOUT
    #: The most models held at once (0: as many as the container's memory allows, SageMaker's only limit).
    max_loaded: int = 0


def require_multi_model_label(client: Any, image: str, instance_type: str | None = None) -> None:
    """SageMaker refuses ``Mode: MultiModel`` for an image without the multi-models label; so do we (and, like
    every image, one for another platform than ``instance_type``'s)."""
    from smbyoc.emulator import containers

    found = containers.require_image(client, image, instance_type=instance_type)
    labels = (getattr(found, "labels", None) or {})
    if str(labels.get(MULTI_MODELS_LABEL, "")).lower() != "true":
        raise ConfigError(f"the image does not carry the label {MULTI_MODELS_LABEL}=true that multi-model "
                          "endpoints require (smbyoc build --multi-model sets it)", key=f"--image {image}")


class MultiModelEndpoint:
    """One multi-model container on a private port, and the front on the endpoint's port."""

    kind = "multi-model"

    def __init__(self, spec: MultiModelSpec, *, client: Any = None, image: str | None = None,
                 sink: LineSink | None = _print_line, user: str | None = None, require_nginx: bool = False,
                 container_route: str = "network") -> None:
        check_container_route(container_route)  # before anything is started or made
        self.spec = spec
        self.source = ModelSource(spec.models)
        inner = replace(spec.endpoint, model_data=None, port=free_port(), bind_address="127.0.0.1",
                        environment={**spec.endpoint.environment, "SAGEMAKER_MULTI_MODEL": "true"})
        self.container: Endpoint
        if image is not None:
            require_multi_model_label(client, image, spec.endpoint.instance_type)
            self.container = _MultiModelDocker(inner, client, image, sink, user=user)
            container_models = CONTAINER_MODELS_DIR
        else:
            self.container = ProcessEndpoint(inner, sink, require_nginx=require_nginx)
            container_models = str(self.container.root / "models")
        cache = self.container.root / "models"
        cache.mkdir(mode=0o755, exist_ok=True)
        self.container_route = container_route
        self.router = MultiModelRouter(self.source, self.container.url, cache,
                                       container_models_dir=container_models,
                                       invocation_timeout=spec.invocation_timeout, load_timeout=spec.load_timeout,
                                       max_loaded=spec.max_loaded)
        self.front = Front(self.router, host=spec.endpoint.bind_address, port=spec.endpoint.port)
        self.startup_seconds: float | None = None

    @property
    def url(self) -> str:
        return self.front.url

    @property
    def tail(self) -> Any:
        return self.container.tail

    def start(self, with_front: bool = True) -> float:
        """Start the container and wait for /ping, then the front (unless ``with_front`` is false: an endpoint's
        instance, whose :attr:`router` the endpoint's own front calls)."""
        try:
            self.startup_seconds = self.container.start()
            self.router.container_url = self.container.front_url(self.container_route)
            if with_front:
                self.front.start()
        except BaseException:
            self.close()
            raise
        return self.startup_seconds

    def _exit_reason(self) -> str | None:
        return self.container._exit_reason()

    def close(self) -> None:
        try:
            self.front.stop()
        finally:
            self.container.close()

    def __enter__(self) -> MultiModelEndpoint:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def default_multi_model_image(client: Any) -> str:
    """smbyoc's CPU serve image with the multi-models label: ``smbyoc/serve:cpu-multi-model``, derived from
    ``smbyoc/serve:cpu`` (built first if absent) by a one-line Dockerfile, and rebuilt when that image changes."""
    import io

    from smbyoc.docker.client import translate_docker_errors
    from smbyoc.images.defaults import ensure_default_image

    base = ensure_default_image(client, "serve")
    base_id = client.images.get(base).id
    tag = f"{base.rsplit(':', 1)[0]}:cpu-multi-model"
    with translate_docker_errors(f"inspect {tag}"):
        try:
            existing = client.images.get(tag)
        except Exception:
            existing = None
    if existing is not None and (existing.labels or {}).get("org.smbyoc.derived-from") == base_id:
        return tag
    dockerfile = f"FROM {base}\n".encode()
    with translate_docker_errors(f"build {tag}"):
        client.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, rm=True, pull=False,
                            labels={MULTI_MODELS_LABEL: "true", "org.smbyoc.derived-from": base_id})
    log.info("built %s (%s with the %s label)", tag, base, MULTI_MODELS_LABEL)
    return tag
