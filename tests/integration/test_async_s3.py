"""Asynchronous inference with S3 locations, end to end: an endpoint configuration whose model, inputs, outputs and
failures are in S3 (a real S3 API: moto in server mode), served in process mode (real nginx + gunicorn + the user's
inference.py) and called with unmodified boto3 ``invoke_endpoint_async``; every object read back with boto3."""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers import free_port
from smbyoc.emulator.endpoint_config import parse_endpoint_config
from smbyoc.emulator.hosted_endpoint import HostedEndpoint, HostingOptions
from smbyoc.s3.staging import Staging

pytestmark = pytest.mark.integration

BUCKET = "async-bucket"
NAME = "async-s3"
TOPIC = "arn:aws:sns:us-east-1:123456789012:async-results"

HANDLER = '''\
import json
import time


def model_fn(model_dir):
    return None


def transform_fn(model, data, content_type, accept):
    payload = json.loads(data)
    if payload == "fail":
        raise ValueError("asked to fail")
    time.sleep(payload[1] if isinstance(payload, list) and len(payload) > 1 else 0)
    return json.dumps({"echo": payload}), "application/json"
'''


@pytest.fixture()
def s3(aws_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The bucket, the model in it, and a boto3 client for the test's own objects and checks (the endpoint makes
    its own, reaching moto through ``AWS_ENDPOINT_URL``)."""
    import boto3

    monkeypatch.setenv("SMBYOC_CACHE_DIR", str(tmp_path / "cache"))
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        code = HANDLER.encode()
        info = tarfile.TarInfo("code/inference.py")
        info.size = len(code)
        tar.addfile(info, io.BytesIO(code))
    client.put_object(Bucket=BUCKET, Key="models/echo.tar.gz", Body=archive.getvalue())
    return client


def document(concurrency: int = 1) -> dict[str, Any]:
    return {
        "EndpointName": NAME,
        "Models": [{"ModelName": "echo", "PrimaryContainer": {
            "Image": "smbyoc/serve:cpu", "ModelDataUrl": f"s3://{BUCKET}/models/echo.tar.gz",
            "Environment": {"SAGEMAKER_MODEL_SERVER_WORKERS": "1"}}}],
        "EndpointConfig": {
            "EndpointConfigName": f"{NAME}-config",
            "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "echo", "InstanceType": "ml.m5.large",
                                    "InitialInstanceCount": 1}],
            "AsyncInferenceConfig": {
                "ClientConfig": {"MaxConcurrentInvocationsPerInstance": concurrency},
                "OutputConfig": {"S3OutputPath": f"s3://{BUCKET}/async/out",
                                 "S3FailurePath": f"s3://{BUCKET}/async/failed",
                                 "NotificationConfig": {"SuccessTopic": TOPIC, "ErrorTopic": TOPIC}}},
        },
    }


def start(tmp_path: Path, concurrency: int = 1, endpoint_url: str | None = None) -> HostedEndpoint:
    """The model comes from S3 through the cache, as local-serve does it; ``endpoint_url`` is given to the endpoint
    as ``local-serve --endpoint-url`` does (None: botocore's environment)."""
    with Staging(endpoint_url=endpoint_url) as staging:
        definition = parse_endpoint_config(document(concurrency), source=str(tmp_path / "endpoint.json"),
                                           base_dir=tmp_path, staging=staging)
    assert definition.async_config is not None
    assert definition.async_config["OutputConfig"]["S3OutputPath"] == f"s3://{BUCKET}/async/out"  # kept as given
    endpoint = HostedEndpoint(definition, HostingOptions(mode="process", port=free_port(),
                                                         async_state_dir=tmp_path / "state",
                                                         s3_endpoint_url=endpoint_url), sink=lambda line: None)
    endpoint.start()
    return endpoint


def runtime(endpoint: HostedEndpoint) -> Any:
    import boto3

    return boto3.client("sagemaker-runtime", endpoint_url=endpoint.url)


def wait_until(predicate: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not true within {timeout} s: {predicate}")


def read(s3: Any, uri: str) -> tuple[bytes, str]:
    assert uri.startswith(f"s3://{BUCKET}/"), uri
    found = s3.get_object(Bucket=BUCKET, Key=uri[len(f"s3://{BUCKET}/"):])
    return found["Body"].read(), found["ContentType"]


def keys(s3: Any, prefix: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", ()))


def test_inputs_outputs_failures_and_notifications_in_s3(s3: Any, tmp_path: Path, nginx_on_path: str) -> None:
    s3.put_object(Bucket=BUCKET, Key="in/one.json", Body=b"[1]")
    s3.put_object(Bucket=BUCKET, Key="in/fail.json", Body=b'"fail"')
    endpoint = start(tmp_path, concurrency=2)
    try:
        rt = runtime(endpoint)
        for bad, message in [("s3://Bad_Bucket/in/one.json", "bucket 'Bad_Bucket' is not a valid name"),
                             (f"s3://{BUCKET}", "needs an object key after the bucket"),
                             (f"s3://{BUCKET}/in/", "names a folder")]:
            with pytest.raises(rt.exceptions.ValidationError, match=f"X-Amzn-SageMaker-InputLocation {bad}: {message}"):
                rt.invoke_endpoint_async(EndpointName=NAME, InputLocation=bad)
        ok = rt.invoke_endpoint_async(EndpointName=NAME, InputLocation=f"s3://{BUCKET}/in/one.json",
                                      ContentType="application/json", InferenceId="one")
        assert ok["ResponseMetadata"]["HTTPStatusCode"] == 202
        assert ok["OutputLocation"].startswith(f"s3://{BUCKET}/async/out/")
        assert ok["FailureLocation"].startswith(f"s3://{BUCKET}/async/failed/")
        failed = rt.invoke_endpoint_async(EndpointName=NAME, InputLocation=f"s3://{BUCKET}/in/fail.json",
                                          ContentType="application/json")
        missing = rt.invoke_endpoint_async(EndpointName=NAME, InputLocation=f"s3://{BUCKET}/in/missing.json",
                                           ContentType="application/json")
        inline = rt.invoke_endpoint_async(EndpointName=NAME, Body=b"[5]", ContentType="application/json",
                                          S3OutputPathExtension="inline", Filename="five.json")
        assert inline["OutputLocation"] == f"s3://{BUCKET}/async/out/inline/five.json"
        stats = endpoint.async_endpoint.stats
        wait_until(lambda: stats().completed == 2 and stats().failed == 2)
        assert stats().accepted == 4  # the refused ones were never queued
    finally:
        endpoint.close()
    assert read(s3, ok["OutputLocation"]) == (b'{"echo": [1]}', "application/json")
    assert read(s3, inline["OutputLocation"]) == (b'{"echo": [5]}', "application/json")
    body, _ = read(s3, failed["FailureLocation"])
    assert b"ValueError: asked to fail" in body  # the container's own error answer
    assert read(s3, missing["FailureLocation"]) == (
        f"ClientError: the input s3://{BUCKET}/in/missing.json cannot be read: no such object".encode(), "text/plain")
    assert keys(s3, "async/") == sorted(uri[len(f"s3://{BUCKET}/"):] for uri in (
        ok["OutputLocation"], inline["OutputLocation"], failed["FailureLocation"], missing["FailureLocation"]))
    messages = [json.loads(line) for line in (tmp_path / "state" / "notifications" / "async-results.jsonl")
                .read_text().splitlines()]
    results = {m["inferenceId"]: m for m in messages if m["eventName"] == "InferenceResult"}
    assert results["one"]["invocationStatus"] == "Completed"
    assert results["one"]["requestParameters"]["inputLocation"] == f"s3://{BUCKET}/in/one.json"
    assert results["one"]["responseParameters"] == {"contentType": "application/json",
                                                    "outputLocation": ok["OutputLocation"]}
    assert results[missing["InferenceId"]]["responseParameters"]["failureLocation"] == missing["FailureLocation"]
    assert results[missing["InferenceId"]]["failureReason"].startswith("ClientError: the input s3://")


def test_a_restart_mid_queue_with_s3_outputs_loses_nothing(s3: Any, aws_env: str, tmp_path: Path,
                                                           nginx_on_path: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(8):
        s3.put_object(Bucket=BUCKET, Key=f"in/{i}.json", Body=json.dumps([i, 0.3]).encode())
    endpoint = start(tmp_path)
    accepted: list[str] = []
    try:
        rt = runtime(endpoint)
        for i in range(8):
            answer = rt.invoke_endpoint_async(EndpointName=NAME, InputLocation=f"s3://{BUCKET}/in/{i}.json",
                                              ContentType="application/json")
            accepted.append(answer["OutputLocation"])
    finally:
        endpoint.close()  # mid-queue: at most a few of the 8 (0.3 s each, one at a time) are done
    assert len(keys(s3, "async/out/")) < 8
    # The restarted endpoint reaches the store only through the URL it is given (local-serve --endpoint-url).
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    restarted = start(tmp_path, endpoint_url=aws_env)
    try:
        wait_until(lambda: len(keys(s3, "async/out/")) == 8)
        wait_until(lambda: restarted.async_endpoint.stats().approximate_backlog_size == 0)
    finally:
        restarted.close()
    assert [json.loads(read(s3, uri)[0])["echo"] for uri in accepted] == [[i, 0.3] for i in range(8)]
    assert keys(s3, "async/failed/") == []
    assert sorted(p.name for p in (tmp_path / "state" / "queue").iterdir()) == []
