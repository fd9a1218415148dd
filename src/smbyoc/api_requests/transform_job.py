"""``CreateModel`` + ``CreateTransformJob`` for a local batch transform job (contract.md §4, contract-endpoints.md
§9.1): the same :class:`~smbyoc.emulator.transform.spec.TransformJobSpec` ``local-transform`` runs, with S3 URIs
where the local job reads and writes files."""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from smbyoc.api_requests.calls import ApiRequests
from smbyoc.api_requests.locations import s3_location
from smbyoc.api_requests.validate import check_request
from smbyoc.emulator.transform.spec import (
    DEFAULT_INVOCATIONS_MAX_RETRIES,
    DEFAULT_INVOCATIONS_TIMEOUT,
    TransformJobSpec,
)
from smbyoc.errors import ConfigError


def check_local_rules(spec: TransformJobSpec) -> None:
    """The rules :meth:`TransformJobSpec.validate` shares with CreateTransformJob (names, enums, payload and
    concurrency, filters, environment), without its checks of local files: the request reads S3."""
    with tempfile.TemporaryDirectory(prefix="smbyoc-request-") as stand_in:
        replace(spec, model_data=None, input_path=Path(stand_in), output_dir=Path(stand_in), mode="docker",
                image=None, user=None).validate()


def transform_job_requests(
    spec: TransformJobSpec,
    *,
    role_arn: str | None,
    image_uri: str | None,
    input_uri: str | os.PathLike[str],
    output_path: str | os.PathLike[str] | None,
    model_data_uri: str | os.PathLike[str] | None = None,
    model_name: str | None = None,
) -> ApiRequests:
    """The ``CreateModel`` and ``CreateTransformJob`` requests for ``spec``, checked offline.

    The model is named ``model_name``, else the spec's, else the job's name; ``spec.environment`` goes to the
    transform job (``local-transform --env``), as the local job passes it to its containers.
    """
    if not role_arn:
        raise ConfigError("required: the IAM role SageMaker assumes for the model (ExecutionRoleArn)",
                          key="--role-arn")
    if not image_uri:
        raise ConfigError("required: the ECR image SageMaker runs (default: --image)", key="--image-uri")
    if output_path is None:
        raise ConfigError("required: where SageMaker writes the .out files (s3://BUCKET/PREFIX)", key="--output-path")
    if spec.instance_type == "local":
        raise ConfigError("has no SageMaker value; give an ml.* instance type (e.g. ml.m5.large)",
                          key="--instance-type local")
    check_local_rules(spec)
    name = model_name or spec.model_name or spec.job_name
    container: dict[str, Any] = {"Image": image_uri}
    if model_data_uri is not None:
        container["ModelDataUrl"] = s3_location(model_data_uri, "--model-data")
    model = {"ModelName": name, "ExecutionRoleArn": role_arn, "PrimaryContainer": container}

    data_source = {"S3DataSource": {"S3DataType": spec.s3_data_type, "S3Uri": s3_location(input_uri, "--input")}}
    transform_input: dict[str, Any] = {"DataSource": data_source, "CompressionType": spec.compression,
                                       "SplitType": spec.split_type}
    if spec.content_type:
        transform_input["ContentType"] = spec.content_type
    transform_output: dict[str, Any] = {"S3OutputPath": s3_location(output_path, "--output-path"),
                                        "AssembleWith": spec.assemble_with}
    if spec.accept:
        transform_output["Accept"] = spec.accept
    job: dict[str, Any] = {"TransformJobName": spec.job_name, "ModelName": name}
    if spec.max_concurrent_transforms is not None:
        job["MaxConcurrentTransforms"] = spec.max_concurrent_transforms
    if (spec.invocations_timeout, spec.invocations_max_retries) != (DEFAULT_INVOCATIONS_TIMEOUT,
                                                                    DEFAULT_INVOCATIONS_MAX_RETRIES):
        job["ModelClientConfig"] = {"InvocationsTimeoutInSeconds": spec.invocations_timeout,
                                    "InvocationsMaxRetries": spec.invocations_max_retries}
    if spec.max_payload_mb is not None:
        job["MaxPayloadInMB"] = spec.max_payload_mb
    if spec.batch_strategy is not None:
        job["BatchStrategy"] = spec.batch_strategy
    if spec.environment:
        job["Environment"] = dict(spec.environment)
    job["TransformInput"] = transform_input
    job["TransformOutput"] = transform_output
    job["TransformResources"] = {"InstanceType": spec.instance_type, "InstanceCount": spec.instance_count}
    processing = {key: value for key, value, default in (("InputFilter", spec.input_filter, None),
                                                         ("OutputFilter", spec.output_filter, None),
                                                         ("JoinSource", spec.join_source, "None"))
                  if value != default}
    if processing:
        job["DataProcessing"] = processing
    check_request("CreateModel", model)
    check_request("CreateTransformJob", job)
    return ApiRequests((("CreateModel", model), ("CreateTransformJob", job)))
