"""`smbyoc api` in docker mode, driven by unmodified boto3: the default train image trains the bundled example,
the default serve image serves its model through CreateEndpoint and InvokeEndpoint, a processing image runs a
CreateProcessingJob; closing the server removes every container and network."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api_support import FAST, ROLE, clients, deploy, feature_rows, training_request
from smbyoc.api.server import ApiConfig, ApiServer

pytestmark = pytest.mark.docker

PROCESSING_IMAGE_DIR = Path(__file__).parent / "processing_image"


def mine() -> dict[str, str]:
    """The containers this test process (the in-process server) owns; other emulators may share the engine."""
    return {"label": f"com.smbyoc.owner-pid={os.getpid()}"}


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiServer]:
    monkeypatch.setenv("SMBYOC_STATE_DIR", str(tmp_path / "smbyoc-state"))
    api = ApiServer(ApiConfig(mode="docker", port=0, state_dir=tmp_path / "state", stop_timeout=10))
    api.start()
    yield api
    api.close()


@pytest.fixture(scope="module")
def processing_image(docker_client: Any) -> Iterator[str]:
    tag = f"smbyoc-test/processing:{uuid.uuid4().hex[:8]}"
    built, _ = docker_client.images.build(path=str(PROCESSING_IMAGE_DIR), tag=tag,
                                          buildargs={"BASE_IMAGE": "smbyoc/base:bookworm"}, rm=True,
                                          labels={"com.smbyoc.test": "1"})
    yield tag
    with contextlib.suppress(Exception):
        docker_client.images.remove(built.id, force=True)


def test_train_deploy_invoke_in_containers(server: ApiServer, tmp_path: Path, default_images: dict[str, str],
                                           docker_client: Any) -> None:
    sm, runtime = clients(server.url)
    sm.create_training_job(**training_request("api-docker", tmp_path / "out", image=default_images["train"]))
    sm.get_waiter("training_job_completed_or_stopped").wait(TrainingJobName="api-docker", WaiterConfig=FAST)
    job = sm.describe_training_job(TrainingJobName="api-docker")
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    log = (server.state_dir / "logs" / "training-job-api-docker.log").read_text()
    assert "[algo-1] " in log  # the container's lines, by host

    deploy(sm, "api-docker", job["ModelArtifacts"]["S3ModelArtifacts"], image=default_images["serve"])
    sm.get_waiter("endpoint_in_service").wait(EndpointName="api-docker", WaiterConfig=FAST)
    assert docker_client.containers.list(filters=mine())  # the endpoint's container runs
    answer = runtime.invoke_endpoint(EndpointName="api-docker", Body=feature_rows(3), ContentType="text/csv")
    assert len(json.loads(answer["Body"].read())["predictions"]) == 3
    server.close()  # as on Ctrl-C: the endpoint's container is removed
    assert not docker_client.containers.list(all=True, filters=mine())


def test_a_missing_image_fails_the_endpoint_with_the_reason(server: ApiServer, tmp_path: Path) -> None:
    sm, _ = clients(server.url)
    model = tmp_path / "model.tar.gz"
    model.write_bytes(b"")
    deploy(sm, "no-image", str(model), image="smbyoc-test/no-such-image:1")
    with pytest.raises(Exception, match="Failed"):
        sm.get_waiter("endpoint_in_service").wait(EndpointName="no-image", WaiterConfig=FAST)
    described = sm.describe_endpoint(EndpointName="no-image")
    assert described["EndpointStatus"] == "Failed"
    assert "smbyoc-test/no-such-image:1" in described["FailureReason"]


def test_processing_job(server: ApiServer, tmp_path: Path, processing_image: str) -> None:
    sm, _ = clients(server.url)
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.csv").write_text("1\n")
    sm.create_processing_job(
        ProcessingJobName="api-proc", RoleArn=ROLE,
        AppSpecification={"ImageUri": processing_image, "ContainerArguments": ["--alpha", "1"]},
        ProcessingResources={"ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.large",
                                               "VolumeSizeInGB": 1}},
        ProcessingInputs=[{"InputName": "data", "S3Input": {
            "S3Uri": data.as_uri(), "LocalPath": "/opt/ml/processing/input/data", "S3DataType": "S3Prefix",
            "S3InputMode": "File"}}],
        ProcessingOutputConfig={"Outputs": [{"OutputName": "report", "S3Output": {
            "S3Uri": (tmp_path / "out").as_uri(), "LocalPath": "/opt/ml/processing/output/report",
            "S3UploadMode": "EndOfJob"}}]},
        StoppingCondition={"MaxRuntimeInSeconds": 300})
    sm.get_waiter("processing_job_completed_or_stopped").wait(ProcessingJobName="api-proc", WaiterConfig=FAST)
    described = sm.describe_processing_job(ProcessingJobName="api-proc")
    assert described["ProcessingJobStatus"] == "Completed", described.get("FailureReason")
    report = json.loads((tmp_path / "out" / "algo-1.json").read_text())
    assert report["argv"] == ["/code/process.py", "--alpha", "1"]
    assert report["inputs"] == {"data": ["a.csv"]}
    assert error_code(sm.describe_processing_job, ProcessingJobName="nope") == "ValidationException"


def error_code(call: Any, **kwargs: Any) -> str:
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    return str(caught.value.response["Error"]["Code"])
