"""The SageMaker Python SDK v2 in its normal (not local-mode) code path, given ``sagemaker_client`` and
``sagemaker_runtime_client`` pointed at `smbyoc api` (process mode) and a loopback S3 (moto): ``Estimator.fit()``
uploads the code and trains the bundled default example, ``deploy()`` and ``predict()`` serve it,
``Transformer.transform()`` runs a batch transform, everything from and to S3."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api_support import ROLE, clients, feature_rows
from smbyoc.api.server import ApiConfig, ApiServer
from smbyoc.examples import default_example

pytestmark = pytest.mark.integration

BUCKET = "sdk-bucket"


@pytest.fixture
def server(tmp_path: Path, nginx_on_path: str, aws_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiServer]:
    monkeypatch.setenv("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    api = ApiServer(ApiConfig(mode="process", port=0, state_dir=tmp_path / "state"))
    api.start()
    yield api
    api.close()


def test_sdk_fit_deploy_predict_transform(server: ApiServer) -> None:
    pytest.importorskip("sagemaker")
    import boto3
    import sagemaker
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.estimator import Estimator
    from sagemaker.serializers import CSVSerializer

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    example = default_example()
    for channel, folder in example.channels.items():
        for file in folder.iterdir():
            s3.upload_file(str(file), BUCKET, f"data/{channel}/{file.name}")
    s3.put_object(Bucket=BUCKET, Key="batch/rows.csv", Body=feature_rows(4).encode())

    sm, runtime = clients(server.url, key="testing")
    session = sagemaker.Session(boto_session=boto3.Session(region_name="us-east-1"), sagemaker_client=sm,
                                sagemaker_runtime_client=runtime, default_bucket=BUCKET)
    estimator = Estimator(image_uri="smbyoc/train:cpu", role=ROLE, instance_count=1, instance_type="ml.m5.large",
                          entry_point="train.py", source_dir=str(example.source_dir), hyperparameters={"epochs": 3},
                          output_path=f"s3://{BUCKET}/jobs", sagemaker_session=session)
    started = time.monotonic()
    # fit()'s defaults: it follows the job (DescribeTrainingJob) and its CloudWatch log streams (moto has none)
    estimator.fit({channel: f"s3://{BUCKET}/data/{channel}/" for channel in example.channels})
    fitted = time.monotonic()
    job: dict[str, Any] = estimator.latest_training_job.describe()
    assert job["TrainingJobStatus"] == "Completed"
    assert estimator.model_data == f"s3://{BUCKET}/jobs/{job['TrainingJobName']}/output/model.tar.gz"
    s3.head_object(Bucket=BUCKET, Key=f"jobs/{job['TrainingJobName']}/output/model.tar.gz")
    # the SDK uploaded the code and sent it as sagemaker_submit_directory; the server downloaded it
    assert job["HyperParameters"]["sagemaker_submit_directory"].startswith(f'"s3://{BUCKET}/')

    predictor = estimator.deploy(initial_instance_count=1, instance_type="ml.m5.large", image_uri="smbyoc/serve:cpu",
                                 serializer=CSVSerializer(), deserializer=JSONDeserializer())
    deployed = time.monotonic()
    try:
        answer = predictor.predict(feature_rows(2))
        predicted = time.monotonic()
        assert len(answer["predictions"]) == 2 and "label" in answer["predictions"][0], answer
    finally:
        predictor.delete_endpoint()
    print(f"\nSDK through smbyoc api: fit {fitted - started:.1f} s, deploy {deployed - fitted:.1f} s, "
          f"predict {predicted - deployed:.2f} s")

    transformer = estimator.transformer(instance_count=1, instance_type="ml.m5.large",
                                        output_path=f"s3://{BUCKET}/batch-out", accept="text/csv",
                                        assemble_with="Line")
    transformer.transform(f"s3://{BUCKET}/batch/", content_type="text/csv", split_type="Line", wait=True,
                          logs=False)
    transform = sm.describe_transform_job(TransformJobName=transformer.latest_transform_job.name)
    assert transform["TransformJobStatus"] == "Completed", transform.get("FailureReason")
    out = s3.get_object(Bucket=BUCKET, Key="batch-out/rows.csv.out")["Body"].read().decode()
    assert len(out.splitlines()) == 4, out
