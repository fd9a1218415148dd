"""A local training job as one library call: :func:`run_local_training` takes a :class:`LocalTrainingJob`
(what ``smbyoc local-train`` or an API request asks for) and returns the DescribeTrainingJob-shaped
:class:`~smbyoc.emulator.result.TrainingJobResult`.

It resolves what the request leaves out (the bundled default example, the default train image, the job
name), builds the :class:`~smbyoc.emulator.job_spec.TrainingJobSpec` and the backend, and checks each
once, in this order, before anything is created: the request's options, the spec's API limits, the
backend's preflight (the image is present, process mode can emulate the job). Then it runs the job.
What a person sees stays with the caller, through ``on_start``, ``on_status`` and ``sink``.

Importing this module imports no backend and no Docker SDK.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from smbyoc.emulator.job_spec import (
    DISTRIBUTIONS,
    S3_DATA_TYPES,
    SDK_PROGRAM_KEY,
    SDK_SUBMIT_DIR_KEY,
    ChannelSpec,
    TrainingJobSpec,
    default_job_name,
    wire_hyperparameters,
)
from smbyoc.errors import ConfigError
from smbyoc.opt_ml.input_data_config_file import COMPRESSION_TYPES, INPUT_MODES, RECORD_WRAPPER_TYPES

if TYPE_CHECKING:
    from smbyoc.emulator.containers import HostLineSink
    from smbyoc.emulator.result import TrainingJobResult
    from smbyoc.emulator.training_job import StatusCallback, TrainingBackend

log = logging.getLogger(__name__)

Mode = Literal["docker", "process"]

#: The InputDataConfig fields set for the whole job or one channel: the option that sets them (it names
#: the culprit in errors), the values SageMaker accepts, and its default.
CHANNEL_FIELDS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "input_mode": ("--input-mode", INPUT_MODES, "File"),
    "distribution": ("--distribution", DISTRIBUTIONS, "FullyReplicated"),
    "compression": ("--compression", COMPRESSION_TYPES, "None"),
    "record_wrapper": ("--record-wrapper", RECORD_WRAPPER_TYPES, "None"),
    "data_type": ("--s3-data-type", S3_DATA_TYPES, "S3Prefix"),
}


@dataclass(frozen=True)
class ChannelSetting:
    """One :data:`CHANNEL_FIELDS` field for every channel (``channel`` None) or for one channel; the
    channel's own setting wins, and of several for the same place the last one does."""

    field: str
    value: str
    channel: str | None = None


@dataclass(frozen=True)
class LocalTrainingJob:
    """What a local training job asks for, before defaults are resolved.

    With no ``entry_point``, no ``train_command`` and no ``image``, the bundled default example is
    trained (its channels unless ``channels`` names others; ``hyperparameters`` win over its own).
    """

    #: ``process``: ``train`` as a local process; ``docker``: the image, as SageMaker runs it.
    mode: Mode = "docker"
    #: Docker mode's training image (default: smbyoc's CPU train image, built if absent).
    image: str | None = None
    #: The program in ``source_dir`` to run (``sagemaker_program``).
    entry_point: str | None = None
    #: Directory, ``file://`` or ``s3://`` URI, or ``.tar.gz`` with the code (``sagemaker_submit_directory``).
    source_dir: Path | None = None
    #: Process mode: the argv run as ``train`` (default: smbyoc's runtime).
    train_command: tuple[str, ...] | None = None
    #: ``(name, local path)`` of each input channel, in order.
    channels: tuple[tuple[str, Path], ...] = ()
    #: ``ContentType`` of some channels.
    content_types: Mapping[str, str] = field(default_factory=dict)
    #: Input mode, distribution, compression, record wrapper and S3 data type of the job or its channels.
    channel_settings: tuple[ChannelSetting, ...] = ()
    #: Typed values; encoded for the wire with ``str()``, or ``json.dumps`` when ``json_encode_hyperparameters``.
    hyperparameters: Mapping[str, object] = field(default_factory=dict)
    json_encode_hyperparameters: bool = False
    #: Generated from the program's name when absent.
    job_name: str | None = None
    #: Artifacts go to ``output_dir/<job-name>/output/{model,output}.tar.gz``.
    output_dir: Path = Path("smbyoc-output")
    instance_type: str = "local"
    instance_count: int = 1
    #: CreateTrainingJob ``Environment``.
    environment: Mapping[str, str] = field(default_factory=dict)
    region: str = "us-east-1"
    #: Seconds between SIGTERM and SIGKILL when the job is stopped.
    stop_timeout: float = 120.0
    #: Docker mode: ``UID[:GID]`` to run the container as instead of the image's user.
    user: str | None = None
    max_runtime_seconds: float | None = None
    #: Local stand-in for ``CheckpointConfig.S3Uri``.
    checkpoint_dir: Path | None = None
    spot_interruption_after: float | None = None
    network_isolation: bool = False
    #: Docker mode: GPUs per container (-1: all; None: the instance type's).
    gpus: int | None = None
    #: Keep the job's ``/opt/ml`` tree (made under ``work_dir``, default the system's temporary folder).
    keep_tree: bool = False
    work_dir: Path | None = None


def run_local_training(
    job: LocalTrainingJob,
    *,
    on_start: Callable[[TrainingJobSpec], None] | None = None,
    on_status: StatusCallback | None = None,
    sink: HostLineSink | None = None,
    echo: bool = False,
) -> TrainingJobResult:
    """Check ``job`` and run it; every bad input raises one :class:`~smbyoc.errors.ConfigError` (or
    :class:`~smbyoc.errors.DockerError`) before anything is created.

    ``on_start(spec)`` is called once every check passed, just before the job starts; ``on_status``
    gets each ``(TrainingJobStatus, SecondaryStatus)``; ``sink(host, line)`` each log line of a Docker
    mode container (default: printed with its host). A process mode program shares the terminal; given a
    ``sink``, its lines go there instead (and, with ``echo``, on to this process's output as they come).
    Ctrl-C and SIGTERM stop the job as StopTrainingJob does (on the main thread).
    """
    from smbyoc.emulator.training_job import check_output_dir, run_training_job

    spec, code_dir = training_spec(job)
    spec.validate()
    backend = make_backend(job, code_dir, sink, echo=echo)
    backend.preflight(spec)
    check_output_dir(spec, job.output_dir.resolve())
    if on_start is not None:
        on_start(spec)
    return run_training_job(spec, backend, job.output_dir.resolve(), keep_tree=job.keep_tree, work_dir=job.work_dir,
                            on_status=on_status, checked=True)


def training_spec(job: LocalTrainingJob) -> tuple[TrainingJobSpec, Path | None]:
    """The job's (not yet validated) spec, with the defaults resolved, and the local code to copy in."""
    if job.train_command is not None and job.mode == "docker":
        raise ConfigError("only for --mode process (in docker mode the image's `train` runs)",
                          key="--train-command")
    entry_point, source_dir, channels = job.entry_point, job.source_dir, job.channels
    typed = dict(job.hyperparameters)
    if entry_point is None and job.train_command is None and job.image is None:
        from smbyoc.examples import default_example

        example = default_example()
        entry_point = example.entry_point
        source_dir = source_dir or example.source_dir
        channels = channels or tuple(example.channels.items())
        typed = {**example.hyperparameters, **typed}
    hyperparameters = wire_hyperparameters(typed, json_encode=job.json_encode_hyperparameters)
    code_dir = None
    if entry_point is not None:
        source_dir = source_dir if source_dir is not None else Path(".")
        code_dir = source_dir
        # The SDK always JSON-encodes its own script-mode keys. In docker mode the code is mounted at
        # /opt/ml/code (as SDK local mode does), in process mode the runtime copies it there.
        submit = submit_directory(source_dir)
        if job.mode == "docker" and not submit.startswith("s3://"):
            submit = "/opt/ml/code"
        hyperparameters[SDK_PROGRAM_KEY] = json.dumps(entry_point)
        hyperparameters[SDK_SUBMIT_DIR_KEY] = json.dumps(submit)
    spec = TrainingJobSpec(
        job_name=job.job_name or default_job_name(Path(entry_point).stem if entry_point else "smbyoc-training"),
        hyperparameters=hyperparameters,
        channels=channel_specs(channels, job.content_types, job.channel_settings),
        instance_type=job.instance_type,
        instance_count=job.instance_count,
        environment=dict(job.environment),
        region=job.region,
        max_runtime_seconds=job.max_runtime_seconds,
        network_isolation=job.network_isolation,
        gpus=job.gpus,
        checkpoint_dir=job.checkpoint_dir.expanduser().resolve() if job.checkpoint_dir else None,
        spot_interruption_after=job.spot_interruption_after,
    )
    return spec, code_dir


def submit_directory(source_dir: Path) -> str:
    """``sagemaker_submit_directory`` for local code: its absolute path (URIs are passed on)."""
    text = str(source_dir)
    if text.startswith(("s3://", "file://")):
        return text
    path = source_dir.expanduser()
    if not path.exists():
        raise ConfigError("no such file or directory", key=f"--source-dir {text}")
    return str(path.resolve())


def channel_specs(
    channels: Sequence[tuple[str, Path]], content_types: Mapping[str, str], settings: Iterable[ChannelSetting]
) -> tuple[ChannelSpec, ...]:
    """The channels with their settings applied; a setting or content type for no channel is refused."""
    names = [name for name, _ in channels]
    unknown = sorted(set(content_types) - set(names))
    if unknown:
        raise ConfigError(f"no such channel (channels: {', '.join(names) or 'none'})",
                          key=f"--content-type {unknown[0]}")
    settings = list(settings)
    for setting in settings:
        if setting.field not in CHANNEL_FIELDS:
            raise ConfigError(f"expected one of {', '.join(CHANNEL_FIELDS)}", key=f"channel setting {setting.field!r}")
    chosen = {name: _field_values(name, [s for s in settings if s.field == name], names) for name in CHANNEL_FIELDS}
    return tuple(
        ChannelSpec(name=name, source=Path(path).expanduser(), content_type=content_types.get(name),
                    **{key: per_channel.get(name, job_value) for key, (job_value, per_channel) in chosen.items()})
        for name, path in channels
    )


def _field_values(name: str, settings: list[ChannelSetting], channels: list[str]) -> tuple[str, dict[str, str]]:
    """One field's value for the job and for the channels that set their own; one line for each bad value."""
    option, allowed, job_value = CHANNEL_FIELDS[name]
    per_channel: dict[str, str] = {}
    for setting in settings:
        if setting.channel is None:
            job_value = setting.value
        elif setting.channel not in channels:
            raise ConfigError(f"no such channel (channels: {', '.join(channels) or 'none'})",
                              key=f"{option} {setting.channel}={setting.value}")
        else:
            per_channel[setting.channel] = setting.value
    for where, choice in [("job=", job_value), *((f"{n}=", c) for n, c in per_channel.items())]:
        if choice not in allowed:
            raise ConfigError(f"expected one of {', '.join(allowed)}", key=f"{option} {where}{choice}")
    return job_value, per_channel


def make_backend(job: LocalTrainingJob, code_dir: Path | None, sink: HostLineSink | None = None, *,
                 echo: bool = False) -> TrainingBackend:
    """The job's backend (Docker mode: a client that answered, and the image, the default one built if
    absent); checks the options that only one mode takes."""
    if job.mode == "process":
        from smbyoc.emulator.process_backend import ProcessBackend, default_train_command

        if job.user is not None:
            raise ConfigError("only for --mode docker", key="--user")
        command = list(job.train_command) if job.train_command else default_train_command()
        return ProcessBackend(command=command, stop_timeout=job.stop_timeout, sink=sink, echo=echo)
    if job.mode != "docker":
        raise ConfigError("expected docker or process", key=f"mode {job.mode!r}")
    from smbyoc.docker.client import get_client
    from smbyoc.emulator.docker_training import DockerTrainingBackend

    if job.user is not None and not all(part.isdigit() for part in job.user.split(":", 1)):
        raise ConfigError("expected a numeric UID or UID:GID", key=f"--user {job.user}")
    client = get_client()
    image = job.image
    if image is None:
        from smbyoc.images.defaults import ensure_default_image

        image = ensure_default_image(client, "train", job.instance_type)
    local_code = code_dir if code_dir is not None and not str(code_dir).startswith("s3://") else None
    return DockerTrainingBackend(client=client, image=image, code_dir=local_code, stop_timeout=job.stop_timeout,
                                 user=job.user, sink=sink)
