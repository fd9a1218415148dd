"""The asynchronous side of an endpoint: accept, queue, invoke, store, notify (contract-endpoints.md §6).

:class:`AsyncEndpoint` implements the front's ``AsyncInvocations`` protocol. It runs in the front's event loop:
``submit`` makes the request durable and answers 202; one dispatcher task hands the queue, oldest first, to the
endpoint's ``invoke`` with at most ``MaxConcurrentInvocationsPerInstance * instances`` calls in flight, expires
requests that waited longer than their ``RequestTTLSeconds``, and writes each result (output or failure object)
before it removes the request from the queue. Blocking I/O (files, S3 through :mod:`.storage`) runs in worker
threads.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextvars
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

from smbyoc.emulator.async_inference import notifications as notes
from smbyoc.emulator.async_inference import outcome
from smbyoc.emulator.async_inference import request as req
from smbyoc.emulator.async_inference.outcome import Outcome
from smbyoc.emulator.async_inference.queue import DurableQueue, Record
from smbyoc.emulator.async_inference.settings import DEFAULT_MAX_CONCURRENCY, AsyncSettings
from smbyoc.emulator.async_inference.storage import Storage, StorageErrors, as_uri, describe, from_text
from smbyoc.emulator.front import LOCAL_REGION, Call, FrontError, Reply
from smbyoc.errors import AwsError, ConfigError
from smbyoc.s3.uri import S3Uri

log = logging.getLogger(__name__)

#: A request found in flight at start-up is retried once; found in flight a second time, it fails.
MAX_ATTEMPTS = 2
#: How often (real seconds) the dispatcher looks for expired requests when nothing else wakes it.
DEFAULT_TICK = 1.0

_timeout: contextvars.ContextVar[float | None] = contextvars.ContextVar("async_invocation_timeout", default=None)


def current_invocation_timeout() -> float | None:
    """The ``InvocationTimeoutSeconds`` of the asynchronous request being invoked (None outside one): the
    endpoint's ``invoke`` passes it to :func:`smbyoc.emulator.front.post` as ``timeout`` instead of the
    real-time 60 s."""
    return _timeout.get()


@dataclass(frozen=True)
class AsyncStats:
    """The endpoint's queue metrics (names after CloudWatch's, DG ``async-inference-monitor.md``) and counters."""

    #: Requests queued or being processed.
    approximate_backlog_size: int
    approximate_backlog_size_per_instance: float
    #: 1 when the backlog is not empty and there are no instances.
    has_backlog_without_capacity: int
    in_flight: int
    #: Time from acceptance to the first call of the container, over the requests dispatched (milliseconds).
    time_in_backlog_ms_avg: float
    time_in_backlog_ms_max: float
    accepted: int
    completed: int
    #: Failure objects written for non-2xx answers, timeouts, unreachable containers, missing inputs.
    failed: int
    #: Requests whose RequestTTLSeconds passed in the queue (a failure object each; not counted in ``failed``).
    expired_requests: int
    #: Requests found in flight at start-up and run again.
    retried: int
    #: Results that could not be written (full disk...): those requests stay queued for the next start.
    results_unwritable: int
    notification_errors: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: S3 error codes that say nothing about the result's location itself: an output that meets one stays queued (kept)
#: for the next start instead of becoming a failure object.
TRANSIENT_CODES = frozenset({"EndpointConnectionError", "NoCredentials", "InternalError", "ServiceUnavailable",
                             "SlowDown", "RequestTimeout", "Throttling", "ThrottlingException"})


def _transient(error: BaseException) -> bool:
    """Whether ``error`` (writing a result) is the store being unreachable or busy, not the location being wrong."""
    return isinstance(error, AwsError) and (error.code is None or error.code in TRANSIENT_CODES)


class AsyncEndpoint:
    """InvokeEndpointAsync for one endpoint (module docstring); pass it to ``Front(async_invocations=...)``.

    ``config`` is the endpoint's ``AsyncInferenceConfig`` (``s3://`` prefixes or absolute local paths, as
    :class:`~smbyoc.emulator.endpoint_config.EndpointDefinition` holds it); ``state_dir`` the endpoint's own
    directory for the queue; ``invoke`` the endpoint's invocation path (variant choice, the container's
    ``/invocations``). ``clock`` is wall-clock seconds (acceptance times survive restarts); ``tick`` how often
    expiry is checked; ``topics`` maps an SNS ARN of the config to a local topic (notifications module);
    ``endpoint_url`` the S3 API of ``s3://`` locations (``--endpoint-url``; default: boto3's, which reads
    ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``)."""

    def __init__(self, config: Mapping[str, Any], endpoint_name: str, state_dir: Path,
                 invoke: Callable[[Call], Awaitable[Reply]], *, instances: int = 1,
                 clock: Callable[[], float] = time.time, tick: float = DEFAULT_TICK,
                 default_max_concurrency: int = DEFAULT_MAX_CONCURRENCY, region: str = LOCAL_REGION,
                 topics: Mapping[str, str] | None = None, endpoint_url: str | None = None,
                 input_roots: tuple[Path, ...] | None = ()) -> None:
        if instances < 0:
            raise ConfigError(f"{instances}: expected 0 or more", key="instances")
        self.state_dir = Path(state_dir)
        self.settings = AsyncSettings.from_config(config, self.state_dir,
                                                  default_max_concurrency=default_max_concurrency, topics=topics)
        self.max_concurrency = self.settings.max_concurrency
        self.endpoint_name = endpoint_name
        self.invoke = invoke
        #: Where local InputLocations may be (request.check_local_input): checked at acceptance and again at read.
        self.input_roots = input_roots
        self.instances = instances
        self.clock = clock
        self.tick = tick
        self.region = region
        self.queue = DurableQueue(self.state_dir)
        self.storage = Storage(endpoint_url=endpoint_url)
        self._waiting: collections.deque[tuple[Record, int]] = collections.deque()
        self._tasks: dict[asyncio.Task[None], bool] = {}  # invocations: task → finishing (result being written)
        self._side: set[asyncio.Task[None]] = set()  # expiries and interrupted requests being failed
        self._starting = 0  # taken from the queue, attempt marker being written
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._closing = False
        self._counts = collections.Counter[str]()
        self._backlog_ms_sum = 0.0
        self._backlog_ms_max = 0.0

    # ---------------------------------------------------------------------------------------- protocol
    async def open(self, session: Any) -> None:
        """Check the S3 locations' buckets, take the queue directory, recover what it holds, send the test
        notifications, start dispatching."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        await asyncio.to_thread(self._check_locations)
        recovered = await asyncio.to_thread(self.queue.open)
        for found in recovered:
            if found.kept is not None:
                log.info("async %s: request %s (InferenceId %s) has a result waiting for %s; storing it",
                         self.endpoint_name, found.record.request_id, found.record.inference_id,
                         found.kept.get("location"))
                self._side_task(self._resume(found.record, found.kept, found.attempts))
                continue
            if found.attempts:
                self._counts["retried" if found.attempts < MAX_ATTEMPTS else "interrupted"] += 1
                log.warning("async %s: request %s (InferenceId %s) was in flight when the endpoint stopped; "
                            "%s", self.endpoint_name, found.record.request_id, found.record.inference_id,
                            "retrying it once" if found.attempts < MAX_ATTEMPTS else "failing it")
            self._waiting.append((found.record, found.attempts))
        log.info("async %s: %d queued request(s) recovered from %s; outputs to %s, failures to %s, "
                 "%d call(s) in flight per instance, %d instance(s)", self.endpoint_name, len(recovered),
                 self.queue.directory, as_uri(self.settings.output), as_uri(self.settings.failure),
                 self.max_concurrency, self.instances)
        topics = (self.settings.success_topic, self.settings.error_topic)
        for topic in {t.describe: t for t in topics if t is not None}.values():
            log.info("async %s: notifications to %s", self.endpoint_name, topic.describe)
            await self._publish(topic, notes.TEST_MESSAGE)
        self._dispatcher = asyncio.create_task(self._dispatch(), name=f"async-dispatch-{self.endpoint_name}")

    async def submit(self, headers: Mapping[str, str], body: bytes) -> Reply:
        """Validate, make durable, queue; 202 with the InferenceId and the two locations."""
        if self._closing:
            raise FrontError(503, "ServiceUnavailable", f"endpoint {self.endpoint_name} is stopping")
        request = req.parse_request(headers, body, self.input_roots)
        request_id = str(uuid.uuid4())
        inference_id = request.inference_id or request_id
        where = req.locations(request, request_id, self.settings.output, self.settings.failure)
        source = request.input_location
        record = Record(
            seq=self.queue.next_seq(), request_id=request_id, inference_id=inference_id, accepted_at=self.clock(),
            ttl_seconds=request.ttl_seconds, timeout_seconds=request.timeout_seconds,
            content_type=request.content_type, accept=request.accept, custom_attributes=request.custom_attributes,
            input_path=None if source is None else str(source),
            body_b64=None if request.body is None else base64.b64encode(request.body).decode("ascii"),
            output_path=str(where.output), failure_path=str(where.failure))
        await asyncio.to_thread(self.queue.put, record)
        self._waiting.append((record, 0))
        self._counts["accepted"] += 1
        self._kick()
        log.info("async %s: accepted %s (InferenceId %s, %s); backlog %d", self.endpoint_name, request_id,
                 inference_id, f"input {source}" if source is not None else f"{len(body)} bytes inline",
                 len(self._waiting) + len(self._tasks))
        return Reply(202, json.dumps({"InferenceId": inference_id}).encode("utf-8"),
                     {"Content-Type": "application/json", req.OUTPUT_LOCATION: as_uri(where.output),
                      req.FAILURE_LOCATION: as_uri(where.failure)})

    async def close(self) -> None:
        """Stop dispatching; calls still waiting for the container are cancelled (they stay queued and run again
        on the next start), results being written are finished first."""
        self._closing = True
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)
        for task, finishing in list(self._tasks.items()):
            if not finishing:
                task.cancel()
        await asyncio.gather(*self._tasks, *self._side, return_exceptions=True)
        await asyncio.to_thread(self.queue.close)
        log.info("async %s: stopped with %d request(s) queued", self.endpoint_name, len(self._waiting))

    # ---------------------------------------------------------------------------------------- for the assembly
    def refuse_sync(self) -> NoReturn:
        """Raise the ``ValidationError`` InvokeEndpoint gets on this endpoint (call it from the router)."""
        raise req.refusal(self.endpoint_name)

    def _check_locations(self) -> None:
        """The buckets of S3 output and failure locations answer (credentials, existence): one line at start-up
        rather than one unwritable result after another."""
        key = "AsyncInferenceConfig.OutputConfig"
        self.storage.check(self.settings.output, what=f"{key}.S3OutputPath")
        if self.settings.failure != self.settings.output:
            self.storage.check(self.settings.failure, what=f"{key}.S3FailurePath")

    def set_instances(self, instances: int) -> None:
        """Scale (0: requests queue up, ``HasBacklogWithoutCapacity``); callable from any thread."""
        if instances < 0:
            raise ValueError(f"instances must be 0 or more, not {instances}")
        self.instances = instances
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._kick)

    def stats(self) -> AsyncStats:
        """A snapshot of the metrics (callable from any thread)."""
        in_flight = len(self._tasks)
        backlog = len(self._waiting) + self._starting + in_flight + len(self._side)
        dispatched = self._counts["dispatched"]
        return AsyncStats(
            approximate_backlog_size=backlog,
            approximate_backlog_size_per_instance=backlog / self.instances if self.instances else float(backlog),
            has_backlog_without_capacity=int(backlog > 0 and self.instances == 0), in_flight=in_flight,
            time_in_backlog_ms_avg=self._backlog_ms_sum / dispatched if dispatched else 0.0,
            time_in_backlog_ms_max=self._backlog_ms_max, accepted=self._counts["accepted"],
            completed=self._counts["completed"], failed=self._counts["failed"],
            expired_requests=self._counts["expired"], retried=self._counts["retried"],
            results_unwritable=self._counts["unwritable"], notification_errors=self._counts["notification_errors"])

    # ---------------------------------------------------------------------------------------- dispatching
    def _kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    @property
    def capacity(self) -> int:
        return self.max_concurrency * self.instances

    async def _dispatch(self) -> None:
        assert self._wake is not None
        while not self._closing:
            self._wake.clear()
            self._expire_waiting()
            while self._waiting and len(self._tasks) < self.capacity:
                record, attempts = self._waiting.popleft()
                if attempts >= MAX_ATTEMPTS:
                    self._side_task(self._finish(record, outcome.interrupted(record, attempts)))
                    continue
                # the marker is written here, one request after the other, so that calls start in queue order
                self._starting += 1
                try:
                    await asyncio.to_thread(self.queue.mark_attempt, record, attempts + 1)
                except OSError as e:  # full disk...: keep the request first in line, try again on the next tick
                    log.error("async %s: cannot mark %s as in flight (%s); retrying", self.endpoint_name,
                              record.request_id, e.strerror or e)
                    self._waiting.appendleft((record, attempts))
                    break
                finally:
                    self._starting -= 1
                self._start(self._run(record))
            # asyncio.wait, not wait_for: before Python 3.12 wait_for can swallow the cancellation close() sends
            waiter = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({waiter}, timeout=self.tick)
            finally:
                waiter.cancel()

    def _start(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks[task] = False
        task.add_done_callback(self._done)

    def _side_task(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._side.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        self._side.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("async %s: a request task failed", self.endpoint_name, exc_info=task.exception())
        self._kick()

    def _expire_waiting(self) -> None:
        """Requests whose TTL passed while queued leave the queue now (their failure is written by a task that
        does not count against the concurrency limit)."""
        now = self.clock()
        kept: collections.deque[tuple[Record, int]] = collections.deque()
        for record, attempts in self._waiting:
            if now - record.accepted_at > record.ttl_seconds:
                self._side_task(self._finish(record, outcome.expired(record, now)))
            else:
                kept.append((record, attempts))
        self._waiting = kept

    async def _run(self, record: Record) -> None:
        me = asyncio.current_task()
        assert me is not None
        waited_ms = max(0.0, (self.clock() - record.accepted_at) * 1000)
        self._counts["dispatched"] += 1
        self._backlog_ms_sum += waited_ms
        self._backlog_ms_max = max(self._backlog_ms_max, waited_ms)
        result = await self._call(record)
        self._tasks[me] = True  # from here on, close() waits for the result instead of cancelling
        await self._finish(record, result)

    async def _call(self, record: Record) -> Outcome:
        try:
            body = record.body
            if body is None:
                source = from_text(str(record.input_path))
                if not isinstance(source, S3Uri):  # (replaced by a link since, or the roots changed at a restart)
                    source = req.check_local_input(source, self.input_roots)
                body = await asyncio.to_thread(self.storage.read, source, limit=req.MAX_PAYLOAD)
        except StorageErrors as e:
            return outcome.failure(record, f"ClientError: the input {record.input_path} cannot be read: "
                                           f"{describe(e)}")
        except FrontError as e:
            return outcome.failure(record, f"ClientError: {e.message}")
        headers = {name: value for name, value in (
            ("Content-Type", record.content_type), ("Accept", record.accept),
            ("X-Amzn-SageMaker-Custom-Attributes", record.custom_attributes),
            ("X-Amzn-SageMaker-Inference-Id", record.inference_id)) if value is not None}
        token = _timeout.set(float(record.timeout_seconds))
        try:
            reply = await asyncio.wait_for(self.invoke(Call(body, headers)), record.timeout_seconds)
        except asyncio.TimeoutError:
            return outcome.timed_out(record)
        except FrontError as e:
            return outcome.failure(record, f"{e.code}: {e.message}")
        except Exception as e:
            log.exception("async %s: invoking %s failed", self.endpoint_name, record.request_id)
            return outcome.failure(record, f"InternalFailure: {type(e).__name__}: {e}")
        finally:
            _timeout.reset(token)
        return outcome.from_reply(record, reply)

    async def _resume(self, record: Record, kept: Mapping[str, Any], attempts: int) -> None:
        """Store the result a previous run kept for an S3 location (the request does not run again)."""
        try:
            data = await asyncio.to_thread(self.queue.kept_data, record)
            result = Outcome.from_info(kept, data)
        except (OSError, KeyError, ValueError) as e:
            log.error("async %s: the kept result of %s cannot be read (%s); the request runs again",
                      self.endpoint_name, record.request_id, e)
            self._waiting.append((record, attempts))
            self._forget_current_task()
            return
        await self._finish(record, result, kept=True)

    def _store(self, record: Record, result: Outcome, kept: bool) -> None:
        """Write ``result`` at its location (in a worker thread); a result bound for S3 is kept in the queue first,
        so that a stop during the upload redoes the upload, not the request."""
        if isinstance(result.location, S3Uri) and not kept:
            try:
                self.queue.keep_result(record, result.info(), result.data)
            except OSError as e:  # the upload below still runs; only a stop during it would run the request again
                log.warning("async %s: the result of %s cannot be kept in the queue (%s)", self.endpoint_name,
                            record.request_id, e.strerror or e)
        self.storage.write(result.location, result.data, content_type=result.content_type)

    async def _finish(self, record: Record, result: Outcome, *, kept: bool = False) -> None:
        """Write the result object, notify, then forget the request (in that order: at-least-once)."""
        where = str(result.location)
        try:
            await asyncio.to_thread(self._store, record, result, kept)
        except StorageErrors as e:
            if result.ok and not _transient(e):  # the failure location says why the output is missing
                await self._finish(record, outcome.failure(
                    record, f"InternalFailure: the output cannot be written to {where}: {describe(e)}"))
                return
            log.error("async %s: the %s of %s cannot be written to %s (%s); it stays queued for the next start",
                      self.endpoint_name, "output" if result.ok else "failure", record.request_id, where,
                      describe(e))
            self._counts["unwritable"] += 1
            self._forget_current_task()
            return
        now = self.clock()
        if result.ok:
            log.info("async %s: %s completed -> %s", self.endpoint_name, record.request_id, where)
        else:
            log.warning("async %s: %s failed -> %s: %s", self.endpoint_name, record.request_id, where,
                        result.reason)
        topic = self.settings.success_topic if result.ok else self.settings.error_topic
        if topic is not None:
            include = self.settings.include_in_success if result.ok else self.settings.include_in_error
            await self._publish(topic, outcome.message(record, result, endpoint_name=self.endpoint_name,
                                                       region=self.region, now=now, include_response=include))
        await asyncio.to_thread(self.queue.remove, record)
        # counted and forgotten in one step with nothing awaited in between, so stats() never sees a request
        # both done and in flight
        self._counts["expired" if result.expired else "completed" if result.ok else "failed"] += 1
        self._forget_current_task()

    def _forget_current_task(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.pop(task, None)
            self._side.discard(task)

    async def _publish(self, topic: notes.Topic, message: Mapping[str, Any]) -> None:
        try:
            await topic.publish(message)
        except (OSError, ValueError) as e:
            self._counts["notification_errors"] += 1
            log.warning("async %s: the notification to %s failed: %s", self.endpoint_name, topic.describe, e)


