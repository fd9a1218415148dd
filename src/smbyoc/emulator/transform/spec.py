"""What a batch transform job asks for: the CreateTransformJob fields ``smbyoc local-transform`` exposes.

:class:`TransformJobSpec` holds the request as given (``None``: not set, so ``/execution-parameters`` or
the default decides, contract.md §4) and :meth:`TransformJobSpec.validate` refuses what CreateTransformJob
refuses, one :class:`~smbyoc.errors.ConfigError` naming the option and the value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from smbyoc.emulator.instance_types import lookup
from smbyoc.emulator.transform.records import BATCH_STRATEGIES, COMPRESSION_TYPES, SPLIT_TYPES
from smbyoc.errors import ConfigError
from smbyoc.paths import check_creatable_dir

Mode = Literal["docker", "process"]

ASSEMBLE_WITH = ("None", "Line")
JOIN_SOURCES = ("None", "Input")
S3_DATA_TYPES = ("S3Prefix", "ManifestFile")

#: BOTO ``TransformJob``: ``MaxPayloadInMB`` default and bound, and the bound on concurrency x payload.
DEFAULT_MAX_PAYLOAD_MB = 6
MAX_PAYLOAD_MB = 100
#: ``ModelClientConfig`` defaults and bounds (BOTO).
DEFAULT_INVOCATIONS_TIMEOUT = 600
DEFAULT_INVOCATIONS_MAX_RETRIES = 3
#: ``TransformEnvironmentMap``: at most 16 entries, keys ≤1024 and values ≤10240 characters.
MAX_ENVIRONMENT_ENTRIES = 16

_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
_ENV_KEY_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,1023}$")


@dataclass(frozen=True)
class TransformJobSpec:
    """A CreateTransformJob request, locally: paths stand for the S3 URIs."""

    job_name: str
    #: ``model.tar.gz`` or a directory, extracted to /opt/ml/model (the model's ``ModelDataUrl``).
    model_data: Path | None
    #: ``TransformInput.DataSource.S3DataSource.S3Uri``: a file, a directory (S3Prefix) or a manifest.
    input_path: Path
    #: ``TransformOutput.S3OutputPath``.
    output_dir: Path
    mode: Mode = "docker"
    #: Docker mode's serving image (None: smbyoc's default serve image).
    image: str | None = None
    model_name: str | None = None
    split_type: str = "None"
    #: None: ``/execution-parameters``, else SingleRecord for SplitType None and MultiRecord otherwise.
    batch_strategy: str | None = None
    compression: str = "None"
    content_type: str | None = None
    accept: str | None = None
    assemble_with: str = "None"
    #: None: ``/execution-parameters``, else 6; 0: no limit (the payload is sent with chunked encoding).
    max_payload_mb: int | None = None
    #: None: ``/execution-parameters``, else 1.
    max_concurrent_transforms: int | None = None
    instance_count: int = 1
    instance_type: str = "local"
    input_filter: str | None = None
    output_filter: str | None = None
    join_source: str = "None"
    s3_data_type: str = "S3Prefix"
    invocations_timeout: int = DEFAULT_INVOCATIONS_TIMEOUT
    invocations_max_retries: int = DEFAULT_INVOCATIONS_MAX_RETRIES
    #: CreateTransformJob ``Environment`` (the model's and the job's, merged by the caller).
    environment: Mapping[str, str] = field(default_factory=dict)
    #: Seconds ``/ping`` may take to answer 200 after the container starts.
    startup_health_timeout: float = 240.0
    #: Seconds between SIGTERM and SIGKILL when containers are stopped.
    stop_timeout: float = 30.0
    #: Docker mode: ``UID[:GID]`` to run the containers as.
    user: str | None = None
    region: str = "us-east-1"
    account: str = "000000000000"

    @property
    def job_arn(self) -> str:
        return f"arn:aws:sagemaker:{self.region}:{self.account}:transform-job/{self.job_name.lower()}"

    @property
    def hosts(self) -> tuple[str, ...]:
        """``algo-1..N``, one per instance."""
        return tuple(f"algo-{i}" for i in range(1, self.instance_count + 1))

    def container_environment(self) -> dict[str, str]:
        """What SageMaker adds for a transform container (contract.md §4): ``SAGEMAKER_BATCH=true`` always,
        the payload, strategy and concurrency variables only when the job sets them, then ``Environment``."""
        env = {"SAGEMAKER_BATCH": "true"}
        if self.max_payload_mb is not None:
            env["SAGEMAKER_MAX_PAYLOAD_IN_MB"] = str(self.max_payload_mb)
        if self.batch_strategy is not None:
            env["SAGEMAKER_BATCH_STRATEGY"] = "SINGLE_RECORD" if self.batch_strategy == "SingleRecord" \
                else "MULTI_RECORD"
        if self.max_concurrent_transforms is not None:
            env["SAGEMAKER_MAX_CONCURRENT_TRANSFORMS"] = str(self.max_concurrent_transforms)
        env.update(self.environment)
        return env

    def validate(self) -> TransformJobSpec:
        """Refuse what CreateTransformJob refuses; one ConfigError naming the option and value."""
        if not _NAME_RE.match(self.job_name):
            raise ConfigError("expected 1-63 letters, digits and hyphens", key=f"--job-name {self.job_name!r}")
        for option, value, allowed in (
            ("--split-type", self.split_type, SPLIT_TYPES),
            ("--batch-strategy", self.batch_strategy, (None, *BATCH_STRATEGIES)),
            ("--compression", self.compression, COMPRESSION_TYPES),
            ("--assemble-with", self.assemble_with, ASSEMBLE_WITH),
            ("--join-source", self.join_source, JOIN_SOURCES),
            ("--s3-data-type", self.s3_data_type, S3_DATA_TYPES),
        ):
            if value not in allowed:
                choices = ", ".join(a for a in allowed if a is not None)
                raise ConfigError(f"expected one of {choices}", key=f"{option} {value}")
        if self.batch_strategy == "MultiRecord" and self.split_type == "None":
            raise ConfigError("MultiRecord needs --split-type Line, RecordIO or TFRecord",
                              key="--batch-strategy MultiRecord")
        if self.max_payload_mb is not None and not 0 <= self.max_payload_mb <= MAX_PAYLOAD_MB:
            raise ConfigError(f"expected 0-{MAX_PAYLOAD_MB}", key=f"--max-payload {self.max_payload_mb}")
        if self.max_concurrent_transforms is not None and self.max_concurrent_transforms < 1:
            raise ConfigError("must be at least 1", key=f"--max-concurrent-transforms {self.max_concurrent_transforms}")
        if self.max_payload_mb and self.max_concurrent_transforms and \
                self.max_concurrent_transforms * self.max_payload_mb > MAX_PAYLOAD_MB:
            raise ConfigError(f"MaxConcurrentTransforms x MaxPayloadInMB must not exceed {MAX_PAYLOAD_MB}",
                              key=f"--max-concurrent-transforms {self.max_concurrent_transforms} x "
                                  f"--max-payload {self.max_payload_mb}")
        if self.instance_count < 1:
            raise ConfigError("must be at least 1", key=f"--instance-count {self.instance_count}")
        if not 1 <= self.invocations_timeout <= 3600:
            raise ConfigError("expected 1-3600 seconds", key=f"--invocations-timeout {self.invocations_timeout}")
        if not 0 <= self.invocations_max_retries <= 3:
            raise ConfigError("expected 0-3", key=f"--invocations-max-retries {self.invocations_max_retries}")
        if self.startup_health_timeout <= 0:
            raise ConfigError("must be positive", key=f"--startup-health-timeout {self.startup_health_timeout}")
        if self.split_type in ("RecordIO", "TFRecord") and (self.join_source == "Input" or self.filtered):
            raise ConfigError("filters and --join-source Input work on CSV and JSON records, not on "
                              f"{self.split_type} records", key=f"--split-type {self.split_type}")
        if len(self.environment) > MAX_ENVIRONMENT_ENTRIES:
            raise ConfigError(f"at most {MAX_ENVIRONMENT_ENTRIES} entries", key="--env")
        for key, value in self.environment.items():
            if not _ENV_KEY_RE.match(key) or len(value) > 10240:
                raise ConfigError("expected a variable name and a value of at most 10240 characters",
                                  key=f"--env {key}")
        if self.mode == "process" and (self.image is not None or self.user is not None):
            raise ConfigError("only for --mode docker", key="--image" if self.image else "--user")
        if self.mode not in ("docker", "process"):
            raise ConfigError("expected docker or process", key=f"--mode {self.mode}")
        lookup(self.instance_type)
        from smbyoc.emulator.transform.filters import check_filter

        for option, expression in (("--input-filter", self.input_filter), ("--output-filter", self.output_filter)):
            if expression is not None:
                try:
                    check_filter(expression)
                except ConfigError as e:
                    raise ConfigError(str(e), key=option) from e
        if self.model_data is not None and not self.model_data.exists():
            raise ConfigError("no such file or directory", key=f"--model-data {self.model_data}")
        if not self.input_path.exists():
            raise ConfigError("no such file or directory", key=f"--input {self.input_path}")
        check_creatable_dir(self.output_dir, f"--output {self.output_dir}")
        return self

    @property
    def filtered(self) -> bool:
        """Whether an input or output filter other than ``$`` (everything) applies."""
        return any(f not in (None, "$") for f in (self.input_filter, self.output_filter))

    @property
    def per_record_output(self) -> bool:
        """Whether responses must be split into one output per record (join or output filter)."""
        return self.join_source == "Input" or self.output_filter not in (None, "$")
