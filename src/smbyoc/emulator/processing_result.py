"""The outcome of an emulated processing job, shaped like ``DescribeProcessingJob``."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Any

from smbyoc.emulator.processing_spec import ProcessingJobSpec
from smbyoc.emulator.result import COMPLETED, HostOutcome


@dataclass(frozen=True)
class ProcessingJobResult:
    spec: ProcessingJobSpec
    #: ``ProcessingJobStatus``: Completed, Failed or Stopped.
    status: str
    #: The exit status smbyoc reports: 0, the first failed host's, or 130 when stopped.
    exit_code: int
    start_time: _dt.datetime
    end_time: _dt.datetime
    exit_message: str | None = None
    failure_reason: str | None = None
    hosts: tuple[HostOutcome, ...] = ()
    mode: str = "docker"
    #: The request as given (URIs as the user wrote them), echoed by :meth:`describe`.
    request: dict[str, Any] | None = None

    @property
    def job_name(self) -> str:
        return self.spec.job_name

    @property
    def succeeded(self) -> bool:
        return self.status == COMPLETED

    @property
    def seconds(self) -> float:
        return (self.end_time - self.start_time).total_seconds()

    def describe(self) -> dict[str, Any]:
        """``DescribeProcessingJob``'s fields (the request's members as given, status, times, ``ExitMessage``,
        ``FailureReason``), plus smbyoc's ``ExitCode`` and per-host ``Hosts``."""
        data: dict[str, Any] = {
            **(self.request if self.request is not None else self.spec.request()),
            "ProcessingJobArn": self.spec.job_arn,
            "ProcessingJobStatus": self.status,
            "CreationTime": self.start_time.isoformat(),
            "ProcessingStartTime": self.start_time.isoformat(),
            "ProcessingEndTime": self.end_time.isoformat(),
            "LastModifiedTime": self.end_time.isoformat(),
            "ExitCode": self.exit_code,
            "Hosts": [{"Host": h.host, "ExitCode": h.exit_code,
                       **({"StoppedByEmulator": True} if h.stopped_by_emulator else {})} for h in self.hosts],
        }
        if self.exit_message is not None:
            data["ExitMessage"] = self.exit_message
        if self.failure_reason:
            data["FailureReason"] = self.failure_reason
        return data
