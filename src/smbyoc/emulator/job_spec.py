"""What a user asks for when they start an emulated training job: the CreateTrainingJob request.

:class:`TrainingJobSpec` is validated once, before anything is created, so that every bad input gets one
clear line. Hyperparameters are turned into the wire format (string→string) here, either the way the
SDK's generic ``Estimator`` does (``str(value)``) or JSON-encoded as its framework estimators do
(contract.md §1.3).
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from smbyoc.emulator.instance_types import InstanceType, lookup
from smbyoc.errors import ConfigError
from smbyoc.opt_ml.hyperparameters_file import MAX_HYPERPARAMETERS, MAX_KEY_LENGTH, MAX_VALUE_LENGTH
from smbyoc.opt_ml.input_data_config_file import (
    COMPRESSION_TYPES,
    INPUT_MODES,
    RECORD_WRAPPER_TYPES,
    S3_DISTRIBUTION_TYPES,
    Channel,
)
from smbyoc.opt_ml.resource_config_file import ResourceConfig
from smbyoc.paths import check_channel_name

InputMode = Literal["File", "FastFile", "Pipe"]
DISTRIBUTIONS = S3_DISTRIBUTION_TYPES
S3_DATA_TYPES: tuple[str, ...] = ("S3Prefix", "ManifestFile")

#: BOTO ``TrainingJobName``: ``^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}``.
JOB_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
#: BOTO ``TrainingEnvironmentKey``.
ENV_KEY_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,511}$")
MAX_ENV_ENTRIES = 100
MAX_ENV_VALUE = 512
MAX_HP_KEY = MAX_KEY_LENGTH
MAX_HP_VALUE = MAX_VALUE_LENGTH

#: Hyperparameters the SDK sets for script mode; always JSON-encoded by the SDK.
SDK_PROGRAM_KEY = "sagemaker_program"
SDK_SUBMIT_DIR_KEY = "sagemaker_submit_directory"


@dataclass(frozen=True)
class ChannelSpec:
    name: str
    source: Path
    input_mode: str = "File"
    content_type: str | None = None
    distribution: str = "FullyReplicated"
    record_wrapper: str = "None"
    compression: str = "None"
    data_type: str = "S3Prefix"

    def validate(self) -> None:
        """Check the channel's own fields and that its source can be read in its input mode."""
        check_channel_name(self.name)
        what = f"channel {self.name!r}"
        for value, allowed, field_name in (
            (self.input_mode, INPUT_MODES, "input mode"),
            (self.distribution, DISTRIBUTIONS, "distribution"),
            (self.compression, COMPRESSION_TYPES, "compression type"),
            (self.record_wrapper, RECORD_WRAPPER_TYPES, "record wrapper type"),
            (self.data_type, S3_DATA_TYPES, "S3 data type"),
        ):
            if value not in allowed:
                raise ConfigError(f"expected one of {', '.join(allowed)}", key=f"{field_name} {value!r} of {what}")
        if not self.source.exists():
            raise ConfigError("no such file or directory", key=f"{what} path {str(self.source)!r}")
        if self.input_mode == "FastFile" and self.data_type != "S3Prefix":
            raise ConfigError("FastFile input mode needs S3DataType S3Prefix (a folder), not a manifest; "
                              "use File or Pipe", key=what)
        if self.compression != "None" and self.input_mode != "Pipe":
            raise ConfigError(f"CompressionType {self.compression} is used only in Pipe input mode "
                              f"(this channel is {self.input_mode})", key=what)
        if self.record_wrapper != "None" and self.input_mode != "Pipe":
            raise ConfigError(f"RecordWrapperType {self.record_wrapper} is emulated in Pipe input mode only "
                              f"(this channel is {self.input_mode})", key=what)
        if self.data_type == "ManifestFile":
            from smbyoc.emulator.manifest import read_manifest

            read_manifest(self.source)

    def to_input_data_config(self) -> dict[str, str]:
        """The channel's entry in ``inputdataconfig.json`` (contract.md §1.3)."""
        return Channel(
            name=self.name, input_mode=self.input_mode, content_type=self.content_type or None,
            s3_distribution_type=self.distribution, record_wrapper_type=self.record_wrapper,
            compression_type=None if self.compression == "None" else self.compression,
            path=Path("/opt/ml/input/data") / self.name,
        ).to_json()


@dataclass(frozen=True)
class TrainingJobSpec:
    job_name: str
    hyperparameters: Mapping[str, str]
    channels: tuple[ChannelSpec, ...] = ()
    instance_type: str = "local"
    instance_count: int = 1
    environment: Mapping[str, str] = field(default_factory=dict)
    region: str = "us-east-1"
    account: str = "000000000000"
    network_interface_name: str = "eth0"
    output_compression: str = "GZIP"
    #: ``StoppingCondition.MaxRuntimeInSeconds``; None: no limit.
    max_runtime_seconds: float | None = None
    #: ``EnableNetworkIsolation``.
    network_isolation: bool = False
    #: GPUs requested from the engine: None = as the instance type has, -1 = all, 0 = none.
    gpus: int | None = None
    #: Local stand-in for ``CheckpointConfig.S3Uri``; None: no checkpoint configuration.
    checkpoint_dir: Path | None = None
    #: Managed spot emulation: reclaim the instances this many seconds after the containers start (once).
    spot_interruption_after: float | None = None

    @property
    def gpu_count(self) -> int:
        """GPUs each container asks for (-1: all the engine has)."""
        return self.instance.gpus if self.gpus is None else self.gpus

    @property
    def job_arn(self) -> str:
        return f"arn:aws:sagemaker:{self.region}:{self.account}:training-job/{self.job_name.lower()}"

    @property
    def instance(self) -> InstanceType:
        return lookup(self.instance_type)

    @property
    def hosts(self) -> tuple[str, ...]:
        """``algo-1..N`` sorted as strings, as SageMaker sorts them (``algo-10`` before ``algo-2``)."""
        return tuple(sorted(f"algo-{i}" for i in range(1, self.instance_count + 1)))

    def resource_config(self, host: str) -> dict[str, Any]:
        """``resourceconfig.json`` for ``host`` (contract.md §1.3)."""
        return ResourceConfig.homogeneous(host, self.hosts, self.instance_type, self.network_interface_name).to_json()

    def input_data_config(self) -> dict[str, dict[str, str]]:
        return {c.name: c.to_input_data_config() for c in self.channels}

    def validate(self) -> TrainingJobSpec:
        """Check every limit the API enforces; raises ConfigError naming the culprit."""
        if not JOB_NAME_RE.match(self.job_name):
            raise ConfigError(
                "job names are 1-63 letters, digits and hyphens, starting with a letter or digit",
                key=f"job name {self.job_name!r}",
            )
        self.instance  # noqa: B018 - validates the instance type
        if self.instance_count < 1:
            raise ConfigError("must be at least 1", key=f"instance count {self.instance_count}")
        check_wire_hyperparameters(self.hyperparameters)
        check_environment(self.environment)
        if self.max_runtime_seconds is not None and not self.max_runtime_seconds >= 1:
            raise ConfigError("MaxRuntimeInSeconds is at least 1",
                              key=f"--max-runtime {self.max_runtime_seconds:g}")
        if self.spot_interruption_after is not None and not self.spot_interruption_after > 0:
            raise ConfigError("must be a positive number of seconds",
                              key=f"--spot-interruption-after {self.spot_interruption_after:g}")
        if self.gpus is not None and self.gpus < -1:
            raise ConfigError("expected a number of GPUs, or -1 for all", key=f"--gpus {self.gpus}")
        if self.checkpoint_dir is not None and self.checkpoint_dir.exists() and not self.checkpoint_dir.is_dir():
            raise ConfigError("not a directory", key=f"--checkpoint-s3-dir {str(self.checkpoint_dir)!r}")
        seen: set[str] = set()
        for channel in self.channels:
            if channel.name in seen:
                raise ConfigError("given twice", key=f"channel {channel.name!r}")
            seen.add(channel.name)
            channel.validate()
        return self


def check_wire_hyperparameters(hyperparameters: Mapping[str, object]) -> None:
    if len(hyperparameters) > MAX_HYPERPARAMETERS:
        raise ConfigError(f"{len(hyperparameters)} given; SageMaker allows at most {MAX_HYPERPARAMETERS}",
                          key="hyperparameters")
    for key, value in hyperparameters.items():
        if not isinstance(value, str):
            raise ConfigError("values must be strings on the wire", key=f"hyperparameter {key!r}")
        if not key or len(key) > MAX_HP_KEY:
            raise ConfigError(f"keys are 1-{MAX_HP_KEY} characters", key=f"hyperparameter {key[:40]!r}")
        if len(value) > MAX_HP_VALUE:
            raise ConfigError(f"value has {len(value)} characters; SageMaker allows at most {MAX_HP_VALUE}",
                              key=f"hyperparameter {key!r}")


def check_environment(environment: Mapping[str, str]) -> None:
    if len(environment) > MAX_ENV_ENTRIES:
        raise ConfigError(f"{len(environment)} given; SageMaker allows at most {MAX_ENV_ENTRIES}",
                          key="environment")
    for key, value in environment.items():
        if not ENV_KEY_RE.match(key):
            raise ConfigError("names are letters, digits and '_', not starting with a digit",
                              key=f"environment variable {key!r}")
        if len(value) > MAX_ENV_VALUE:
            raise ConfigError(f"value has {len(value)} characters; SageMaker allows at most {MAX_ENV_VALUE}",
                              key=f"environment variable {key!r}")


# ------------------------------------------------------------------------------ hyperparameter wire format


def to_wire_value(value: object, *, json_encode: bool) -> str:
    """One hyperparameter value as SageMaker receives it.

    ``json_encode=False`` is the SDK's generic ``Estimator`` (``str(value)``, so ``True`` → ``"True"``);
    ``json_encode=True`` is its framework estimators (``json.dumps(value)``, so ``"adam"`` → ``'"adam"'``).
    """
    if json_encode:
        return json.dumps(value)
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def parse_cli_value(text: str, *, json_encode: bool) -> object:
    """A ``-H KEY=VALUE`` value: typed via JSON when JSON-encoding (``10`` stays a number), else a string."""
    if not json_encode:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def merge_hyperparameters(
    base: Mapping[str, object], pairs: Iterable[tuple[str, str]], *, json_encode: bool
) -> dict[str, object]:
    """A JSON object of hyperparameters with ``-H`` pairs merged over it (later wins), still typed."""
    merged: dict[str, object] = dict(base)
    for key, text in pairs:
        merged[key] = parse_cli_value(text, json_encode=json_encode)
    return merged


def wire_hyperparameters(values: Mapping[str, object], *, json_encode: bool) -> dict[str, str]:
    """Typed hyperparameters in the wire format (string→string)."""
    return {str(k): to_wire_value(v, json_encode=json_encode) for k, v in values.items()}


def build_hyperparameters(
    base: Mapping[str, object], pairs: Iterable[tuple[str, str]], *, json_encode: bool
) -> dict[str, str]:
    """Merge a JSON object of hyperparameters with ``-H`` pairs (later wins) into the wire format."""
    return wire_hyperparameters(merge_hyperparameters(base, pairs, json_encode=json_encode), json_encode=json_encode)


def load_hyperparameters_argument(text: str) -> dict[str, object]:
    """``--hyperparameters`` takes a JSON object or ``@file`` holding one."""
    source = "--hyperparameters"
    if text.startswith("@"):
        path = Path(text[1:])
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read: {e.strerror}", source=source) from e
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"not valid JSON: {e}", source=source) from e
    if not isinstance(data, dict):
        raise ConfigError("expected a JSON object of name: value", source=source)
    return data


def default_job_name(base: str = "smbyoc-training", now: _dt.datetime | None = None) -> str:
    """``<base>-YYYY-MM-DD-HH-MM-SS-mmm`` like the SDK's generated names, trimmed to 63 characters."""
    moment = now or _dt.datetime.now(_dt.timezone.utc)
    stamp = moment.strftime("%Y-%m-%d-%H-%M-%S-") + f"{moment.microsecond // 1000:03d}"
    cleaned = re.sub(r"[^a-zA-Z0-9-]+", "-", base).strip("-") or "smbyoc-training"
    return f"{cleaned[: 63 - len(stamp) - 1]}-{stamp}"
