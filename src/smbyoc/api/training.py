"""CreateTrainingJob, DescribeTrainingJob, ListTrainingJobs and StopTrainingJob on the training engine.

A created job runs in a thread of its own: its S3 locations are staged (:class:`smbyoc.s3.staging.Staging`:
local paths and ``file://`` URIs as they are, ``s3://`` through the cache), the request becomes a
:class:`~smbyoc.emulator.local_training.LocalTrainingJob`, and :func:`~smbyoc.emulator.training_job.run_training_job`
runs it, each ``(TrainingJobStatus, SecondaryStatus)`` it reports stored at once. The artifacts go to
``S3OutputPath/<job>/output/{model,output}.tar.gz`` (uploaded when the job ends for ``s3://``).

What SageMaker refuses before a job exists is refused here the same way (botocore's model, the names in use);
what it finds only once the job runs (a missing image, an input that cannot be read, several hosts in process mode)
ends the job ``Failed`` with a ``ClientError: ...`` ``FailureReason``, as on SageMaker. Script-mode jobs (the SDK's
``sagemaker_program`` and ``sagemaker_submit_directory`` hyperparameters) get their code from the submit directory,
downloaded and unpacked when it is an ``s3://`` URI.

A job that was running when the server died is described ``Failed`` after a restart (:meth:`TrainingJobs.recover`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from smbyoc.api import store as stores
from smbyoc.api.errors import validation
from smbyoc.api.jobs import (
    JobKind,
    Jobs,
    _Run,
    page,  # noqa: F401 - its home before smbyoc.api.jobs
)
from smbyoc.api.timestamps import from_iso, now
from smbyoc.errors import ConfigError
from smbyoc.paths import check_channel_name

log = logging.getLogger(__name__)

#: ``StoppingCondition.MaxRuntimeInSeconds`` when a request gives none (SageMaker's default: one day).
DEFAULT_MAX_RUNTIME_SECONDS = 24 * 3600
#: ``SecondaryStatusTransitions[].StatusMessage`` where the engine says nothing (every transition of SageMaker's has
#: one; the SageMaker Python SDK reads it).
STATUS_MESSAGES = {
    "Starting": "Preparing the instances for training",
    "Downloading": "Downloading input data",
    "Training": "Training image download completed. Training in progress.",
    "Uploading": "Uploading generated training model",
    "Completed": "Training job completed",
    "Failed": "Training job failed",
    "Stopping": "Stopping the training job",
    "Stopped": "Training job stopped",
    "MaxRuntimeExceeded": "Job stopped because it exceeded MaxRuntimeInSeconds",
    "Interrupted": "The job was interrupted",
    "Restarting": "Restarting the job",
}
SDK_PROGRAM_KEY = "sagemaker_program"
SDK_SUBMIT_DIR_KEY = "sagemaker_submit_directory"


def _hyperparameter(value: str) -> str:
    """A script-mode key's value as the SDK sends it (JSON-encoded), or as given."""
    try:
        decoded = json.loads(value)
    except ValueError:
        return value
    return decoded if isinstance(decoded, str) else value


TRAINING_JOB = JobKind(
    collection=stores.TRAINING_JOBS, noun="TrainingJob", resource="training-job", words="training job",
    end_time_key="TrainingEndTime",
    summary_keys=("TrainingJobName", "TrainingJobArn", "CreationTime", "TrainingEndTime", "LastModifiedTime",
                  "TrainingJobStatus", "SecondaryStatus"),
    missing_message="Requested resource not found.", secondary_status_key="SecondaryStatus")


class TrainingJobs(Jobs):
    """The training jobs of one server."""

    kind = TRAINING_JOB

    def _prepare(self, request: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        name = request["TrainingJobName"]
        self._check(request)
        created = now()
        algorithm = request["AlgorithmSpecification"]
        description: dict[str, Any] = {
            "TrainingJobName": name,
            "TrainingJobArn": self.arn(name),
            "TrainingJobStatus": "InProgress",
            "SecondaryStatus": "Starting",
            "HyperParameters": dict(request.get("HyperParameters") or {}),
            "AlgorithmSpecification": {**algorithm, "EnableSageMakerMetricsTimeSeries": bool(
                algorithm.get("EnableSageMakerMetricsTimeSeries", False))},
            "RoleArn": request["RoleArn"],
            "InputDataConfig": request.get("InputDataConfig") or [],
            "OutputDataConfig": request["OutputDataConfig"],
            "ResourceConfig": request["ResourceConfig"],
            "StoppingCondition": request.get("StoppingCondition") or
            {"MaxRuntimeInSeconds": DEFAULT_MAX_RUNTIME_SECONDS},
            "CreationTime": created,
            "LastModifiedTime": created,
            "SecondaryStatusTransitions": [{"Status": "Starting", "StartTime": created,
                                            "StatusMessage": "Preparing the instances for training"}],
            "EnableNetworkIsolation": bool(request.get("EnableNetworkIsolation", False)),
            "EnableInterContainerTrafficEncryption": bool(request.get("EnableInterContainerTrafficEncryption", False)),
            "EnableManagedSpotTraining": bool(request.get("EnableManagedSpotTraining", False)),
        }
        for member in ("Environment", "CheckpointConfig", "Tags", "RetryStrategy", "VpcConfig"):
            if member in request:
                description[member] = request[member]
        return description, None

    # ------------------------------------------------------------------------------------------- helpers
    def _check(self, request: dict[str, Any]) -> None:
        """The bring-your-own-container rules the shape no longer enforces (contract-endpoints.md §9.1)."""
        algorithm = request.get("AlgorithmSpecification")
        if not algorithm or not algorithm.get("TrainingImage"):
            raise validation("AlgorithmSpecification.TrainingImage is required: smbyoc runs bring-your-own-container "
                             "jobs (AlgorithmName and training plans are not emulated)")
        resources = request.get("ResourceConfig") or {}
        for member in ("InstanceType", "InstanceCount"):
            if member not in resources:
                raise validation(f"ResourceConfig.{member} is required")
        for channel in request.get("InputDataConfig") or []:
            try:
                check_channel_name(channel["ChannelName"])
            except ConfigError as e:
                raise validation(f"InputDataConfig: {e}") from None
            if "S3DataSource" not in channel["DataSource"]:
                raise validation(f"InputDataConfig: channel {channel['ChannelName']}: only S3DataSource is emulated "
                                 "(an s3:// URI, a local path or a file:// URI)")
        if request.get("OutputDataConfig", {}).get("CompressionType") not in (None, "GZIP", "NONE"):
            raise validation("OutputDataConfig.CompressionType must be GZIP or NONE")

    def _status(self, name: str) -> Callable[[str, str], None]:
        def on_status(primary: str, secondary: str) -> None:
            item = self.store.get(stores.TRAINING_JOBS, name)
            if item is None:
                return
            if item["TrainingJobStatus"] == "Stopping" and primary == "InProgress":
                primary, secondary = "Stopping", "Stopping"
            stamp = now()
            transitions = list(item.get("SecondaryStatusTransitions") or [])
            if not transitions or transitions[-1]["Status"] != secondary:
                if transitions:
                    transitions[-1] = {**transitions[-1], "EndTime": stamp}
                transitions.append({"Status": secondary, "StartTime": stamp,
                                    "StatusMessage": STATUS_MESSAGES.get(secondary, secondary)})
            fields: dict[str, Any] = {"TrainingJobStatus": primary, "SecondaryStatus": secondary,
                                      "LastModifiedTime": stamp, "SecondaryStatusTransitions": transitions}
            if secondary == "Training" and "TrainingStartTime" not in item:
                fields["TrainingStartTime"] = stamp
            self.store.update(stores.TRAINING_JOBS, name, **fields)
        return on_status

    def _finished(self, name: str, fields: dict[str, Any], stamp: float) -> dict[str, Any]:
        """The secondary status transitions closed at ``stamp``, the final status added when it is a new one."""
        item = self.store.get(stores.TRAINING_JOBS, name)
        if item is None:
            return fields
        transitions = list(fields.pop("SecondaryStatusTransitions", None) or
                           item.get("SecondaryStatusTransitions") or [])
        if transitions and "EndTime" not in transitions[-1]:
            transitions[-1] = {**transitions[-1], "EndTime": stamp}
        if not transitions or transitions[-1]["Status"] != fields["SecondaryStatus"]:
            transitions.append({"Status": fields["SecondaryStatus"], "StartTime": stamp, "EndTime": stamp,
                                "StatusMessage": fields.get("FailureReason") or
                                STATUS_MESSAGES.get(fields["SecondaryStatus"], fields["SecondaryStatus"])})
        return {**fields, "SecondaryStatusTransitions": transitions}

    def _execute(self, name: str, request: dict[str, Any], context: Any, run: _Run,
                 staging: Any) -> dict[str, Any]:
        from smbyoc.emulator.local_training import make_backend, training_spec
        from smbyoc.emulator.training_job import check_output_dir, run_training_job

        job = self._local_job(name, request, staging)
        spec, code_dir = training_spec(job)
        spec.validate()
        backend = make_backend(job, code_dir, self._sink(name))
        backend.preflight(spec)
        check_output_dir(spec, job.output_dir.resolve())
        with run.lock:
            run.backend = backend
            if run.stop_requested.is_set():
                return {"TrainingJobStatus": "Stopped", "SecondaryStatus": "Stopped"}
        result = run_training_job(spec, backend, job.output_dir.resolve(), on_status=self._status(name), checked=True)
        if result.artifacts is not None:
            staging.publish()
        described = staging.restore_uris(result.describe())
        fields: dict[str, Any] = {
            "TrainingJobStatus": result.status, "SecondaryStatus": result.secondary_status,
            "TrainingStartTime": from_iso(described["TrainingStartTime"]),
            "TrainingEndTime": from_iso(described["TrainingEndTime"]),
            "TrainingTimeInSeconds": described["TrainingTimeInSeconds"],
            "BillableTimeInSeconds": described.get("BillableTimeInSeconds", described["TrainingTimeInSeconds"]),
            "SecondaryStatusTransitions": [
                {"StatusMessage": STATUS_MESSAGES.get(t["Status"], t["Status"]), **t,
                 "StartTime": from_iso(t["StartTime"]),
                 **({"EndTime": from_iso(t["EndTime"])} if "EndTime" in t else {})}
                for t in described["SecondaryStatusTransitions"]],
        }
        if run.stop_requested.is_set() and result.status != "Stopped":
            # StopTrainingJob: whatever the program's exit status after SIGTERM, SageMaker reports Stopped (the
            # engine says Stopped only for its own signal handler's stops).
            fields["TrainingJobStatus"] = fields["SecondaryStatus"] = "Stopped"
            transitions = fields["SecondaryStatusTransitions"]
            if transitions and transitions[-1]["Status"] in ("Failed", "Completed"):
                transitions[-1] = {**transitions[-1], "Status": "Stopped", "StatusMessage": "Training job stopped"}
        elif result.failure_reason:
            fields["FailureReason"] = result.failure_reason
        if "ModelArtifacts" in described:
            fields["ModelArtifacts"] = described["ModelArtifacts"]
        return fields

    def _local_job(self, name: str, request: dict[str, Any], staging: Any) -> Any:
        """The request as a LocalTrainingJob, its locations staged (the slow part: S3 downloads)."""
        from smbyoc.emulator.local_training import ChannelSetting, LocalTrainingJob

        algorithm = request["AlgorithmSpecification"]
        hyperparameters = dict(request.get("HyperParameters") or {})
        program = hyperparameters.pop(SDK_PROGRAM_KEY, None)
        submit = hyperparameters.pop(SDK_SUBMIT_DIR_KEY, None)
        entry_point = source_dir = None
        if program is not None:
            entry_point = _hyperparameter(program)
            if submit is not None:
                source_dir = staging.code(_hyperparameter(submit), what=f"HyperParameters.{SDK_SUBMIT_DIR_KEY}")
        elif submit is not None:
            hyperparameters[SDK_SUBMIT_DIR_KEY] = submit
        settings = [ChannelSetting("input_mode", algorithm.get("TrainingInputMode", "File"))]
        channels, content_types = [], {}
        for channel in request.get("InputDataConfig") or []:
            channel_name = channel["ChannelName"]
            source = channel["DataSource"]["S3DataSource"]
            data_type = source.get("S3DataType", "S3Prefix")
            for setting, value in (("input_mode", channel.get("InputMode")), ("data_type", data_type),
                                   ("distribution", source.get("S3DataDistributionType")),
                                   ("compression", channel.get("CompressionType")),
                                   ("record_wrapper", channel.get("RecordWrapperType"))):
                if value is not None:
                    settings.append(ChannelSetting(setting, value, channel_name))
            if channel.get("ContentType"):
                content_types[channel_name] = channel["ContentType"]
            channels.append((channel_name, staging.input(source["S3Uri"], what=f"channel {channel_name}",
                                                         data_type=data_type)))
        output = request["OutputDataConfig"]
        resources = request["ResourceConfig"]
        stopping = request.get("StoppingCondition") or {}
        checkpoint = (request.get("CheckpointConfig") or {}).get("S3Uri")
        return LocalTrainingJob(
            mode="process" if self.mode == "process" else "docker",
            image=algorithm["TrainingImage"],
            entry_point=entry_point,
            source_dir=source_dir,
            channels=tuple(channels),
            content_types=content_types,
            channel_settings=tuple(settings),
            hyperparameters=hyperparameters,
            job_name=name,
            output_dir=staging.output(output["S3OutputPath"], what="OutputDataConfig.S3OutputPath"),
            instance_type=resources["InstanceType"],
            instance_count=resources["InstanceCount"],
            environment=dict(request.get("Environment") or {}),
            region=self.region,
            stop_timeout=self.stop_timeout,
            max_runtime_seconds=stopping.get("MaxRuntimeInSeconds", DEFAULT_MAX_RUNTIME_SECONDS),
            checkpoint_dir=None if checkpoint is None else staging.checkpoints(checkpoint,
                                                                                what="CheckpointConfig.S3Uri"),
            network_isolation=bool(request.get("EnableNetworkIsolation", False)),
        )

