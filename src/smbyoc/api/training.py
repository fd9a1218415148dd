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
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smbyoc.api import store as stores
from smbyoc.api.errors import ApiError, not_found, validation
from smbyoc.api.timestamps import from_iso, now
from smbyoc.errors import SmbyocError

log = logging.getLogger(__name__)

ACCOUNT = "000000000000"
#: ``StoppingCondition.MaxRuntimeInSeconds`` when a request gives none (SageMaker's default: one day).
DEFAULT_MAX_RUNTIME_SECONDS = 24 * 3600
ACTIVE = ("InProgress", "Stopping")
DIED_REASON = ("InternalServerError: the smbyoc api server stopped while the job was running; the job's processes "
               "and containers were ended with it")
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


@dataclass
class _Run:
    thread: threading.Thread | None = None
    backend: Any = None
    stop_requested: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


class TrainingJobs:
    """The training jobs of one server."""

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
        return f"arn:aws:sagemaker:{self.region}:{ACCOUNT}:training-job/{name.lower()}"

    def recover(self) -> None:
        """Jobs stored as running belong to a server that died: described Failed from now on."""
        for item in self.store.all(stores.TRAINING_JOBS):
            if item.get("TrainingJobStatus") in ACTIVE:
                stamp = now()
                self.store.update(stores.TRAINING_JOBS, item["TrainingJobName"], TrainingJobStatus="Failed",
                                  SecondaryStatus="Failed", FailureReason=DIED_REASON, TrainingEndTime=stamp,
                                  LastModifiedTime=stamp)

    # ------------------------------------------------------------------------------------------- operations
    def create(self, request: dict[str, Any]) -> dict[str, Any]:
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
        run = _Run()
        with self.lock:
            if self.store.find(stores.TRAINING_JOBS, name, case_insensitive=True) is not None:
                raise ApiError("ResourceInUse", "Training job names must be unique within an AWS account and "
                                                f"region, and a training job with this name already exists "
                                                f"({self.arn(name)})")
            self.store.put(stores.TRAINING_JOBS, name, {**description, "_Request": request})
            self.runs[name] = run
        run.thread = threading.Thread(target=self._run, args=(name, request, run), name=f"training-{name}",
                                      daemon=True)
        run.thread.start()
        return {"TrainingJobArn": self.arn(name)}

    def describe(self, request: dict[str, Any]) -> dict[str, Any]:
        item = self._item(request["TrainingJobName"], validation("Requested resource not found."))
        return {k: v for k, v in item.items() if not k.startswith("_")}

    def stop(self, request: dict[str, Any]) -> dict[str, Any]:
        item = self._item(request["TrainingJobName"], not_found("Requested resource not found."))
        name = item["TrainingJobName"]
        status = item["TrainingJobStatus"]
        if status == "Stopping":
            return {}
        run = self.runs.get(name)
        if status != "InProgress" or run is None:
            raise validation(f"The request was rejected because the training job is in status {status}.")
        self.store.update(stores.TRAINING_JOBS, name, TrainingJobStatus="Stopping", SecondaryStatus="Stopping",
                          LastModifiedTime=now())
        with run.lock:
            run.stop_requested.set()
            backend = run.backend
        if backend is not None:
            backend.stop()
        return {}

    def list(self, request: dict[str, Any]) -> dict[str, Any]:
        items = self.store.all(stores.TRAINING_JOBS)
        if "StatusEquals" in request:
            items = [i for i in items if i["TrainingJobStatus"] == request["StatusEquals"]]
        if "NameContains" in request:
            items = [i for i in items if request["NameContains"].lower() in i["TrainingJobName"].lower()]
        for member, field_name, after in (("CreationTimeAfter", "CreationTime", True),
                                          ("CreationTimeBefore", "CreationTime", False),
                                          ("LastModifiedTimeAfter", "LastModifiedTime", True),
                                          ("LastModifiedTimeBefore", "LastModifiedTime", False)):
            if member in request:
                limit = _epoch(request[member])
                items = [i for i in items if (i[field_name] > limit if after else i[field_name] < limit)]
        keys = ("TrainingJobName", "TrainingJobArn", "CreationTime", "TrainingEndTime", "LastModifiedTime",
                "TrainingJobStatus", "SecondaryStatus")
        summaries: list[dict[str, Any]] = [{key: item[key] for key in keys if key in item} for item in items]
        return page(summaries, request, "TrainingJobSummaries",
                    {"Name": "TrainingJobName", "CreationTime": "CreationTime", "Status": "TrainingJobStatus"})

    def shutdown(self) -> None:
        """Stop every running job (as StopTrainingJob does) and wait for them to end."""
        for name, run in list(self.runs.items()):
            if run.thread is not None and run.thread.is_alive():
                log.info("stopping training job %s", name)
                with run.lock:
                    run.stop_requested.set()
                    if run.backend is not None:
                        run.backend.stop()
        for run in list(self.runs.values()):
            if run.thread is not None:
                run.thread.join()

    # ------------------------------------------------------------------------------------------- helpers
    def _item(self, name: str, missing: ApiError) -> dict[str, Any]:
        stored = self.store.find(stores.TRAINING_JOBS, name, case_insensitive=True)
        item = self.store.get(stores.TRAINING_JOBS, stored) if stored is not None else None
        if item is None:
            raise missing
        return item

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

    def _run(self, name: str, request: dict[str, Any], run: _Run) -> None:
        from smbyoc.s3.staging import Staging

        try:
            with Staging(endpoint_url=self.s3_endpoint_url, progress=lambda line: log.info("%s: %s", name, line)) \
                    as staging:
                fields = self._train(name, request, run, staging)
        except (SmbyocError, OSError) as e:
            log.info("training job %s failed: %s", name, e)
            fields = {"TrainingJobStatus": "Failed", "SecondaryStatus": "Failed", "FailureReason": f"ClientError: {e}"}
        except Exception as e:
            log.exception("training job %s", name)
            fields = {"TrainingJobStatus": "Failed", "SecondaryStatus": "Failed",
                      "FailureReason": f"InternalServerError: {type(e).__name__}: {e}"}
        stamp = now()
        item = self.store.get(stores.TRAINING_JOBS, name)
        if item is not None:
            transitions = list(fields.pop("SecondaryStatusTransitions", None) or
                               item.get("SecondaryStatusTransitions") or [])
            if transitions and "EndTime" not in transitions[-1]:
                transitions[-1] = {**transitions[-1], "EndTime": stamp}
            if not transitions or transitions[-1]["Status"] != fields["SecondaryStatus"]:
                transitions.append({"Status": fields["SecondaryStatus"], "StartTime": stamp, "EndTime": stamp,
                                    "StatusMessage": fields.get("FailureReason") or
                                    STATUS_MESSAGES.get(fields["SecondaryStatus"], fields["SecondaryStatus"])})
            fields.setdefault("TrainingEndTime", stamp)
            self.store.update(stores.TRAINING_JOBS, name, **fields, SecondaryStatusTransitions=transitions,
                              LastModifiedTime=stamp)
        with self.lock:
            self.runs.pop(name, None)

    def _train(self, name: str, request: dict[str, Any], run: _Run, staging: Any) -> dict[str, Any]:
        from smbyoc.emulator.local_training import make_backend, training_spec
        from smbyoc.emulator.training_job import run_training_job

        job = self._local_job(name, request, staging)
        spec, code_dir = training_spec(job)
        spec.validate()
        backend = make_backend(job, code_dir, self._sink(name))
        backend.preflight(spec)
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

    def _sink(self, name: str) -> Callable[[str, str], None]:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        path = self.logs_dir / f"training-job-{name}.log"
        lock = threading.Lock()

        def sink(host: str, line: str) -> None:
            with lock, path.open("a", encoding="utf-8") as out:
                out.write(f"{host}: {line}\n")
        return sink

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


def _epoch(value: Any) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    return from_iso(str(value))


def page(items: list[dict[str, Any]], request: dict[str, Any], key: str, sort_keys: dict[str, str]) -> dict[str, Any]:
    """One page of a List operation: ``SortBy`` / ``SortOrder`` (default CreationTime, Descending),
    ``MaxResults`` (default 10) and ``NextToken`` (the position of the next item, as text)."""
    sort_key = sort_keys.get(request.get("SortBy", "CreationTime"), "CreationTime")
    items = sorted(items, key=lambda i: (i.get(sort_key) is None, i.get(sort_key)),
                   reverse=request.get("SortOrder", "Descending") == "Descending")
    try:
        start = int(request.get("NextToken") or 0)
    except ValueError:
        raise validation("Invalid pagination token") from None
    size = request.get("MaxResults", 10)
    answer: dict[str, Any] = {key: items[start:start + size]}
    if start + size < len(items):
        answer["NextToken"] = str(start + size)
    return answer
