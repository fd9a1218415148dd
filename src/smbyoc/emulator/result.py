"""The outcome of an emulated training job, shaped like ``DescribeTrainingJob``'s main fields."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smbyoc.emulator.artifacts import JobArtifacts

#: ``TrainingJobStatus`` values (BOTO).
COMPLETED = "Completed"
FAILED = "Failed"
STOPPED = "Stopped"

#: ``SecondaryStatus`` values the emulator goes through, in order (BOTO ``SecondaryStatus``).
STARTING = "Starting"
DOWNLOADING = "Downloading"
TRAINING = "Training"
UPLOADING = "Uploading"
MAX_RUNTIME_EXCEEDED = "MaxRuntimeExceeded"
INTERRUPTED = "Interrupted"
RESTARTING = "Restarting"
STOPPING = "Stopping"


@dataclass(frozen=True)
class StatusTransition:
    """One entry of ``SecondaryStatusTransitions``."""

    status: str
    start_time: _dt.datetime
    end_time: _dt.datetime | None = None
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"Status": self.status, "StartTime": self.start_time.isoformat()}
        if self.end_time is not None:
            data["EndTime"] = self.end_time.isoformat()
        if self.message:
            data["StatusMessage"] = self.message
        return data


@dataclass(frozen=True)
class HostOutcome:
    host: str
    exit_code: int | None
    failure_reason: str | None = None
    #: True when the emulator stopped this host because another host failed (not a failure of its own).
    stopped_by_emulator: bool = False


@dataclass(frozen=True)
class TrainingJobResult:
    job_name: str
    job_arn: str
    status: str
    secondary_status: str
    exit_code: int
    failure_reason: str | None
    start_time: _dt.datetime
    end_time: _dt.datetime
    hyperparameters: Mapping[str, str]
    instance_type: str
    instance_count: int
    mode: str
    image: str | None = None
    artifacts: JobArtifacts | None = None
    hosts: tuple[HostOutcome, ...] = ()
    input_data_config: Mapping[str, Any] = field(default_factory=dict)
    transitions: tuple[StatusTransition, ...] = ()
    max_runtime_seconds: float | None = None
    network_isolation: bool = False
    checkpoint_dir: str | None = None
    spot: bool = False
    interruptions: int = 0
    billable_seconds: float | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == COMPLETED

    @property
    def training_seconds(self) -> float:
        return (self.end_time - self.start_time).total_seconds()

    def describe(self) -> dict[str, Any]:
        """The main fields of ``DescribeTrainingJob`` (plus ``ExitCode`` and local artifact paths)."""
        data: dict[str, Any] = {
            "TrainingJobName": self.job_name,
            "TrainingJobArn": self.job_arn,
            "TrainingJobStatus": self.status,
            "SecondaryStatus": self.secondary_status,
            "HyperParameters": dict(self.hyperparameters),
            "AlgorithmSpecification": {
                "TrainingImage": self.image or "(process mode)",
                "TrainingInputMode": _job_input_mode(self.input_data_config),
            },
            "InputDataConfig": [
                {"ChannelName": name, **entry} for name, entry in self.input_data_config.items()
            ],
            "ResourceConfig": {"InstanceType": self.instance_type, "InstanceCount": self.instance_count},
            "TrainingStartTime": self.start_time.isoformat(),
            "TrainingEndTime": self.end_time.isoformat(),
            "TrainingTimeInSeconds": round(self.training_seconds),
            "ExitCode": self.exit_code,
            "EnableNetworkIsolation": self.network_isolation,
            "EnableManagedSpotTraining": self.spot,
            "SecondaryStatusTransitions": [t.to_dict() for t in self.transitions],
            "Hosts": [
                {"Host": h.host, "ExitCode": h.exit_code,
                 **({"FailureReason": h.failure_reason} if h.failure_reason else {}),
                 **({"StoppedByEmulator": True} if h.stopped_by_emulator else {})}
                for h in self.hosts
            ],
        }
        if self.max_runtime_seconds is not None:
            data["StoppingCondition"] = {"MaxRuntimeInSeconds": int(self.max_runtime_seconds)}
        if self.checkpoint_dir is not None:
            data["CheckpointConfig"] = {"S3Uri": Path(self.checkpoint_dir).as_uri(),
                                        "LocalPath": "/opt/ml/checkpoints"}
        if self.billable_seconds is not None:
            data["BillableTimeInSeconds"] = max(1, round(self.billable_seconds))
        if self.spot:
            data["InterruptionCount"] = self.interruptions
        if self.failure_reason:
            data["FailureReason"] = self.failure_reason
        if self.artifacts is not None:
            data["ModelArtifacts"] = {"S3ModelArtifacts": self.artifacts.model.path.as_uri()}
            data["OutputDataConfig"] = {"S3OutputPath": self.artifacts.output.path.parent.parent.parent.as_uri()}
            data["OutputArtifacts"] = {
                "model.tar.gz": {"Path": str(self.artifacts.model.path), "Size": self.artifacts.model.size},
                "output.tar.gz": {"Path": str(self.artifacts.output.path), "Size": self.artifacts.output.size},
            }
        return data


def _job_input_mode(config: Mapping[str, Any]) -> str:
    modes = {entry.get("TrainingInputMode", "File") for entry in config.values()}
    return modes.pop() if len(modes) == 1 else "File"
