"""``CreateTrainingJob`` for a local training job: the request that runs the same job on SageMaker.

:func:`training_spec_for_request` resolves a :class:`~smbyoc.emulator.local_training.LocalTrainingJob` exactly as
``local-train`` does (same job name, the hyperparameters as the emulator writes them to ``hyperparameters.json``,
the channels with their settings) and points ``sagemaker_submit_directory`` at the code's S3 URI.
:func:`training_job_request` maps the :class:`~smbyoc.emulator.job_spec.TrainingJobSpec` onto the API shape
(contract.md §1, contract-endpoints.md §9.1) and checks it offline (:mod:`smbyoc.api_requests.validate`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from smbyoc.api_requests.locations import s3_location, uri_text
from smbyoc.api_requests.validate import check_request
from smbyoc.emulator.job_spec import SDK_SUBMIT_DIR_KEY, TrainingJobSpec
from smbyoc.emulator.local_training import LocalTrainingJob, training_spec
from smbyoc.errors import ConfigError

#: ``StoppingCondition.MaxRuntimeInSeconds`` when the job sets none: SageMaker's and the SDK's default, one day.
DEFAULT_MAX_RUNTIME_SECONDS = 24 * 3600
#: ``ResourceConfig.VolumeSizeInGB`` default (the SDK's ``volume_size``).
DEFAULT_VOLUME_SIZE_GB = 30
#: The emulator's ``CheckpointConfig.LocalPath`` (SageMaker's default).
CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"


def training_spec_for_request(job: LocalTrainingJob, *, source_dir: str | os.PathLike[str] | None = None
                              ) -> TrainingJobSpec:
    """The spec ``local-train`` would run for ``job``, for SageMaker: ``source_dir`` (the code for
    ``job.entry_point``) must be an S3 URI and becomes ``sagemaker_submit_directory``, as the SDK sends it.

    ``job.source_dir`` and ``job.checkpoint_dir`` are not read (give their S3 URIs to this function and to
    :func:`training_job_request`): pathlib cannot hold a URI.
    """
    if job.train_command is not None:
        raise ConfigError("is a local program; SageMaker runs the image's own `train` (give --image)",
                          key="--train-command")
    if job.entry_point is None and job.image is None:
        raise ConfigError("the bundled default example runs from local files; give --image (an image that brings "
                          "its code), or -e/--entry-point with an s3:// --source-dir", key="--image")
    spec, _ = training_spec(replace(job, mode="docker", source_dir=None, checkpoint_dir=None))
    if job.entry_point is None:
        return spec
    if source_dir is None:
        raise ConfigError("required with -e/--entry-point: the s3:// URI of the code (sourcedir.tar.gz), which "
                          "SageMaker downloads as sagemaker_submit_directory", key="--source-dir")
    uri = s3_location(source_dir, "--source-dir")
    return replace(spec, hyperparameters={**spec.hyperparameters, SDK_SUBMIT_DIR_KEY: json.dumps(uri)})


def _seconds(value: float, option: str) -> int:
    if value != math.floor(value):
        raise ConfigError("SageMaker takes whole seconds", key=f"{option} {value:g}")
    return int(value)


def training_job_request(
    spec: TrainingJobSpec,
    *,
    role_arn: str | None,
    image_uri: str | None,
    output_path: str | os.PathLike[str] | None,
    channel_uris: Mapping[str, str | os.PathLike[str]] | None = None,
    checkpoint_uri: str | os.PathLike[str] | None = None,
    spot: bool = False,
    max_wait_seconds: float | None = None,
    volume_size_gb: int = DEFAULT_VOLUME_SIZE_GB,
    metric_definitions: Sequence[tuple[str, str]] = (),
    container_entrypoint: Sequence[str] | None = None,
    container_arguments: Sequence[str] | None = None,
    output_kms_key_id: str | None = None,
) -> dict[str, Any]:
    """The ``CreateTrainingJob`` request for ``spec``, checked offline (one ConfigError naming each culprit).

    ``channel_uris`` gives each channel's S3 URI (default: the channel's source, which must then be one);
    ``checkpoint_uri`` is ``CheckpointConfig.S3Uri``; managed spot training is on with ``spot`` or when the
    spec emulates spot interruptions, and then needs ``max_wait_seconds``.
    """
    if not role_arn:
        raise ConfigError("required: the IAM role SageMaker assumes for the job (RoleArn)", key="--role-arn")
    if not image_uri:
        raise ConfigError("required: the ECR image SageMaker runs (default: --image)", key="--image-uri")
    if output_path is None:
        raise ConfigError("required: where SageMaker writes model.tar.gz and output.tar.gz (s3://BUCKET/PREFIX)",
                          key="--output-path")
    if spec.instance_type == "local":
        raise ConfigError("has no SageMaker value; give an ml.* instance type (e.g. ml.m5.large)",
                          key="--instance-type local")
    uris = dict(channel_uris or {})
    channels: list[dict[str, Any]] = []
    modes = {c.input_mode for c in spec.channels}
    job_mode = modes.pop() if len(modes) == 1 else "File"
    for channel in spec.channels:
        given = uris.get(channel.name, channel.source)
        entry: dict[str, Any] = {
            "ChannelName": channel.name,
            "DataSource": {"S3DataSource": {
                "S3DataType": channel.data_type,
                "S3Uri": s3_location(given, f"--channel {channel.name}"),
                "S3DataDistributionType": channel.distribution,
            }},
            "CompressionType": channel.compression,
            "RecordWrapperType": channel.record_wrapper,
        }
        if channel.content_type:
            entry["ContentType"] = channel.content_type
        if channel.input_mode != job_mode:
            entry["InputMode"] = channel.input_mode
        channels.append(entry)

    algorithm: dict[str, Any] = {"TrainingImage": image_uri, "TrainingInputMode": job_mode}
    if metric_definitions:
        algorithm["MetricDefinitions"] = [{"Name": name, "Regex": regex} for name, regex in metric_definitions]
    if container_entrypoint:
        algorithm["ContainerEntrypoint"] = list(container_entrypoint)
    if container_arguments:
        algorithm["ContainerArguments"] = list(container_arguments)
    output: dict[str, Any] = {"S3OutputPath": s3_location(output_path, "--output-path"),
                              "CompressionType": spec.output_compression}
    if output_kms_key_id:
        output["KmsKeyId"] = output_kms_key_id
    runtime = DEFAULT_MAX_RUNTIME_SECONDS if spec.max_runtime_seconds is None \
        else _seconds(spec.max_runtime_seconds, "--max-runtime")
    stopping: dict[str, Any] = {"MaxRuntimeInSeconds": runtime}
    managed_spot = spot or spec.spot_interruption_after is not None
    if max_wait_seconds is not None:
        stopping["MaxWaitTimeInSeconds"] = _seconds(max_wait_seconds, "--max-wait")

    request: dict[str, Any] = {
        "TrainingJobName": spec.job_name,
        "RoleArn": role_arn,
        "AlgorithmSpecification": algorithm,
    }
    if spec.hyperparameters:
        request["HyperParameters"] = dict(spec.hyperparameters)
    if channels:
        request["InputDataConfig"] = channels
    request["OutputDataConfig"] = output
    request["ResourceConfig"] = {"InstanceType": spec.instance_type, "InstanceCount": spec.instance_count,
                                 "VolumeSizeInGB": volume_size_gb}
    request["StoppingCondition"] = stopping
    if checkpoint_uri is not None:
        request["CheckpointConfig"] = {"S3Uri": s3_location(checkpoint_uri, "--checkpoint-s3-dir"),
                                       "LocalPath": CHECKPOINT_LOCAL_PATH}
    elif spec.checkpoint_dir is not None:
        s3_location(uri_text(spec.checkpoint_dir), "--checkpoint-s3-dir")
    request["EnableNetworkIsolation"] = spec.network_isolation
    request["EnableManagedSpotTraining"] = managed_spot
    if spec.environment:
        request["Environment"] = dict(spec.environment)
    check_request("CreateTrainingJob", request)
    return request
