"""CreateProcessingJob, DescribeProcessingJob, ListProcessingJobs and StopProcessingJob on the processing engine
(:mod:`smbyoc.emulator.processing_job`, Docker mode only, as ``smbyoc local-process``).

The request is checked at once (botocore's model, then the engine's own rules, :func:`spec_from_request`); the job
then runs in a thread of its own: its locations staged (local paths, ``file://``, ``s3://``), the containers run,
the outputs written to their destinations (uploaded for ``s3://``). What only the run finds (a missing image, an
unreadable input) ends the job ``Failed`` with a ``ClientError: ...`` reason. StopProcessingJob ends it
``Stopped``; a job that was running when the server died is ``Failed`` after a restart.
"""

from __future__ import annotations

import logging
from typing import Any

from smbyoc.api import store as stores
from smbyoc.api.errors import validation
from smbyoc.api.jobs import JobKind, Jobs, _Run
from smbyoc.api.timestamps import from_iso, now
from smbyoc.errors import ConfigError

log = logging.getLogger(__name__)

PROCESSING_JOB = JobKind(
    collection=stores.PROCESSING_JOBS, noun="ProcessingJob", resource="processing-job", words="processing job",
    end_time_key="ProcessingEndTime",
    summary_keys=("ProcessingJobName", "ProcessingJobArn", "CreationTime", "ProcessingEndTime", "LastModifiedTime",
                  "ProcessingJobStatus", "FailureReason", "ExitMessage"))


class ProcessingJobs(Jobs):
    """The processing jobs of one server."""

    kind = PROCESSING_JOB

    def _prepare(self, request: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        from smbyoc.emulator.processing_request import spec_from_request

        if self.mode != "docker":
            raise validation("processing jobs run in Docker only: start smbyoc api with --mode docker")
        try:
            spec_from_request(request, source="CreateProcessingJob", region=self.region)
        except ConfigError as e:
            raise validation(str(e)) from e
        return self._new_description(request), None

    def _execute(self, name: str, request: dict[str, Any], context: Any, run: _Run,
                 staging: Any) -> dict[str, Any]:
        from smbyoc.emulator.processing_job import check_sources, make_backend, resolve_locations, run_processing_job
        from smbyoc.emulator.processing_request import spec_from_request

        spec = spec_from_request(request, source="CreateProcessingJob", region=self.region)
        spec.instance  # noqa: B018 - an instance type the emulator does not know is refused here
        backend = make_backend(spec.image, stop_timeout=self.stop_timeout, sink=self._sink(name))
        backend.preflight(spec)
        spec = resolve_locations(spec, staging)
        check_sources(spec)
        with run.lock:
            run.backend = backend
            if run.stop_requested.is_set():
                return {"ProcessingJobStatus": "Stopped"}

        def on_status(primary: str, secondary: str) -> None:
            if primary == "InProgress" and secondary == "Processing":
                self.store.update(stores.PROCESSING_JOBS, name, ProcessingStartTime=now(), LastModifiedTime=now())

        result = run_processing_job(spec, backend, on_status=on_status, request=request)
        staging.publish()
        described = result.describe()
        fields: dict[str, Any] = {"ProcessingJobStatus": result.status,
                                  "ProcessingEndTime": from_iso(described["ProcessingEndTime"])}
        if run.stop_requested.is_set():
            fields["ProcessingJobStatus"] = "Stopped"
        elif result.failure_reason:
            fields["FailureReason"] = result.failure_reason
        if result.exit_message is not None:
            fields["ExitMessage"] = result.exit_message
        return fields
