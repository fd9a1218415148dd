"""Serverless inference: a production variant with a ``ServerlessConfig`` (contract-endpoints.md §5).

A :class:`ServerlessVariant` is a :class:`~smbyoc.emulator.variants.Variant` whose instances come and go:

* **Scale to zero.** No instance runs until the first call (unless ``ProvisionedConcurrency`` keeps some warm
  from :meth:`~ServerlessVariant.open`). A call that finds no free instance starts one: ``start_instance`` (a
  blocking factory: it starts a container with the serverless memory limit and waits for ``/ping``) runs in a
  thread while the call, and any call that arrives meanwhile, waits for that same start. The seconds it took are
  the cold start time (CloudWatch's ``ModelSetupTime``): logged, counted in :meth:`~ServerlessVariant.describe`
  and returned to the calls that waited in :data:`SETUP_TIME_HEADER`. An instance with no call for
  ``idle_timeout`` seconds is stopped; ``ProvisionedConcurrency`` stays warm.
* **Concurrency.** In-flight calls (waiting for a cold start included) are capped at ``MaxConcurrency``; the
  excess is refused at once with :data:`THROTTLING_STATUS` :data:`THROTTLING_CODE` (the code and status are an
  assumption: contract-endpoints.md §5.2 marks them UNCONFIRMED). One instance takes ``per_instance`` concurrent
  calls (default 1: SageMaker counts concurrency in requests and cold-starts "if your concurrent requests exceed
  the current concurrent request usage", and recommends one worker with one copy of the model). A call that finds
  every instance busy starts another, up to ``max_instances`` (default ``ceil(MaxConcurrency / per_instance)``);
  at that local cap calls share the least busy instance instead.
* **Limits.** Request and response payloads of at most 4 MB (:data:`MAX_PAYLOAD_BYTES`: a larger request is a
  ``ValidationError``, a larger response a ``ModelError``), 60 s for the container's answer, 3 minutes for a cold
  start (a call still waiting then gets ``ModelNotReadyException`` 429, "still being provisioned"; the start goes
  on and a later call can use the instance). A start that fails is ``ServiceUnavailable`` 503 (the platform
  could not provide capacity; ``ModelError`` is reserved for a container's answer), with the container's last log
  lines in the log; the next call tries a new start.

Everything here runs in the front's event loop; only ``start_instance`` and the instances' ``handle.close()`` run
in threads (one executor per variant).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from smbyoc.emulator.front import INVOCATION_TIMEOUT, Call, FrontError, Reply, validation_error
from smbyoc.emulator.variants import Instance, Variant
from smbyoc.errors import ConfigError

log = logging.getLogger(__name__)

SECTION = "ServerlessConfig"
#: ``MemorySizeInMB``: "1 GB increments: 1024, 2048, 3072, 4096, 5120, or 6144 MB" (BOTO-SM).
MEMORY_SIZES = (1024, 2048, 3072, 4096, 5120, 6144)
#: ``MaxConcurrency`` and ``ProvisionedConcurrency``: 1-200 (BOTO-SM).
MIN_CONCURRENCY, MAX_CONCURRENCY = 1, 200
#: Request and response payloads of a serverless endpoint: 4 MB (DG ``serverless-endpoints-invoke.md``), read as
#: 4 MiB like InvokeEndpoint's 6 MB (6,291,456 bytes).
MAX_PAYLOAD_BYTES = 4 * 1024 * 1024
#: A cold start (model download + ``/ping`` success) must end within 3 minutes (DG ``serverless-endpoints.md``).
COLD_START_TIMEOUT = 180.0
#: An instance with no call for this long is stopped (scale to zero). SageMaker does not publish the figure; 5
#: minutes is our choice (the constructor's ``idle_timeout`` changes it).
DEFAULT_IDLE_TIMEOUT = 300.0
#: The answer to a call over ``MaxConcurrency``: SageMaker's common ``ThrottlingException`` (HTTP 400). That
#: serverless throttling uses exactly this code and status is UNCONFIRMED (contract-endpoints.md §5.2).
THROTTLING_STATUS = 400
THROTTLING_CODE = "ThrottlingException"
#: Our own response header (not an AWS one): the cold start time in ms, on the calls that waited for it.
SETUP_TIME_HEADER = "X-Smbyoc-Model-Setup-Time-Ms"
#: vCPUs are "proportional to memory (count not published)" (contract-endpoints.md §5.2). We assume AWS Lambda's
#: published ratio: "At 1,769 MB, a function has the equivalent of one vCPU" (AWS Lambda Developer Guide,
#: "Configuring Lambda function memory"), so 1024 MB gets 0.58 vCPU and 6144 MB 3.47.
MB_PER_VCPU = 1769
#: The ephemeral disk of a serverless instance (DG): documented, not enforced (Docker can only cap a container's
#: writable layer on overlay2 over xfs with project quotas).
EPHEMERAL_DISK_GB = 5
#: The largest image a serverless endpoint takes (DG).
MAX_IMAGE_BYTES = 10 * 1024**3
#: After a start that keeps ProvisionedConcurrency warm fails, the next such try waits this long.
WARM_RETRY_SECONDS = 30.0


# ------------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class ServerlessConfig:
    """A validated ``ProductionVariantServerlessConfig`` (contract-endpoints.md §5.1)."""

    memory_size_in_mb: int
    max_concurrency: int
    provisioned_concurrency: int | None = None

    @classmethod
    def from_request(cls, request: object, *, key: str = SECTION) -> ServerlessConfig:
        """Parse the boto3-shaped dict; a bad field is a :class:`ConfigError` naming ``<key>.<field>``."""
        if not isinstance(request, Mapping):
            raise ConfigError(f"must be an object, not {type(request).__name__}", key=key)
        fields = ("MemorySizeInMB", "MaxConcurrency", "ProvisionedConcurrency")
        for name in request:
            if name not in fields:
                raise ConfigError(f"unknown field (the fields are {', '.join(fields)})", key=f"{key}.{name}")

        def integer(name: str, *, required: bool) -> int | None:
            value = request.get(name)
            if value is None:
                if required:
                    raise ConfigError("is required", key=f"{key}.{name}")
                return None
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"must be an integer, not {value!r}", key=f"{key}.{name}")
            return value

        memory = integer("MemorySizeInMB", required=True)
        if memory not in MEMORY_SIZES:
            raise ConfigError(f"must be one of {', '.join(map(str, MEMORY_SIZES))} (1 GB increments), not {memory}",
                              key=f"{key}.MemorySizeInMB")
        maximum = integer("MaxConcurrency", required=True)
        assert maximum is not None
        if not MIN_CONCURRENCY <= maximum <= MAX_CONCURRENCY:
            raise ConfigError(f"must be from {MIN_CONCURRENCY} to {MAX_CONCURRENCY}, not {maximum}",
                              key=f"{key}.MaxConcurrency")
        provisioned = integer("ProvisionedConcurrency", required=False)
        if provisioned is not None:
            if not MIN_CONCURRENCY <= provisioned <= MAX_CONCURRENCY:
                raise ConfigError(f"must be from {MIN_CONCURRENCY} to {MAX_CONCURRENCY}, not {provisioned}",
                                  key=f"{key}.ProvisionedConcurrency")
            if provisioned > maximum:
                raise ConfigError(f"{provisioned} is above MaxConcurrency {maximum} (it must be less than or equal)",
                                  key=f"{key}.ProvisionedConcurrency")
        assert memory is not None
        return cls(memory, maximum, provisioned)

    def to_request(self) -> dict[str, int]:
        """The boto3 shape (``CurrentServerlessConfig`` in DescribeEndpoint)."""
        shape = {"MemorySizeInMB": self.memory_size_in_mb, "MaxConcurrency": self.max_concurrency}
        if self.provisioned_concurrency is not None:
            shape["ProvisionedConcurrency"] = self.provisioned_concurrency
        return shape


@dataclass(frozen=True)
class ServerlessLimits:
    """A serverless instance's container limits (an :class:`~smbyoc.emulator.endpoint.ContainerLimits`, for
    ``EndpointSpec.resources``): ``MemorySizeInMB`` MiB of memory, vCPUs in proportion (:data:`MB_PER_VCPU`), no
    GPU. The 5 GB ephemeral disk is not enforced (:data:`EPHEMERAL_DISK_GB`)."""

    memory_size_in_mb: int
    vcpus: float
    gpus: int = 0
    neuron_devices: int = 0

    @property
    def name(self) -> str:
        return f"serverless-{self.memory_size_in_mb}mb"

    @property
    def memory_bytes(self) -> int:
        return self.memory_size_in_mb * 1024 * 1024

    @property
    def memory_gib(self) -> float:
        return self.memory_size_in_mb / 1024

    @property
    def is_local(self) -> bool:
        return False


def serverless_limits(config: ServerlessConfig) -> ServerlessLimits:
    """The limits of one instance of a serverless variant with ``config``."""
    return ServerlessLimits(config.memory_size_in_mb, round(config.memory_size_in_mb / MB_PER_VCPU, 3))


def check_image_size(image: str, size_bytes: int) -> None:
    """A serverless endpoint takes images of at most 10 GB (DG); ``size_bytes`` as ``docker inspect`` reports it."""
    if size_bytes > MAX_IMAGE_BYTES:
        raise ConfigError(f"the image has {size_bytes / 1024**3:.1f} GiB; a serverless endpoint takes at most 10 GB",
                          key=f"image {image}")


# ------------------------------------------------------------------------------------------------ variant
@dataclass
class ServerlessStats:
    """What a serverless variant did besides answering (``describe()['Statistics']``)."""

    cold_starts: int = 0
    warm_starts: int = 0
    failed_starts: int = 0
    throttled: int = 0
    not_ready: int = 0
    idle_stops: int = 0
    setup_times_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        times = self.setup_times_ms
        return {"ColdStarts": self.cold_starts, "ProvisionedStarts": self.warm_starts,
                "FailedStarts": self.failed_starts, "Throttled": self.throttled, "NotReady": self.not_ready,
                "IdleStops": self.idle_stops,
                "LastModelSetupTimeMs": round(times[-1], 1) if times else None,
                "MaxModelSetupTimeMs": round(max(times), 1) if times else None}


class _Start:
    """One instance being started: the calls that wait for it (``claimed``) and the task that starts it."""

    def __init__(self, cold: bool) -> None:
        self.cold = cold
        self.began = time.monotonic()
        self.claimed = 0
        self.task: asyncio.Task[tuple[Instance, float]]


class ServerlessVariant(Variant):
    """A serverless production variant (module docstring). ``start_instance`` starts one instance and returns it
    healthy (blocking; its ``router`` is opened here, its ``handle.close()`` stops it)."""

    def __init__(self, name: str, config: ServerlessConfig, start_instance: Callable[[], Instance], *,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT, rng: random.Random | None = None, weight: float = 1.0,
                 per_instance: int = 1, max_instances: int | None = None,
                 cold_start_timeout: float = COLD_START_TIMEOUT, invocation_timeout: float = INVOCATION_TIMEOUT,
                 max_payload: int = MAX_PAYLOAD_BYTES) -> None:
        if idle_timeout <= 0:
            raise ConfigError("must be positive", key=f"serverless idle timeout {idle_timeout}")
        if per_instance < 1 or (max_instances is not None and max_instances < 1):
            raise ConfigError("must be at least 1", key="serverless per_instance / max_instances")
        super().__init__(name, [], weight, rng=rng)
        self.config = config
        self.start_instance = start_instance
        self.idle_timeout = idle_timeout
        self.per_instance = per_instance
        self.max_instances = max_instances
        self.cold_start_timeout = cold_start_timeout
        self.invocation_timeout = invocation_timeout
        self.max_payload = max_payload
        self.serverless_stats = ServerlessStats()
        self.in_flight = 0
        self._starting: list[_Start] = []
        self._last_used: dict[Instance, float] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._session: Any = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._warm_failed_at = -math.inf
        self._closing = False

    # ---------------------------------------------------------------------------------- capacity
    @property
    def instance_cap(self) -> int:
        """The most instances this variant runs at once."""
        needed = math.ceil(self.config.max_concurrency / self.per_instance)
        return needed if self.max_instances is None else min(needed, self.max_instances)

    @property
    def warm_count(self) -> int:
        """The instances ``ProvisionedConcurrency`` keeps warm."""
        provisioned = self.config.provisioned_concurrency or 0
        return min(math.ceil(provisioned / self.per_instance), self.instance_cap)

    # ---------------------------------------------------------------------------------- lifecycle
    async def open(self, session: Any) -> None:
        """Keep ``ProvisionedConcurrency`` warm: returns once those instances pass ``/ping`` (SageMaker's endpoint is
        InService then); a start that fails fails the endpoint."""
        self._session = session
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=min(32, self.instance_cap + 4),
                                                               thread_name_prefix=f"serverless-{self.name}")
        warm = [self._begin_start(cold=False) for _ in range(self.warm_count)]
        if warm:
            results = await asyncio.gather(*(s.task for s in warm), return_exceptions=True)
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures:
                await self.close()
                raise failures[0]
        self._reaper = asyncio.ensure_future(self._reap_forever())

    async def close(self) -> None:
        """Stop everything: waits for starts in progress (a thread cannot be cancelled), then stops every
        instance."""
        self._closing = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        await asyncio.gather(*(s.task for s in list(self._starting)), return_exceptions=True)
        await asyncio.gather(*self._stopping, return_exceptions=True)
        instances, self.instances = self.instances, []
        self._last_used.clear()
        await asyncio.gather(*(self._stop(i) for i in instances), return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    async def update(self, max_concurrency: int | None = None, provisioned_concurrency: int | None = None) -> None:
        """``ServerlessUpdateConfig`` (UpdateEndpointWeightsAndCapacities): new limits at once; more
        ``ProvisionedConcurrency`` starts instances now, less lets the surplus idle out."""
        request = {**self.config.to_request(),
                   **({"MaxConcurrency": max_concurrency} if max_concurrency is not None else {}),
                   **({"ProvisionedConcurrency": provisioned_concurrency} if provisioned_concurrency is not None
                      else {})}
        try:
            self.config = ServerlessConfig.from_request(request, key=f"{self.name}.ServerlessUpdateConfig")
        except ConfigError as e:
            raise validation_error(str(e)) from e
        self._keep_warm()

    # ---------------------------------------------------------------------------------- invoke
    async def invoke(self, call: Call) -> Reply:
        if len(call.body) > self.max_payload:
            raise validation_error(f"the request body has {len(call.body):,} bytes; the limit of a serverless "
                                   f"endpoint is {self.max_payload:,} (4 MB)")
        if self.in_flight >= self.config.max_concurrency:
            self.serverless_stats.throttled += 1
            self.stats.platform_errors += 1
            raise FrontError(THROTTLING_STATUS, THROTTLING_CODE,
                             f"Serverless variant {self.name} is at its MaxConcurrency of "
                             f"{self.config.max_concurrency} concurrent invocations; the invocation is throttled.")
        self.in_flight += 1
        instance: Instance | None = None
        setup_seconds: float | None = None
        try:
            instance, setup_seconds = await self._acquire()
            began = time.monotonic()
            reply = await self._forward(instance, call)
        except FrontError:
            self.stats.platform_errors += 1
            raise
        finally:
            self.in_flight -= 1
            if instance is not None:
                instance.in_flight -= 1
                if instance.in_flight == 0 and instance in self._last_used:
                    self._last_used[instance] = time.monotonic()
        self.stats.record(reply.status, time.monotonic() - began)
        if reply.ok and len(reply.body) > self.max_payload:
            raise FrontError(424, "ModelError", f"the model's response has {len(reply.body):,} bytes; the limit of "
                             f"a serverless endpoint is {self.max_payload:,} (4 MB)", OriginalStatusCode=reply.status)
        headers = dict(reply.headers)
        if setup_seconds is not None:
            headers[SETUP_TIME_HEADER] = str(round(setup_seconds * 1000))
        return replace(reply, variant=self.name, headers=headers)

    async def _forward(self, instance: Instance, call: Call) -> Reply:
        try:
            return await asyncio.wait_for(instance.router.invoke(call), self.invocation_timeout)
        except asyncio.TimeoutError as e:
            raise FrontError(424, "ModelError", f"Your invocation timed out while waiting for a response from "
                             f"{instance.name} (the limit is {self.invocation_timeout:g} s). Review the endpoint's "
                             "log.") from e
        except FrontError as e:
            if e.code == "ServiceUnavailable":  # it cannot be reached: gone? then the next call starts another
                await self._drop_if_dead(instance)
            raise

    async def _acquire(self) -> tuple[Instance, float | None]:
        """An instance for one call (its ``in_flight`` already counts the call) and, after a cold start, the
        seconds that start took."""
        ready = [i for i in self.instances if i.in_flight < self.per_instance]
        if ready:  # the least busy; among equals the one used last, so that the surplus idles out
            instance = min(ready, key=lambda i: (i.in_flight, -self._last_used.get(i, 0.0)))
            instance.in_flight += 1
            return instance, None
        start = next((s for s in self._starting if s.claimed < self.per_instance), None)
        if start is None and len(self.instances) + len(self._starting) < self.instance_cap:
            start = self._begin_start(cold=True)
        if start is None and self.instances:  # at the local cap: share the least busy instance
            instance = min(self.instances, key=lambda i: i.in_flight)
            instance.in_flight += 1
            return instance, None
        if start is None:
            start = min(self._starting, key=lambda s: s.claimed)
        return await self._wait_for(start)

    async def _wait_for(self, start: _Start) -> tuple[Instance, float]:
        start.claimed += 1
        remaining = start.began + self.cold_start_timeout - time.monotonic()
        try:
            if remaining <= 0:
                raise asyncio.TimeoutError
            return await asyncio.wait_for(asyncio.shield(start.task), remaining)
        except asyncio.TimeoutError:
            if start.task.done() and not start.task.cancelled() and start.task.exception() is None:
                return start.task.result()  # it ended as the wait did: the slot is counted, use it
            start.claimed -= 1
            self.serverless_stats.not_ready += 1
            raise FrontError(429, "ModelNotReadyException", f"Serverless variant {self.name}: the resources are still "
                             f"being provisioned (the cold start has taken over {self.cold_start_timeout:g} s). Retry "
                             "the request later.") from None
        except asyncio.CancelledError:  # the client went away
            if start.task.done() and not start.task.cancelled() and start.task.exception() is None:
                start.task.result()[0].in_flight -= 1  # the slot it was given
            else:
                start.claimed -= 1
            raise

    # ---------------------------------------------------------------------------------- starting, stopping
    def _begin_start(self, *, cold: bool) -> _Start:
        start = _Start(cold)
        start.task = asyncio.ensure_future(self._run_start(start))
        start.task.add_done_callback(_retrieve)
        self._starting.append(start)
        return start

    async def _run_start(self, start: _Start) -> tuple[Instance, float]:
        loop = asyncio.get_running_loop()
        what = "cold start" if start.cold else "start (ProvisionedConcurrency)"
        try:
            instance = await loop.run_in_executor(self._executor, self.start_instance)
        except BaseException as e:
            self._starting.remove(start)
            seconds = time.monotonic() - start.began
            self.serverless_stats.failed_starts += 1
            if not start.cold:
                self._warm_failed_at = time.monotonic()
            log.warning("serverless variant %s: a %s failed after %.1f s: %s", self.name, what, seconds, e)
            raise FrontError(503, "ServiceUnavailable", f"Serverless variant {self.name} could not start an "
                             f"instance: {str(e).splitlines()[0] if str(e) else type(e).__name__}. Review the "
                             "endpoint's log.") from e
        seconds = time.monotonic() - start.began
        try:
            await instance.router.open(self._session)
        except BaseException:
            self._starting.remove(start)
            await self._stop(instance)
            raise
        self._starting.remove(start)
        if self._closing:
            await self._stop(instance)
            raise FrontError(503, "ServiceUnavailable", f"Serverless variant {self.name} is shutting down.")
        instance.in_flight = start.claimed
        self.instances.append(instance)
        self._last_used[instance] = time.monotonic()
        self.serverless_stats.setup_times_ms.append(seconds * 1000)
        if start.cold:
            self.serverless_stats.cold_starts += 1
        else:
            self.serverless_stats.warm_starts += 1
        log.info("serverless variant %s: %s of instance %s took %.0f ms (ModelSetupTime); %d instance(s) running",
                 self.name, what, instance.name, seconds * 1000, len(self.instances))
        return instance, seconds

    async def _stop(self, instance: Instance) -> None:
        try:
            await instance.router.close()
        finally:
            await asyncio.get_running_loop().run_in_executor(self._executor, instance.handle.close)

    def _stop_later(self, instance: Instance) -> None:
        self.instances.remove(instance)
        self._last_used.pop(instance, None)
        task = asyncio.ensure_future(self._stop(instance))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)
        task.add_done_callback(_retrieve)

    async def _drop_if_dead(self, instance: Instance) -> None:
        if instance not in self._last_used:
            return
        why = await asyncio.get_running_loop().run_in_executor(self._executor, instance.exit_reason)
        if why is not None and instance in self._last_used:
            log.warning("serverless variant %s: %s; the next call starts another instance", self.name, why)
            self._stop_later(instance)

    def _keep_warm(self) -> None:
        if self._closing or time.monotonic() - self._warm_failed_at < WARM_RETRY_SECONDS:
            return
        while len(self.instances) + len(self._starting) < self.warm_count:
            self._begin_start(cold=False)

    def reap(self) -> None:
        """Stop the instances idle for ``idle_timeout`` (longest idle first) beyond the warm ones; start warm ones
        that are missing. Called every few seconds while the variant is open."""
        now = time.monotonic()
        idle = sorted((i for i in self.instances if i.in_flight == 0 and now - self._last_used[i] >= self.idle_timeout),
                      key=lambda i: self._last_used[i])
        for instance in idle[:max(0, len(self.instances) - self.warm_count)]:
            self.serverless_stats.idle_stops += 1
            log.info("serverless variant %s: instance %s had no call for %.0f s: stopped (%d left)", self.name,
                     instance.name, now - self._last_used[instance], len(self.instances) - 1)
            self._stop_later(instance)
        self._keep_warm()

    async def _reap_forever(self) -> None:
        tick = min(5.0, max(0.05, self.idle_timeout / 4))
        while True:
            await asyncio.sleep(tick)
            self.reap()

    # ---------------------------------------------------------------------------------- describe
    def describe(self) -> dict[str, Any]:
        """The ``DescribeEndpoint.ProductionVariants[]`` entry of a serverless variant (no instance counts;
        ``CurrentServerlessConfig``/``DesiredServerlessConfig``), with the statistics and serverless counters."""
        return {"VariantName": self.name, "CurrentWeight": self.weight, "DesiredWeight": self.desired_weight,
                "CurrentServerlessConfig": self.config.to_request(),
                "DesiredServerlessConfig": self.config.to_request(),
                "Statistics": {**self.stats.summary(), **self.serverless_stats.summary(),
                               "CurrentInstances": len(self.instances), "StartingInstances": len(self._starting),
                               "InFlight": self.in_flight}}


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a background task's exception as seen (it was logged or handed to the calls that waited)."""
    if not task.cancelled():
        task.exception()
