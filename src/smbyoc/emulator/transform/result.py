"""The outcome of an emulated transform job, shaped like ``DescribeTransformJob`` (BOTO)."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smbyoc.emulator.transform.spec import TransformJobSpec

#: ``TransformJobStatus`` values (BOTO).
IN_PROGRESS = "InProgress"
COMPLETED = "Completed"
FAILED = "Failed"
STOPPING = "Stopping"
STOPPED = "Stopped"


@dataclass(frozen=True)
class ObjectOutcome:
    """One input object: its ``.out`` when it succeeded, else why it failed (None: not processed)."""

    key: str
    host: str
    records: int = 0
    output: Path | None = None
    failure_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"Key": self.key, "Host": self.host, "Records": self.records}
        if self.output is not None:
            data["Output"] = str(self.output)
        if self.failure_reason:
            data["FailureReason"] = self.failure_reason
        return data


@dataclass(frozen=True)
class ResolvedParameters:
    """The values the job ran with after precedence (job > ``/execution-parameters`` > defaults)."""

    batch_strategy: str
    max_payload_mb: int
    max_concurrent_transforms: int
    #: What ``/execution-parameters`` answered (empty when it did not answer 200 with JSON).
    execution_parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TransformJobResult:
    spec: TransformJobSpec
    status: str
    failure_reason: str | None
    creation_time: _dt.datetime
    start_time: _dt.datetime | None
    end_time: _dt.datetime
    image: str | None = None
    parameters: ResolvedParameters | None = None
    objects: tuple[ObjectOutcome, ...] = ()

    @property
    def succeeded(self) -> bool:
        return self.status == COMPLETED

    @property
    def records(self) -> int:
        return sum(o.records for o in self.objects if o.output is not None)

    def to_dict(self) -> dict[str, Any]:
        """``DescribeTransformJob``'s fields (S3 URIs as ``file://``), plus ``Objects``: each input object."""
        spec, params = self.spec, self.parameters
        input_uri = spec.input_path.resolve().as_uri()
        data: dict[str, Any] = {
            "TransformJobName": spec.job_name,
            "TransformJobArn": spec.job_arn,
            "TransformJobStatus": self.status,
            "ModelName": spec.model_name or "",
            "ModelClientConfig": {"InvocationsTimeoutInSeconds": spec.invocations_timeout,
                                  "InvocationsMaxRetries": spec.invocations_max_retries},
            "Environment": dict(spec.environment),
            "TransformInput": {
                "DataSource": {"S3DataSource": {"S3DataType": spec.s3_data_type, "S3Uri": input_uri}},
                **({"ContentType": spec.content_type} if spec.content_type else {}),
                "CompressionType": spec.compression,
                "SplitType": spec.split_type,
            },
            "TransformOutput": {"S3OutputPath": spec.output_dir.resolve().as_uri(),
                                **({"Accept": spec.accept} if spec.accept else {}),
                                "AssembleWith": spec.assemble_with},
            "DataProcessing": {"InputFilter": spec.input_filter or "$", "OutputFilter": spec.output_filter or "$",
                               "JoinSource": spec.join_source},
            "TransformResources": {"InstanceType": spec.instance_type, "InstanceCount": spec.instance_count},
            "CreationTime": self.creation_time.isoformat(),
            "TransformEndTime": self.end_time.isoformat(),
            "Image": self.image or "(process mode)",
            "Objects": [o.to_dict() for o in self.objects],
        }
        if params is not None:
            data["MaxConcurrentTransforms"] = params.max_concurrent_transforms
            data["MaxPayloadInMB"] = params.max_payload_mb
            data["BatchStrategy"] = params.batch_strategy
        if self.start_time is not None:
            data["TransformStartTime"] = self.start_time.isoformat()
        if self.failure_reason:
            data["FailureReason"] = self.failure_reason
        return data
