"""Serverless variants (contract-endpoints.md §5) behind the real endpoint front, called through unmodified boto3.

The instances are small real HTTP servers (aiohttp, each in its own thread) made by a fake ``start_instance``, so
that cold starts, throttling, scale-out, scale-to-zero, provisioned concurrency, the 4 MB limits and failing or
slow starts can be driven exactly: a call with the body ``hold`` waits in its instance until the test releases it,
and a start can be held the same way. The real ``serve`` process and a real container are exercised by
tests/integration/test_serverless_process.py and tests/docker/test_serverless_docker.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

from helpers import free_port
from smbyoc.emulator.endpoint import DockerEndpoint, EndpointSpec
from smbyoc.emulator.front import Front
from smbyoc.emulator.hosted_endpoint import ContainerRouter
from smbyoc.emulator.serverless import (
    MAX_PAYLOAD_BYTES,
    SETUP_TIME_HEADER,
    ServerlessConfig,
    ServerlessVariant,
    serverless_limits,
)
from smbyoc.emulator.variants import EndpointRouter, Instance
from smbyoc.errors import ConfigError, ServingError

pytestmark = pytest.mark.usefixtures("front_event_loop")

ENDPOINT = "sls"
SETUP = SETUP_TIME_HEADER.lower()


def wait_until(condition: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class FakeContainer:
    """One instance's server: ``/invocations`` answers ``{"instance", "bytes"}``; the body ``hold`` waits until
    ``release`` is set, ``big`` answers 4 MB + 1 byte. ``close()`` stops it (what the variant calls)."""

    def __init__(self, name: str, release: threading.Event) -> None:
        self.name = name
        self.release = release
        self.holding = 0
        self.closed = False
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/invocations", self.invocations)
        self.runner = web.AppRunner(app)
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.runner.setup())
            self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def invocations(self, request: web.Request) -> web.Response:
        body = await request.read()
        if body == b"hold":
            self.holding += 1
            await asyncio.get_running_loop().run_in_executor(None, self.release.wait, 30)
            self.holding -= 1
        if body == b"big":
            return web.Response(body=b"x" * (MAX_PAYLOAD_BYTES + 1), content_type="application/octet-stream")
        return web.json_response({"instance": self.name, "bytes": len(body)})

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def _exit_reason(self) -> str | None:
        return "the container exited with status 137" if self.closed else None


class Factory:
    """A blocking ``start_instance``: names instances in turn; a start can be held (``start_gate``) or fail."""

    def __init__(self) -> None:
        self.release = threading.Event()  # held calls go on when set
        self.start_gate = threading.Event()
        self.start_gate.set()
        self.fail: str | None = None
        self.started = 0
        self.lock = threading.Lock()
        self.containers: list[FakeContainer] = []

    def __call__(self) -> Instance:
        assert self.start_gate.wait(30)
        if self.fail is not None:
            raise ServingError(self.fail)
        with self.lock:
            self.started += 1
            name = f"AllTraffic-{self.started}"
        container = FakeContainer(name, self.release)
        with self.lock:
            self.containers.append(container)
        return Instance(container.name, ContainerRouter(container.url), container)

    @property
    def running(self) -> list[FakeContainer]:
        return [c for c in self.containers if not c.closed]

    def close_all(self) -> None:
        self.release.set()
        self.start_gate.set()
        for container in self.containers:
            container.close()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def endpoint(aws_env: None) -> Iterator[Callable[..., tuple[ServerlessVariant, Factory, Any, Front]]]:
    """``endpoint(config dict, **variant options)``: a started front over one serverless variant and a boto3
    ``sagemaker-runtime`` client for it (no retries: each call is one request)."""
    made: list[tuple[Front, Factory]] = []

    def make(config: dict[str, int], **options: Any) -> tuple[ServerlessVariant, Factory, Any, Front]:
        import boto3
        from botocore.config import Config

        factory = Factory()
        variant = ServerlessVariant("AllTraffic", ServerlessConfig.from_request(config), factory, **options)
        front = Front(EndpointRouter([variant]), port=free_port(), endpoint_name=ENDPOINT)
        made.append((front, factory))
        front.start()
        client = boto3.client("sagemaker-runtime", endpoint_url=front.url,
                              config=Config(retries={"total_max_attempts": 1}, read_timeout=60))
        return variant, factory, client, front

    yield make
    for front, factory in made:
        factory.release.set()
        factory.start_gate.set()
        front.stop()
        factory.close_all()


def invoke(client: Any, body: bytes = b"[1]") -> tuple[dict[str, Any], dict[str, str]]:
    answer = client.invoke_endpoint(EndpointName=ENDPOINT, Body=body, ContentType="application/json")
    return json.loads(answer["Body"].read()), answer["ResponseMetadata"]["HTTPHeaders"]


def error_code(info: pytest.ExceptionInfo[Any]) -> tuple[str, int]:
    response = info.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


# ------------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize(("request_", "culprit"), [
    ({"MaxConcurrency": 1}, "ServerlessConfig.MemorySizeInMB: is required"),
    ({"MemorySizeInMB": 1536, "MaxConcurrency": 1}, "ServerlessConfig.MemorySizeInMB: must be one of 1024"),
    ({"MemorySizeInMB": 7168, "MaxConcurrency": 1}, "ServerlessConfig.MemorySizeInMB: must be one of"),
    ({"MemorySizeInMB": "2048", "MaxConcurrency": 1}, "ServerlessConfig.MemorySizeInMB: must be an integer"),
    ({"MemorySizeInMB": 2048}, "ServerlessConfig.MaxConcurrency: is required"),
    ({"MemorySizeInMB": 2048, "MaxConcurrency": 0}, "ServerlessConfig.MaxConcurrency: must be from 1 to 200, not 0"),
    ({"MemorySizeInMB": 2048, "MaxConcurrency": 201}, "ServerlessConfig.MaxConcurrency: must be from 1 to 200"),
    ({"MemorySizeInMB": 2048, "MaxConcurrency": True}, "ServerlessConfig.MaxConcurrency: must be an integer"),
    ({"MemorySizeInMB": 2048, "MaxConcurrency": 5, "ProvisionedConcurrency": 0},
     "ServerlessConfig.ProvisionedConcurrency: must be from 1 to 200, not 0"),
    ({"MemorySizeInMB": 2048, "MaxConcurrency": 5, "ProvisionedConcurrency": 6},
     "ServerlessConfig.ProvisionedConcurrency: 6 is above MaxConcurrency 5"),
    ({"MemorySizeInMB": 2048, "MaxConcurrency": 5, "Memory": 1}, "ServerlessConfig.Memory: unknown field"),
])
def test_config_errors_name_the_field(request_: dict[str, Any], culprit: str) -> None:
    with pytest.raises(ConfigError) as info:
        ServerlessConfig.from_request(request_)
    assert str(info.value).startswith(culprit), str(info.value)


def test_config_accepts_the_documented_values_and_renders_them_back() -> None:
    for memory in (1024, 2048, 3072, 4096, 5120, 6144):
        config = ServerlessConfig.from_request({"MemorySizeInMB": memory, "MaxConcurrency": 200,
                                                "ProvisionedConcurrency": 200})
        assert config.to_request() == {"MemorySizeInMB": memory, "MaxConcurrency": 200, "ProvisionedConcurrency": 200}
    assert ServerlessConfig.from_request({"MemorySizeInMB": 2048, "MaxConcurrency": 5}).to_request() == {
        "MemorySizeInMB": 2048, "MaxConcurrency": 5}
    with pytest.raises(ConfigError, match=r"^EndpointConfig\.ProductionVariants\[0\]\.ServerlessConfig: must be an"):
        ServerlessConfig.from_request([], key="EndpointConfig.ProductionVariants[0].ServerlessConfig")


def test_config_fields_and_limits_match_botocore() -> None:
    import botocore.session

    from smbyoc.emulator.serverless import MAX_CONCURRENCY, MEMORY_SIZES, MIN_CONCURRENCY

    shape = botocore.session.get_session().get_service_model("sagemaker").shape_for(
        "ProductionVariantServerlessConfig")
    assert list(shape.members) == ["MemorySizeInMB", "MaxConcurrency", "ProvisionedConcurrency"]
    assert shape.required_members == ["MemorySizeInMB", "MaxConcurrency"]
    memory = shape.members["MemorySizeInMB"].metadata
    assert (memory["min"], memory["max"]) == (MEMORY_SIZES[0], MEMORY_SIZES[-1])
    for name in ("MaxConcurrency", "ProvisionedConcurrency"):
        limits = shape.members[name].metadata
        assert (limits["min"], limits["max"]) == (MIN_CONCURRENCY, MAX_CONCURRENCY)


def test_container_limits_follow_the_memory_size() -> None:
    limits = serverless_limits(ServerlessConfig(1024, 5))
    assert limits.memory_bytes == 1024 * 1024 * 1024
    assert limits.vcpus == pytest.approx(1024 / 1769, abs=1e-3)
    assert serverless_limits(ServerlessConfig(6144, 5)).vcpus == pytest.approx(6144 / 1769, abs=1e-3)
    spec = EndpointSpec(None, port=free_port(), instance_type="ml.m5.4xlarge", resources=limits)
    docker = DockerEndpoint(spec, client=None, image="smbyoc/serve:cpu", sink=None)
    try:
        args = docker.container_args()
    finally:
        docker.close()
    # the serverless limits replace the instance type's (16 vCPUs, 64 GiB)
    assert args["mem_limit"] == 1024 * 1024 * 1024
    assert args["nano_cpus"] == int(round(1024 / 1769, 3) * 1e9)
    assert "device_requests" not in args


# ------------------------------------------------------------------------------------------------ behaviour
def test_cold_start_warm_call_and_scale_to_zero(endpoint: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="smbyoc.emulator.serverless")
    variant, factory, client, _ = endpoint({"MemorySizeInMB": 2048, "MaxConcurrency": 5}, idle_timeout=0.5)
    assert factory.containers == []  # nothing runs before the first call
    assert variant.describe()["Statistics"]["CurrentInstances"] == 0

    body, headers = invoke(client)
    assert body == {"instance": "AllTraffic-1", "bytes": 3}
    assert int(headers[SETUP]) >= 0 and headers["x-amzn-invoked-production-variant"] == "AllTraffic"
    assert any("cold start of instance AllTraffic-1 took" in r.getMessage() for r in caplog.records)
    body, headers = invoke(client)  # warm: the same instance, no setup time
    assert body["instance"] == "AllTraffic-1" and SETUP not in headers

    wait_until(lambda: factory.containers[0].closed, what="the idle instance to be stopped")
    stats = variant.describe()["Statistics"]
    assert stats["CurrentInstances"] == 0 and stats["IdleStops"] == 1 and stats["ColdStarts"] == 1

    body, headers = invoke(client)  # scaled to zero: a new cold start
    assert body["instance"] == "AllTraffic-2" and SETUP in headers
    described = variant.describe()
    assert described["CurrentServerlessConfig"] == {"MemorySizeInMB": 2048, "MaxConcurrency": 5}
    assert described["Statistics"]["ColdStarts"] == 2 and described["Statistics"]["Invocations"] == 3
    assert described["Statistics"]["LastModelSetupTimeMs"] is not None


def test_concurrent_calls_wait_for_the_same_cold_start(endpoint: Any) -> None:
    variant, factory, client, _ = endpoint({"MemorySizeInMB": 1024, "MaxConcurrency": 4}, per_instance=4)
    factory.start_gate.clear()
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        calls = [pool.submit(invoke, client) for _ in range(3)]
        wait_until(lambda: variant.in_flight == 3, what="three calls in flight")
        assert len(variant._starting) == 1 and variant._starting[0].claimed == 3
        factory.start_gate.set()
        answers = [c.result(30) for c in calls]
    assert {body["instance"] for body, _ in answers} == {"AllTraffic-1"}
    assert len(factory.containers) == 1
    assert len({headers[SETUP] for _, headers in answers}) == 1  # one start, one setup time for all three
    assert variant.describe()["Statistics"]["ColdStarts"] == 1


def test_throttled_past_max_concurrency_and_scaled_out_below_it(endpoint: Any) -> None:
    from botocore.exceptions import ClientError

    variant, factory, client, _ = endpoint({"MemorySizeInMB": 1024, "MaxConcurrency": 2})
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        held = [pool.submit(invoke, client, b"hold") for _ in range(2)]
        wait_until(lambda: sum(c.holding for c in factory.containers) == 2, what="two calls held")
        # one call per instance: the second concurrent call started a second instance
        assert len(factory.containers) == 2
        with pytest.raises(ClientError) as info:
            invoke(client)
        assert error_code(info) == ("ThrottlingException", 400)
        assert "MaxConcurrency of 2" in info.value.response["Error"]["Message"]
        # refused at once: both held calls are still held
        assert sum(c.holding for c in factory.containers) == 2 and not any(h.done() for h in held)
        factory.release.set()
        assert {h.result(30)[0]["instance"] for h in held} == {"AllTraffic-1", "AllTraffic-2"}
    body, _ = invoke(client)  # below the cap again
    assert body["bytes"] == 3
    stats = variant.describe()["Statistics"]
    assert stats["Throttled"] == 1 and stats["ColdStarts"] == 2 and stats["CurrentInstances"] == 2


def test_provisioned_concurrency_is_warm_at_open_and_stays(endpoint: Any) -> None:
    variant, factory, client, _ = endpoint(
        {"MemorySizeInMB": 2048, "MaxConcurrency": 2, "ProvisionedConcurrency": 1}, idle_timeout=0.3)
    assert len(factory.containers) == 1  # started (and healthy) before the front listened
    assert variant.describe()["Statistics"]["ProvisionedStarts"] == 1
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        held = pool.submit(invoke, client, b"hold")
        wait_until(lambda: factory.containers[0].holding == 1, what="a call held on the warm instance")
        body, headers = invoke(client)  # the warm one is busy: a cold start
        assert body["instance"] == "AllTraffic-2" and SETUP in headers
        factory.release.set()
        first, first_headers = held.result(30)
    assert first["instance"] == "AllTraffic-1" and SETUP not in first_headers  # warm: no cold start
    # both go idle; the reaper stops the surplus one only, in the same pass
    # (idle_stops counts the decision; the instance's own stop finishes a moment later)
    wait_until(lambda: variant.serverless_stats.idle_stops == 1 and len(factory.running) == 1,
               what="the surplus instance to be stopped")
    assert variant.describe()["Statistics"]["CurrentInstances"] == 1 and variant.serverless_stats.idle_stops == 1
    body, headers = invoke(client)
    assert SETUP not in headers and body["instance"] == factory.running[0].name


def test_payload_limits_and_invocation_timeout(endpoint: Any) -> None:
    variant, factory, client, _ = endpoint({"MemorySizeInMB": 1024, "MaxConcurrency": 2}, invocation_timeout=0.5)
    body, _ = invoke(client, b"x" * MAX_PAYLOAD_BYTES)
    assert body["bytes"] == MAX_PAYLOAD_BYTES
    with pytest.raises(client.exceptions.ValidationError, match="4,194,305 bytes; the limit of a serverless endpoint"):
        invoke(client, b"x" * (MAX_PAYLOAD_BYTES + 1))
    with pytest.raises(client.exceptions.ModelError, match="the model's response has 4,194,305 bytes") as info:
        invoke(client, b"big")
    assert info.value.response["OriginalStatusCode"] == 200
    with pytest.raises(client.exceptions.ModelError, match="timed out") as timed_out:
        invoke(client, b"hold")
    assert error_code(timed_out) == ("ModelError", 424)
    factory.release.set()
    assert variant.describe()["Statistics"]["InFlight"] == 0


def test_a_failing_start_is_service_unavailable_and_the_next_call_retries(endpoint: Any,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="smbyoc.emulator.serverless")
    variant, factory, client, _ = endpoint({"MemorySizeInMB": 1024, "MaxConcurrency": 2})
    factory.fail = "serve exited with status 1\nlast log lines:\nValueError: this model is broken"
    with pytest.raises(client.exceptions.ServiceUnavailable, match="could not start an instance: serve exited") as info:
        invoke(client)
    assert error_code(info) == ("ServiceUnavailable", 503)
    assert any("this model is broken" in r.getMessage() for r in caplog.records)  # the log lines in the log
    assert variant.describe()["Statistics"]["FailedStarts"] == 1
    factory.fail = None
    body, headers = invoke(client)
    assert body["instance"] == "AllTraffic-1" and SETUP in headers


def test_a_start_over_the_cold_start_limit_is_model_not_ready(endpoint: Any) -> None:
    from botocore.exceptions import ClientError

    variant, factory, client, _ = endpoint({"MemorySizeInMB": 1024, "MaxConcurrency": 2}, cold_start_timeout=0.3)
    factory.start_gate.clear()
    with pytest.raises(ClientError) as info:
        invoke(client)
    assert error_code(info) == ("ModelNotReadyException", 429)
    assert "still being provisioned" in info.value.response["Error"]["Message"]
    factory.start_gate.set()  # the start goes on and its instance serves the next call
    wait_until(lambda: len(variant.instances) == 1, what="the slow instance to join")
    body, headers = invoke(client)
    assert body["instance"] == "AllTraffic-1" and SETUP not in headers
    assert variant.describe()["Statistics"]["NotReady"] == 1 and len(factory.containers) == 1


def test_a_dead_instance_is_replaced(endpoint: Any) -> None:
    variant, factory, client, _ = endpoint({"MemorySizeInMB": 1024, "MaxConcurrency": 2})
    invoke(client)
    factory.containers[0].close()  # killed behind the variant's back (say, out of memory)
    with pytest.raises(client.exceptions.ServiceUnavailable):
        invoke(client)
    wait_until(lambda: variant.instances == [], what="the dead instance to be dropped")
    body, headers = invoke(client)
    assert body["instance"] == "AllTraffic-2" and SETUP in headers


def test_update_changes_provisioned_and_max_concurrency(endpoint: Any) -> None:
    from smbyoc.emulator.front import FrontError

    variant, factory, _, front = endpoint({"MemorySizeInMB": 1024, "MaxConcurrency": 3})

    def update(**changes: int) -> None:
        assert front._loop is not None
        asyncio.run_coroutine_threadsafe(variant.update(**changes), front._loop).result(10)

    update(provisioned_concurrency=2)
    wait_until(lambda: len(variant.instances) == 2, what="two warm instances")
    assert variant.describe()["CurrentServerlessConfig"] == {"MemorySizeInMB": 1024, "MaxConcurrency": 3,
                                                             "ProvisionedConcurrency": 2}
    with pytest.raises(FrontError, match="ServerlessUpdateConfig.ProvisionedConcurrency: 2 is above MaxConcurrency 1"):
        update(max_concurrency=1)
    assert variant.config.max_concurrency == 3
