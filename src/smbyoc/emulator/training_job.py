"""Run an emulated training job: lay out the trees, run a backend, collect artifacts, report.

The sequence and the status names follow SageMaker (``Starting → Downloading → Training → Uploading →
Completed | Failed | Stopped``). The backend (process or Docker) only runs the hosts; everything else is
shared so both modes produce the same files and the same report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import logging
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Protocol

from smbyoc import exit_codes
from smbyoc.emulator import artifacts, jobs, result
from smbyoc.emulator.checkpoint_sync import CheckpointSync
from smbyoc.emulator.job_spec import TrainingJobSpec
from smbyoc.emulator.layout import HostTree, channel_objects, lay_out_host, make_writable
from smbyoc.emulator.pipe_feeder import PipeSource, start_feeders, stop_feeders
from smbyoc.emulator.result import HostOutcome, TrainingJobResult
from smbyoc.logs import terminal_safe
from smbyoc.paths import check_creatable_dir
from smbyoc.training import failure

log = logging.getLogger(__name__)

FAILURE_REASON_LIMIT = failure.FAILURE_REASON_LIMIT

StatusCallback = Callable[[str, str], None]


class TrainingBackend(Protocol):
    """Runs every host of a prepared job and returns one outcome per host."""

    name: str
    #: Set once the job's programs run (MaxRuntimeInSeconds and the spot reclaim count from here).
    started: threading.Event

    def preflight(self, spec: TrainingJobSpec) -> None:
        """Refuse, with one ConfigError or DockerError line, what this backend cannot run; called once,
        before any tree, process or container exists (``run`` does not check again)."""

    def run(self, spec: TrainingJobSpec, trees: Sequence[HostTree]) -> list[HostOutcome]: ...

    def stop(self) -> None:
        """Ask the job to stop as StopTrainingJob does (SIGTERM, then SIGKILL after the grace period)."""

    def kill(self) -> None:
        """Stop at once (a second Ctrl-C)."""


def read_failure_reason(tree: HostTree) -> str | None:
    """The host's ``FailureReason`` (first 1024 characters of its failure file); None when empty or absent."""
    return failure.read_failure_reason(tree.paths, FAILURE_REASON_LIMIT) or None


class Stoppable(Protocol):
    """A running job that can be asked to stop (SIGTERM/SIGINT, then SIGKILL after a grace) or killed."""

    started: threading.Event

    def stop(self) -> None: ...

    def kill(self) -> None: ...


def stop_signal_of(backend: Stoppable) -> str:
    """The signal ``backend.stop()`` sends first: SIGTERM, unless the backend names another (processing: SIGINT)."""
    return str(getattr(backend, "stop_signal", "SIGTERM"))


@contextlib.contextmanager
def stop_on_signals(backend: Stoppable, stopped: threading.Event) -> Iterator[None]:
    """Ctrl-C / SIGTERM stop the job like StopTrainingJob; a second Ctrl-C kills it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if stopped.is_set():
            log.warning("second interrupt: killing the job")
            backend.kill()
            return
        stopped.set()
        log.warning("%s received: stopping the job (%s, then SIGKILL after the grace period)",
                    signal.Signals(signum).name, stop_signal_of(backend))
        backend.stop()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class Lifecycle:
    """Watches one attempt: MaxRuntimeInSeconds and the emulated spot reclaim (``spot_after`` seconds after
    start; None: none), timed from container start. Serves training and processing jobs."""

    def __init__(self, job_name: str, max_runtime_seconds: float | None, backend: Stoppable, used: float = 0.0,
                 spot_after: float | None = None) -> None:
        self.job_name = job_name
        self.max_runtime_seconds = max_runtime_seconds
        self.backend = backend
        self.used = used  # container seconds of earlier attempts (spot restarts)
        self.spot_after = spot_after
        self.reason: str | None = None  # MAX_RUNTIME_EXCEEDED or INTERRUPTED once fired
        self.started_at: float | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="job-lifecycle", daemon=True)

    def __enter__(self) -> Lifecycle:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(5)

    @property
    def elapsed(self) -> float:
        return 0.0 if self.started_at is None else time.monotonic() - self.started_at

    def _watch(self) -> None:
        while not self.backend.started.is_set():
            if self._done.wait(0.05):
                return
        self.started_at = time.monotonic()
        deadlines: list[tuple[float, str]] = []
        if self.max_runtime_seconds is not None:
            deadlines.append((self.max_runtime_seconds - self.used, result.MAX_RUNTIME_EXCEEDED))
        if self.spot_after is not None:
            deadlines.append((self.spot_after, result.INTERRUPTED))
        if not deadlines:
            return
        after, reason = min(deadlines)
        if self._done.wait(max(0.0, after)):
            return
        self.reason = reason
        if reason == result.MAX_RUNTIME_EXCEEDED:
            log.warning("%s: MaxRuntimeInSeconds (%g s) reached: stopping the job (%s, then SIGKILL "
                        "after the grace period)", self.job_name, self.max_runtime_seconds,
                        stop_signal_of(self.backend))
        else:
            log.warning("%s: emulated spot interruption after %g s: stopping the instances (SIGTERM, then "
                        "SIGKILL after the grace period); the job restarts from its checkpoints",
                        self.job_name, self.spot_after)
        self.backend.stop()


def pipe_sources(spec: TrainingJobSpec, host: str) -> list[PipeSource]:
    hosts = spec.hosts
    return [
        PipeSource(c.name, tuple(path for _, path in channel_objects(c, hosts.index(host), len(hosts))),
                   c.record_wrapper, c.compression)
        for c in spec.channels if c.input_mode == "Pipe"
    ]


def _fresh_outputs(tree: HostTree) -> None:
    """A restarted instance: empty model, output and checkpoint directories (checkpoints come back from
    the checkpoint directory)."""
    paths = tree.paths
    for directory in (paths.model_dir, paths.output_dir, paths.checkpoints_dir):
        make_writable(directory)
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True, exist_ok=True)
    paths.output_data_dir.mkdir(parents=True, exist_ok=True)


class _History:
    """SecondaryStatusTransitions, reported to ``on_status`` as they happen."""

    def __init__(self, job_name: str, on_status: StatusCallback | None) -> None:
        self.job_name = job_name
        self.on_status = on_status
        self.items: list[result.StatusTransition] = []

    def __call__(self, primary: str, secondary: str, message: str = "") -> None:
        now = _dt.datetime.now(_dt.timezone.utc)
        if self.items and self.items[-1].end_time is None:
            self.items[-1] = dataclasses.replace(self.items[-1], end_time=now)
        self.items.append(result.StatusTransition(secondary, now, None, message))
        # Logged at INFO for library callers; DEBUG when a status callback shows it already (the CLI's status line).
        log.log(logging.DEBUG if self.on_status is not None else logging.INFO, "%s: %s - %s%s", self.job_name,
                primary, secondary, f" ({terminal_safe(message)})" if message else "")  # a failure file's text
        if self.on_status is not None:
            self.on_status(primary, secondary)


@contextlib.contextmanager
def _job_tree(job_name: str, work_dir: Path | None, keep: bool) -> Iterator[Path]:
    """The job's temporary tree (recorded in the job's record), removed at the end unless ``keep``."""
    root = Path(tempfile.mkdtemp(prefix=f"smbyoc-{job_name[:40]}-", dir=work_dir))
    jobs.update(jobs.TRAINING, job_name, tree=str(root))
    try:
        yield root
    finally:
        if keep:
            log.info("job tree kept at %s", root)
        else:
            make_writable(root)
            shutil.rmtree(root, ignore_errors=True)


def check_output_dir(spec: TrainingJobSpec, output_dir: Path) -> None:
    """Where the artifacts go can be made: said before the job runs, not after it trained (ConfigError naming
    ``--output-dir``)."""
    check_creatable_dir(artifacts.job_output_dir(output_dir, spec.job_name), f"--output-dir {output_dir}")


def run_training_job(
    spec: TrainingJobSpec,
    backend: TrainingBackend,
    output_dir: Path,
    *,
    keep_tree: bool = False,
    work_dir: Path | None = None,
    on_status: StatusCallback | None = None,
    checked: bool = False,
) -> TrainingJobResult:
    """Check ``spec`` (its API limits, then ``backend.preflight``) and run it on ``backend``, writing its
    artifacts under ``output_dir/<job-name>/output``.

    ``checked``: the caller already ran ``spec.validate()``, ``backend.preflight(spec)`` and
    :func:`check_output_dir`, as
    :func:`smbyoc.emulator.run_local_training` does (it builds the backend between the two).
    """
    if not checked:
        spec.validate()
        backend.preflight(spec)  # bad input is refused before any tree or container exists
        check_output_dir(spec, output_dir)
    start = _dt.datetime.now(_dt.timezone.utc)
    status = _History(spec.job_name, on_status)
    status("InProgress", result.STARTING, "Preparing the instances for training")
    stopped = threading.Event()
    outcomes: list[HostOutcome] = []
    job_artifacts = None
    end_reason: str | None = None
    interruptions = 0
    container_seconds = 0.0
    # The record names the tree and the output directory before they exist, so that whatever a killed
    # emulator leaves is found and removed (smbyoc.emulator.sweep).
    with jobs.registered(spec.job_name, backend.name,
                         output_dir=str(artifacts.job_output_dir(output_dir, spec.job_name))), \
            _job_tree(spec.job_name, work_dir, keep_tree) as root, stop_on_signals(backend, stopped):
        status("InProgress", result.DOWNLOADING, "Downloading input data")
        trees = [lay_out_host(spec, host, root / host) for host in spec.hosts]
        sync = None
        if spec.checkpoint_dir is not None:
            sync = CheckpointSync(spec.checkpoint_dir, [(t.host, t.paths.checkpoints_dir) for t in trees])
            sync.start_job()
        while not stopped.is_set():
            status("InProgress", result.TRAINING, "Training image download completed. Training in progress.")
            feeders = [f for t in trees for f in start_feeders(pipe_sources(spec, t.host),
                                                               t.paths.input_data_dir, t.host)]
            if sync is not None:
                sync.start()
            try:
                with Lifecycle(spec.job_name, spec.max_runtime_seconds, backend, container_seconds,
                               spec.spot_interruption_after if interruptions == 0 else None) as lifecycle:
                    outcomes = backend.run(spec, trees)
            finally:
                stop_feeders(feeders)
                if sync is not None:
                    sync.finish()
            container_seconds += lifecycle.elapsed
            end_reason = lifecycle.reason
            if end_reason == result.INTERRUPTED and not stopped.is_set():
                interruptions += 1
                status("InProgress", result.INTERRUPTED, "The job was interrupted (emulated spot reclaim)")
                status("InProgress", result.RESTARTING, "Restarting the job from its checkpoints")
                if sync is None:
                    log.warning("no --checkpoint-s3-dir: the restarted job starts from scratch")
                for tree in trees:
                    _fresh_outputs(tree)
                if sync is not None:
                    sync.start_job()
                continue
            break
        status("InProgress", result.UPLOADING, "Uploading generated training model")
        job_artifacts = artifacts.collect(
            [(t.host, t.root) for t in trees], output_dir, spec.job_name,
            compress=spec.output_compression != "NONE",
        )
        outcomes = [
            dataclasses.replace(o, failure_reason=o.failure_reason or read_failure_reason(t))
            for o, t in zip(outcomes, trees, strict=False)
        ]
    job = _finish(spec, backend.name, start, outcomes, job_artifacts, stopped.is_set(), status,
                  max_runtime_exceeded=end_reason == result.MAX_RUNTIME_EXCEEDED)
    return dataclasses.replace(
        job, transitions=tuple(status.items), max_runtime_seconds=spec.max_runtime_seconds,
        network_isolation=spec.network_isolation,
        checkpoint_dir=str(spec.checkpoint_dir) if spec.checkpoint_dir is not None else None,
        spot=spec.spot_interruption_after is not None, interruptions=interruptions,
        billable_seconds=container_seconds * spec.instance_count, image=getattr(backend, "image", None),
    )


def _finish(
    spec: TrainingJobSpec,
    mode: str,
    start: _dt.datetime,
    outcomes: list[HostOutcome],
    job_artifacts: artifacts.JobArtifacts | None,
    stopped: bool,
    status: Callable[..., None],
    *,
    max_runtime_exceeded: bool = False,
) -> TrainingJobResult:
    failed = [o for o in outcomes if o.exit_code != 0]
    # The host that failed on its own comes first; hosts the emulator stopped because of it follow.
    failed.sort(key=lambda o: o.stopped_by_emulator)
    reason = None
    exit_code = 0
    if stopped:
        primary, secondary = result.STOPPED, result.STOPPED
    elif max_runtime_exceeded:
        primary, secondary = result.FAILED, result.MAX_RUNTIME_EXCEEDED
        exit_code = exit_codes.FAILURE
        reason = (f"MaxRuntimeExceeded: the training job ran for longer than MaxRuntimeInSeconds "
                  f"({spec.max_runtime_seconds:g} s) and was stopped")
    elif failed or not outcomes:
        primary, secondary = result.FAILED, result.FAILED
    else:
        primary, secondary = result.COMPLETED, result.COMPLETED
    if failed and not stopped and not max_runtime_exceeded:
        first = failed[0]
        exit_code = first.exit_code if first.exit_code is not None else 1
        # SageMaker's shape, whatever the host count: which host failed is in ``hosts``.
        on_host = f" on {first.host}" if len(spec.hosts) > 1 else ""
        reason = failure.algorithm_error_reason(first.failure_reason or (
            f"the training program{on_host} exited with status {exit_code} and wrote no /opt/ml/output/failure"))
    elif not outcomes and not stopped and not max_runtime_exceeded:
        exit_code = 1
        reason = "the job did not run"
    status(primary, secondary, reason or "")
    return TrainingJobResult(
        job_name=spec.job_name, job_arn=spec.job_arn, status=primary, secondary_status=secondary,
        exit_code=exit_code, failure_reason=reason, start_time=start,
        end_time=_dt.datetime.now(_dt.timezone.utc), hyperparameters=dict(spec.hyperparameters),
        instance_type=spec.instance_type, instance_count=spec.instance_count, mode=mode,
        artifacts=job_artifacts, hosts=tuple(outcomes), input_data_config=spec.input_data_config(),
    )
