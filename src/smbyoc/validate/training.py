"""Training checks: the image run by the emulator's training engine, exactly as SageMaker runs it.

Three jobs, each ``docker run IMAGE train`` with the real ``/opt/ml`` tree (config files, channels), the
instance type's limits and ``TRAINING_JOB_NAME``/``TRAINING_JOB_ARN``
(:mod:`smbyoc.emulator.training_job`, :class:`~smbyoc.emulator.docker_training.DockerTrainingBackend`):

* ``train-model`` / ``train-config`` (the main job): it ends ``Completed`` with files in ``/opt/ml/model``,
  and ``train`` reads the config files. Reads are seen on the host: before the container starts each
  file's access time is set back, and a read moves it forward (Linux updates the access time of a file
  read after its last change, ``relatime``, the default; ``noatime`` file systems and engines in a VM are
  reported as not observable);
* ``train-failure``: a job meant to fail (by default its ``sagemaker_program`` and ``SAGEMAKER_PROGRAM``
  name a program that does not exist; ``fail_hyperparameters`` choose another way) ends ``Failed`` with a
  ``FailureReason`` from ``/opt/ml/output/failure``;
* ``train-sigterm``: StopTrainingJob's ``docker stop``: SIGTERM ``sigterm_after`` seconds after the
  container's first output line (the program is running; a PID 1 that has not installed its handler yet
  would lose the signal, on SageMaker too), or after :data:`OUTPUT_WAIT` seconds without output; SIGKILL
  if it still runs ``stop_timeout`` (120) seconds later. The container must exit before.

Every job runs under ``MaxRuntimeInSeconds`` = the check timeout, so a hung ``train`` fails its check.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smbyoc.emulator.job_spec import SDK_PROGRAM_KEY, SDK_SUBMIT_DIR_KEY, TrainingJobSpec
from smbyoc.emulator.layout import HostTree
from smbyoc.emulator.result import HostOutcome, TrainingJobResult
from smbyoc.errors import SmbyocError
from smbyoc.validate.checks import TRAINING_CHECKS
from smbyoc.validate.context import LogTail, ValidateContext
from smbyoc.validate.report import CheckResult, failed, not_applicable, passed

log = logging.getLogger(__name__)

GROUP = "training"
CHECKS = TRAINING_CHECKS
CONFIG_FILES = ("hyperparameters.json", "inputdataconfig.json", "resourceconfig.json")
#: The program the job meant to fail names (by default).
MISSING_PROGRAM = "smbyoc-validate-no-such-program.py"
#: SageMaker: SIGTERM, then SIGKILL 120 s later (StopTrainingJob).
TRAINING_STOP_TIMEOUT = 120.0
SIGKILL_STATUS = 137
#: Seconds the SIGTERM job waits for the container's first output line before it stops waiting for one.
OUTPUT_WAIT = 10.0
#: How far back a config file's access time is set before the job (any read then moves it forward).
_AGE_SECONDS = 3600.0


@dataclass(frozen=True)
class TrainingInputs:
    """What the training jobs are given (CreateTrainingJob's ``HyperParameters``, channels, code)."""

    hyperparameters: Mapping[str, str] = field(default_factory=dict)
    channels: tuple[tuple[str, Path], ...] = ()
    source_dir: Path | None = None
    entry_point: str | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    #: Hyperparameters that make ``train`` fail; None: name a program that does not exist.
    fail_hyperparameters: Mapping[str, str] | None = None
    #: Hyperparameters that keep ``train`` running until it is stopped (for ``train-sigterm``).
    keep_running_hyperparameters: Mapping[str, str] = field(default_factory=dict)
    #: What these inputs are, for messages ("the bundled default example").
    description: str = ""


def example_inputs() -> TrainingInputs:
    """smbyoc's bundled default example: its code, data and hyperparameters (for smbyoc's own images)."""
    from smbyoc.examples import default_example

    example = default_example()
    return TrainingInputs(hyperparameters=dict(example.hyperparameters), channels=tuple(example.channels.items()),
                          source_dir=example.source_dir, entry_point=example.entry_point,
                          keep_running_hyperparameters={"epochs": "1000000"},
                          description="the bundled default example")


@dataclass(frozen=True)
class TrainingSettings:
    stop_timeout: float = TRAINING_STOP_TIMEOUT
    #: Seconds the stop job runs before SIGTERM.
    sigterm_after: float = 1.0


# ----------------------------------------------------------------------------------------- observing
@dataclass
class Observation:
    """What one job's container did, seen from the host."""

    #: Config file name -> read; None when reads cannot be seen here.
    config_reads: dict[str, bool] | None = None
    model_files: int = 0
    model_bytes: int = 0
    failure_text: str = ""
    sigterm_at: float | None = None
    ended_at: float | None = None
    outcome: HostOutcome | None = None


def reads_observable(root: Path) -> bool:
    """Whether a read of a file under ``root`` moves its access time (false on ``noatime`` mounts)."""
    probe = root / ".smbyoc-atime-probe"
    try:
        probe.write_text("probe", encoding="utf-8")
        before = _age(probe)
        with probe.open(encoding="utf-8") as f:
            f.read()
        return os.stat(probe).st_atime > before + 1
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)


def _age(path: Path) -> float:
    """Set ``path``'s access time well before its change time; return it."""
    st = os.stat(path)
    atime = st.st_mtime - _AGE_SECONDS
    os.utime(path, (atime, st.st_mtime))
    return atime


def _regular_files(root: Path) -> tuple[int, int]:
    """How many regular files, and how many bytes, ``root`` holds (links are not followed: the container wrote it)."""
    count = size = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                count += 1
                size += st.st_size
    return count, size


class ObservedBackend:
    """A Docker training backend watched from the host: which config files ``train`` read, what it left
    in ``/opt/ml/model`` and ``/opt/ml/output/failure``, and (``sigterm_after``) how it takes a stop."""

    name = "docker"

    def __init__(self, inner: Any, *, observe_reads: bool, sigterm_after: float | None = None,
                 first_output: threading.Event | None = None) -> None:
        self.inner = inner
        self.started: threading.Event = inner.started
        self.image = inner.image
        self.observe_reads = observe_reads
        self.sigterm_after = sigterm_after
        #: Set by the log sink on the container's first line.
        self.first_output = first_output or threading.Event()
        self.observation = Observation()
        self.cancelled = threading.Event()

    def preflight(self, spec: TrainingJobSpec) -> None:
        self.inner.preflight(spec)

    def run(self, spec: TrainingJobSpec, trees: Sequence[HostTree]) -> list[HostOutcome]:
        if self.cancelled.is_set():
            raise SmbyocError(f"{spec.job_name}: stopped before it started")
        tree = trees[0]
        config_dir = tree.paths.input_config_dir
        aged = {name: _age(config_dir / name) for name in CONFIG_FILES if (config_dir / name).is_file()} \
            if self.observe_reads else {}
        finished = threading.Event()
        stopper = None
        if self.sigterm_after is not None:
            stopper = threading.Thread(target=self._stop_later, args=(finished,), name="validate-sigterm", daemon=True)
            stopper.start()
        try:
            outcomes: list[HostOutcome] = self.inner.run(spec, trees)
        finally:
            finished.set()
            self.observation.ended_at = time.monotonic()
            if stopper is not None:
                stopper.join(5)
        obs = self.observation
        if self.observe_reads:
            obs.config_reads = {name: os.stat(config_dir / name).st_atime > atime + 1 for name, atime in aged.items()}
        obs.model_files, obs.model_bytes = _regular_files(tree.paths.model_dir)
        failure = tree.paths.output_dir / "failure"
        if failure.is_file() and not failure.is_symlink():
            obs.failure_text = failure.read_text(encoding="utf-8", errors="replace")[:1024].strip()
        obs.outcome = outcomes[0] if outcomes else None
        return outcomes

    def _stop_later(self, finished: threading.Event) -> None:
        while not self.started.wait(0.05):
            if finished.is_set():
                return
        assert self.sigterm_after is not None
        waited = time.monotonic() + OUTPUT_WAIT
        while not self.first_output.wait(0.05):
            if finished.is_set() or time.monotonic() > waited:
                break
        if finished.wait(self.sigterm_after):
            return
        self.observation.sigterm_at = time.monotonic()
        self.inner.stop()

    def stop(self) -> None:
        self.inner.stop()

    def kill(self) -> None:
        self.inner.kill()

    def cancel(self) -> None:
        """Stop for good: containers not started yet never start, running ones are killed."""
        self.cancelled.set()
        self.inner.stop()  # marks the job as stopping, so the backend starts nothing more
        self.inner.kill()


# ----------------------------------------------------------------------------------------- running
def _job_spec(ctx: ValidateContext, inputs: TrainingInputs, role: str) -> tuple[TrainingJobSpec, Path | None]:
    from smbyoc.emulator.local_training import LocalTrainingJob, training_spec

    job = LocalTrainingJob(
        mode="docker", image=ctx.image, entry_point=inputs.entry_point, source_dir=inputs.source_dir,
        channels=inputs.channels, hyperparameters=dict(inputs.hyperparameters),
        job_name=f"smbyoc-validate-{secrets.token_hex(3)}-{role}", instance_type=ctx.instance_type,
        environment=dict(inputs.environment), max_runtime_seconds=max(1.0, ctx.timeout),
    )
    spec, code_dir = training_spec(job)
    return spec, code_dir


def check_inputs(ctx: ValidateContext, inputs: TrainingInputs) -> None:
    """Refuse, with one ConfigError, inputs CreateTrainingJob would refuse (before any job starts)."""
    spec, _ = _job_spec(ctx, inputs, "main")
    spec.validate()
    _with(spec, inputs.keep_running_hyperparameters).validate()
    failure_spec(spec, inputs)[0].validate()


def run_job(ctx: ValidateContext, spec: TrainingJobSpec, code_dir: Path | None, settings: TrainingSettings, *,
            observe_reads: bool = False,
            sigterm_after: float | None = None) -> tuple[TrainingJobResult, Observation, str]:
    """Run one job through the emulator; its result, what was observed, and the container's last lines."""
    from smbyoc.emulator.docker_training import DockerTrainingBackend
    from smbyoc.emulator.training_job import run_training_job

    tail = LogTail()
    first_output = threading.Event()

    def sink(host: str, line: str) -> None:
        tail(host, line)
        first_output.set()

    inner = DockerTrainingBackend(client=ctx.client, image=ctx.image, code_dir=code_dir,
                                  stop_timeout=settings.stop_timeout, sink=sink)
    backend = ObservedBackend(inner, observe_reads=observe_reads, sigterm_after=sigterm_after,
                              first_output=first_output)
    output = ctx.work_dir / spec.job_name
    output.mkdir(parents=True, exist_ok=True)
    with ctx.canceller.active(backend.cancel):
        result = run_training_job(spec, backend, output, work_dir=ctx.work_dir)
    return result, backend.observation, tail.text()


def _seconds(result: TrainingJobResult) -> float:
    return result.training_seconds


def check_model(result: TrainingJobResult, obs: Observation, log_text: str) -> CheckResult:
    name = "train-model"
    took = f"{_seconds(result):.1f} s"
    if not result.succeeded:
        return failed(name, f"the job {result.status} after {took}: {result.failure_reason or 'no reason given'}",
                      group=GROUP, seconds=_seconds(result), log=log_text)
    if obs.model_files == 0:
        return failed(name, f"the job Completed in {took} but left /opt/ml/model empty: SageMaker would upload an "
                            "empty model.tar.gz", group=GROUP, seconds=_seconds(result), log=log_text)
    return passed(name, f"Completed in {took}; {obs.model_files} file(s), {obs.model_bytes:,} bytes in /opt/ml/model",
                  group=GROUP, seconds=_seconds(result))


def check_config(obs: Observation, why_not: str | None, log_text: str, seconds: float) -> CheckResult:
    name = "train-config"
    if obs.config_reads is None:
        return not_applicable(name, why_not or "reads of the config files cannot be observed here", group=GROUP)
    read = [n for n, was_read in obs.config_reads.items() if was_read]
    unread = [n for n, was_read in obs.config_reads.items() if not was_read]
    if not read:
        return failed(name, f"train read none of /opt/ml/input/config/{{{','.join(CONFIG_FILES)}}}: it ignores the "
                            "job's hyperparameters, channels and hosts", group=GROUP, seconds=seconds, log=log_text)
    detail = f"train read {', '.join(read)}"
    if unread:
        detail += f" (not {', '.join(unread)})"
    return passed(name, detail, group=GROUP, seconds=seconds)


def check_failure(result: TrainingJobResult, obs: Observation, how: str, log_text: str) -> CheckResult:
    name = "train-failure"
    seconds = _seconds(result)
    if result.succeeded:
        return not_applicable(name, f"the job meant to fail ({how}) Completed, so the failure path was not seen; "
                                    "give hyperparameters that make train fail (--fail-hyperparameter KEY=VALUE)",
                              group=GROUP, seconds=seconds)
    code = obs.outcome.exit_code if obs.outcome is not None else result.exit_code
    if result.secondary_status == "MaxRuntimeExceeded":
        return failed(name, f"the job meant to fail ({how}) was still running after {seconds:.0f} s "
                            "(MaxRuntimeExceeded)", group=GROUP, seconds=seconds, log=log_text)
    if not obs.failure_text:
        return failed(name, f"the job failed (exit status {code}) but wrote no /opt/ml/output/failure: "
                            "SageMaker's FailureReason then says nothing about why", group=GROUP, seconds=seconds,
                      log=log_text)
    reason = obs.failure_text.replace("\n", " ")
    shown = reason if len(reason) <= 120 else reason[:117] + "..."
    return passed(name, f"Failed (exit status {code}) with FailureReason {shown!r}", group=GROUP, seconds=seconds)


def check_sigterm(result: TrainingJobResult, obs: Observation, settings: TrainingSettings,
                  log_text: str) -> CheckResult:
    name = "train-sigterm"
    seconds = _seconds(result)
    if obs.sigterm_at is None or obs.ended_at is None:
        status = obs.outcome.exit_code if obs.outcome is not None else result.exit_code
        return not_applicable(name, f"train ended (exit status {status}) before SIGTERM was due "
                                    f"({settings.sigterm_after:g} s after its first output); give hyperparameters "
                                    "that keep it running (--keep-running-hyperparameter KEY=VALUE)", group=GROUP,
                              seconds=seconds)
    after = obs.ended_at - obs.sigterm_at
    code = obs.outcome.exit_code if obs.outcome is not None else None
    if code == SIGKILL_STATUS and after >= settings.stop_timeout - 0.5:
        return failed(name, f"still running {settings.stop_timeout:g} s after SIGTERM, so it was SIGKILLed (no "
                            "artifacts saved): PID 1 must handle SIGTERM or forward it (exec-form ENTRYPOINT, exec "
                            "in shell scripts)", group=GROUP, seconds=seconds, log=log_text)
    return passed(name, f"exited (status {code}) within {after:.1f} s of SIGTERM (SIGKILL after "
                        f"{settings.stop_timeout:g} s)", group=GROUP, seconds=seconds)


def _with(spec: TrainingJobSpec, hyperparameters: Mapping[str, str],
          environment: Mapping[str, str] | None = None) -> TrainingJobSpec:
    return dataclasses.replace(spec, hyperparameters={**spec.hyperparameters, **hyperparameters},
                               environment={**spec.environment, **(environment or {})})


def failure_spec(spec: TrainingJobSpec, inputs: TrainingInputs) -> tuple[TrainingJobSpec, str]:
    """The job meant to fail, and how it is meant to fail (for messages)."""
    if inputs.fail_hyperparameters is not None:
        pairs = ", ".join(f"{k}={v}" for k, v in inputs.fail_hyperparameters.items())
        return _with(spec, inputs.fail_hyperparameters), f"hyperparameters {pairs}"
    hyperparameters = {SDK_PROGRAM_KEY: json.dumps(MISSING_PROGRAM)}
    if SDK_SUBMIT_DIR_KEY not in spec.hyperparameters:
        hyperparameters[SDK_SUBMIT_DIR_KEY] = json.dumps("/opt/ml/code")
    return (_with(spec, hyperparameters, {"SAGEMAKER_PROGRAM": MISSING_PROGRAM}),
            f"sagemaker_program and SAGEMAKER_PROGRAM name {MISSING_PROGRAM}, which does not exist")


def run_training_checks(ctx: ValidateContext, inputs: TrainingInputs, settings: TrainingSettings,
                        record: Callable[[CheckResult], None], skip: frozenset[str] = frozenset()) -> None:
    """Run the jobs the wanted checks need; ``record(result)`` gets each result as soon as it is known."""
    what = f" with {inputs.description}" if inputs.description else ""
    if not {"train-model", "train-config"} <= skip:
        engine_local = _engine_is_local(ctx.client)
        observe = engine_local and reads_observable(ctx.work_dir)
        why_not = None if observe else (
            "the Docker Engine runs in a VM or on another machine, so reads of the config files cannot be seen "
            "from here" if not engine_local else f"{ctx.work_dir} does not record file access times (noatime), "
                                                 "so reads of the config files cannot be seen")
        spec, code_dir = _job_spec(ctx, inputs, "main")
        ctx.say(f"training: job {spec.job_name}{what}")
        result, obs, log_text = run_job(ctx, spec, code_dir, settings, observe_reads=observe)
        for check in (check_model(result, obs, log_text), check_config(obs, why_not, log_text, _seconds(result))):
            if check.name not in skip:
                record(check)
    if "train-failure" not in skip and not ctx.canceller.cancelled.is_set():
        base, code_dir = _job_spec(ctx, inputs, "fail")
        spec, how = failure_spec(base, inputs)
        ctx.say(f"training: job {spec.job_name}, meant to fail ({how})")
        result, obs, log_text = run_job(ctx, spec, code_dir, settings)
        record(check_failure(result, obs, how, log_text))
    if "train-sigterm" not in skip and not ctx.canceller.cancelled.is_set():
        base, code_dir = _job_spec(ctx, inputs, "stop")
        spec = _with(base, inputs.keep_running_hyperparameters)
        ctx.say(f"training: job {spec.job_name}, stopped with SIGTERM {settings.sigterm_after:g} s after its first "
                "output")
        result, obs, log_text = run_job(ctx, spec, code_dir, settings, sigterm_after=settings.sigterm_after)
        record(check_sigterm(result, obs, settings, log_text))


def _engine_is_local(client: Any) -> bool:
    """Whether the engine shares this machine's file systems (a local socket, not Docker Desktop's VM)."""
    from smbyoc.docker.client import translate_docker_errors

    base_url = str(getattr(getattr(client, "api", None), "base_url", ""))
    if base_url not in ("http+docker://localhost", "http+docker://localunixsocket"):
        return False  # tcp:// or ssh://: another machine
    with translate_docker_errors("ask the Docker Engine what it runs on"):
        system = str(client.info().get("OperatingSystem") or "")
    return "Docker Desktop" not in system
