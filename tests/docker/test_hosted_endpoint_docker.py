"""`local-serve --endpoint-config` in Docker, end to end through unmodified boto3: two production variants
(split, TargetVariant), then a production variant with a shadow and data capture whose files are read back field
by field. SageMaker allows a shadow variant only beside exactly one production variant (contract-endpoints.md
§2.1), so the two are separate endpoints."""

from __future__ import annotations

import base64
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from helpers import free_port
from mme_support import write_handler_model
from smbyoc.emulator.endpoint_config import parse_endpoint_config
from smbyoc.emulator.hosted_endpoint import HostedEndpoint, HostingOptions

pytestmark = pytest.mark.docker


@pytest.fixture
def runtime_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)


def variant(name: str, model: str, weight: float = 1.0) -> dict[str, Any]:
    return {"VariantName": name, "ModelName": model, "InstanceType": "ml.m5.large", "InitialInstanceCount": 1,
            "InitialVariantWeight": weight}


def start(document: dict[str, Any], tmp: Path, client: Any) -> HostedEndpoint:
    definition = parse_endpoint_config(document, source=str(tmp / "endpoint.json"), base_dir=tmp)
    endpoint = HostedEndpoint(definition, HostingOptions(mode="docker", port=free_port(), seed=3), client=client,
                              sink=lambda line: None)
    endpoint.start()
    return endpoint


def test_shadow_and_capture_in_docker(tmp_path: Path, docker_client: Any, default_images: dict[str, str],
                                      runtime_env: None) -> None:
    import boto3

    write_handler_model(tmp_path / "prod.tar.gz", "prod", 1.0, 0.0)
    write_handler_model(tmp_path / "candidate.tar.gz", "candidate", 1.0, 0.5)
    image = default_images["serve"]
    document = {
        "EndpointName": "shadow-docker",
        "Models": [{"ModelName": name, "PrimaryContainer": {"Image": image, "ModelDataUrl": f"./{name}.tar.gz"}}
                   for name in ("prod", "candidate")],
        "EndpointConfig": {
            "EndpointConfigName": "shadow-docker-config",
            "ProductionVariants": [variant("Production", "prod")],
            "ShadowProductionVariants": [variant("Candidate", "candidate")],
            "DataCaptureConfig": {"EnableCapture": True, "InitialSamplingPercentage": 100,
                                  "DestinationS3Uri": "./capture",
                                  "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
                                  "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]}},
        },
    }
    endpoint = start(document, tmp_path, docker_client)
    try:
        client = boto3.client("sagemaker-runtime", endpoint_url=endpoint.url)
        for i in range(10):
            answer = client.invoke_endpoint(EndpointName="shadow-docker", Body=json.dumps([i]).encode(),
                                            ContentType="application/json", InferenceId=f"call-{i}",
                                            CustomAttributes="trace=1")
            assert answer["InvokedProductionVariant"] == "Production"
            assert json.loads(answer["Body"].read()) == {"code": "prod", "prediction": [float(i)]}
        # an octet-stream request is captured as BASE64 (not in the JSON list); the model refuses it
        with pytest.raises(client.exceptions.ModelError) as refused:
            client.invoke_endpoint(EndpointName="shadow-docker", Body=b"\x00\x01", InferenceId="binary",
                                   ContentType="application/octet-stream")
        assert refused.value.response["OriginalStatusCode"] == 500
        assert endpoint.router is not None
        deadline = time.monotonic() + 30
        while endpoint.router.shadow_stats.sent + endpoint.router.shadow_stats.failed < 11 and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        assert endpoint.router.shadow_stats.sent == 11 and endpoint.router.shadow_stats.dropped == 0
    finally:
        endpoint.close()  # flushes the capture files
    base = tmp_path / "capture" / "shadow-docker"
    records: dict[tuple[str, str], dict[str, Any]] = {}
    for path in base.rglob("*.jsonl"):
        relative = path.relative_to(base).parts
        assert len(relative) == 6 and [len(p) for p in relative[1:5]] == [4, 2, 2, 2]  # variant/yyyy/mm/dd/hh/file
        for line in path.read_text().splitlines():
            record = json.loads(line)
            records[(relative[0], record["eventMetadata"]["inferenceId"])] = record
    assert len(records) == 22
    for i in range(10):
        prod, shadow = records[("Production", f"call-{i}")], records[("Candidate", f"call-{i}")]
        for record in (prod, shadow):
            assert set(record) == {"captureData", "eventMetadata", "eventVersion"}
            assert record["eventVersion"] == "0"
            assert record["captureData"]["endpointInput"] == {
                "observedContentType": "application/json", "mode": "INPUT", "data": json.dumps([i]),
                "encoding": "JSON"}
            assert record["eventMetadata"]["customAttributes"] == ["trace=1"]
            assert record["eventMetadata"]["inferenceTime"].endswith("Z")
        assert json.loads(prod["captureData"]["endpointOutput"]["data"])["prediction"] == [float(i)]
        assert json.loads(shadow["captureData"]["endpointOutput"]["data"])["prediction"] == [i + 0.5]
    binary = records[("Production", "binary")]["captureData"]["endpointInput"]
    assert binary["encoding"] == "BASE64" and base64.b64decode(binary["data"]) == b"\x00\x01"


def test_two_variants_in_docker(tmp_path: Path, docker_client: Any, default_images: dict[str, str],
                                runtime_env: None) -> None:
    import boto3

    write_handler_model(tmp_path / "a.tar.gz", "a")
    write_handler_model(tmp_path / "b.tar.gz", "b")
    image = default_images["serve"]
    document = {
        "Models": [{"ModelName": name, "PrimaryContainer": {"Image": image, "ModelDataUrl": f"./{name}.tar.gz"}}
                   for name in ("a", "b")],
        "EndpointConfig": {"EndpointConfigName": "ab-docker",
                           "ProductionVariants": [variant("A", "a", 1.0), variant("B", "b", 1.0)]},
    }
    endpoint = start(document, tmp_path, docker_client)
    try:
        client = boto3.client("sagemaker-runtime", endpoint_url=endpoint.url)
        seen = Counter()
        for _ in range(200):
            answer = client.invoke_endpoint(EndpointName="ab-docker", Body=b"[1]", ContentType="application/json")
            variant_name = answer["InvokedProductionVariant"]
            assert json.loads(answer["Body"].read())["code"] == variant_name.lower()
            seen[variant_name] += 1
        assert 60 <= seen["A"] <= 140, seen  # Binomial(200, 0.5): mean 100, sd 7.1; ±5.6 sd
        answer = client.invoke_endpoint(EndpointName="ab-docker", Body=b"[1]", ContentType="application/json",
                                        TargetVariant="B")
        assert answer["InvokedProductionVariant"] == "B"
    finally:
        endpoint.close()
