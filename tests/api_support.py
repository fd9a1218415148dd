"""Helpers for the `smbyoc api` tests: boto3 clients pointed at a server, and the requests of the default example."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from smbyoc.examples import default_example

ROLE = "arn:aws:iam::000000000000:role/smbyoc-local"
FAST = {"Delay": 1, "MaxAttempts": 300}


def clients(url: str, key: str = "local") -> tuple[Any, Any]:
    """Unmodified boto3 ``sagemaker`` and ``sagemaker-runtime`` clients for the server at ``url``."""
    import boto3

    kw = {"endpoint_url": url, "region_name": "us-east-1", "aws_access_key_id": key,
          "aws_secret_access_key": "not-checked"}
    return boto3.client("sagemaker", **kw), boto3.client("sagemaker-runtime", **kw)


def training_request(name: str, output: Path, *, program: str = "train.py", source_dir: Path | None = None,
                     image: str = "smbyoc/train:cpu", max_runtime: int = 600) -> dict[str, Any]:
    """A CreateTrainingJob request as the SDK's script mode sends it, training the bundled default example."""
    example = default_example()
    return {
        "TrainingJobName": name,
        "RoleArn": ROLE,
        "AlgorithmSpecification": {"TrainingImage": image, "TrainingInputMode": "File"},
        "HyperParameters": {**example.hyperparameters, "sagemaker_program": json.dumps(program),
                            "sagemaker_submit_directory": json.dumps(str(source_dir or example.source_dir))},
        "InputDataConfig": [{"ChannelName": channel, "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": path.as_uri(), "S3DataDistributionType": "FullyReplicated"}}}
            for channel, path in example.channels.items()],
        "OutputDataConfig": {"S3OutputPath": output.as_uri()},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
        "StoppingCondition": {"MaxRuntimeInSeconds": max_runtime},
    }


def feature_rows(count: int = 2) -> str:
    """``count`` CSV rows of the example's features (its validation data without the label)."""
    example = default_example()
    lines = next(example.channels["validation"].glob("*.csv")).read_text().splitlines()[1:count + 1]
    return "\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n"


def deploy(sm: Any, name: str, model_data: str, image: str = "smbyoc/serve:cpu") -> None:
    """CreateModel, CreateEndpointConfig and CreateEndpoint, all named ``name``."""
    sm.create_model(ModelName=name, ExecutionRoleArn=ROLE,
                    PrimaryContainer={"Image": image, "ModelDataUrl": model_data,
                                      "Environment": {"SAGEMAKER_MODEL_SERVER_WORKERS": "1"}})
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": name, "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}])
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
