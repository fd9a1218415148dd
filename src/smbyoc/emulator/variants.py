"""Production and shadow variants: how SageMaker routes an InvokeEndpoint call between the front and the instances
(contract-endpoints.md §1, §2, §4).

* Each call goes to exactly one production variant: the one ``TargetVariant`` names, else one drawn with
  probability ``w_i / Σw`` (a seedable random generator). Inside a variant, the instance with the fewest
  requests in flight gets it (``LEAST_OUTSTANDING_REQUESTS``, ties broken in turn), or a random one (``RANDOM``).
* The answer carries ``x-Amzn-Invoked-Production-Variant``; weights change while running
  (:meth:`EndpointRouter.update_weights`, UpdateEndpointWeightsAndCapacities) without touching a container.
* A shadow variant gets a sampled copy of each call after the production answer is known. All the production
  call pays for it is a sampling draw and an enqueue: the copy waits in a bounded queue for a few shadow workers;
  when the queue is full the copy is dropped and counted, so the shadow never slows production. (On SageMaker a
  shadow variant has instances of its own; locally its containers share the CPUs, so
  :class:`~smbyoc.emulator.hosted_endpoint.HostedEndpoint` runs them at a lower CPU priority: under load they get
  what production leaves, and copies they cannot take are dropped and counted.) Its answer is never returned;
  its status and latency are counted per variant and, with data capture on, captured under the shadow variant's
  name with the same sampling decision as the production record (so the two can be paired by ``inferenceId``).
* Data capture writes through :class:`smbyoc.emulator.capture.CaptureWriter`, which never blocks a request.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import random
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from smbyoc.emulator.front import Call, FrontError, Reply, Router, validation_error

log = logging.getLogger(__name__)

TARGET_VARIANT_HEADER = "X-Amzn-SageMaker-Target-Variant"
LEAST_OUTSTANDING = "LEAST_OUTSTANDING_REQUESTS"
RANDOM = "RANDOM"
#: Latencies kept per variant for the percentiles in its statistics.
LATENCY_WINDOW = 10_000
SHADOW_QUEUE = 1000
SHADOW_WORKERS = 8


@dataclass
class VariantStats:
    """What a variant answered (the CloudWatch metrics SageMaker keeps per variant, contract-endpoints.md §2.2)."""

    invocations: int = 0
    errors_4xx: int = 0
    errors_5xx: int = 0
    platform_errors: int = 0
    latencies_ms: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=LATENCY_WINDOW))

    def record(self, status: int, seconds: float) -> None:
        self.invocations += 1
        if 400 <= status < 500:
            self.errors_4xx += 1
        elif status >= 500:
            self.errors_5xx += 1
        self.latencies_ms.append(seconds * 1000)

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms)

        def pct(p: float) -> float | None:
            return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 3) if ordered else None

        return {"Invocations": self.invocations, "Invocation4XXErrors": self.errors_4xx,
                "Invocation5XXErrors": self.errors_5xx, "PlatformErrors": self.platform_errors,
                "ModelLatencyP50Ms": pct(0.50), "ModelLatencyP99Ms": pct(0.99)}


class Instance:
    """One instance of a variant: what answers its calls (a :class:`~smbyoc.emulator.front.Router`: one container,
    a multi-model loader, a pipeline) and the handle that stops its containers (``close()``)."""

    def __init__(self, name: str, router: Router, handle: Any) -> None:
        self.name = name
        self.router = router
        self.handle = handle
        self.in_flight = 0

    def exit_reason(self) -> str | None:
        why = self.handle._exit_reason()
        return None if why is None else f"instance {self.name}: {why}"


class Variant:
    """A production or shadow variant: its instances, weight and statistics."""

    def __init__(self, name: str, instances: Sequence[Instance], weight: float = 1.0, *,
                 routing: str = LEAST_OUTSTANDING, rng: random.Random | None = None) -> None:
        self.name = name
        self.instances = list(instances)
        self.weight = weight
        self.desired_weight = weight
        self.routing = routing
        self.rng = rng or random.Random()  # noqa: S311 - traffic splitting, not cryptography
        self.stats = VariantStats()
        self._turn = 0

    async def open(self, session: Any) -> None:
        for instance in self.instances:
            await instance.router.open(session)

    async def close(self) -> None:
        for instance in self.instances:
            await instance.router.close()

    def _instance(self) -> Instance:
        if len(self.instances) == 1:
            return self.instances[0]
        if self.routing == RANDOM:
            return self.rng.choice(self.instances)
        least = min(i.in_flight for i in self.instances)
        candidates = [i for i in self.instances if i.in_flight == least]
        self._turn += 1
        return candidates[self._turn % len(candidates)]

    async def invoke(self, call: Call) -> Reply:
        instance = self._instance()
        instance.in_flight += 1
        start = time.monotonic()
        try:
            reply = await instance.router.invoke(call)
        except FrontError:
            self.stats.platform_errors += 1
            raise
        finally:
            instance.in_flight -= 1
        self.stats.record(reply.status, time.monotonic() - start)
        return Reply(reply.status, reply.body, reply.headers, self.name, reply.container)

    def describe(self) -> dict[str, Any]:
        """Its ``DescribeEndpoint.ProductionVariants[]`` entry, with the statistics."""
        return {"VariantName": self.name, "CurrentWeight": self.weight, "DesiredWeight": self.desired_weight,
                "CurrentInstanceCount": len(self.instances), "DesiredInstanceCount": len(self.instances),
                "Statistics": self.stats.summary()}


@dataclass
class ShadowStats:
    sent: int = 0
    dropped: int = 0
    failed: int = 0


class EndpointRouter:
    """The :class:`~smbyoc.emulator.front.Router` of an endpoint with production variants, an optional shadow
    variant and optional data capture (module docstring)."""

    def __init__(self, production: Sequence[Variant], *, shadow: Variant | None = None,
                 shadow_sampling: float | None = None, capture: Any = None, rng: random.Random | None = None,
                 shadow_queue: int = SHADOW_QUEUE, shadow_timeout: float = 60.0) -> None:
        if not production:
            raise ValueError("an endpoint needs at least one production variant")
        self.production = list(production)
        self.variants = {v.name: v for v in [*self.production, *([shadow] if shadow else [])]}
        self.shadow = shadow
        if shadow is not None and shadow_sampling is None:
            shadow_sampling = shadow_share(shadow.weight, self.production[0].weight)
        self.shadow_sampling = shadow_sampling or 0.0
        self.capture = capture
        self.rng = rng or random.Random()  # noqa: S311 - traffic splitting, not cryptography
        self.shadow_stats = ShadowStats()
        self.shadow_timeout = shadow_timeout
        self._shadow_queue_size = shadow_queue
        self._queue: asyncio.Queue[tuple[Call, bool | None, float]] | None = None
        self._workers: list[asyncio.Task[None]] = []
        check_weights({v.name: v.weight for v in self.production})

    # ---------------------------------------------------------------------------------- Router
    async def open(self, session: Any) -> None:
        for variant in self.variants.values():
            await variant.open(session)
        if self.shadow is not None:
            self._queue = asyncio.Queue(self._shadow_queue_size)
            self._workers = [asyncio.ensure_future(self._shadow_worker()) for _ in range(SHADOW_WORKERS)]

    async def close(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        for variant in self.variants.values():
            await variant.close()

    async def invoke(self, call: Call) -> Reply:
        variant = self.pick(call.header(TARGET_VARIANT_HEADER))
        start = time.monotonic()
        reply = await variant.invoke(call)
        seconds = time.monotonic() - start
        sampled = self.capture.sample() if self.capture is not None else None
        if self.capture is not None:
            self._capture(variant.name, call, reply, sampled)
        if self.shadow is not None and self._queue is not None and self.rng.random() < self.shadow_sampling:
            try:
                self._queue.put_nowait((call, sampled, seconds))
            except asyncio.QueueFull:
                self.shadow_stats.dropped += 1
        return reply

    # ---------------------------------------------------------------------------------- routing
    def pick(self, target: str | None) -> Variant:
        """The variant a call goes to: ``target`` when given (it must exist), else a weighted draw."""
        if target is not None:
            variant = self.variants.get(target)
            if variant is None or variant is self.shadow:
                names = ", ".join(v.name for v in self.production)
                raise validation_error(f"TargetVariant {target} does not exist on this endpoint (production "
                                       f"variants: {names}).")
            return variant
        if len(self.production) == 1:
            return self.production[0]
        total = sum(v.weight for v in self.production)
        draw = self.rng.random() * total
        for variant in self.production:
            draw -= variant.weight
            if draw < 0:
                return variant
        return next(v for v in reversed(self.production) if v.weight > 0)

    def update_weights(self, desired: Mapping[str, float]) -> None:
        """UpdateEndpointWeightsAndCapacities' ``DesiredWeight`` per variant name; all checked before any
        changes (unknown variants, negative weights, all production weights zero)."""
        for name, weight in desired.items():
            if name not in self.variants or self.variants[name] is self.shadow:
                raise validation_error(f"VariantName {name} does not exist on this endpoint.")
            if not 0 <= weight < math.inf:  # (NaN and infinity too: a JSON body may carry them)
                raise validation_error(f"DesiredWeight of {name} must be a finite number of at least 0, not "
                                       f"{weight}.")
        check_weights({v.name: desired.get(v.name, v.weight) for v in self.production})
        for name, weight in desired.items():
            variant = self.variants[name]
            variant.weight = variant.desired_weight = float(weight)
            log.info("variant %s: weight %g", name, weight)

    # ---------------------------------------------------------------------------------- shadow, capture
    async def _shadow_worker(self) -> None:
        assert self._queue is not None and self.shadow is not None
        while True:
            call, sampled, production_seconds = await self._queue.get()
            start = time.monotonic()
            try:
                reply = await _within(self.shadow.invoke(call), self.shadow_timeout)
            except (FrontError, asyncio.TimeoutError) as e:
                self.shadow_stats.failed += 1
                log.info("shadow %s: %s (production took %.1f ms)", self.shadow.name,
                         getattr(e, "code", "timeout"), production_seconds * 1000)
                continue
            except Exception:
                self.shadow_stats.failed += 1
                log.exception("shadow %s failed", self.shadow.name)
                continue
            self.shadow_stats.sent += 1
            log.debug("shadow %s: %d in %.1f ms (production %.1f ms)", self.shadow.name, reply.status,
                      (time.monotonic() - start) * 1000, production_seconds * 1000)
            if self.capture is not None:
                self._capture(self.shadow.name, call, reply, sampled)

    def _capture(self, variant: str, call: Call, reply: Reply, sampled: bool | None) -> None:
        self.capture.capture(
            variant, request_body=call.body, request_content_type=call.header("Content-Type"),
            response_body=reply.body if reply.ok else None, response_content_type=reply.content_type,
            inference_id=call.header("X-Amzn-SageMaker-Inference-Id"),
            custom_attributes=call.header("X-Amzn-SageMaker-Custom-Attributes"), sampled=sampled)

    def describe(self) -> dict[str, Any]:
        """The variants as DescribeEndpoint shows them, with statistics and the shadow counters."""
        answer: dict[str, Any] = {"ProductionVariants": [v.describe() for v in self.production]}
        if self.shadow is not None:
            answer["ShadowProductionVariants"] = [{**self.shadow.describe(),
                                                   "SamplingPercentage": round(self.shadow_sampling * 100, 3),
                                                   "ShadowCopies": vars(self.shadow_stats).copy()}]
        return answer


async def _within(call: Awaitable[Reply], seconds: float) -> Reply:
    """``await call``, cancelled after ``seconds`` (:class:`asyncio.TimeoutError`): a timer on the running task, not
    the task per call ``asyncio.wait_for`` makes (``asyncio.timeout`` is Python 3.11+)."""
    task = asyncio.current_task()
    assert task is not None
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = asyncio.get_running_loop().call_later(seconds, expire)
    try:
        return await call
    except asyncio.CancelledError:
        if expired:
            if hasattr(task, "uncancel"):  # (3.11+: the cancellation was ours, not the task's owner's)
                task.uncancel()
            raise asyncio.TimeoutError(f"no answer within {seconds:g} s") from None
        raise
    finally:
        timer.cancel()


def check_weights(weights: Mapping[str, float]) -> None:
    if weights and not any(w > 0 for w in weights.values()):
        raise validation_error("At least one production variant must have a weight greater than 0 (all of "
                               f"{', '.join(weights)} are 0).")


def shadow_share(shadow_weight: float, production_weight: float) -> float:
    """The share of calls a shadow variant gets a copy of: shadow weight / production weight, at most 1
    (contract-endpoints.md §2.2: the mapping is UNCONFIRMED; AWS's examples use 1/1, i.e. every call)."""
    if production_weight <= 0:
        return 1.0 if shadow_weight > 0 else 0.0
    return max(0.0, min(1.0, shadow_weight / production_weight))
