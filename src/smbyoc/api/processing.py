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
import threading
from pathlib import Path
from typing import Any

from smbyoc.api import store as stores
from smbyoc.api.errors import ApiError, not_found, validation
from smbyoc.api.timestamps import from_iso, now
from smbyoc.api.training import ACCOUNT, ACTIVE, DIED_REASON, _Run, page
from smbyoc.errors import ConfigError, SmbyocError

log = logging.getLogger(__name__)


class ProcessingJobs:
    """The processing jobs of one server."""

    def __init__(self, store: stores.Store, *, mode: str, region: str, s3_endpoint_url: str | None,
                 logs_dir: Path, stop_timeout: float = 120.0) -> None:
        self.store = store
        self.mode = mode
        self.region = region
        self.s3_endpoint_url = s3_endpoint_url
        self.logs_dir = logs_dir
        self.stop_timeout = stop_timeout
        self.runs: dict[str, _Run] = {}
        self.lock = threading.Lock()

    def arn(self, name: str) -> str:
        return f"arn:aws:sagemaker:{self.region}:{ACCOUNT}:processing-job/{name.lower()}"

    def recover(self) -> None:
        for item in self.store.all(stores.PROCESSING_JOBS):
            if item.get("ProcessingJobStatus") in ACTIVE:
                stamp = now()
                self.store.update(stores.PROCESSING_JOBS, item["ProcessingJobName"], ProcessingJobStatus="Failed",
                                  FailureReason=DIED_REASON, ProcessingEndTime=stamp, LastModifiedTime=stamp)

    def create(self, request: dict[str, Any]) -> dict[str, Any]:
        from smbyoc.emulator.processing_request import spec_from_request

        name = request["ProcessingJobName"]
        if self.mode != "docker":
            raise validation("processing jobs run in Docker only: start smbyoc api with --mode docker")
        try:
            spec_from_request(request, source="CreateProcessingJob", region=self.region)
        except ConfigError as e:
            raise validation(str(e)) from e
        stamp = now()
        description = {k: v for k, v in request.items() if k != "Tags"}
        description.update({"ProcessingJobArn": self.arn(name), "ProcessingJobStatus": "InProgress",
                            "CreationTime": stamp, "LastModifiedTime": stamp})
        run = _Run()
        with self.lock:
            if self.store.find(stores.PROCESSING_JOBS, name, case_insensitive=True) is not None:
                raise ApiError("ResourceInUse", f"Processing job names must be unique within an AWS account and "
                                                f"region, and a processing job with this name already exists "
                                                f"({self.arn(name)})")
            self.store.put(stores.PROCESSING_JOBS, name, {**description, "_Request": request})
            self.runs[name] = run
        run.thread = threading.Thread(target=self._run, args=(name, request, run), name=f"processing-{name}",
                                      daemon=True)
        run.thread.start()
        return {"ProcessingJobArn": self.arn(name)}

    def describe(self, request: dict[str, Any]) -> dict[str, Any]:
        item = self._item(request["ProcessingJobName"])
        return {k: v for k, v in item.items() if not k.startswith("_")}

    def stop(self, request: dict[str, Any]) -> dict[str, Any]:
        item = self._item(request["ProcessingJobName"], stopping=True)
        name, status = item["ProcessingJobName"], item["ProcessingJobStatus"]
        if status == "Stopping":
            return {}
        run = self.runs.get(name)
        if status != "InProgress" or run is None:
            raise validation(f"The request was rejected because the processing job is in status {status}.")
        self.store.update(stores.PROCESSING_JOBS, name, ProcessingJobStatus="Stopping", LastModifiedTime=now())
        with run.lock:
            run.stop_requested.set()
            backend = run.backend
        if backend is not None:
            backend.stop()
        return {}

    def list(self, request: dict[str, Any]) -> dict[str, Any]:
        items = self.store.all(stores.PROCESSING_JOBS)
        if "StatusEquals" in request:
            items = [i for i in items if i["ProcessingJobStatus"] == request["StatusEquals"]]
        if "NameContains" in request:
            items = [i for i in items if request["NameContains"].lower() in i["ProcessingJobName"].lower()]
        keys = ("ProcessingJobName", "ProcessingJobArn", "CreationTime", "ProcessingEndTime", "LastModifiedTime",
                "ProcessingJobStatus", "FailureReason", "ExitMessage")
        summaries: list[dict[str, Any]] = [{k: i[k] for k in keys if k in i} for i in items]
        return page(summaries, request, "ProcessingJobSummaries",
                    {"Name": "ProcessingJobName", "CreationTime": "CreationTime", "Status": "ProcessingJobStatus"})

    def shutdown(self) -> None:
        for run in list(self.runs.values()):
            with run.lock:
                run.stop_requested.set()
                if run.backend is not None:
                    run.backend.stop()
        for run in list(self.runs.values()):
            if run.thread is not None:
                run.thread.join()

    def _item(self, name: str, *, stopping: bool = False) -> dict[str, Any]:
        """The stored job; missing: ValidationException for Describe (what botocore's waiter expects),
        ResourceNotFound for Stop (its modelled error)."""
        stored = self.store.find(stores.PROCESSING_JOBS, name, case_insensitive=True)
        item = self.store.get(stores.PROCESSING_JOBS, stored) if stored is not None else None
        if item is None:
            message = f"Could not find requested job with name {name}"
            raise not_found(message) if stopping else validation(message)
        return item

    def _run(self, name: str, request: dict[str, Any], run: _Run) -> None:
        from smbyoc.s3.staging import Staging

        try:
            with Staging(endpoint_url=self.s3_endpoint_url, progress=lambda line: log.info("%s: %s", name, line)) \
                    as staging:
                fields = self._process(name, request, run, staging)
        except (SmbyocError, OSError) as e:
            log.info("processing job %s failed: %s", name, e)
            fields = {"ProcessingJobStatus": "Failed", "FailureReason": f"ClientError: {e}"}
        except Exception as e:
            log.exception("processing job %s", name)
            fields = {"ProcessingJobStatus": "Failed", "FailureReason": f"InternalServerError: {type(e).__name__}: {e}"}
        stamp = now()
        fields.setdefault("ProcessingEndTime", stamp)
        self.store.update(stores.PROCESSING_JOBS, name, **fields, LastModifiedTime=stamp)
        with self.lock:
            self.runs.pop(name, None)

    def _process(self, name: str, request: dict[str, Any], run: _Run, staging: Any) -> dict[str, Any]:
        from smbyoc.emulator.processing_job import check_sources, make_backend, resolve_locations, run_processing_job
        from smbyoc.emulator.processing_request import spec_from_request

        spec = spec_from_request(request, source="CreateProcessingJob", region=self.region)
        spec.instance  # noqa: B018 - an instance type the emulator does not know is refused here
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.logs_dir / f"processing-job-{name}.log"
        lock = threading.Lock()

        def sink(host: str, line: str) -> None:
            with lock, log_path.open("a", encoding="utf-8") as out:
                out.write(f"{host}: {line}\n")

        backend = make_backend(spec.image, stop_timeout=self.stop_timeout, sink=sink)
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
