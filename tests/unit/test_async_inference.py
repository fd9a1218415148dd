"""Asynchronous inference (contract-endpoints.md §6): a real endpoint front with an AsyncEndpoint behind it, called
with unmodified boto3; the container is a fake router that echoes, fails, hangs or waits on demand."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from helpers import free_port
from smbyoc.emulator.async_inference import DEFAULT_MAX_CONCURRENCY, AsyncEndpoint, current_invocation_timeout
from smbyoc.emulator.front import Call, Front, FrontError, Reply
from smbyoc.errors import ConfigError, ServingError

pytestmark = pytest.mark.usefixtures("front_event_loop")

NAME = "churn-async"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
FIXED_TIME = 1643150760.5  # 2022-01-25T22:46:00.500Z


class FakeRouter:
    """The endpoint: ``call`` is its invocation path (what AsyncEndpoint gets), ``invoke`` its sync route."""

    def __init__(self, open_gate: bool = True) -> None:
        self.gate = threading.Event()
        if open_gate:
            self.gate.set()
        self.endpoint: AsyncEndpoint | None = None
        self.calls: list[Call] = []
        self.timeouts: list[float | None] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def open(self, session: Any) -> None:
        pass

    async def close(self) -> None:
        pass

    async def invoke(self, call: Call) -> Reply:
        assert self.endpoint is not None
        self.endpoint.refuse_sync()

    async def call(self, call: Call) -> Reply:
        self.calls.append(call)
        self.timeouts.append(current_invocation_timeout())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if call.body == b"fail":
                return Reply(500, b"boom", {"Content-Type": "text/plain"})
            if call.body == b"hang":
                await asyncio.sleep(3600)
            if call.body == b"unreachable":
                raise FrontError(503, "ServiceUnavailable", "the container cannot be reached: refused")
            while not self.gate.is_set():
                await asyncio.sleep(0.01)
            return Reply(200, b"echo:" + call.body, {"Content-Type": call.header("Accept") or "text/plain"})
        finally:
            self.in_flight -= 1


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"not true within {timeout} s: {predicate}")


def path_of(uri: str) -> Path:
    assert uri.startswith("file:///"), uri
    return Path(unquote(urlsplit(uri).path))


def config(where: Path, **extra: Any) -> dict[str, Any]:
    output: dict[str, Any] = {"S3OutputPath": str(where / "out"), "S3FailurePath": str(where / "failed")}
    notification = extra.pop("notification", None)
    if notification is not None:
        output["NotificationConfig"] = notification
    document: dict[str, Any] = {"OutputConfig": output}
    if "concurrency" in extra:
        document["ClientConfig"] = {"MaxConcurrentInvocationsPerInstance": extra.pop("concurrency")}
    assert not extra
    return document


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def client(url: str, *, validate: bool = True) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("sagemaker-runtime", endpoint_url=url,
                        config=Config(retries={"total_max_attempts": 1}, parameter_validation=validate))


@contextlib.contextmanager
def served(state: Path, document: dict[str, Any], router: FakeRouter,
           **kwargs: Any) -> Iterator[tuple[Any, AsyncEndpoint]]:
    endpoint = AsyncEndpoint(document, NAME, state, router.call, **kwargs)
    router.endpoint = endpoint
    front = Front(router, port=free_port(), endpoint_name=NAME, async_invocations=endpoint)
    front.start()
    try:
        yield client(front.url), endpoint
    finally:
        front.stop()


def queued(state: Path) -> list[str]:
    return sorted(p.name for p in (state / "queue").glob("*.json"))


# ------------------------------------------------------------------------------------------ the happy paths
def test_inline_body_is_queued_invoked_and_stored(tmp_path: Path) -> None:
    router = FakeRouter()
    with served(tmp_path / "state", config(tmp_path), router) as (rt, endpoint):
        answer = rt.invoke_endpoint_async(EndpointName=NAME, Body=b"hello", ContentType="text/csv",
                                          Accept="application/json", CustomAttributes="c=1", InferenceId="id-1")
        assert answer["ResponseMetadata"]["HTTPStatusCode"] == 202
        assert answer["InferenceId"] == "id-1"
        output, failure = path_of(answer["OutputLocation"]), path_of(answer["FailureLocation"])
        request_id = re.fullmatch(rf"({UUID})\.out", output.name)
        assert request_id is not None and output.parent == tmp_path / "out"
        assert failure == tmp_path / "failed" / f"{request_id.group(1)}-error.out"
        wait_until(output.exists)
        assert output.read_bytes() == b"echo:hello"
        assert not failure.exists()
        assert dict(router.calls[0].headers) == {
            "Content-Type": "text/csv", "Accept": "application/json", "X-Amzn-SageMaker-Custom-Attributes": "c=1",
            "X-Amzn-SageMaker-Inference-Id": "id-1"}
        assert router.timeouts == [900.0]  # InvocationTimeoutSeconds' default reaches the invocation path
        wait_until(lambda: endpoint.stats().completed == 1 and not queued(tmp_path / "state"))
        stats = endpoint.stats()
        assert (stats.accepted, stats.failed, stats.approximate_backlog_size, stats.in_flight) == (1, 0, 0, 0)
    assert list((tmp_path / "out").iterdir()) == [output]  # no temporary file left behind


def test_input_location_generated_id_extension_and_filename(tmp_path: Path) -> None:
    data = tmp_path / "in put.csv"
    data.write_bytes(b"1,2,3")
    router = FakeRouter()
    with served(tmp_path / "state", config(tmp_path), router) as (rt, _):
        plain = rt.invoke_endpoint_async(EndpointName=NAME, InputLocation=str(data), InvocationTimeoutSeconds=5)
        assert re.fullmatch(UUID, plain["InferenceId"])
        output = path_of(plain["OutputLocation"])
        assert output == tmp_path / "out" / f"{plain['InferenceId']}.out"
        assert path_of(plain["FailureLocation"]) == tmp_path / "failed" / f"{plain['InferenceId']}-error.out"
        named = rt.invoke_endpoint_async(EndpointName=NAME, InputLocation=data.as_uri(),
                                         S3OutputPathExtension="2024/runs/", Filename="result.json")
        assert path_of(named["OutputLocation"]) == tmp_path / "out" / "2024" / "runs" / "result.json"
        assert path_of(named["FailureLocation"]) == tmp_path / "failed" / "2024" / "runs" / "result-error.out"
        wait_until(lambda: output.exists() and path_of(named["OutputLocation"]).exists())
        assert output.read_bytes() == path_of(named["OutputLocation"]).read_bytes() == b"echo:1,2,3"
        assert router.timeouts == [5.0, 900.0]
        assert "Content-Type" not in router.calls[0].headers  # no ContentType sent, none invented


# ------------------------------------------------------------------------------------------ failures
def test_container_errors_timeouts_and_unreachable_go_to_the_failure_path(tmp_path: Path) -> None:
    router = FakeRouter()
    with served(tmp_path / "state", config(tmp_path), router) as (rt, endpoint):
        failed = rt.invoke_endpoint_async(EndpointName=NAME, Body=b"fail")
        hung = rt.invoke_endpoint_async(EndpointName=NAME, Body=b"hang", InvocationTimeoutSeconds=1)
        gone = rt.invoke_endpoint_async(EndpointName=NAME, Body=b"unreachable")
        paths = [path_of(a["FailureLocation"]) for a in (failed, hung, gone)]
        wait_until(lambda: all(p.exists() for p in paths))
        assert paths[0].read_bytes() == b"boom"  # the container's own error body
        assert paths[1].read_text().startswith("ModelError: Your invocation timed out")
        assert "InvocationTimeoutSeconds 1" in paths[1].read_text()
        assert paths[2].read_text() == "ServiceUnavailable: the container cannot be reached: refused"
        assert not any(path_of(a["OutputLocation"]).exists() for a in (failed, hung, gone))
        wait_until(lambda: endpoint.stats().failed == 3 and not queued(tmp_path / "state"))
        assert endpoint.stats().completed == 0


def test_input_deleted_before_processing_fails_cleanly(tmp_path: Path) -> None:
    first, second = tmp_path / "a.bin", tmp_path / "b.bin"
    first.write_bytes(b"a")
    second.write_bytes(b"b")
    router = FakeRouter(open_gate=False)
    with served(tmp_path / "state", config(tmp_path, concurrency=1), router) as (rt, endpoint):
        blocking = rt.invoke_endpoint_async(EndpointName=NAME, InputLocation=str(first))
        wait_until(lambda: router.in_flight == 1)
        doomed = rt.invoke_endpoint_async(EndpointName=NAME, InputLocation=str(second))
        second.unlink()
        router.gate.set()
        failure = path_of(doomed["FailureLocation"])
        wait_until(failure.exists)
        assert failure.read_text().startswith(f"ClientError: the input {second} cannot be read")
        assert path_of(blocking["OutputLocation"]).read_bytes() == b"echo:a"
        assert not path_of(doomed["OutputLocation"]).exists()
        wait_until(lambda: endpoint.stats().failed == 1 and endpoint.stats().completed == 1)


def test_an_output_that_cannot_be_written_becomes_a_failure(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "blocker").write_text("a file where the extension wants a directory")
    with served(tmp_path / "state", config(tmp_path), FakeRouter()) as (rt, endpoint):
        answer = rt.invoke_endpoint_async(EndpointName=NAME, Body=b"x", S3OutputPathExtension="blocker")
        failure = path_of(answer["FailureLocation"])
        wait_until(failure.exists)
        assert failure.read_text().startswith(
            f"InternalFailure: the output cannot be written to {path_of(answer['OutputLocation'])}: ")
        wait_until(lambda: endpoint.stats().failed == 1 and not queued(tmp_path / "state"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["blocker"]


def test_ttl_expiry_writes_a_failure_and_counts_expired_requests(tmp_path: Path) -> None:
    now = [1_000_000.0]
    router = FakeRouter(open_gate=False)
    with served(tmp_path / "state", config(tmp_path, concurrency=1), router, clock=lambda: now[0],
                tick=0.05) as (rt, endpoint):
        running = rt.invoke_endpoint_async(EndpointName=NAME, Body=b"first", RequestTTLSeconds=60)
        wait_until(lambda: router.in_flight == 1)
        waiting = rt.invoke_endpoint_async(EndpointName=NAME, Body=b"second", RequestTTLSeconds=60)
        patient = rt.invoke_endpoint_async(EndpointName=NAME, Body=b"third")  # default TTL: 6 hours
        now[0] += 61  # the queued request with a 60 s TTL expires, the one in flight does not
        failure = path_of(waiting["FailureLocation"])
        wait_until(failure.exists)
        assert failure.read_text() == ("RequestExpired: the request waited 61 s in the queue, longer than its "
                                       "RequestTTLSeconds (60)")
        wait_until(lambda: endpoint.stats().expired_requests == 1)
        assert endpoint.stats().approximate_backlog_size == 2
        router.gate.set()
        wait_until(lambda: path_of(patient["OutputLocation"]).exists())
        assert path_of(running["OutputLocation"]).read_bytes() == b"echo:first"
        assert [c.body for c in router.calls] == [b"first", b"third"]
        assert not path_of(waiting["OutputLocation"]).exists()
        stats = wait_until(lambda: (s := endpoint.stats()).completed == 2 and s)
        assert (stats.failed, stats.expired_requests, stats.time_in_backlog_ms_max) == (0, 1, 61_000.0)


def test_concurrency_cap_per_instance_and_fifo_order(tmp_path: Path) -> None:
    router = FakeRouter(open_gate=False)
    with served(tmp_path / "state", config(tmp_path, concurrency=2), router, instances=2) as (rt, endpoint):
        answers = [rt.invoke_endpoint_async(EndpointName=NAME, Body=f"r{i}".encode(), InferenceId=f"r{i}")
                   for i in range(10)]
        wait_until(lambda: router.in_flight == 4)
        stats = endpoint.stats()
        assert (stats.in_flight, stats.approximate_backlog_size, stats.approximate_backlog_size_per_instance) == (
            4, 10, 5.0)
        router.gate.set()
        wait_until(lambda: all(path_of(a["OutputLocation"]).exists() for a in answers))
        assert router.max_in_flight == 4
        assert [c.header("X-Amzn-SageMaker-Inference-Id") for c in router.calls] == [f"r{i}" for i in range(10)]


def test_default_concurrency_and_scale_to_zero(tmp_path: Path) -> None:
    router = FakeRouter(open_gate=False)
    with served(tmp_path / "state", config(tmp_path), router, instances=0) as (rt, endpoint):
        assert endpoint.max_concurrency == DEFAULT_MAX_CONCURRENCY
        answers = [rt.invoke_endpoint_async(EndpointName=NAME, Body=b"x") for _ in range(6)]
        stats = endpoint.stats()
        assert (stats.approximate_backlog_size, stats.has_backlog_without_capacity, stats.in_flight) == (6, 1, 0)
        endpoint.set_instances(1)
        wait_until(lambda: router.in_flight == DEFAULT_MAX_CONCURRENCY)
        assert endpoint.stats().has_backlog_without_capacity == 0
        router.gate.set()
        wait_until(lambda: all(path_of(a["OutputLocation"]).exists() for a in answers))
        assert router.max_in_flight == DEFAULT_MAX_CONCURRENCY


# ------------------------------------------------------------------------------------------ notifications
def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_notifications_to_files_with_the_documented_schema(tmp_path: Path) -> None:
    ok_topic, error_topic = tmp_path / "topics" / "ok.jsonl", tmp_path / "topics" / "errors.jsonl"
    notification = {"SuccessTopic": str(ok_topic), "ErrorTopic": error_topic.as_uri(),
                    "IncludeInferenceResponseIn": ["SUCCESS_NOTIFICATION_TOPIC"]}
    small, big = tmp_path / "small.csv", tmp_path / "big.bin"
    small.write_bytes(b"1,2")
    big.write_bytes(b"z" * (128 * 1024))  # the echo answer is 5 bytes over 128 KB
    router = FakeRouter()
    test = {"eventVersion": "1.0", "eventSource": "aws:sagemaker", "eventName": "TestNotification"}
    with served(tmp_path / "state", config(tmp_path, notification=notification), router,
                clock=lambda: FIXED_TIME) as (rt, endpoint):
        assert lines(ok_topic) == [test] and lines(error_topic) == [test]
        done = rt.invoke_endpoint_async(EndpointName=NAME, InputLocation=str(small), ContentType="text/csv",
                                        Accept="application/json", InferenceId="n-1")
        wait_until(lambda: len(lines(ok_topic)) == 2)
        large = rt.invoke_endpoint_async(EndpointName=NAME, InputLocation=str(big), InferenceId="n-2")
        wait_until(lambda: len(lines(ok_topic)) == 3)
        failed = rt.invoke_endpoint_async(EndpointName=NAME, Body=b"fail", InferenceId="n-3")
        wait_until(lambda: len(lines(error_topic)) == 2)
        wait_until(lambda: not queued(tmp_path / "state"))
        assert endpoint.stats().notification_errors == 0
    head = {"awsRegion": "local", "eventTime": "2022-01-25T22:46:00.500Z", "receivedTime": "2022-01-25T22:46:00.500Z"}
    tail = {"eventVersion": "1.0", "eventSource": "aws:sagemaker", "eventName": "InferenceResult"}
    expected_ok = {**head, "invocationStatus": "Completed",
                   "requestParameters": {"accept": "application/json", "contentType": "text/csv",
                                         "endpointName": NAME, "inputLocation": small.as_uri()},
                   "responseParameters": {"contentType": "application/json",
                                          "outputLocation": done["OutputLocation"], "responseBody": "echo:1,2"},
                   "inferenceId": "n-1", **tail}
    assert list(lines(ok_topic)[1].items()) == list(expected_ok.items())  # members and their order
    assert lines(ok_topic)[2]["responseParameters"] == {"contentType": "text/plain",
                                                        "outputLocation": large["OutputLocation"]}
    expected_error = {**head, "invocationStatus": "Failed",
                      "failureReason": 'ClientError: Received server error (500) from primary with message "boom". '
                                       "See the endpoint's log for more information.",
                      "requestParameters": {"endpointName": NAME},
                      "responseParameters": {"contentType": "text/plain",
                                             "failureLocation": failed["FailureLocation"]},
                      "inferenceId": "n-3", **tail}
    assert list(lines(error_topic)[1].items()) == list(expected_error.items())


def test_command_topic_and_sns_arn_topic(tmp_path: Path) -> None:
    sink = tmp_path / "from-command.jsonl"
    script = f"import sys; open({str(sink)!r}, 'a').write(sys.stdin.read())"
    command = "cmd:" + shlex.join([sys.executable, "-c", script])
    arn = "arn:aws:sns:us-east-1:123456789012:async-errors"
    notification = {"SuccessTopic": command, "ErrorTopic": arn,
                    "IncludeInferenceResponseIn": ["ERROR_NOTIFICATION_TOPIC"]}
    state = tmp_path / "state"
    with served(state, config(tmp_path, notification=notification), FakeRouter()) as (rt, _):
        rt.invoke_endpoint_async(EndpointName=NAME, Body=b"ok", InferenceId="c-1")
        rt.invoke_endpoint_async(EndpointName=NAME, Body=b"fail", InferenceId="c-2")
        errors = state / "notifications" / "async-errors.jsonl"
        wait_until(lambda: sink.exists() and len(lines(sink)) == 2 and errors.exists() and len(lines(errors)) == 2)
    assert [m["eventName"] for m in lines(sink)] == ["TestNotification", "InferenceResult"]
    assert lines(sink)[1]["inferenceId"] == "c-1" and "responseBody" not in lines(sink)[1]["responseParameters"]
    assert lines(errors)[1]["invocationStatus"] == "Failed"
    assert lines(errors)[1]["responseParameters"]["responseBody"] == "boom"  # ERROR_NOTIFICATION_TOPIC included


def test_a_failing_command_topic_is_counted_not_fatal(tmp_path: Path) -> None:
    notification = {"SuccessTopic": "cmd:" + shlex.join([sys.executable, "-c", "import sys; sys.exit(3)"])}
    with served(tmp_path / "state", config(tmp_path, notification=notification), FakeRouter()) as (rt, endpoint):
        answer = rt.invoke_endpoint_async(EndpointName=NAME, Body=b"ok")
        wait_until(lambda: path_of(answer["OutputLocation"]).exists())
        wait_until(lambda: endpoint.stats().notification_errors == 2)  # the test message and the result


# ------------------------------------------------------------------------------------------ bad requests
def expect_validation(rt: Any, match: str, **params: Any) -> None:
    with pytest.raises(rt.exceptions.ValidationError) as raised:
        rt.invoke_endpoint_async(EndpointName=NAME, **params)
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert re.search(match, raised.value.response["Error"]["Message"]), raised.value.response["Error"]["Message"]


@pytest.mark.parametrize(("params", "match"), [
    ({"ContentType": "t" * 1025}, "X-Amzn-SageMaker-Content-Type: the value has 1025 characters; the limit is 1024"),
    ({"Accept": "a" * 1025}, "X-Amzn-SageMaker-Accept: the value has 1025"),
    ({"CustomAttributes": "c" * 1025}, "X-Amzn-SageMaker-Custom-Attributes: the value has 1025"),
    ({"InferenceId": "i" * 65}, "X-Amzn-SageMaker-Inference-Id: the value has 65 characters; expected 1 to 64"),
    ({"RequestTTLSeconds": 59}, "X-Amzn-SageMaker-RequestTTLSeconds: 59 is out of range; expected 60 to 21600"),
    ({"RequestTTLSeconds": 21601}, "X-Amzn-SageMaker-RequestTTLSeconds: 21601 is out of range"),
    ({"InvocationTimeoutSeconds": 0}, "X-Amzn-SageMaker-InvocationTimeoutSeconds: 0 is out of range; expected 1 "),
    ({"InvocationTimeoutSeconds": 3601}, "X-Amzn-SageMaker-InvocationTimeoutSeconds: 3601 is out of range"),
    ({"S3OutputPathExtension": "s3:bucket/x"}, "X-Amzn-SageMaker-S3OutputPathExtension: 's3:bucket/x' must match"),
    ({"S3OutputPathExtension": "a/../../b"}, "X-Amzn-SageMaker-S3OutputPathExtension: .* '..' segment"),
    ({"S3OutputPathExtension": "x" * 513}, "X-Amzn-SageMaker-S3OutputPathExtension: the value has 513"),
    ({"Filename": "a.b.c"}, "X-Amzn-SageMaker-Filename: 'a.b.c' must start with a letter or digit"),
    ({"Filename": "-a"}, "X-Amzn-SageMaker-Filename: '-a' must start"),
    ({"Filename": "f" * 33}, "X-Amzn-SageMaker-Filename: the value has 33 characters; expected 1 to 32"),
])
def test_each_header_is_validated(tmp_path: Path, params: dict[str, Any], match: str) -> None:
    router = FakeRouter()
    endpoint = AsyncEndpoint(config(tmp_path), NAME, tmp_path / "state", router.call)
    front = Front(router, port=free_port(), endpoint_name=NAME, async_invocations=endpoint)
    front.start()
    try:
        expect_validation(client(front.url, validate=False), match, Body=b"x", **params)
        assert not queued(tmp_path / "state")
    finally:
        front.stop()


def test_body_xor_input_location_and_the_input_file(tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    data.write_bytes(b"1")
    (tmp_path / "folder").mkdir()
    with served(tmp_path / "state", config(tmp_path), FakeRouter()) as (rt, endpoint):
        expect_validation(rt, "mutually exclusive; provide exactly one", Body=b"x", InputLocation=str(data))
        expect_validation(rt, "provide exactly one of Body and InputLocation .* has neither")
        expect_validation(rt, "Body: the request body has 128,001 bytes; the limit is 128,000", Body=b"x" * 128_001)
        expect_validation(rt, r"X-Amzn-SageMaker-InputLocation s3://Bad_Bucket/key: bucket 'Bad_Bucket' is not a "
                          "valid name", InputLocation="s3://Bad_Bucket/key")
        expect_validation(rt, "X-Amzn-SageMaker-InputLocation s3://bucket/folder/: names a folder",
                          InputLocation="s3://bucket/folder/")
        expect_validation(rt, "X-Amzn-SageMaker-InputLocation: 'https://b.s3.amazonaws.com/k': S3 URIs are not "
                          "supported yet in the https:// form", InputLocation="https://b.s3.amazonaws.com/k")
        expect_validation(rt, "X-Amzn-SageMaker-InputLocation: 'data.csv' is a relative path",
                          InputLocation="data.csv")
        expect_validation(rt, f"X-Amzn-SageMaker-InputLocation: {tmp_path / 'missing.csv'} cannot be read: No such "
                          "file", InputLocation=str(tmp_path / "missing.csv"))
        expect_validation(rt, f"X-Amzn-SageMaker-InputLocation: {tmp_path / 'folder'} is not a regular file",
                          InputLocation=(tmp_path / "folder").as_uri())
        expect_validation(rt, "a file:// URI needs an absolute path", InputLocation="file://host/x")
        assert endpoint.stats().accepted == 0 and not queued(tmp_path / "state")
        ok = rt.invoke_endpoint_async(EndpointName=NAME, Body=b"x" * 128_000)  # the limit itself is fine
        wait_until(lambda: path_of(ok["OutputLocation"]).exists())


def test_local_inputs_only_where_the_front_may_read(tmp_path: Path) -> None:
    allowed, other = tmp_path / "inputs", tmp_path / "elsewhere"
    allowed.mkdir()
    other.mkdir()
    (allowed / "ok.csv").write_bytes(b"1")
    (other / "secret.csv").write_bytes(b"2")
    (allowed / "link.csv").symlink_to(other / "secret.csv")  # a link out of the root: where it leads counts
    header = "X-Amzn-SageMaker-InputLocation"
    # no roots, a loopback front: any file but the kernel's pseudo-file systems (/proc/self/environ: our secrets)
    with served(tmp_path / "state", config(tmp_path), FakeRouter()) as (rt, endpoint):
        for path in ("/proc/self/environ", "/sys/kernel/hostname", "/dev/null"):
            expect_validation(rt, f"{header}: {path} is in a kernel pseudo-file system", InputLocation=path)
        expect_validation(rt, f"{header}: 'file:///tmp/a%00b': a NUL character in the path",
                          InputLocation="file:///tmp/a%00b")
        ok = rt.invoke_endpoint_async(EndpointName=NAME, InputLocation=str(other / "secret.csv"))
        wait_until(lambda: path_of(ok["OutputLocation"]).exists())
    # roots: inside them only, links resolved first
    with served(tmp_path / "state", config(tmp_path), FakeRouter(), input_roots=(allowed,)) as (rt, endpoint):
        for path in (other / "secret.csv", allowed / "link.csv", allowed / ".." / "elsewhere" / "secret.csv"):
            expect_validation(rt, f"{header}: {re.escape(str(path))} is outside the directories inputs are read "
                              rf"from \(--async-input-root: {re.escape(str(allowed))}\)", InputLocation=str(path))
        ok = rt.invoke_endpoint_async(EndpointName=NAME, InputLocation=(allowed / "ok.csv").as_uri())
        wait_until(lambda: path_of(ok["OutputLocation"]).exists())
        assert path_of(ok["OutputLocation"]).read_bytes() == b"echo:1"
    # None (a front beyond loopback without roots): no local file at all; S3 still
    with served(tmp_path / "state", config(tmp_path), FakeRouter(), input_roots=None) as (rt, endpoint):
        expect_validation(rt, f"{header}: local files are not read by a front that listens beyond this machine",
                          InputLocation=str(allowed / "ok.csv"))
        assert endpoint.stats().accepted == 0


def test_an_input_replaced_by_a_link_out_of_the_root_after_acceptance_fails(tmp_path: Path) -> None:
    allowed = tmp_path / "inputs"
    allowed.mkdir()
    data, secret = allowed / "data.csv", tmp_path / "secret.csv"
    data.write_bytes(b"1")
    secret.write_bytes(b"2")
    router = FakeRouter(open_gate=False)
    with served(tmp_path / "state", config(tmp_path), router, input_roots=(allowed,),
                default_max_concurrency=1) as (rt, endpoint):
        first = rt.invoke_endpoint_async(EndpointName=NAME, Body=b"first")  # holds the only slot
        wait_until(lambda: router.in_flight == 1)
        answer = rt.invoke_endpoint_async(EndpointName=NAME, InputLocation=str(data))
        data.unlink()
        data.symlink_to(secret)
        router.gate.set()
        failure = path_of(answer["FailureLocation"])
        wait_until(failure.exists)
        assert "is outside the directories inputs are read from" in failure.read_text()
        assert b"echo:2" not in b"".join(c.body for c in router.calls)
        wait_until(lambda: path_of(first["OutputLocation"]).exists())


def test_a_non_integer_header_is_one_validation_error(tmp_path: Path) -> None:
    with served(tmp_path / "state", config(tmp_path), FakeRouter()) as (rt, _):
        url = f"{rt.meta.endpoint_url}/endpoints/{NAME}/async-invocations"
        request = urllib.request.Request(url, data=b"x", method="POST",
                                         headers={"X-Amzn-SageMaker-RequestTTLSeconds": "soon"})
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(request, timeout=10)
        assert raised.value.code == 400 and raised.value.headers["X-Amzn-ErrorType"] == "ValidationError"
        assert json.loads(raised.value.read())["Message"] == (
            "X-Amzn-SageMaker-RequestTTLSeconds: 'soon' is not an integer (expected 60 to 21600)")


def test_sync_invoke_endpoint_is_refused(tmp_path: Path) -> None:
    with served(tmp_path / "state", config(tmp_path), FakeRouter()) as (rt, _), pytest.raises(
            rt.exceptions.ValidationError, match="asynchronous endpoint .* accepts InvokeEndpointAsync only, not "
            "InvokeEndpoint"):
        rt.invoke_endpoint(EndpointName=NAME, Body=b"x")


def test_a_configuration_file_drives_the_endpoint(tmp_path: Path) -> None:
    from smbyoc.emulator.endpoint_config import load_endpoint_config

    document = {
        "EndpointName": NAME,
        "Models": [{"ModelName": "m", "PrimaryContainer": {"Image": "smbyoc/serve:cpu"}}],
        "EndpointConfig": {
            "EndpointConfigName": "c",
            "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "m", "InstanceType": "ml.m5.xlarge",
                                    "InitialInstanceCount": 1}],
            "AsyncInferenceConfig": {"ClientConfig": {"MaxConcurrentInvocationsPerInstance": 3},
                                     "OutputConfig": {
                                         "S3OutputPath": "./async/out", "S3FailurePath": "async/failed",
                                         "NotificationConfig": {
                                             "SuccessTopic": "arn:aws:sns:us-east-1:123456789012:done"}}}}}
    (tmp_path / "endpoint.json").write_text(json.dumps(document))
    definition = load_endpoint_config(tmp_path / "endpoint.json")
    assert definition.async_config is not None
    state = tmp_path / "state"
    router = FakeRouter()
    with served(state, dict(definition.async_config), router) as (rt, endpoint):
        assert endpoint.max_concurrency == 3
        answer = rt.invoke_endpoint_async(EndpointName=NAME, Body=b"x", InferenceId="from-file")
        assert path_of(answer["OutputLocation"]).parent == tmp_path / "async" / "out"
        assert path_of(answer["FailureLocation"]).parent == tmp_path / "async" / "failed"
        topic = state / "notifications" / "done.jsonl"
        wait_until(lambda: topic.exists() and len(lines(topic)) == 2)
    assert lines(topic)[1]["inferenceId"] == "from-file"
    assert path_of(answer["OutputLocation"]).read_bytes() == b"echo:x"


@pytest.mark.parametrize(("document", "match"), [
    ({}, "AsyncInferenceConfig.OutputConfig: required field is missing"),
    ({"OutputConfig": {"S3OutputPath": "s3://Bad_Bucket/out"}},
     "S3OutputPath s3://Bad_Bucket/out: bucket 'Bad_Bucket' is not a valid name"),
    ({"OutputConfig": {"S3OutputPath": "/o", "S3FailurePath": "https://b.s3.amazonaws.com/f"}},
     "S3FailurePath: 'https://b.s3.amazonaws.com/f': S3 URIs are not supported yet in the https:// form"),
    ({"OutputConfig": {"S3OutputPath": "out"}}, "S3OutputPath: 'out' is relative"),
    ({"OutputConfig": {"S3OutputPath": "/o"}, "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 0}},
     "MaxConcurrentInvocationsPerInstance: 0: expected an integer from 1 to 1000"),
    ({"OutputConfig": {"S3OutputPath": "/o", "NotificationConfig": {"SuccessTopic": "topics/ok.jsonl"}}},
     "SuccessTopic: 'topics/ok.jsonl': give an SNS topic ARN, an absolute file path"),
    ({"OutputConfig": {"S3OutputPath": "/o", "NotificationConfig": {"ErrorTopic": "cmd:"}}},
     "ErrorTopic: 'cmd:': the command is empty"),
])
def test_configuration_errors_name_the_member(tmp_path: Path, document: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        AsyncEndpoint(document, NAME, tmp_path, FakeRouter().call)


# ------------------------------------------------------------------------------------------ durability
def test_restart_recovers_every_accepted_request(tmp_path: Path) -> None:
    state = tmp_path / "state"
    blocked = FakeRouter(open_gate=False)
    with served(state, config(tmp_path, concurrency=2), blocked) as (rt, endpoint):
        answers = [rt.invoke_endpoint_async(EndpointName=NAME, Body=f"n{i}".encode(), InferenceId=f"n{i}")
                   for i in range(6)]
        wait_until(lambda: blocked.in_flight == 2)
        assert endpoint.stats().approximate_backlog_size == 6
    assert len(queued(state)) == 6  # stopped mid-queue: everything accepted is still on disk
    assert not (tmp_path / "out").exists()
    working = FakeRouter()
    with served(state, config(tmp_path, concurrency=2), working) as (_, endpoint):
        wait_until(lambda: endpoint.stats().completed == 6 and not queued(state))
        assert endpoint.stats().retried == 2  # the two that were in flight
    assert [c.header("X-Amzn-SageMaker-Inference-Id") for c in working.calls] == [f"n{i}" for i in range(6)]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        path_of(a["OutputLocation"]).name for a in answers)
    for i, answer in enumerate(answers):
        assert path_of(answer["OutputLocation"]).read_bytes() == f"echo:n{i}".encode()
    assert not (tmp_path / "failed").exists()
    assert sorted(p.name for p in (state / "queue").iterdir()) == []


def test_a_state_dir_serves_one_endpoint_at_a_time(tmp_path: Path) -> None:
    with served(tmp_path / "state", config(tmp_path), FakeRouter()):
        second = AsyncEndpoint(config(tmp_path), NAME, tmp_path / "state", FakeRouter().call)
        front = Front(FakeRouter(), port=free_port(), endpoint_name=NAME, async_invocations=second)
        with pytest.raises(ServingError, match="the asynchronous queue is in use by another endpoint process"):
            front.start()


HANGING_SERVER = """
import asyncio, json, sys, time
from pathlib import Path
from smbyoc.emulator.async_inference import AsyncEndpoint
from smbyoc.emulator.front import Front

class Hang:
    async def open(self, session): pass
    async def close(self): pass
    async def invoke(self, call): raise AssertionError
    async def call(self, call):
        await asyncio.sleep(3600)

state, document, port, ready = Path(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
router = Hang()
endpoint = AsyncEndpoint(document, "churn-async", state, router.call)
Front(router, port=port, endpoint_name="churn-async", async_invocations=endpoint).start()
ready.write_text("ready")
time.sleep(3600)
"""


def crash_while_in_flight(tmp_path: Path, document: dict[str, Any], send: int) -> list[dict[str, Any]]:
    """Serve from a child process whose container never answers, send ``send`` requests, wait until one is in
    flight, SIGKILL the child."""
    script, ready, port = tmp_path / "hanging_server.py", tmp_path / "ready", free_port()
    script.write_text(HANGING_SERVER)
    ready.unlink(missing_ok=True)
    markers = tmp_path / "state" / "queue"
    before = {p: p.read_text() for p in markers.glob("*.attempt")}
    child = subprocess.Popen([sys.executable, str(script), str(tmp_path / "state"), json.dumps(document), str(port),
                              str(ready)])
    try:
        wait_until(lambda: ready.exists() or child.poll() is not None, timeout=30)
        assert child.poll() is None
        rt = client(f"http://127.0.0.1:{port}")
        answers = [rt.invoke_endpoint_async(EndpointName=NAME, Body=f"k{i}".encode()) for i in range(send)]
        wait_until(lambda: {p: p.read_text() for p in markers.glob("*.attempt")} != before)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    return answers


def test_a_request_in_flight_when_the_process_dies_is_retried_once(tmp_path: Path) -> None:
    state, document = tmp_path / "state", config(tmp_path, concurrency=1)
    answers = crash_while_in_flight(tmp_path, document, send=3)
    assert len(queued(state)) == 3
    assert {p.name: p.read_text() for p in (state / "queue").glob("*.attempt")} == {
        queued(state)[0].replace(".json", ".attempt"): "1"}
    working = FakeRouter()
    with served(state, document, working) as (_, endpoint):
        wait_until(lambda: endpoint.stats().completed == 3 and not queued(state))
        assert endpoint.stats().retried == 1
    assert [c.body for c in working.calls] == [b"k0", b"k1", b"k2"]
    assert [path_of(a["OutputLocation"]).read_bytes() for a in answers] == [b"echo:k0", b"echo:k1", b"echo:k2"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        path_of(a["OutputLocation"]).name for a in answers)


def test_a_request_in_flight_at_two_deaths_fails(tmp_path: Path) -> None:
    state, document = tmp_path / "state", config(tmp_path, concurrency=1)
    answers = crash_while_in_flight(tmp_path, document, send=3)
    marker = queued(state)[0].replace(".json", ".attempt")
    crash_while_in_flight(tmp_path, document, send=0)  # the retry is in flight when it dies again
    assert {p.name: p.read_text() for p in (state / "queue").glob("*.attempt")} == {marker: "2"}
    working = FakeRouter()
    with served(state, document, working) as (_, endpoint):
        wait_until(lambda: endpoint.stats().completed == 2 and endpoint.stats().failed == 1 and not queued(state))
        assert endpoint.stats().retried == 0
    first = path_of(answers[0]["FailureLocation"])
    assert first.read_text() == ("InternalFailure: the endpoint stopped 2 times while this request was in flight; "
                                 "it is not retried again")
    assert not path_of(answers[0]["OutputLocation"]).exists()
    assert [c.body for c in working.calls] == [b"k1", b"k2"]
    assert [path_of(a["OutputLocation"]).read_bytes() for a in answers[1:]] == [b"echo:k1", b"echo:k2"]


# ------------------------------------------------------------------------------------------ S3 locations
BUCKET = "async-data"


@pytest.fixture()
def s3(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Any]:
    """A clean real S3 API (moto in server mode) reached only through ``endpoint_url`` (no ``AWS_ENDPOINT_URL*``
    in the environment: the endpoint must pass the URL on), its bucket, and a boto3 client for the test's own
    fixtures and checks."""
    import boto3

    for name in list(os.environ):
        if name.startswith("AWS_ENDPOINT_URL"):
            monkeypatch.delenv(name)
    for name, value in {"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
                        "AWS_CONFIG_FILE": "/nonexistent/config", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(name, value)
    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST"), timeout=10)
    store = boto3.client("s3", endpoint_url=moto_server)
    store.create_bucket(Bucket=BUCKET)
    return moto_server, store


def s3_config(**members: Any) -> dict[str, Any]:
    output = {"S3OutputPath": f"s3://{BUCKET}/out", "S3FailurePath": f"s3://{BUCKET}/failed", **members}
    return {"OutputConfig": output}


def key_of(uri: str) -> str:
    assert uri.startswith(f"s3://{BUCKET}/"), uri
    return uri[len(f"s3://{BUCKET}/"):]


def s3_object(store: Any, uri: str) -> tuple[bytes, str]:
    found = store.get_object(Bucket=BUCKET, Key=key_of(uri))
    return found["Body"].read(), found["ContentType"]


def s3_keys(store: Any, prefix: str = "") -> list[str]:
    return sorted(o["Key"] for o in store.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", ()))


def test_s3_input_output_failure_and_notifications(tmp_path: Path, s3: tuple[str, Any]) -> None:
    url, store = s3
    store.put_object(Bucket=BUCKET, Key="in/rows.csv", Body=b"1,2,3")
    topic = tmp_path / "topics" / "all.jsonl"
    document = s3_config(NotificationConfig={"SuccessTopic": str(topic), "ErrorTopic": str(topic)})
    router = FakeRouter()
    with served(tmp_path / "state", document, router, endpoint_url=url) as (rt, endpoint):
        done = rt.invoke_endpoint_async(EndpointName=NAME, InputLocation=f"s3://{BUCKET}/in/rows.csv",
                                        ContentType="text/csv", Accept="application/json", InferenceId="s3-1")
        request_id = re.fullmatch(rf"s3://{BUCKET}/out/({UUID})\.out", done["OutputLocation"])
        assert request_id is not None
        assert done["FailureLocation"] == f"s3://{BUCKET}/failed/{request_id.group(1)}-error.out"
        failed = rt.invoke_endpoint_async(EndpointName=NAME, Body=b"fail", S3OutputPathExtension="runs/7",
                                          Filename="r.json")
        assert (failed["OutputLocation"], failed["FailureLocation"]) == (
            f"s3://{BUCKET}/out/runs/7/r.json", f"s3://{BUCKET}/failed/runs/7/r-error.out")
        wait_until(lambda: endpoint.stats().completed == 1 and endpoint.stats().failed == 1)
        assert not queued(tmp_path / "state")
    (from_s3,) = [c for c in router.calls if c.body != b"fail"]  # the S3 read may let the inline one overtake
    assert (from_s3.body, from_s3.header("Content-Type")) == (b"1,2,3", "text/csv")
    assert s3_object(store, done["OutputLocation"]) == (b"echo:1,2,3", "application/json")
    assert s3_object(store, failed["FailureLocation"]) == (b"boom", "text/plain")  # the container's own body
    assert s3_keys(store) == sorted([key_of(done["OutputLocation"]), key_of(failed["FailureLocation"]),
                                     "in/rows.csv"])
    assert not (tmp_path / "state" / "queue").exists() or not list((tmp_path / "state" / "queue").iterdir())
    messages = [m for m in lines(topic) if m["eventName"] == "InferenceResult"]
    by_id = {m["inferenceId"]: m for m in messages}
    assert by_id["s3-1"]["requestParameters"]["inputLocation"] == f"s3://{BUCKET}/in/rows.csv"
    assert by_id["s3-1"]["responseParameters"]["outputLocation"] == done["OutputLocation"]
    assert by_id[failed["InferenceId"]]["responseParameters"]["failureLocation"] == failed["FailureLocation"]


def test_s3_input_problems_fail_into_the_failure_location(tmp_path: Path, s3: tuple[str, Any],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from smbyoc.emulator.async_inference import request as request_module

    url, store = s3
    store.put_object(Bucket=BUCKET, Key="in/big.bin", Body=b"x" * 11)
    store.put_object(Bucket=BUCKET, Key="in/later-deleted.bin", Body=b"x")
    monkeypatch.setattr(request_module, "MAX_PAYLOAD", 10)  # the 1 GB limit, checked from the object's size
    router = FakeRouter(open_gate=False)
    with served(tmp_path / "state", s3_config(), router, endpoint_url=url,
                default_max_concurrency=1) as (rt, endpoint):
        blocking = rt.invoke_endpoint_async(EndpointName=NAME, Body=b"first")
        wait_until(lambda: router.in_flight == 1)
        answers = [rt.invoke_endpoint_async(EndpointName=NAME, InputLocation=f"s3://{BUCKET}/{key}")
                   for key in ("in/missing.csv", "in/big.bin", "in/later-deleted.bin")]
        store.delete_object(Bucket=BUCKET, Key="in/later-deleted.bin")  # accepted, gone before it runs
        router.gate.set()
        wait_until(lambda: endpoint.stats().failed == 3 and endpoint.stats().completed == 1)
    reasons = [s3_object(store, a["FailureLocation"])[0].decode() for a in answers]
    assert reasons == [
        f"ClientError: the input s3://{BUCKET}/in/missing.csv cannot be read: no such object",
        f"ClientError: the input s3://{BUCKET}/in/big.bin cannot be read: the object has 11 bytes; the limit is 10",
        f"ClientError: the input s3://{BUCKET}/in/later-deleted.bin cannot be read: no such object"]
    assert [c.body for c in router.calls] == [b"first"]  # none of the three reached the container
    assert s3_object(store, blocking["OutputLocation"])[0] == b"echo:first"


def test_s3_input_without_credentials_fails_the_request_not_the_endpoint(tmp_path: Path, s3: tuple[str, Any],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    url, _ = s3
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    with served(tmp_path / "state", config(tmp_path), FakeRouter(), endpoint_url=url) as (signed, endpoint):
        rt = unsigned_client(signed.meta.endpoint_url)  # the test's own client has no credentials to sign with
        answer = rt.invoke_endpoint_async(EndpointName=NAME, InputLocation=f"s3://{BUCKET}/in/x.csv")
        failure = path_of(answer["FailureLocation"])
        wait_until(failure.exists)
        assert failure.read_text().startswith(f"ClientError: the input s3://{BUCKET}/in/x.csv cannot be read: use "
                                              "s3: no AWS credentials found in the credential chain")
        wait_until(lambda: endpoint.stats().failed == 1 and not queued(tmp_path / "state"))


def unsigned_client(url: str) -> Any:
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    return boto3.client("sagemaker-runtime", endpoint_url=url, region_name="us-east-1",
                        config=Config(signature_version=UNSIGNED, retries={"total_max_attempts": 1}))


def test_s3_locations_are_checked_at_start_and_at_submit(tmp_path: Path, s3: tuple[str, Any]) -> None:
    url, _ = s3
    with pytest.raises(ConfigError, match=r"^--endpoint-url ftp://store: expected an http:// or https:// URL"):
        AsyncEndpoint(s3_config(), NAME, tmp_path / "state", FakeRouter().call, endpoint_url="ftp://store")
    missing = AsyncEndpoint(s3_config(S3FailurePath="s3://no-such-bucket/failed"), NAME, tmp_path / "state",
                            FakeRouter().call, endpoint_url=url)
    front = Front(FakeRouter(), port=free_port(), endpoint_name=NAME, async_invocations=missing)
    with pytest.raises(ConfigError, match=r"^AsyncInferenceConfig.OutputConfig.S3FailurePath s3://no-such-bucket/"
                                          r"failed: no such bucket 'no-such-bucket'$"):
        front.start()
    assert not (tmp_path / "state" / "queue").exists()  # said before anything was taken
    long_prefix = f"s3://{BUCKET}/" + "p" * 600
    with served(tmp_path / "state", s3_config(S3OutputPath=long_prefix), FakeRouter(), endpoint_url=url) as (rt, _):
        expect_validation(rt, r"X-Amzn-SageMaker-S3OutputPathExtension: s3://async-data/p+/e+/[-0-9a-f]+\.out: "
                          "object keys are at most 1024 bytes", Body=b"x", S3OutputPathExtension="e" * 500)
        assert not queued(tmp_path / "state")


@contextlib.contextmanager
def another_s3_store() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A second moto server of the test's own, which the test can take away (an S3 outage)."""
    import shutil

    server = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    assert server is not None
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        def up() -> bool:
            try:
                with urllib.request.urlopen(f"{url}/moto-api/", timeout=2):
                    return True
            except OSError:
                assert proc.poll() is None, "moto_server exited"
                return False

        wait_until(up, timeout=60)
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_results_kept_while_s3_is_unreachable_are_stored_after_a_restart(tmp_path: Path,
                                                                         s3: tuple[str, Any]) -> None:
    import boto3

    url, store = s3
    state = tmp_path / "state"
    first = FakeRouter()
    with another_s3_store() as (outage_url, proc):
        boto3.client("s3", endpoint_url=outage_url).create_bucket(Bucket=BUCKET)
        with served(state, s3_config(), first, endpoint_url=outage_url) as (rt, endpoint):
            proc.terminate()  # S3 goes away after the start-up check: the results cannot be uploaded
            proc.wait(timeout=10)
            answers = [rt.invoke_endpoint_async(EndpointName=NAME, Body=f"k{i}".encode()) for i in range(3)]
            wait_until(lambda: endpoint.stats().results_unwritable == 3, timeout=60)
            assert endpoint.stats().failed == 0  # an unreachable store does not turn an output into a failure
    assert len(queued(state)) == 3
    assert len(list((state / "queue").glob("*.result.info"))) == 3  # each result kept with its request
    again = FakeRouter()
    with served(state, s3_config(), again, endpoint_url=url) as (_, endpoint):  # the same bucket, reachable
        wait_until(lambda: endpoint.stats().completed == 3 and not queued(state))
    assert len(first.calls) == 3 and again.calls == []  # stored after the restart, not run again
    assert [s3_object(store, a["OutputLocation"]) for a in answers] == [
        (f"echo:k{i}".encode(), "text/plain") for i in range(3)]
    assert s3_keys(store, "failed/") == []
    assert sorted(p.name for p in (state / "queue").iterdir()) == []


def test_a_configuration_file_keeps_s3_async_locations(tmp_path: Path) -> None:
    from smbyoc.emulator.endpoint_config import parse_endpoint_config

    def document(output: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {"EndpointName": NAME,
                "Models": [{"ModelName": "m", "PrimaryContainer": {"Image": "smbyoc/serve:cpu"}}],
                "EndpointConfig": {"EndpointConfigName": "c", "AsyncInferenceConfig": {"OutputConfig": output},
                                   "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "m",
                                                           "InstanceType": "ml.m5.xlarge",
                                                           "InitialInstanceCount": 1}], **extra}}

    def parse(doc: dict[str, Any]) -> Any:
        return parse_endpoint_config(doc, source="endpoint.json", base_dir=tmp_path)

    definition = parse(document({"S3OutputPath": f"s3://{BUCKET}/out", "S3FailurePath": "failures"}))
    assert definition.async_config == {"OutputConfig": {"S3OutputPath": f"s3://{BUCKET}/out",
                                                        "S3FailurePath": str(tmp_path / "failures")}}
    with pytest.raises(ConfigError, match=r"^endpoint.json: EndpointConfig.AsyncInferenceConfig.OutputConfig."
                                          r"S3OutputPath: s3://my\.\.bucket/out: bucket 'my\.\.bucket' is not a valid "
                                          r"name: two adjacent periods$"):
        parse(document({"S3OutputPath": "s3://my..bucket/out"}))
    with pytest.raises(ConfigError, match=r"S3FailurePath: 'https://b\.s3\.amazonaws\.com/f': S3 URIs are not "
                                          "supported yet in the https:// form"):
        parse(document({"S3OutputPath": "/o", "S3FailurePath": "https://b.s3.amazonaws.com/f"}))
    capture = {"InitialSamplingPercentage": 100, "DestinationS3Uri": f"s3://{BUCKET}/capture",
               "CaptureOptions": [{"CaptureMode": "Input"}]}
    with pytest.raises(ConfigError, match=r"S3 URIs are not supported yet for data capture"):
        parse(document({"S3OutputPath": f"s3://{BUCKET}/out"}, DataCaptureConfig=capture))


def test_an_output_s3_refuses_becomes_a_failure_object(tmp_path: Path, s3: tuple[str, Any]) -> None:
    url, store = s3
    store.create_bucket(Bucket="async-outputs")
    document = s3_config(S3OutputPath="s3://async-outputs/out")
    with served(tmp_path / "state", document, FakeRouter(), endpoint_url=url) as (rt, endpoint):
        store.delete_bucket(Bucket="async-outputs")  # gone after the start-up check
        answer = rt.invoke_endpoint_async(EndpointName=NAME, Body=b"x")
        wait_until(lambda: endpoint.stats().failed == 1 and not queued(tmp_path / "state"))
        assert endpoint.stats().results_unwritable == 0
    reason, content_type = s3_object(store, answer["FailureLocation"])
    assert content_type == "text/plain"
    assert reason.decode().startswith(f"InternalFailure: the output cannot be written to {answer['OutputLocation']}: "
                                      f"upload {answer['OutputLocation']}: NoSuchBucket: ")
