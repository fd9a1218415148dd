"""A serverless variant whose instances are real containers of the default serve image: the container runs with
the ServerlessConfig's memory (and vCPUs in proportion) instead of the instance type's, answers through unmodified
boto3 after a cold start, and is stopped and removed after the idle timeout."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers import free_port
from mme_support import write_handler_model
from smbyoc.emulator.endpoint import DockerEndpoint, EndpointSpec
from smbyoc.emulator.front import Front
from smbyoc.emulator.hosted_endpoint import ContainerRouter
from smbyoc.emulator.serverless import (
    SETUP_TIME_HEADER,
    ServerlessConfig,
    ServerlessVariant,
    check_image_size,
    serverless_limits,
)
from smbyoc.emulator.variants import EndpointRouter, Instance

pytestmark = pytest.mark.docker

PREFIX = "smbyoc-serverless-test"


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def ours(docker_client: Any) -> list[Any]:
    return [c for c in docker_client.containers.list(all=True, filters={"label": "com.smbyoc.owner=smbyoc"})
            if c.name.startswith(PREFIX)]


def test_serverless_container_memory_limit_and_idle_stop(docker_client: Any, default_images: dict[str, str],
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3
    from botocore.config import Config

    for name, value in {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    image = default_images["serve"]
    check_image_size(image, docker_client.images.get(image).attrs["Size"])  # the 10 GB serverless limit
    model = write_handler_model(tmp_path / "model.tar.gz", "sls", 2.0, 0.0)
    config = ServerlessConfig.from_request({"MemorySizeInMB": 1024, "MaxConcurrency": 2})
    handles: list[DockerEndpoint] = []

    def start_instance() -> Instance:
        spec = EndpointSpec(model, port=free_port(), environment={"SAGEMAKER_MODEL_SERVER_WORKERS": "1"},
                            startup_health_timeout=120, instance_type="ml.m5.xlarge", name_prefix=PREFIX,
                            resources=serverless_limits(config))
        handle = DockerEndpoint(spec, docker_client, image, sink=None)
        handles.append(handle)
        handle.start()
        return Instance(f"AllTraffic-{len(handles)}", ContainerRouter(handle.url), handle)

    variant = ServerlessVariant("AllTraffic", config, start_instance, idle_timeout=3.0)
    front = Front(EndpointRouter([variant]), port=free_port(), endpoint_name="sls")
    front.start()
    try:
        assert ours(docker_client) == []  # scaled to zero before the first call
        client = boto3.client("sagemaker-runtime", endpoint_url=front.url,
                              config=Config(retries={"total_max_attempts": 1}, read_timeout=150))
        answer = client.invoke_endpoint(EndpointName="sls", Body=b"[1, 2]", ContentType="application/json")
        assert json.loads(answer["Body"].read()) == {"code": "sls", "prediction": [2.0, 4.0]}
        assert int(answer["ResponseMetadata"]["HTTPHeaders"][SETUP_TIME_HEADER.lower()]) > 0

        [container] = ours(docker_client)
        host = container.attrs["HostConfig"]
        # MemorySizeInMB, not ml.m5.xlarge's 16 GiB and 4 vCPUs
        assert host["Memory"] == 1024 * 1024 * 1024
        assert host["NanoCpus"] == int(serverless_limits(config).vcpus * 1e9)
        assert not host.get("DeviceRequests")  # no GPU

        wait_until(lambda: ours(docker_client) == [], 60, "the idle container to be stopped and removed")
        assert variant.describe()["Statistics"]["CurrentInstances"] == 0
        assert variant.describe()["Statistics"]["IdleStops"] == 1
    finally:
        front.stop()
        for handle in handles:
            handle.close()
    assert ours(docker_client) == []
