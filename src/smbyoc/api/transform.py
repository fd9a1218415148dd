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
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from smbyoc.api import store as stores
from smbyoc.api.errors import validation
from smbyoc.api.jobs import JobKind, Jobs, _Run, arn
from smbyoc.api.timestamps import from_iso, now
from smbyoc.errors import ConfigError, SmbyocError

log = logging.getLogger(__name__)

TRANSFORM_JOB = JobKind(
    collection=stores.TRANSFORM_JOBS, noun="TransformJob", resource="transform-job", words="transform job",
    end_time_key="TransformEndTime",
    summary_keys=("TransformJobName", "TransformJobArn", "CreationTime", "TransformEndTime", "LastModifiedTime",
                  "TransformJobStatus", "FailureReason"))


class TransformJobs(Jobs):
    """The batch transform jobs of one server."""

    kind = TRANSFORM_JOB

    def _prepare(self, request: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        """Also the job's model's ``PrimaryContainer``, what :meth:`_execute` serves."""
        model = self.store.get(stores.MODELS, request["ModelName"])
        if model is None:
            raise validation(f'Could not find model "{arn(self.region, "model", request["ModelName"])}".')
        container = model.get("PrimaryContainer")
        if container is None:
            raise validation(f"model {request['ModelName']}: only models with a PrimaryContainer are emulated for "
                             "batch transform")
        with tempfile.TemporaryDirectory(prefix="smbyoc-api-") as stand_in:
            try:  # the service's rules, without the local files (they are staged when the job runs)
                replace(self._spec(request, container, None, Path(stand_in), Path(stand_in)),
                        mode="docker", image=None).validate()
            except ConfigError as e:
                raise validation(str(e)) from e
        return self._new_description(request), container

    def _stop(self, run: _Run) -> None:
        """Stop the job's instances: their invocations fail, the job ends (recorded Stopped)."""
        with run.lock:
            run.stop_requested.set()
            endpoints = list(run.backend or [])
        for endpoint in endpoints:
            try:
                endpoint.close()
            except Exception as e:
                log.warning("could not stop a transform instance: %s", e)

    # ------------------------------------------------------------------------------------------- helpers
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

    def _execute(self, name: str, request: dict[str, Any], container: dict[str, Any], run: _Run,
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
        sink = self._sink(name)
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
