"""Run an emulated processing job: one library call, :func:`run_local_processing`, from a CreateProcessingJob
request to a DescribeProcessingJob-shaped :class:`~smbyoc.emulator.processing_result.ProcessingJobResult`.

As SageMaker Processing does (contract-endpoints.md §7): every host ``algo-1..N`` gets
``/opt/ml/config/processingjobconfig.json`` and ``resourceconfig.json``, its inputs copied to their ``LocalPath``
before start (``FullyReplicated``: everything; ``ShardedByS3Key``: every N-th object by sorted key, the
training sharding) or, in Pipe mode, streamed through FIFOs while the containers run
(:mod:`smbyoc.emulator.processing_pipes`), empty output folders; the containers run
(:mod:`smbyoc.emulator.docker_processing`);
``MaxRuntimeInSeconds`` is enforced from container start (SIGINT, then SIGKILL after the stop timeout); the
outputs are copied to their destinations (:mod:`smbyoc.emulator.processing_outputs`); the hosts'
``/opt/ml/output/message`` files, concatenated in host order and cut at 1 KB, are the ``ExitMessage``.

Status: ``Completed`` when every container exits 0; ``Failed`` when one does not (``FailureReason``
``AlgorithmError: See job logs for more information``, naming the host and its exit status) or a message
file is not UTF-8 (``ClientError``); ``Stopped`` on Ctrl-C / SIGTERM (StopProcessingJob) and when
``MaxRuntimeInSeconds`` is reached (``FailureReason`` says so; the status there is UNCONFIRMED, see
docs/processing.md). The job's record (:mod:`smbyoc.emulator.jobs`, kind ``processing``), its temporary tree,
its containers and network are removed at the end, also on Ctrl-C; a killed emulator's are swept by the next
``local-*`` command (:mod:`smbyoc.emulator.sweep`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smbyoc import exit_codes
from smbyoc.emulator import jobs, result
from smbyoc.emulator.job_spec import ChannelSpec, default_job_name
from smbyoc.emulator.layout import HostTree, channel_objects, make_writable
from smbyoc.emulator.pipe_feeder import PipeFeeder, start_feeders, stop_feeders
from smbyoc.emulator.processing_outputs import DEFAULT_INTERVAL, ContinuousSync, OutputCopier
from smbyoc.emulator.processing_pipes import PIPE, check_pipe_paths, pipe_sources
from smbyoc.emulator.processing_request import spec_from_request
from smbyoc.emulator.processing_result import ProcessingJobResult
from smbyoc.emulator.processing_spec import (
    CONTINUOUS,
    EXIT_MESSAGE_LIMIT,
    ProcessingInput,
    ProcessingJobSpec,
    is_s3,
)
from smbyoc.emulator.result import HostOutcome
from smbyoc.emulator.training_job import Lifecycle, stop_on_signals
from smbyoc.errors import ConfigError

if TYPE_CHECKING:
    from smbyoc.emulator.containers import HostLineSink
    from smbyoc.emulator.docker_processing import DockerProcessingBackend
    from smbyoc.s3.staging import Staging

log = logging.getLogger(__name__)

#: ``on_status(ProcessingJobStatus, what is happening)``.
StatusCallback = Callable[[str, str], None]
#: What the job is doing, for the status line (DescribeProcessingJob has no secondary status).
DOWNLOADING, PROCESSING, UPLOADING = "Downloading", "Processing", "Uploading"
ALGORITHM_ERROR = "AlgorithmError: See job logs for more information"


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def input_objects(item: ProcessingInput, host_index: int = 0, host_count: int = 1) -> list[tuple[str, Path]]:
    """``(key, file)`` of every object host ``host_index`` (0-based) of ``host_count`` receives: the training
    channels' rule (a folder's files by sorted key, a manifest's entries; ``ShardedByS3Key``: every N-th)."""
    if item.source is None:
        raise ConfigError("the input was not resolved to a local path", key=f"input {item.name}")
    channel = ChannelSpec(name=item.name, source=item.source, distribution=item.distribution,
                          data_type=item.data_type)
    return channel_objects(channel, host_index, host_count)


def lay_out_host(spec: ProcessingJobSpec, host: str, root: Path) -> HostTree:
    """``root`` as ``host``'s ``/opt/ml``: ``config/`` with both files, ``output/``, and ``processing/`` holding
    the host's share of every File-mode input and an empty folder for every output (Pipe-mode inputs are
    streamed while the job runs)."""
    tree = HostTree(host, root)
    for name in ("config", "output", "processing"):
        (root / name).mkdir(parents=True, exist_ok=True)
    (root / "config" / "processingjobconfig.json").write_text(json.dumps(spec.job_config(), indent=2))
    (root / "config" / "resourceconfig.json").write_text(json.dumps(spec.resource_config(host)))
    index, count = spec.hosts.index(host), spec.instance_count
    for item in spec.inputs:
        if item.input_mode == PIPE:
            continue
        target = root / "processing" / item.relative
        target.mkdir(parents=True, exist_ok=True)
        for key, file in input_objects(item, index, count):
            destination = target / key
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, destination)
    for output in spec.outputs:
        (root / "processing" / output.relative).mkdir(parents=True, exist_ok=True)
    return tree


def read_exit_message(trees: list[HostTree]) -> tuple[str | None, str | None]:
    """``(ExitMessage, problem)``: the hosts' ``/opt/ml/output/message`` concatenated in host order and cut at
    1 KB (None when no host wrote one); ``problem`` is the ``ClientError`` reason when one is not UTF-8."""
    parts: list[str] = []
    problem = None
    for tree in trees:
        path = tree.root / "output" / "message"
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        try:
            parts.append(data.decode("utf-8"))
        except UnicodeDecodeError:
            problem = problem or f"ClientError: /opt/ml/output/message of {tree.host} is not valid UTF-8"
    return ("".join(parts)[:EXIT_MESSAGE_LIMIT] if parts else None), problem


def check_sources(spec: ProcessingJobSpec) -> None:
    """Every input's local source exists (and a manifest reads), and the Pipe-mode FIFOs have a place, before
    anything is created."""
    check_pipe_paths(spec)
    for n, item in enumerate(spec.inputs):
        where = f"ProcessingInputs[{n}].S3Input.S3Uri {item.uri}"
        if item.source is None or not item.source.exists():
            raise ConfigError("no such file or directory", key=where)
        if item.data_type == "ManifestFile":
            from smbyoc.emulator.manifest import read_manifest

            read_manifest(item.source)
    for n, output in enumerate(spec.outputs):
        if output.destination is None:
            raise ConfigError("the output was not resolved to a local path",
                              key=f"ProcessingOutputConfig.Outputs[{n}].S3Output.S3Uri {output.uri}")
        if output.destination.exists() and not output.destination.is_dir():
            raise ConfigError("exists and is not a directory",
                              key=f"ProcessingOutputConfig.Outputs[{n}].S3Output.S3Uri {output.uri}")


def run_processing_job(
    spec: ProcessingJobSpec,
    backend: DockerProcessingBackend,
    *,
    keep_tree: bool = False,
    work_dir: Path | None = None,
    on_status: StatusCallback | None = None,
    continuous_interval: float = DEFAULT_INTERVAL,
    request: dict[str, Any] | None = None,
) -> ProcessingJobResult:
    """Run ``spec`` (inputs and outputs resolved to local paths, checked, the backend's preflight done)."""
    check_sources(spec)
    start = _now()

    def status(primary: str, secondary: str) -> None:
        # INFO for library callers; DEBUG when a status callback shows it already (the CLI's status line).
        log.log(logging.DEBUG if on_status is not None else logging.INFO, "%s: %s - %s", spec.job_name, primary,
                secondary)
        if on_status is not None:
            on_status(primary, secondary)

    stopped = threading.Event()
    outcomes: list[HostOutcome] = []
    end_reason = None
    destinations = sorted({str(o.destination) for o in spec.outputs})
    jobs.register(jobs.PROCESSING, spec.job_name, mode=backend.name, output_dirs=destinations)
    try:
        root = Path(tempfile.mkdtemp(prefix=f"smbyoc-{spec.job_name[:40]}-", dir=work_dir))
        jobs.update(jobs.PROCESSING, spec.job_name, tree=str(root))
        try:
            with stop_on_signals(backend, stopped):
                status("InProgress", DOWNLOADING)
                trees = [lay_out_host(spec, host, root / host) for host in spec.hosts]

                def pairs(continuous: bool) -> list[tuple[Path, Path]]:
                    return [(t.root / "processing" / o.relative, o.destination) for t in trees for o in spec.outputs
                            if o.destination is not None and (o.upload_mode == CONTINUOUS) == continuous]

                at_end, continuous = OutputCopier(pairs(False)), OutputCopier(pairs(True))
                feeders: list[PipeFeeder] = []
                if not stopped.is_set():
                    status("InProgress", PROCESSING)
                    try:
                        for tree in trees:
                            sources, patterns = pipe_sources(spec, tree.host, input_objects)
                            feeders += start_feeders(sources, tree.root / "processing", tree.host, patterns)
                        with ContinuousSync(continuous, continuous_interval), \
                                Lifecycle(spec.job_name, spec.max_runtime_seconds, backend) as lifecycle:
                            outcomes = backend.run(spec, trees)
                    finally:
                        stop_feeders(feeders)
                    end_reason = lifecycle.reason
                status("InProgress", UPLOADING)
                continuous.sync()
                at_end.sync()
                message, problem = read_exit_message(trees)
                problem = _feeder_problem(feeders) or problem
        finally:
            if keep_tree:
                log.info("job tree kept at %s", root)
            else:
                make_writable(root)
                shutil.rmtree(root, ignore_errors=True)
    finally:
        jobs.unregister(jobs.PROCESSING, spec.job_name)
    job = _outcome(spec, outcomes, stopped.is_set(), end_reason == result.MAX_RUNTIME_EXCEEDED, problem)
    status(job[0], job[0])
    return ProcessingJobResult(spec=spec, status=job[0], exit_code=job[1], failure_reason=job[2], start_time=start,
                               end_time=_now(), exit_message=message, hosts=tuple(outcomes), mode=backend.name,
                               request=request)


def _feeder_problem(feeders: list[PipeFeeder]) -> str | None:
    """The ``ClientError`` reason when a Pipe-mode input could not be streamed (an object that is not gzip)."""
    for feeder in feeders:
        if feeder.error is not None:
            return (f"ClientError: Pipe-mode input {feeder.source.channel} on {feeder.host} could not be "
                    f"streamed: {feeder.error}")
    return None


def _outcome(spec: ProcessingJobSpec, outcomes: list[HostOutcome], stopped: bool, max_runtime: bool,
             problem: str | None) -> tuple[str, int, str | None]:
    """``(ProcessingJobStatus, exit status, FailureReason)``."""
    if stopped or not outcomes:
        return result.STOPPED, exit_codes.STOPPED, None
    if max_runtime:
        return (result.STOPPED, exit_codes.FAILURE,
                f"MaxRuntimeExceeded: the processing job ran for longer than MaxRuntimeInSeconds "
                f"({spec.max_runtime_seconds} s) and was stopped")
    failed = sorted((o for o in outcomes if o.exit_code != 0), key=lambda o: o.stopped_by_emulator)
    if failed:
        first = failed[0]
        code = first.exit_code if first.exit_code is not None else exit_codes.FAILURE
        return result.FAILED, code, f"{ALGORITHM_ERROR} ({first.host} exited with status {code})"
    if problem is not None:
        return result.FAILED, exit_codes.FAILURE, problem
    return result.COMPLETED, exit_codes.OK, None


# ------------------------------------------------------------------------------------------ one library call


def make_backend(image: str, *, stop_timeout: float = 120.0, user: str | None = None,
                 sink: HostLineSink | None = None) -> DockerProcessingBackend:
    """The Docker backend (a client that answered)."""
    from smbyoc.docker.client import get_client
    from smbyoc.emulator.docker_processing import DockerProcessingBackend

    if user is not None and not all(part.isdigit() for part in user.split(":", 1)):
        raise ConfigError("expected a numeric UID or UID:GID", key=f"--user {user}")
    return DockerProcessingBackend(client=get_client(), image=image, stop_timeout=stop_timeout, user=user,
                                   sink=sink)


def resolve_locations(spec: ProcessingJobSpec, staging: Staging) -> ProcessingJobSpec:
    """``spec`` with every input's and output's URI resolved to a local path through ``staging`` (outputs first,
    so a missing bucket is said before any download). A local path's URI becomes its absolute ``file://`` URI
    (what ``processingjobconfig.json`` shows); an ``s3://`` URI stays."""
    outputs = []
    for n, output in enumerate(spec.outputs):
        local = staging.output(output.uri, what=f"ProcessingOutputConfig.Outputs[{n}].S3Output.S3Uri")
        uri = output.uri if is_s3(output.uri) else local.resolve().as_uri()
        outputs.append(dataclasses.replace(output, uri=uri, destination=local.resolve()))
    inputs = []
    for n, item in enumerate(spec.inputs):
        local = staging.input(item.uri, what=f"ProcessingInputs[{n}].S3Input.S3Uri", data_type=item.data_type)
        uri = item.uri if is_s3(item.uri) else local.resolve().as_uri()
        inputs.append(dataclasses.replace(item, uri=uri, source=local.resolve()))
    return dataclasses.replace(spec, inputs=tuple(inputs), outputs=tuple(outputs))


def run_local_processing(
    request: Mapping[str, Any],
    *,
    staging: Staging | None = None,
    source: str = "request",
    region: str = "us-east-1",
    stop_timeout: float = 120.0,
    user: str | None = None,
    keep_tree: bool = False,
    work_dir: Path | None = None,
    continuous_interval: float = DEFAULT_INTERVAL,
    on_start: Callable[[ProcessingJobSpec], None] | None = None,
    on_status: StatusCallback | None = None,
    sink: HostLineSink | None = None,
    pipe_path: str | None = None,
) -> ProcessingJobResult:
    """Check the CreateProcessingJob ``request`` and run it in Docker; every bad input raises one
    :class:`~smbyoc.errors.ConfigError` (or :class:`~smbyoc.errors.DockerError`) before anything is created.

    ``staging`` resolves ``s3://`` and ``file://`` URIs (the caller publishes it and restores the URIs in the
    result); without one, a private staging is used and published here. ``on_start(spec)`` is called once every
    check passed; ``on_status`` gets ``(ProcessingJobStatus, what is happening)``; ``sink(host, line)`` each log
    line (default: printed with its host). ``pipe_path``: where Pipe-mode inputs' FIFOs lie
    (:mod:`smbyoc.emulator.processing_pipes`). Ctrl-C and SIGTERM stop the job as StopProcessingJob does.
    """
    spec = spec_from_request(request, source=source, region=region)
    if pipe_path is not None:
        spec = dataclasses.replace(spec, pipe_path=pipe_path)
    check_pipe_paths(spec)
    spec.instance  # noqa: B018 - an instance type the emulator does not know is refused here
    if stop_timeout < 0:
        raise ConfigError("must be 0 or more", key=f"--stop-timeout {stop_timeout:g}")
    backend = make_backend(spec.image, stop_timeout=stop_timeout, user=user, sink=sink)
    backend.preflight(spec)
    options: dict[str, Any] = {"keep_tree": keep_tree, "work_dir": work_dir, "on_status": on_status,
                               "continuous_interval": continuous_interval, "request": dict(request)}
    if staging is not None:
        return _run_staged(spec, backend, staging, on_start, options)
    from smbyoc.s3.staging import Staging

    with Staging() as own:
        job = _run_staged(spec, backend, own, on_start, options)
        own.publish()
    return job


def _run_staged(spec: ProcessingJobSpec, backend: DockerProcessingBackend, staging: Staging,
                on_start: Callable[[ProcessingJobSpec], None] | None, options: dict[str, Any]) -> ProcessingJobResult:
    spec = resolve_locations(spec, staging)
    check_sources(spec)
    if on_start is not None:
        on_start(spec)
    return run_processing_job(spec, backend, **options)


def default_name() -> str:
    return default_job_name("smbyoc-processing")
