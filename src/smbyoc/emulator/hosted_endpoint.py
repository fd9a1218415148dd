"""An endpoint as SageMaker hosts it, from an endpoint configuration (CreateModel + CreateEndpointConfig):
``smbyoc local-serve --endpoint-config FILE``.

Every production and shadow variant gets ``InitialInstanceCount`` instances; an instance is whatever the variant's
model needs on one machine: one container, one multi-model container with its loader
(:mod:`smbyoc.emulator.multi_model`) or 2-15 containers in one network namespace
(:mod:`smbyoc.emulator.multi_container`). Instances start in parallel (as SageMaker starts them) and each must
pass ``/ping`` within its variant's ``ContainerStartupHealthCheckTimeoutInSeconds``. One front on the endpoint's
port then routes between them (:mod:`smbyoc.emulator.variants`), captures data when ``DataCaptureConfig`` says so
and answers ``smbyoc endpoint describe`` / ``update-weights`` through its control routes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import logging
import os
import random
import secrets
import shutil
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smbyoc.emulator import jobs
from smbyoc.emulator.async_inference.endpoint import current_invocation_timeout
from smbyoc.emulator.endpoint import (
    DEFAULT_STARTUP_HEALTH_TIMEOUT,
    DockerEndpoint,
    Endpoint,
    EndpointSpec,
    LineSink,
    ProcessEndpoint,
    _print_line,
    _Tail,
    check_container_route,
)
from smbyoc.emulator.endpoint_config import Container, EndpointDefinition, Model
from smbyoc.emulator.endpoint_config import Variant as VariantDefinition
from smbyoc.emulator.front import (
    EVENT_LOOPS,
    INVOCATION_TIMEOUT,
    Call,
    Front,
    FrontError,
    Reply,
    Router,
    send,
    validation_error,
)
from smbyoc.emulator.owners import process_tree
from smbyoc.emulator.variants import LEAST_OUTSTANDING, EndpointRouter, Instance, Variant
from smbyoc.errors import ConfigError, ServingError
from smbyoc.serving.ports import free_port, is_loopback

log = logging.getLogger(__name__)


class ContainerRouter:
    """The router of a one-container instance: ``POST /invocations`` on the container."""

    def __init__(self, url: str, timeout: float = INVOCATION_TIMEOUT) -> None:
        self.url = url.rstrip("/") + "/invocations"
        self.timeout = timeout
        self._session: Any = None

    async def open(self, session: Any) -> None:
        self._session = session

    def invoke(self, call: Call) -> Coroutine[Any, Any, Reply]:
        # an asynchronous request has its own InvocationTimeoutSeconds (up to 3600 s) instead of the 60 s
        timeout = current_invocation_timeout() or self.timeout
        return send(self._session, "POST", self.url, call.body, call.headers, timeout=timeout)

    async def close(self) -> None:
        pass


def lower_priority(pid: int, nice: int) -> None:
    """Every thread of process ``pid`` and of its descendants at ``nice`` (on Linux a nice value is a thread's:
    threads and processes started later inherit their parent's). Without /proc, the process alone.

    With the kernel's autogroup scheduling (``CONFIG_SCHED_AUTOGROUP``, on in Debian's and Ubuntu's kernels), a
    thread's nice value only weighs against threads of its own session: every session is a scheduling group with
    a weight of its own, so nginx and gunicorn (each starts a session) at nice 19 still got as much CPU as the
    production variant's nginx and gunicorn (measured: production's requests/s halved by a shadow at "nice 19").
    So the autogroup of every session of the tree other than ours is set to ``nice`` too."""
    proc = Path("/proc")
    if not (proc / str(pid) / "task").is_dir():
        os.setpriority(os.PRIO_PROCESS, pid, nice)
        return
    ours, groups = os.getsid(0), set()
    for process in process_tree(pid):
        try:
            threads = [int(task.name) for task in (proc / str(process) / "task").iterdir()]
            session = os.getsid(process)
        except OSError:
            continue
        for thread in threads:
            with contextlib.suppress(ProcessLookupError):
                os.setpriority(os.PRIO_PROCESS, thread, nice)
        if session != ours and session not in groups:
            groups.add(session)
            _autogroup_nice(proc / str(process) / "autogroup", nice)


def _autogroup_nice(path: Path, nice: int) -> None:
    """Set the nice value of the autogroup ``path`` (``/proc/PID/autogroup``) belongs to; nothing where the kernel
    has no autogroups (no such file) or the process is gone."""
    try:
        path.write_text(f"{nice}\n")
    except FileNotFoundError:
        return
    except OSError as e:
        if e.errno not in (errno.ESRCH, errno.ENOENT):
            raise


def _leaf_endpoints(handle: Any) -> list[Endpoint]:
    """The containers (or ``serve`` processes) of an instance's handle: itself, a multi-model endpoint's container,
    a multi-container endpoint's members."""
    if isinstance(handle, Endpoint):
        return [handle]
    inner = getattr(handle, "container", None)
    if isinstance(inner, Endpoint):
        return [inner]
    return [member for member in getattr(handle, "members", []) if isinstance(member, Endpoint)]


class AsyncOnlyRouter:
    """The router of an asynchronous endpoint's InvokeEndpoint route: every call refused as SageMaker refuses it;
    the asynchronous queue calls the endpoint's real router."""

    def __init__(self, router: Router, async_endpoint: Any) -> None:
        self.router = router
        self.async_endpoint = async_endpoint

    async def open(self, session: Any) -> None:
        await self.router.open(session)

    async def invoke(self, call: Call) -> Reply:
        self.async_endpoint.refuse_sync()
        raise AssertionError("refuse_sync returned")  # pragma: no cover

    async def close(self) -> None:
        await self.router.close()


@dataclass(frozen=True)
class HostingOptions:
    """How the emulator runs the endpoint's containers (not part of the endpoint configuration)."""

    mode: str = "docker"
    port: int = 8080
    #: ``port`` was picked by the caller with :func:`~smbyoc.serving.ports.free_port` rather than asked for by
    #: the user: when another socket takes it before the front binds it (an outgoing connection's ephemeral port
    #: can), the front tries another free port instead of failing the endpoint.
    port_is_free_choice: bool = False
    bind_address: str = "127.0.0.1"
    user: str | None = None
    require_nginx: bool = False
    #: Seeds the traffic split, shadow sampling and capture sampling (None: not reproducible).
    seed: int | None = None
    #: Extra environment for every container (``--env``), under each container's own Environment.
    environment: tuple[tuple[str, str], ...] = ()
    #: Serverless variants: seconds without a call after which an instance is stopped (scale to zero).
    serverless_idle_timeout: float = 300.0
    #: Asynchronous endpoints: where the queue lives (None: ``<state dir>/async/<endpoint name>``), kept across
    #: restarts of ``local-serve`` so that nothing accepted is lost.
    async_state_dir: Path | None = None
    #: Asynchronous endpoints: SNS topic ARN -> a JSON Lines file or ``cmd:ARGV`` standing for the topic.
    topics: tuple[tuple[str, str], ...] = ()
    #: Shadow variants' instances run at a lower CPU priority, the local stand-in for the separate instances they
    #: have on SageMaker (under load production gets the CPUs first; copies the shadow cannot take are dropped and
    #: counted): process mode, this nice value for their processes (0: as production)...
    shadow_nice: int = 19
    #: ... docker mode, this ``--cpu-shares`` for their containers (2, docker's minimum, is cgroup v2 CPU weight 1
    #: against production's 39; 0: docker's default, as production).
    shadow_cpu_shares: int = 2
    #: The front's event loop: ``auto`` (uvloop when installed), ``asyncio`` or ``uvloop``; None: the front's default.
    front_event_loop: str | None = None
    #: Docker mode, how the front reaches a container: ``network`` (its address on the Docker network, as
    #: SageMaker's front reaches an instance, when this machine can connect to it: Linux's bridge networks; else the
    #: published port), or ``published`` (always its 127.0.0.1 port, through the engine's docker-proxy, which costs
    #: a user-space copy of every request and answer: ≈40 % of the container's requests/s, bench/README.md).
    container_route: str = "network"
    #: Asynchronous endpoints: the S3 endpoint (``--endpoint-url``) for s3:// output, failure and input locations;
    #: None: botocore's own (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, else AWS).
    s3_endpoint_url: str | None = None
    #: Asynchronous endpoints: the directories a local ``InputLocation`` may be in (symbolic links resolved). Empty:
    #: any file but the kernel's pseudo-file systems while the front listens on a loopback address; no local file
    #: at all when it listens beyond this machine (a caller there would read this machine's files through it).
    async_input_roots: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.shadow_nice <= 19:
            raise ConfigError(f"must be 0-19, not {self.shadow_nice!r}", key="shadow_nice")
        if self.shadow_cpu_shares != 0 and not 2 <= self.shadow_cpu_shares <= 262144:
            raise ConfigError(f"must be 0 or 2-262144, not {self.shadow_cpu_shares!r}", key="shadow_cpu_shares")
        check_container_route(self.container_route)
        if self.front_event_loop is not None and self.front_event_loop not in EVENT_LOOPS:
            raise ConfigError(f"must be one of {', '.join(EVENT_LOOPS)}, not {self.front_event_loop!r}",
                              key="front_event_loop")


class HostedEndpoint:
    """An endpoint from an :class:`~smbyoc.emulator.endpoint_config.EndpointDefinition`; the surface ``local-serve``
    uses: ``start()``, ``url``, ``tail``, ``_exit_reason()``, ``close()``."""

    kind = "endpoint"

    def __init__(self, definition: EndpointDefinition, options: HostingOptions, *, client: Any = None,
                 sink: LineSink | None = _print_line) -> None:
        if options.mode == "docker" and client is None:
            raise ConfigError("docker mode needs a Docker client", key="client")
        self.definition = definition
        self.options = options
        self.client = client
        self.tail = _Tail(sink)
        self.rng = random.Random(options.seed)  # noqa: S311 - traffic splitting, not cryptography
        self.root = Path(tempfile.mkdtemp(prefix=f"smbyoc-{definition.endpoint_name}-"))
        self.control_token = secrets.token_urlsafe(24)
        self.instances: list[Instance] = []
        self.router: EndpointRouter | None = None
        self.capture: Any = None
        self.async_endpoint: Any = None
        self.front: Front | None = None
        self.startup_seconds: float | None = None
        self._closed = False
        jobs.register(jobs.ENDPOINT, self.root.name, mode=f"{options.mode} endpoint", tree=str(self.root),
                      url=self.url, endpoint_name=definition.endpoint_name, control_token=self.control_token)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.options.bind_address in ("0.0.0.0", "") else self.options.bind_address
        return f"http://{host}:{self.options.port}"

    # ------------------------------------------------------------------------------------ lifecycle
    def start(self) -> float:
        import time

        started = time.monotonic()
        try:
            self._check_images()
            # a serverless variant starts its instances itself (on demand, or ProvisionedConcurrency at open)
            plan = [(variant, index) for variant in (*self.definition.production_variants,
                                                     *self.definition.shadow_variants)
                    if not variant.is_serverless for index in range(variant.initial_instance_count or 1)]
            built: dict[str, list[Instance]] = {}
            with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(8, len(plan)))) as pool:
                futures = {pool.submit(self._start_instance, variant, index): variant for variant, index in plan}
                errors: list[BaseException] = []
                for future in concurrent.futures.as_completed(futures):
                    try:
                        instance = future.result()
                    except BaseException as e:
                        errors.append(e)
                        continue
                    self.instances.append(instance)
                    built.setdefault(futures[future].name, []).append(instance)
                if errors:
                    raise errors[0]
            self.router = self._router(built)
            front_router: Router = self.router
            if self.definition.async_config is not None:
                self.async_endpoint = self._async_endpoint(self.router)
                front_router = AsyncOnlyRouter(self.router, self.async_endpoint)
            self._start_front(front_router)
        except BaseException:
            self.close()
            raise
        self.startup_seconds = time.monotonic() - started
        return self.startup_seconds

    def _start_front(self, router: Router, attempts: int = 3) -> None:
        """Start the front on ``options.port``; a freely chosen port taken meanwhile is chosen again."""
        import dataclasses

        for attempt in range(attempts):
            self.front = Front(router, host=self.options.bind_address, port=self.options.port,
                               endpoint_name=self.definition.endpoint_name,
                               variant_name=self.definition.production_variants[0].name, control=self,
                               async_invocations=self.async_endpoint, event_loop=self.options.front_event_loop)
            try:
                self.front.start()
                return
            except ServingError as e:
                taken = isinstance(e.__cause__, OSError) and e.__cause__.errno == errno.EADDRINUSE
                if not (taken and self.options.port_is_free_choice and attempt + 1 < attempts):
                    raise
                log.info("endpoint %s: port %d was taken before the front bound it; choosing another",
                         self.definition.endpoint_name, self.options.port)
                self.options = dataclasses.replace(self.options, port=free_port())

    def _check_images(self) -> None:
        """Docker mode: every container image of every variant is here and fits the platform of its variant's
        instance type (:mod:`smbyoc.emulator.image_platform`), checked before any instance starts."""
        if self.options.mode != "docker":
            return
        from smbyoc.emulator import containers

        for variant in (*self.definition.production_variants, *self.definition.shadow_variants):
            instance_type = None if variant.is_serverless else variant.instance_type
            for container in self.definition.model_of(variant).containers:
                containers.require_image(self.client, container.image, instance_type=instance_type)

    def _router(self, built: dict[str, list[Instance]]) -> EndpointRouter:
        def variant(definition: VariantDefinition) -> Variant:
            if definition.serverless is not None:
                return self._serverless_variant(definition)
            instances = sorted(built[definition.name], key=lambda i: i.name)
            return Variant(definition.name, instances, definition.initial_weight,
                           routing=definition.routing_strategy or LEAST_OUTSTANDING, rng=self.rng)

        production = [variant(v) for v in self.definition.production_variants]
        shadow = variant(self.definition.shadow_variants[0]) if self.definition.shadow_variants else None
        if self.definition.data_capture is not None:
            from smbyoc.emulator.capture import CaptureWriter, DataCaptureConfig

            config = DataCaptureConfig.from_request(self.definition.data_capture)
            self.capture = CaptureWriter(config, self.definition.endpoint_name, seed=self.options.seed)
        return EndpointRouter(production, shadow=shadow, capture=self.capture, rng=self.rng)

    def _async_endpoint(self, router: EndpointRouter) -> Any:
        from smbyoc.emulator.async_inference import AsyncEndpoint

        assert self.definition.async_config is not None
        state = self.options.async_state_dir or jobs.state_dir() / "async" / self.definition.endpoint_name
        instances = sum(v.initial_instance_count or 1 for v in self.definition.production_variants)
        roots: tuple[Path, ...] | None = tuple(Path(os.path.realpath(r)) for r in self.options.async_input_roots)
        if not roots and not is_loopback(self.options.bind_address):
            roots = None
        return AsyncEndpoint(self.definition.async_config, self.definition.endpoint_name, state, router.invoke,
                             instances=instances, topics=dict(self.options.topics),
                             endpoint_url=self.options.s3_endpoint_url, input_roots=roots)

    def _serverless_variant(self, definition: VariantDefinition) -> Variant:
        from smbyoc.emulator.serverless import ServerlessConfig, ServerlessVariant, serverless_limits

        position = self.definition.production_variants.index(definition)
        config = ServerlessConfig.from_request(
            definition.serverless, key=f"EndpointConfig.ProductionVariants[{position}].ServerlessConfig")
        limits = serverless_limits(config)
        counter = iter(range(1_000_000))

        def start_instance() -> Instance:
            return self._start_instance(definition, next(counter), resources=limits)

        return ServerlessVariant(definition.name, config, start_instance, rng=self.rng,
                                 idle_timeout=self.options.serverless_idle_timeout,
                                 weight=definition.initial_weight)

    def _start_instance(self, variant: VariantDefinition, index: int, resources: Any = None) -> Instance:
        instance = self._new_instance(variant, index, resources)
        if variant in self.definition.shadow_variants:
            self._deprioritize(instance)
        return instance

    def _deprioritize(self, instance: Instance) -> None:
        """A shadow instance's processes at nice :attr:`HostingOptions.shadow_nice` (every thread of each ``serve``
        and of its descendants, nginx, gunicorn and the model's thread pools: what they start later inherits it),
        its containers at :attr:`HostingOptions.shadow_cpu_shares`. A failure is logged, never fatal."""
        for endpoint in _leaf_endpoints(instance.handle):
            try:
                if isinstance(endpoint, ProcessEndpoint) and endpoint.process is not None and self.options.shadow_nice:
                    lower_priority(endpoint.process.pid, self.options.shadow_nice)
                elif isinstance(endpoint, DockerEndpoint) and endpoint.container is not None and \
                        self.options.shadow_cpu_shares:
                    endpoint.container.update(cpu_shares=self.options.shadow_cpu_shares)
                else:
                    continue
            except Exception as e:
                log.warning("instance %s: could not lower its CPU priority (%s); the shadow variant competes with "
                            "production for the CPUs", instance.name, e)
                continue
            log.info("instance %s: shadow variant, CPU priority lowered (%s)", instance.name,
                     f"nice {self.options.shadow_nice}" if isinstance(endpoint, ProcessEndpoint)
                     else f"cpu-shares {self.options.shadow_cpu_shares}")

    def _new_instance(self, variant: VariantDefinition, index: int, resources: Any) -> Instance:
        model = self.definition.model_of(variant)
        name = f"{variant.name}-{index + 1}"
        prefix = f"{variant.name}/{index + 1} | "

        def sink(line: str) -> None:
            self.tail(prefix + line)

        timeout = float(variant.container_startup_health_check_timeout or DEFAULT_STARTUP_HEALTH_TIMEOUT)
        instance_type = variant.instance_type or "local"
        if len(model.containers) > 1:
            return self._pipeline_instance(name, model, instance_type, timeout, sink)
        container = model.containers[0]
        if model.is_multi_model:
            return self._multi_model_instance(name, container, instance_type, timeout, sink)
        spec = EndpointSpec(container.model_data, port=free_port(), environment=self._environment(container),
                            startup_health_timeout=timeout, instance_type=instance_type,
                            name_prefix=f"smbyoc-{self.definition.endpoint_name}-{name}", resources=resources)
        handle: Endpoint
        if self.options.mode == "process":
            handle = ProcessEndpoint(spec, sink, require_nginx=self.options.require_nginx)
        else:
            handle = DockerEndpoint(spec, self.client, container.image, sink, user=self.options.user)
        self._start_handle(name, handle.start, handle.close)
        url = handle.front_url(self.options.container_route)
        log.debug("instance %s: the front calls %s", name, url)
        return Instance(name, ContainerRouter(url), handle)

    def _multi_model_instance(self, name: str, container: Container, instance_type: str, timeout: float,
                              sink: Callable[[str], None]) -> Instance:
        from smbyoc.emulator.multi_model import MultiModelEndpoint, MultiModelSpec

        if container.model_data is None:
            raise ConfigError("a MultiModel container needs ModelDataUrl (the model prefix)", key=name)
        spec = MultiModelSpec(EndpointSpec(None, port=free_port(), environment=self._environment(container),
                                           startup_health_timeout=timeout, instance_type=instance_type,
                                           name_prefix=f"smbyoc-{self.definition.endpoint_name}-{name}"),
                              container.model_data)
        docker = self.options.mode == "docker"
        handle = MultiModelEndpoint(spec, client=self.client if docker else None,
                                    image=container.image if docker else None, sink=sink, user=self.options.user,
                                    require_nginx=self.options.require_nginx,
                                    container_route=self.options.container_route)
        self._start_handle(name, lambda: handle.start(with_front=False), handle.close)
        return Instance(name, handle.router, handle)

    def _pipeline_instance(self, name: str, model: Model, instance_type: str, timeout: float,
                           sink: Callable[[str], None]) -> Instance:
        from smbyoc.emulator.multi_container import ContainerSpec, MultiContainerEndpoint, MultiContainerSpec

        docker = self.options.mode == "docker"
        members = tuple(ContainerSpec(image=c.image if docker else None, model_data=c.model_data,
                                      hostname=c.hostname, environment=self._environment(c))
                        for c in model.containers)
        spec = MultiContainerSpec(members, execution_mode=model.mode, backend=self.options.mode, port=free_port(),
                                  startup_health_timeout=timeout, instance_type=instance_type,
                                  name_prefix=f"smbyoc-{self.definition.endpoint_name}-{name}")
        handle = MultiContainerEndpoint(spec, client=self.client if docker else None, user=self.options.user,
                                        require_nginx=self.options.require_nginx, sink=sink)
        self._start_handle(name, lambda: handle.start(with_front=False), handle.close)
        return Instance(name, handle.router, handle)

    def _start_handle(self, name: str, start: Callable[[], float], close: Callable[[], None]) -> None:
        try:
            seconds = start()
        except ServingError as e:
            raise ServingError(f"instance {name} did not start: {e}") from e
        except BaseException:
            with contextlib.suppress(Exception):
                close()
            raise
        log.info("instance %s is healthy (%.2f s)", name, seconds)

    def _environment(self, container: Container) -> dict[str, str]:
        return {**dict(self.options.environment), **container.environment}

    def _exit_reason(self) -> str | None:
        for instance in self.instances:
            why = instance.exit_reason()
            if why is not None:
                return why
        return None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self.front is not None:
                self.front.stop()
            with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(8, len(self.instances)))) as pool:
                for future in [pool.submit(i.handle.close) for i in self.instances]:
                    try:
                        future.result()
                    except Exception as e:
                        log.warning("could not stop an instance: %s", e)
            if self.capture is not None:
                self.capture.close()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            jobs.unregister(jobs.ENDPOINT, self.root.name)

    def __enter__(self) -> HostedEndpoint:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------ control (front)
    @property
    def token(self) -> str:
        return self.control_token

    def describe(self) -> dict[str, Any]:
        """DescribeEndpoint's answer (``EndpointName``, ``EndpointStatus``, variants with statistics)."""
        assert self.router is not None
        answer: dict[str, Any] = {"EndpointName": self.definition.endpoint_name,
                                  "EndpointConfigName": self.definition.endpoint_config_name,
                                  "EndpointStatus": "InService" if self._exit_reason() is None else "Failed",
                                  **self.router.describe()}
        if self.capture is not None:
            answer["DataCaptureConfig"] = self.capture.describe()
        if self.async_endpoint is not None:
            answer["AsyncInferenceStatistics"] = self.async_endpoint.stats()
        return answer

    def update_weights(self, desired: list[dict[str, Any]]) -> None:
        """UpdateEndpointWeightsAndCapacities: new weights at once; instance counts cannot change here."""
        assert self.router is not None
        weights: dict[str, float] = {}
        for position, entry in enumerate(desired):
            where = f"DesiredWeightsAndCapacities[{position}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("VariantName"), str):
                raise validation_error(f"{where}.VariantName is required")
            unknown = set(entry) - {"VariantName", "DesiredWeight", "DesiredInstanceCount"}
            if unknown:
                raise validation_error(f"{where}: unknown field {sorted(unknown)[0]}")
            name = entry["VariantName"]
            if any(earlier.get("VariantName") == name for earlier in desired[:position]):
                raise validation_error(f"{where}.VariantName: {name} is given more than once")
            if "DesiredInstanceCount" in entry:
                current = next((len(v.instances) for v in self.router.production if v.name == name), None)
                if entry["DesiredInstanceCount"] != current:
                    raise FrontError(400, "ValidationError", f"{where}.DesiredInstanceCount: changing the instance "
                                     "count of a running local endpoint is not emulated; restart it with a new "
                                     "InitialInstanceCount")
            if "DesiredWeight" in entry:
                weight = entry["DesiredWeight"]
                if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                    raise validation_error(f"{where}.DesiredWeight must be a number")
                try:
                    weights[name] = float(weight)
                except OverflowError:  # (an integer beyond a double)
                    raise validation_error(f"{where}.DesiredWeight is out of range") from None
        self.router.update_weights(weights)

