"""A batch transform job as one library call: :func:`run_transform_job` takes a
:class:`~smbyoc.emulator.transform.spec.TransformJobSpec` and returns the DescribeTransformJob-shaped
:class:`~smbyoc.emulator.transform.result.TransformJobResult`.

As SageMaker does (contract.md §4): one container per instance runs ``serve`` with ``SAGEMAKER_BATCH=true``
(and ``SAGEMAKER_MAX_PAYLOAD_IN_MB``, ``SAGEMAKER_BATCH_STRATEGY``, ``SAGEMAKER_MAX_CONCURRENT_TRANSFORMS``
only when the job sets them), through :class:`~smbyoc.emulator.endpoint.DockerEndpoint` or
:class:`~smbyoc.emulator.endpoint.ProcessEndpoint` (model extraction, ``/ping`` wait, SIGTERM then SIGKILL,
owner records, cleanup). ``GET /execution-parameters`` is asked once; the job's values win over its
answer, which wins over the defaults (MaxConcurrentTransforms 1, MaxPayloadInMB 6, BatchStrategy
MultiRecord when records are split, else SingleRecord). Then each instance transforms its share of the
objects (:mod:`smbyoc.emulator.transform.inputs`, :mod:`smbyoc.emulator.transform.engine`).

Statuses: ``InProgress`` → ``Completed``, ``Failed`` (the first failed object's reason, naming it; the
other objects are still transformed, as SageMaker does) or ``Stopped`` (Ctrl-C / SIGTERM, as
StopTransformJob: what is finished stays, nothing half-written remains, the containers are gone).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import secrets
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from smbyoc.emulator import jobs
from smbyoc.emulator.endpoint import EndpointSpec
from smbyoc.emulator.transform.engine import ObjectTransformer, Progress, Tracker, remove_partials
from smbyoc.emulator.transform.inputs import InputObject, assign, list_objects
from smbyoc.emulator.transform.result import (
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    STOPPED,
    STOPPING,
    ObjectOutcome,
    ResolvedParameters,
    TransformJobResult,
)
from smbyoc.emulator.transform.spec import DEFAULT_MAX_PAYLOAD_MB, MAX_PAYLOAD_MB, TransformJobSpec
from smbyoc.errors import ConfigError, SmbyocError

if TYPE_CHECKING:
    from smbyoc.emulator.endpoint import Endpoint

log = logging.getLogger(__name__)

#: ``on_status(TransformJobStatus, what is happening)``.
StatusCallback = Callable[[str, str], None]
#: ``sink(host, line)``: a container's log line.
HostSink = Callable[[str, str], None]
#: Builds (does not start) the endpoint of one instance.
EndpointFactory = Callable[[str, EndpointSpec], "Endpoint"]

#: Seconds ``GET /execution-parameters`` may take.
EXECUTION_PARAMETERS_TIMEOUT = 60.0
_STRATEGIES = {"SINGLE_RECORD": "SingleRecord", "SINGLERECORD": "SingleRecord",
               "MULTI_RECORD": "MultiRecord", "MULTIRECORD": "MultiRecord"}


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _print_host_line(host: str, line: str) -> None:
    sys.stdout.write(f"[{host}] {line}\n")
    sys.stdout.flush()


def make_backend(spec: TransformJobSpec,
                 sink: HostSink | None = _print_host_line) -> tuple[EndpointFactory, str | None]:
    """The factory of the job's endpoints and the image they run (None in process mode); Docker mode asks
    the engine first and builds the default serve image when ``spec.image`` is None."""
    from smbyoc.emulator.endpoint import DockerEndpoint, ProcessEndpoint

    def host_sink(host: str) -> Callable[[str], None] | None:
        return None if sink is None else (lambda line: sink(host, line))

    if spec.mode == "process":
        return (lambda host, endpoint_spec: ProcessEndpoint(endpoint_spec, host_sink(host))), None
    from smbyoc.docker.client import get_client

    client = get_client()
    image = spec.image
    if image is None:
        from smbyoc.images.defaults import ensure_default_image

        image = ensure_default_image(client, "serve", spec.instance_type)
    from smbyoc.emulator import containers

    containers.require_image(client, image, instance_type=spec.instance_type)  # here, and of the instance's platform
    chosen: str = image
    return (lambda host, endpoint_spec: DockerEndpoint(endpoint_spec, client, chosen, host_sink(host),
                                                       user=spec.user)), chosen


def _free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def execution_parameters(url: str) -> dict[str, Any]:
    """``GET /execution-parameters``: its JSON object, or ``{}`` when the container has no such route."""
    from smbyoc.emulator.runtime_client import request

    try:
        response = request(url, "GET", "/execution-parameters", timeout=EXECUTION_PARAMETERS_TIMEOUT)
    except OSError as e:
        log.warning("GET /execution-parameters failed (%s): using the job's values and the defaults", e)
        return {}
    if response.status != 200:
        log.info("GET /execution-parameters answered %d: using the job's values and the defaults", response.status)
        return {}
    try:
        data = json.loads(response.body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        log.warning("GET /execution-parameters did not answer a JSON object: ignored")
        return {}
    return data


def _int_value(data: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit() \
            or not low <= int(value) <= high:
        log.warning("/execution-parameters: %s=%r is not %d-%d: ignored", key, value, low, high)
        return None
    return int(value)


def resolve(spec: TransformJobSpec, answered: dict[str, Any]) -> ResolvedParameters:
    """Job values > ``/execution-parameters`` > defaults (contract.md §4); both spellings of the strategy
    (``MULTI_RECORD``, ``MultiRecord``) are accepted from the container."""
    strategy = spec.batch_strategy
    if strategy is None and spec.split_type != "None":
        raw = answered.get("BatchStrategy")
        strategy = _STRATEGIES.get(str(raw).upper()) if raw is not None else None
        if raw is not None and strategy is None:
            log.warning("/execution-parameters: BatchStrategy=%r is not SingleRecord or MultiRecord: ignored", raw)
        strategy = strategy or "MultiRecord"
    payload = spec.max_payload_mb
    if payload is None:
        payload = _int_value(answered, "MaxPayloadInMB", 0, MAX_PAYLOAD_MB)
    concurrency = spec.max_concurrent_transforms or _int_value(answered, "MaxConcurrentTransforms", 1, 1000)
    return ResolvedParameters(
        batch_strategy=strategy or "SingleRecord",
        max_payload_mb=DEFAULT_MAX_PAYLOAD_MB if payload is None else payload,
        max_concurrent_transforms=concurrency or 1,
        execution_parameters=dict(answered),
    )


class _Job:
    """The moving parts of one run, so that any way out (failure, Ctrl-C) cleans the same things."""

    def __init__(self, spec: TransformJobSpec, factory: EndpointFactory, on_status: StatusCallback | None,
                 on_progress: Callable[[Progress], None] | None) -> None:
        self.spec = spec
        self.factory = factory
        self.on_status = on_status
        self.on_progress = on_progress
        self.endpoints: list[Endpoint] = []
        self.stop = threading.Event()
        self.outcomes: list[ObjectOutcome] = []
        self.params: ResolvedParameters | None = None
        self.start_time: _dt.datetime | None = None
        self._lock = threading.Lock()
        self._errors: list[BaseException] = []
        #: Marks this run's temporary output files (jobs may share an output folder).
        self.partial_tag = secrets.token_hex(4)

    def status(self, primary: str, secondary: str) -> None:
        if self.on_status is not None:
            self.on_status(primary, secondary)

    def start_endpoints(self) -> None:
        ports = _free_ports(self.spec.instance_count)
        environment = self.spec.container_environment()
        for host, port in zip(self.spec.hosts, ports, strict=True):
            endpoint_spec = EndpointSpec(
                model_data=self.spec.model_data, port=port, environment=environment,
                startup_health_timeout=self.spec.startup_health_timeout, instance_type=self.spec.instance_type,
                stop_timeout=self.spec.stop_timeout, name_prefix=f"smbyoc-transform-{host}")
            endpoint = self.factory(host, endpoint_spec)
            self.endpoints.append(endpoint)
            try:
                endpoint.start()
            except SmbyocError as e:
                raise SmbyocError(f"{host}: the container did not become healthy: {e}") from e

    def transform(self, objects: list[InputObject]) -> None:
        tracker = Tracker(objects, self.on_progress)
        assert self.params is not None
        params = self.params

        def work(host: str, url: str, share: list[InputObject]) -> None:
            try:
                found = ObjectTransformer(host, url, self.spec, params, tracker, self.stop,
                                          self.partial_tag).run(share)
                with self._lock:
                    self.outcomes.extend(found)
            except BaseException as e:  # an emulator bug: end the job rather than hang
                log.exception("%s: transform worker failed", host)
                with self._lock:
                    self._errors.append(e)
                self.stop.set()

        threads = [threading.Thread(target=work, args=(host, endpoint.url, share), name=f"transform-{host}",
                                    daemon=True)
                   for host, endpoint, share in zip(self.spec.hosts, self.endpoints,
                                                    assign(objects, self.spec.instance_count), strict=True)]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.2)  # short joins: Ctrl-C reaches the main thread
        except BaseException:
            self.stop.set()
            self.close()  # requests in flight end with the servers
            for thread in threads:
                thread.join()
            raise
        if self._errors:
            raise self._errors[0]

    def close(self) -> None:
        while self.endpoints:
            endpoint = self.endpoints.pop()
            try:
                endpoint.close()
            except Exception as e:
                log.warning("could not stop an endpoint: %s", e)


def run_transform_job(
    spec: TransformJobSpec,
    *,
    backend: EndpointFactory | None = None,
    image: str | None = None,
    on_status: StatusCallback | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    sink: HostSink | None = _print_host_line,
) -> TransformJobResult:
    """Run ``spec`` and return its outcome; what CreateTransformJob refuses raises ConfigError first.

    ``backend(host, endpoint_spec)`` builds one instance's endpoint (default: from ``spec.mode``, see
    :func:`make_backend`); ``on_status(status, message)`` and ``on_progress(progress)`` report as the job
    goes; ``sink(host, line)`` gets the containers' log lines. Ctrl-C (KeyboardInterrupt on the main thread)
    stops the job as StopTransformJob does and returns a ``Stopped`` result.
    """
    spec = spec.validate()
    if spec.model_name is None:
        spec = replace(spec, model_name=_model_name(spec))
    if backend is None:
        backend, image = make_backend(spec, sink)
    creation = _now()
    job = _Job(spec, backend, on_status, on_progress)
    spec.output_dir.mkdir(parents=True, exist_ok=True)
    jobs.register(jobs.TRANSFORM, spec.job_name, mode=spec.mode, output_dir=str(spec.output_dir.resolve()))
    status, reason = IN_PROGRESS, None
    objects: list[InputObject] = []
    try:
        job.status(IN_PROGRESS, "Listing input objects")
        try:
            objects = list_objects(spec.input_path, spec.s3_data_type)
        except ConfigError as e:
            raise _ClientError(str(e)) from e
        job.status(IN_PROGRESS, f"Starting {spec.instance_count} instance(s)")
        job.start_endpoints()
        job.start_time = _now()
        job.params = resolve(spec, execution_parameters(job.endpoints[0].url))
        p = job.params
        log.info("%s: BatchStrategy %s, MaxPayloadInMB %d, MaxConcurrentTransforms %d", spec.job_name,
                 p.batch_strategy, p.max_payload_mb, p.max_concurrent_transforms)
        job.status(IN_PROGRESS, f"Transforming {len(objects)} object(s)")
        job.transform(objects)
        order = {o.key: i for i, o in enumerate(objects)}
        failed = sorted((o for o in job.outcomes if o.failure_reason), key=lambda o: order.get(o.key, len(order)))
        status, reason = (FAILED, failed[0].failure_reason) if failed else (COMPLETED, None)  # (in key order)
    except KeyboardInterrupt:
        job.status(STOPPING, "Stopping (what is finished stays)")
        job.stop.set()
        status, reason = STOPPED, None
    except _ClientError as e:
        status, reason = FAILED, f"ClientError: {e}"
    except SmbyocError as e:
        status, reason = FAILED, f"AlgorithmError: {e}" if not isinstance(e, ConfigError) else f"ClientError: {e}"
    finally:
        job.stop.set()
        job.close()
        remove_partials(spec.output_dir, job.partial_tag)
        jobs.unregister(jobs.TRANSFORM, spec.job_name)
    job.status(status, reason or status)
    order = {o.key: i for i, o in enumerate(objects)}
    outcomes = tuple(sorted(job.outcomes, key=lambda o: order.get(o.key, len(order))))
    return TransformJobResult(spec=spec, status=status, failure_reason=reason, creation_time=creation,
                              start_time=job.start_time, end_time=_now(), image=image, parameters=job.params,
                              objects=outcomes)


class _ClientError(SmbyocError):
    """The job's input cannot be used (reported as SageMaker's ``ClientError``)."""


def _model_name(spec: TransformJobSpec) -> str:
    if spec.model_data is None:
        return "model"
    name = spec.model_data.name
    for suffix in (".tar.gz", ".tgz"):
        name = name.removesuffix(suffix)
    return name or "model"
