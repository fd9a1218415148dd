"""A serverless variant whose instances are real ``serve`` processes (nginx + gunicorn, a sagemaker-inference style
handler model): a real cold start reported as ModelSetupTime, warm calls, scale to zero after the idle timeout
(the process is gone and its tree removed) and a new cold start, all through unmodified boto3."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers import free_port
from mme_support import write_handler_model
from smbyoc.emulator.endpoint import EndpointSpec, ProcessEndpoint
from smbyoc.emulator.front import Front
from smbyoc.emulator.hosted_endpoint import ContainerRouter
from smbyoc.emulator.serverless import SETUP_TIME_HEADER, ServerlessConfig, ServerlessVariant, serverless_limits
from smbyoc.emulator.variants import EndpointRouter, Instance

pytestmark = pytest.mark.integration


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)


def process_instances(model: Path, config: ServerlessConfig, handles: list[ProcessEndpoint],
                      health_timeout: float = 60) -> Callable[[], Instance]:
    """``start_instance``: one ``serve`` process per instance, healthy on return."""

    def start_instance() -> Instance:
        spec = EndpointSpec(model, port=free_port(), environment={"SAGEMAKER_MODEL_SERVER_WORKERS": "1"},
                            startup_health_timeout=health_timeout, name_prefix="smbyoc-serverless-test",
                            resources=serverless_limits(config))
        handle = ProcessEndpoint(spec, sink=None)
        handles.append(handle)
        handle.start()
        return Instance(f"AllTraffic-{len(handles)}", ContainerRouter(handle.url), handle)

    return start_instance


def test_real_cold_start_and_scale_to_zero(tmp_path: Path, nginx_on_path: str, aws_env: None,
                                           caplog: pytest.LogCaptureFixture) -> None:
    import boto3
    from botocore.config import Config

    caplog.set_level(logging.INFO, logger="smbyoc.emulator.serverless")
    model = write_handler_model(tmp_path / "model.tar.gz", "sls", 2.0, 1.0)
    config = ServerlessConfig.from_request({"MemorySizeInMB": 2048, "MaxConcurrency": 2})
    handles: list[ProcessEndpoint] = []
    variant = ServerlessVariant("AllTraffic", config, process_instances(model, config, handles), idle_timeout=2.0)
    front = Front(EndpointRouter([variant]), port=free_port(), endpoint_name="sls")
    front.start()
    try:
        client = boto3.client("sagemaker-runtime", endpoint_url=front.url,
                              config=Config(retries={"total_max_attempts": 1}))

        def invoke() -> tuple[Any, dict[str, str]]:
            answer = client.invoke_endpoint(EndpointName="sls", Body=b"[1, 2]", ContentType="application/json")
            return json.loads(answer["Body"].read()), answer["ResponseMetadata"]["HTTPHeaders"]

        assert handles == []  # scaled to zero from the start
        body, headers = invoke()
        assert body == {"code": "sls", "prediction": [3.0, 5.0]}
        assert len(handles) == 1 and handles[0].startup_seconds is not None
        setup_ms = int(headers[SETUP_TIME_HEADER.lower()])
        # the setup time covers the process start and the /ping wait the endpoint measured itself
        assert setup_ms >= handles[0].startup_seconds * 1000 - 1
        assert any("cold start of instance AllTraffic-1 took" in r.getMessage() for r in caplog.records)

        body, headers = invoke()  # warm
        assert body["prediction"] == [3.0, 5.0] and SETUP_TIME_HEADER.lower() not in headers

        first = handles[0]
        wait_until(lambda: not first.running() and not first.root.exists(), 30, "the idle serve process to stop")
        assert variant.describe()["Statistics"]["CurrentInstances"] == 0

        body, headers = invoke()  # a new cold start, a new process
        assert body["prediction"] == [3.0, 5.0] and SETUP_TIME_HEADER.lower() in headers
        assert len(handles) == 2 and handles[1].running()
        stats = variant.describe()["Statistics"]
        assert stats["ColdStarts"] == 2 and stats["IdleStops"] == 1 and stats["Invocations"] == 3
    finally:
        front.stop()
    assert not any(h.running() for h in handles)  # closing the front stopped the last instance


def test_a_broken_model_fails_the_cold_start_with_its_log(tmp_path: Path, nginx_on_path: str, aws_env: None,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    import boto3
    from botocore.config import Config

    caplog.set_level(logging.WARNING, logger="smbyoc.emulator.serverless")
    model = write_handler_model(tmp_path / "model.tar.gz", "broken", fail=True)
    config = ServerlessConfig.from_request({"MemorySizeInMB": 1024, "MaxConcurrency": 1})
    handles: list[ProcessEndpoint] = []
    variant = ServerlessVariant("AllTraffic", config, process_instances(model, config, handles, health_timeout=5))
    front = Front(EndpointRouter([variant]), port=free_port(), endpoint_name="sls")
    front.start()
    try:
        client = boto3.client("sagemaker-runtime", endpoint_url=front.url,
                              config=Config(retries={"total_max_attempts": 1}))
        with pytest.raises(client.exceptions.ServiceUnavailable, match="could not start an instance"):
            client.invoke_endpoint(EndpointName="sls", Body=b"[1]", ContentType="application/json")
        assert any("this model is broken" in r.getMessage() for r in caplog.records)
        assert variant.describe()["Statistics"]["FailedStarts"] == 1 and variant.instances == []
    finally:
        front.stop()
    assert not any(h.running() for h in handles)
