"""CreateTransformJob, DescribeTransformJob, ListTransformJobs and StopTransformJob on the batch transform engine
(:mod:`smbyoc.emulator.transform`), in Docker or process mode.

The job's model must exist (CreateModel, one ``PrimaryContainer``): its image, ``ModelDataUrl`` and environment
(under the job's ``Environment``) are what the transform instances serve. The request is checked at once (botocore's
model, then the rules :meth:`~smbyoc.emulator.transform.spec.TransformJobSpec.validate` shares with the service);
the job runs in a thread of its own, its locations staged (local paths, ``file://``, ``s3://``; the ``.out``
files uploaded at the end for ``s3://``). StopTransformJob stops the job's instances (their processes or
containers), which ends it ``Stopped``, the finished ``.out`` files kept and the partial ones removed; a job
that was running when the server died is ``Failed`` after a restart.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from smbyoc.api import store as stores
from smbyoc.api.errors import ApiError, not_found, validation
from smbyoc.api.timestamps import from_iso, now
from smbyoc.api.training import ACCOUNT, ACTIVE, DIED_REASON, _Run, page
from smbyoc.errors import ConfigError, SmbyocError

log = logging.getLogger(__name__)


class TransformJobs:
    """The batch transform jobs of one server."""

    def __init__(self, store: stores.Store, *, mode: str, region: str, s3_endpoint_url: str | None,
                 logs_dir: Path) -> None:
        self.store = store
        self.mode = mode
        self.region = region
        self.s3_endpoint_url = s3_endpoint_url
        self.logs_dir = logs_dir
        self.runs: dict[str, _Run] = {}
        self.lock = threading.Lock()

    def arn(self, name: str) -> str:
        return f"arn:aws:sagemaker:{self.region}:{ACCOUNT}:transform-job/{name.lower()}"

    def recover(self) -> None:
        for item in self.store.all(stores.TRANSFORM_JOBS):
            if item.get("TransformJobStatus") in ACTIVE:
                stamp = now()
                self.store.update(stores.TRANSFORM_JOBS, item["TransformJobName"], TransformJobStatus="Failed",
                                  FailureReason=DIED_REASON, TransformEndTime=stamp, LastModifiedTime=stamp)

    def create(self, request: dict[str, Any]) -> dict[str, Any]:
        name = request["TransformJobName"]
        model = self.store.get(stores.MODELS, request["ModelName"])
        if model is None:
            raise validation(f'Could not find model "arn:aws:sagemaker:{self.region}:{ACCOUNT}:model/'
                             f'{request["ModelName"].lower()}".')
        container = model.get("PrimaryContainer")
        if container is None:
            raise validation(f"model {request['ModelName']}: only models with a PrimaryContainer are emulated for "
                             "batch transform")
        import tempfile

        with tempfile.TemporaryDirectory(prefix="smbyoc-api-") as stand_in:
            try:  # the service's rules, without the local files (they are staged when the job runs)
                replace(self._spec(request, container, None, Path(stand_in), Path(stand_in)),
                        mode="docker", image=None).validate()
            except ConfigError as e:
                raise validation(str(e)) from e
        stamp = now()
        description = {k: v for k, v in request.items() if k != "Tags"}
        description.update({"TransformJobArn": self.arn(name), "TransformJobStatus": "InProgress",
                            "CreationTime": stamp, "LastModifiedTime": stamp})
        run = _Run()
        with self.lock:
            if self.store.find(stores.TRANSFORM_JOBS, name, case_insensitive=True) is not None:
                raise ApiError("ResourceInUse", f"Transform job names must be unique within an AWS account and "
                                                f"region, and a transform job with this name already exists "
                                                f"({self.arn(name)})")
            self.store.put(stores.TRANSFORM_JOBS, name, {**description, "_Request": request})
            self.runs[name] = run
        run.thread = threading.Thread(target=self._run, args=(name, request, container, run),
                                      name=f"transform-{name}", daemon=True)
        run.thread.start()
        return {"TransformJobArn": self.arn(name)}

    def describe(self, request: dict[str, Any]) -> dict[str, Any]:
        item = self._item(request["TransformJobName"], validation)
        return {k: v for k, v in item.items() if not k.startswith("_")}

    def stop(self, request: dict[str, Any]) -> dict[str, Any]:
        item = self._item(request["TransformJobName"], not_found)
        name, status = item["TransformJobName"], item["TransformJobStatus"]
        if status == "Stopping":
            return {}
        run = self.runs.get(name)
        if status != "InProgress" or run is None:
            raise validation(f"The request was rejected because the transform job is in status {status}.")
        self.store.update(stores.TRANSFORM_JOBS, name, TransformJobStatus="Stopping", LastModifiedTime=now())
        self._stop(run)
        return {}

    def list(self, request: dict[str, Any]) -> dict[str, Any]:
        items = self.store.all(stores.TRANSFORM_JOBS)
        if "StatusEquals" in request:
            items = [i for i in items if i["TransformJobStatus"] == request["StatusEquals"]]
        if "NameContains" in request:
            items = [i for i in items if request["NameContains"].lower() in i["TransformJobName"].lower()]
        keys = ("TransformJobName", "TransformJobArn", "CreationTime", "TransformEndTime", "LastModifiedTime",
                "TransformJobStatus", "FailureReason")
        summaries: list[dict[str, Any]] = [{k: i[k] for k in keys if k in i} for i in items]
        return page(summaries, request, "TransformJobSummaries",
                    {"Name": "TransformJobName", "CreationTime": "CreationTime", "Status": "TransformJobStatus"})

    def shutdown(self) -> None:
        for run in list(self.runs.values()):
            self._stop(run)
        for run in list(self.runs.values()):
            if run.thread is not None:
                run.thread.join()

    # ------------------------------------------------------------------------------------------- helpers
    @staticmethod
    def _stop(run: _Run) -> None:
        """Stop the job's instances: their invocations fail, the job ends (recorded Stopped)."""
        with run.lock:
            run.stop_requested.set()
            endpoints = list(run.backend or [])
        for endpoint in endpoints:
            try:
                endpoint.close()
            except Exception as e:
                log.warning("could not stop a transform instance: %s", e)

    def _item(self, name: str, error: Any) -> dict[str, Any]:
        stored = self.store.find(stores.TRANSFORM_JOBS, name, case_insensitive=True)
        item = self.store.get(stores.TRANSFORM_JOBS, stored) if stored is not None else None
        if item is None:
            raise error(f"Could not find requested job with name {name}")
        return item

    def _spec(self, request: dict[str, Any], container: dict[str, Any], model_data: Path | None, input_path: Path,
              output_dir: Path, image: str | None = None) -> Any:
        from smbyoc.emulator.transform.spec import (
            DEFAULT_INVOCATIONS_MAX_RETRIES,
            DEFAULT_INVOCATIONS_TIMEOUT,
            TransformJobSpec,
        )

        source = request["TransformInput"]["DataSource"]["S3DataSource"]
        output = request["TransformOutput"]
        resources = request["TransformResources"]
        processing = request.get("DataProcessing") or {}
        client = request.get("ModelClientConfig") or {}
        return TransformJobSpec(
            job_name=request["TransformJobName"], model_data=model_data, input_path=input_path, output_dir=output_dir,
            mode="process" if self.mode == "process" else "docker", image=image, model_name=request["ModelName"],
            split_type=request["TransformInput"].get("SplitType", "None"),
            batch_strategy=request.get("BatchStrategy"),
            compression=request["TransformInput"].get("CompressionType", "None"),
            content_type=request["TransformInput"].get("ContentType"), accept=output.get("Accept"),
            assemble_with=output.get("AssembleWith", "None"), max_payload_mb=request.get("MaxPayloadInMB"),
            max_concurrent_transforms=request.get("MaxConcurrentTransforms"),
            instance_count=resources["InstanceCount"], instance_type=resources["InstanceType"],
            input_filter=processing.get("InputFilter"), output_filter=processing.get("OutputFilter"),
            join_source=processing.get("JoinSource", "None"), s3_data_type=source.get("S3DataType", "S3Prefix"),
            invocations_timeout=client.get("InvocationsTimeoutInSeconds", DEFAULT_INVOCATIONS_TIMEOUT),
            invocations_max_retries=client.get("InvocationsMaxRetries", DEFAULT_INVOCATIONS_MAX_RETRIES),
            environment={**(container.get("Environment") or {}), **(request.get("Environment") or {})},
            region=self.region,
        )

    def _run(self, name: str, request: dict[str, Any], container: dict[str, Any], run: _Run) -> None:
        from smbyoc.s3.staging import Staging

        try:
            with Staging(endpoint_url=self.s3_endpoint_url, progress=lambda line: log.info("%s: %s", name, line)) \
                    as staging:
                fields = self._transform(name, request, container, run, staging)
        except (SmbyocError, OSError) as e:
            log.info("transform job %s failed: %s", name, e)
            fields = {"TransformJobStatus": "Failed", "FailureReason": f"ClientError: {e}"}
        except Exception as e:
            log.exception("transform job %s", name)
            fields = {"TransformJobStatus": "Failed", "FailureReason": f"InternalServerError: {type(e).__name__}: {e}"}
        stamp = now()
        fields.setdefault("TransformEndTime", stamp)
        self.store.update(stores.TRANSFORM_JOBS, name, **fields, LastModifiedTime=stamp)
        with self.lock:
            self.runs.pop(name, None)

    def _transform(self, name: str, request: dict[str, Any], container: dict[str, Any], run: _Run,
                   staging: Any) -> dict[str, Any]:
        from smbyoc.emulator.transform.job import make_backend, run_transform_job

        source = request["TransformInput"]["DataSource"]["S3DataSource"]
        output = staging.output(request["TransformOutput"]["S3OutputPath"], what="TransformOutput.S3OutputPath")
        model_data = staging.model(container["ModelDataUrl"], what="ModelDataUrl") \
            if container.get("ModelDataUrl") else None
        input_path = staging.input(source["S3Uri"], what="TransformInput.DataSource.S3DataSource.S3Uri",
                                   data_type=source.get("S3DataType", "S3Prefix"))
        spec = self._spec(request, container, model_data, input_path, output,
                          image=container.get("Image") if self.mode == "docker" else None).validate()
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.logs_dir / f"transform-job-{name}.log"
        lock = threading.Lock()

        def sink(host: str, line: str) -> None:
            with lock, log_path.open("a", encoding="utf-8") as out:
                out.write(f"{host}: {line}\n")

        factory, image = make_backend(spec, sink)
        endpoints: list[Any] = []

        def tracked(host: str, endpoint_spec: Any) -> Any:
            endpoint = factory(host, endpoint_spec)
            with run.lock:
                endpoints.append(endpoint)
                stopped = run.stop_requested.is_set()
            if stopped:
                raise SmbyocError("the job was stopped")
            return endpoint

        with run.lock:
            run.backend = endpoints
            if run.stop_requested.is_set():
                return {"TransformJobStatus": "Stopped"}

        def on_status(primary: str, secondary: str) -> None:
            if secondary.startswith("Transforming"):
                self.store.update(stores.TRANSFORM_JOBS, name, TransformStartTime=now(), LastModifiedTime=now())

        result = run_transform_job(spec, backend=tracked, image=image, on_status=on_status, sink=sink)
        staging.publish()
        described = result.to_dict()
        fields: dict[str, Any] = {"TransformJobStatus": result.status}
        if described.get("TransformEndTime"):
            fields["TransformEndTime"] = from_iso(described["TransformEndTime"])
        if run.stop_requested.is_set():
            fields["TransformJobStatus"] = "Stopped"
        elif result.failure_reason:
            fields["FailureReason"] = result.failure_reason
        return fields
