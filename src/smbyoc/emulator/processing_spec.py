"""What a processing job runs: :class:`ProcessingJobSpec`, built from a checked CreateProcessingJob request
(:mod:`smbyoc.emulator.processing_request`).

It gives back the request (:meth:`ProcessingJobSpec.request`) and the content of
``/opt/ml/config/processingjobconfig.json`` (the request as SageMaker writes it, with ``ProcessingJobArn`` and
``S3DownloadMode``; contract-endpoints.md §7.3) and ``resourceconfig.json`` (the training shape).
"""

from __future__ import annotations

import copy
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smbyoc.emulator.instance_types import InstanceType, lookup
from smbyoc.opt_ml.resource_config_file import ResourceConfig

#: Every ``LocalPath`` lies below this folder (DG; BOTO ``ProcessingS3Input.LocalPath``).
PROCESSING_ROOT = "/opt/ml/processing"
#: ``S3UploadMode`` values.
END_OF_JOB, CONTINUOUS = "EndOfJob", "Continuous"
#: What the emulator fills in when a request leaves it out (the SDK local mode's values where it has them).
DEFAULT_ROLE_ARN = "arn:aws:iam::000000000000:role/smbyoc-local"
DEFAULT_INSTANCE_TYPE = "local"
DEFAULT_VOLUME_SIZE_GB = 30
DEFAULT_MAX_RUNTIME_SECONDS = 24 * 3600
#: ``ExitMessage``: the first 1 KB of the hosts' ``/opt/ml/output/message`` (DG).
EXIT_MESSAGE_LIMIT = 1024


def is_s3(text: str) -> bool:
    return text.lower().startswith(("s3://", "https://"))


@dataclass(frozen=True)
class ProcessingInput:
    """One ``ProcessingInputs`` entry with an ``S3Input``; ``source`` is the local path standing for ``uri``."""

    name: str
    uri: str
    local_path: str
    source: Path | None = None
    data_type: str = "S3Prefix"
    input_mode: str = "File"
    distribution: str = "FullyReplicated"
    compression: str = "None"

    @property
    def relative(self) -> str:
        """``local_path`` below ``/opt/ml/processing`` (``input/data``)."""
        return posixpath.relpath(posixpath.normpath(self.local_path), PROCESSING_ROOT)

    def to_request(self) -> dict[str, Any]:
        return {"InputName": self.name, "AppManaged": False, "S3Input": {
            "S3Uri": self.uri, "LocalPath": self.local_path, "S3DataType": self.data_type,
            "S3InputMode": self.input_mode, "S3DataDistributionType": self.distribution,
            "S3CompressionType": self.compression}}


@dataclass(frozen=True)
class ProcessingOutput:
    """One ``ProcessingOutputConfig.Outputs`` entry with an ``S3Output``; ``destination`` stands for ``uri``."""

    name: str
    uri: str
    local_path: str
    upload_mode: str = END_OF_JOB
    destination: Path | None = None

    @property
    def relative(self) -> str:
        return posixpath.relpath(posixpath.normpath(self.local_path), PROCESSING_ROOT)

    def to_request(self) -> dict[str, Any]:
        return {"OutputName": self.name, "AppManaged": False, "S3Output": {
            "S3Uri": self.uri, "LocalPath": self.local_path, "S3UploadMode": self.upload_mode}}


@dataclass(frozen=True)
class ProcessingJobSpec:
    job_name: str
    image: str
    inputs: tuple[ProcessingInput, ...] = ()
    outputs: tuple[ProcessingOutput, ...] = ()
    #: ``AppSpecification.ContainerEntrypoint`` / ``ContainerArguments``; None: not given.
    entrypoint: tuple[str, ...] | None = None
    arguments: tuple[str, ...] | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    instance_type: str = DEFAULT_INSTANCE_TYPE
    instance_count: int = 1
    volume_size_gb: int = DEFAULT_VOLUME_SIZE_GB
    max_runtime_seconds: int = DEFAULT_MAX_RUNTIME_SECONDS
    network_isolation: bool = False
    role_arn: str = DEFAULT_ROLE_ARN
    region: str = "us-east-1"
    account: str = "000000000000"
    network_interface_name: str = "eth0"
    #: GPUs per container: None = as the instance type has, -1 = all, 0 = none.
    gpus: int | None = None
    #: The request's other members (``Tags``, ``ExperimentConfig``, ``KmsKeyId``...), echoed as given.
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: Where Pipe-mode inputs' FIFOs lie (:mod:`smbyoc.emulator.processing_pipes`); None: the
    #: ``SMBYOC_PROCESSING_PIPE_PATH`` environment variable, else ``{local_path}_{epoch}``.
    pipe_path: str | None = None

    # -- what the engine reads --------------------------------------------------------------------
    @property
    def job_arn(self) -> str:
        return f"arn:aws:sagemaker:{self.region}:{self.account}:processing-job/{self.job_name.lower()}"

    @property
    def instance(self) -> InstanceType:
        return lookup(self.instance_type)

    @property
    def gpu_count(self) -> int:
        return self.instance.gpus if self.gpus is None else self.gpus

    @property
    def hosts(self) -> tuple[str, ...]:
        """``algo-1..N`` sorted as strings, as SageMaker sorts them."""
        return tuple(sorted(f"algo-{i}" for i in range(1, self.instance_count + 1)))

    # -- the request and the config files ---------------------------------------------------------
    def request(self) -> dict[str, Any]:
        """The CreateProcessingJob request of this job (the URIs as given)."""
        app: dict[str, Any] = {"ImageUri": self.image}
        if self.entrypoint is not None:
            app["ContainerEntrypoint"] = list(self.entrypoint)
        if self.arguments is not None:
            app["ContainerArguments"] = list(self.arguments)
        request: dict[str, Any] = {
            "ProcessingJobName": self.job_name,
            "ProcessingResources": {"ClusterConfig": {"InstanceCount": self.instance_count,
                                                      "InstanceType": self.instance_type,
                                                      "VolumeSizeInGB": self.volume_size_gb}},
            "AppSpecification": app,
            "RoleArn": self.role_arn,
            "StoppingCondition": {"MaxRuntimeInSeconds": self.max_runtime_seconds},
        }
        if self.inputs:
            request["ProcessingInputs"] = [i.to_request() for i in self.inputs]
        if self.outputs:
            request["ProcessingOutputConfig"] = {"Outputs": [o.to_request() for o in self.outputs]}
        if self.environment:
            request["Environment"] = dict(self.environment)
        if self.network_isolation:
            request["NetworkConfig"] = {"EnableNetworkIsolation": True}
        for key, value in self.extra.items():
            if key == "ProcessingOutputConfig" and "ProcessingOutputConfig" in request:
                request[key] = {**value, **request[key]}
            elif key == "NetworkConfig":
                request[key] = {**value, **request.get(key, {}),
                                "EnableNetworkIsolation": self.network_isolation}
            else:
                request.setdefault(key, copy.deepcopy(value))
        return request

    def job_config(self) -> dict[str, Any]:
        """``/opt/ml/config/processingjobconfig.json`` (contract-endpoints.md §7.3: the DG's shape, every
        member present, ``null`` where the request has none, ``S3DownloadMode`` on each input)."""
        output_config = self.request().get("ProcessingOutputConfig") or {}
        return {
            "ProcessingJobArn": self.job_arn,
            "ProcessingJobName": self.job_name,
            "AppSpecification": {"ImageUri": self.image,
                                 "ContainerEntrypoint": None if self.entrypoint is None else list(self.entrypoint),
                                 "ContainerArguments": None if self.arguments is None else list(self.arguments)},
            "Environment": dict(self.environment),
            "NetworkConfig": {"EnableInterContainerTrafficEncryption": False,
                              "EnableNetworkIsolation": self.network_isolation, "VpcConfig": None},
            "ProcessingInputs": [
                {"InputName": i.name, "AppManaged": False, "S3Input": {
                    "LocalPath": i.local_path, "S3Uri": i.uri, "S3DataDistributionType": i.distribution,
                    "S3DataType": i.data_type, "S3InputMode": i.input_mode, "S3CompressionType": i.compression,
                    "S3DownloadMode": "StartOfJob"}, "DatasetDefinition": None}
                for i in self.inputs],
            "ProcessingOutputConfig": {
                "Outputs": [{"OutputName": o.name, "AppManaged": False, "S3Output": {
                    "LocalPath": o.local_path, "S3Uri": o.uri, "S3UploadMode": o.upload_mode},
                    "FeatureStoreOutput": None} for o in self.outputs],
                "KmsKeyId": output_config.get("KmsKeyId")},
            "ProcessingResources": {"ClusterConfig": {"InstanceCount": self.instance_count,
                                                      "InstanceType": self.instance_type,
                                                      "VolumeSizeInGB": self.volume_size_gb,
                                                      "VolumeKmsKeyId": None}},
            "RoleArn": self.role_arn,
            "StoppingCondition": {"MaxRuntimeInSeconds": self.max_runtime_seconds},
        }

    def resource_config(self, host: str) -> dict[str, Any]:
        """``/opt/ml/config/resourceconfig.json`` for ``host``: the training shape."""
        return ResourceConfig.homogeneous(host, self.hosts, self.instance_type,
                                          self.network_interface_name).to_json()
