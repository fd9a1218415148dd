"""Run an emulated training job: lay out the trees, run a backend, collect artifacts, report.

The sequence and the status names follow SageMaker (``Starting → Downloading → Training → Uploading →
Completed | Failed | Stopped``). The backend (process or Docker) only runs the hosts; everything else is
shared so both modes produce the same files and the same report.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Protocol

from smbyoc.emulator import artifacts, result
from smbyoc.emulator.job_spec import TrainingJobSpec
from smbyoc.emulator.layout import HostTree, lay_out_host, make_writable
from smbyoc.emulator.result import HostOutcome, TrainingJobResult
from smbyoc.training import failure

log = logging.getLogger(__name__)

FAILURE_REASON_LIMIT = failure.FAILURE_REASON_LIMIT

StatusCallback = Callable[[str, str], None]


class TrainingBackend(Protocol):
    """Runs every host of a prepared job and returns one outcome per host."""

    name: str

    def run(self, spec: TrainingJobSpec, trees: Sequence[HostTree]) -> list[HostOutcome]: ...

    def stop(self) -> None:
        """Ask the job to stop as StopTrainingJob does (SIGTERM, then SIGKILL after the grace period)."""

    def kill(self) -> None:
        """Stop at once (a second Ctrl-C)."""


def read_failure_reason(tree: HostTree) -> str | None:
    """The host's ``FailureReason`` (first 1024 characters of its failure file); None when empty or absent."""
    return failure.read_failure_reason(tree.paths, FAILURE_REASON_LIMIT) or None


@contextlib.contextmanager
def stop_on_signals(backend: TrainingBackend, stopped: threading.Event) -> Iterator[None]:
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
        log.warning("%s received: stopping the job (SIGTERM, then SIGKILL after the grace period)",
                    signal.Signals(signum).name)
        backend.stop()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run_training_job(
    spec: TrainingJobSpec,
    backend: TrainingBackend,
    output_dir: Path,
    *,
    keep_tree: bool = False,
    work_dir: Path | None = None,
    on_status: StatusCallback | None = None,
) -> TrainingJobResult:
    """Run ``spec`` on ``backend`` and write its artifacts under ``output_dir/<job-name>/output``."""
    spec.validate()
    start = _dt.datetime.now(_dt.timezone.utc)

    def status(primary: str, secondary: str) -> None:
        log.info("%s: %s - %s", spec.job_name, primary, secondary)
        if on_status is not None:
            on_status(primary, secondary)

    status("InProgress", result.STARTING)
    root = Path(tempfile.mkdtemp(prefix=f"smbyoc-{spec.job_name[:40]}-", dir=work_dir))
    stopped = threading.Event()
    outcomes: list[HostOutcome] = []
    job_artifacts = None
    try:
        with stop_on_signals(backend, stopped):
            status("InProgress", result.DOWNLOADING)
            trees = [lay_out_host(spec, host, root / host) for host in spec.hosts]
            if not stopped.is_set():
                status("InProgress", result.TRAINING)
                outcomes = backend.run(spec, trees)
            status("InProgress", result.UPLOADING)
            job_artifacts = artifacts.collect(
                [(t.host, t.root) for t in trees], output_dir, spec.job_name,
                compress=spec.output_compression != "NONE",
            )
            outcomes = [
                HostOutcome(o.host, o.exit_code, o.failure_reason or read_failure_reason(t))
                for o, t in zip(outcomes, trees, strict=False)
            ]
    finally:
        if keep_tree:
            log.info("job tree kept at %s", root)
        else:
            make_writable(root)
            shutil.rmtree(root, ignore_errors=True)
    return _finish(spec, backend.name, start, outcomes, job_artifacts, stopped.is_set(), status)


def _finish(
    spec: TrainingJobSpec,
    mode: str,
    start: _dt.datetime,
    outcomes: list[HostOutcome],
    job_artifacts: artifacts.JobArtifacts | None,
    stopped: bool,
    status: Callable[[str, str], None],
) -> TrainingJobResult:
    failed = [o for o in outcomes if o.exit_code != 0]
    if stopped:
        primary, secondary = result.STOPPED, result.STOPPED
    elif failed or not outcomes:
        primary, secondary = result.FAILED, result.FAILED
    else:
        primary, secondary = result.COMPLETED, result.COMPLETED
    reason = None
    exit_code = 0
    if failed:
        first = failed[0]
        exit_code = first.exit_code if first.exit_code is not None else 1
        detail = first.failure_reason or (
            f"AlgorithmError: the training program exited with status {exit_code} and wrote no "
            "/opt/ml/output/failure"
        )
        reason = detail if len(spec.hosts) == 1 else f"{first.host}: {detail}"
        reason = reason[:FAILURE_REASON_LIMIT]
    elif stopped:
        exit_code = 0
    elif not outcomes:
        exit_code = 1
        reason = "the job did not run"
    status(primary, secondary)
    return TrainingJobResult(
        job_name=spec.job_name, job_arn=spec.job_arn, status=primary, secondary_status=secondary,
        exit_code=exit_code, failure_reason=reason, start_time=start,
        end_time=_dt.datetime.now(_dt.timezone.utc), hyperparameters=dict(spec.hyperparameters),
        instance_type=spec.instance_type, instance_count=spec.instance_count, mode=mode,
        artifacts=job_artifacts, hosts=tuple(outcomes), input_data_config=spec.input_data_config(),
    )
