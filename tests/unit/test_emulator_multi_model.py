"""The multi-model router and the endpoint front, against a stand-in container speaking contract.md §5.

The stand-in holds at most ``capacity`` models and answers 507 beyond that, so that the eviction logic (least
recently used first, never a model in use), ModelNotReadyException, load failures and the request rules can be
checked exactly. The real container (smbyoc's serve runtime) is exercised by tests/integration and tests/docker.
"""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from helpers import free_port
from smbyoc.emulator import runtime_client
from smbyoc.emulator.front import FORWARDED_HEADERS, Call, Front, FrontError, forwarded_headers
from smbyoc.emulator.multi_model import ModelSource, MultiModelRouter, model_key
from smbyoc.emulator.runtime_client import InvokeError

pytestmark = pytest.mark.usefixtures("front_event_loop")


def write_model(path: Path, marker: str, extra: dict[str, bytes] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in {"marker.txt": marker.encode(), **(extra or {})}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


class StandIn:
    """A container's /models API (contract.md §5), holding at most ``capacity`` models."""

    def __init__(self, capacity: int, load_delay: float = 0.0) -> None:
        self.capacity = capacity
        self.load_delay = load_delay
        self.invoke_delay = 0.0
        self.loaded: dict[str, str] = {}
        self.log: list[tuple[str, str]] = []
        self.invoke_headers: list[dict[str, str]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/models", self.load)
        app.router.add_delete("/models/{name}", self.unload)
        app.router.add_post("/models/{name}/invoke", self.invoke)
        return app

    async def load(self, request: web.Request) -> web.Response:
        body = await request.json()
        name, url = body["model_name"], body["url"]
        self.log.append(("load", name))
        await asyncio.sleep(self.load_delay)
        if name in self.loaded:
            return web.json_response({"message": "already loaded"}, status=409)
        marker = Path(url, "marker.txt").read_text()
        if marker == "broken":
            return web.json_response({"message": "model_fn raised ValueError: broken"}, status=500)
        if len(self.loaded) >= self.capacity:
            return web.json_response({"message": "out of memory"}, status=507)
        self.loaded[name] = marker
        return web.json_response({"status": f"Model {name} loaded"})

    async def unload(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.log.append(("unload", name))
        if self.loaded.pop(name, None) is None:
            return web.json_response({"message": "not loaded"}, status=404)
        return web.json_response({"status": "unloaded"})

    async def invoke(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.invoke_headers.append(dict(request.headers))
        await asyncio.sleep(self.invoke_delay)
        if name not in self.loaded:
            return web.json_response({"message": "not loaded"}, status=404)
        body = await request.read()
        return web.Response(body=self.loaded[name].encode() + b":" + body, content_type="text/plain",
                            headers={"X-Amzn-SageMaker-Custom-Attributes": "seen"})


@pytest.fixture
def stand_in() -> Iterator[tuple[StandIn, str]]:
    container = StandIn(capacity=2)
    port = free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(container.app())
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    yield container, f"http://127.0.0.1:{port}"
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.fixture
def prefix(tmp_path: Path) -> Path:
    root = tmp_path / "prefix"
    for name in ("a", "b", "c"):
        write_model(root / f"{name}.tar.gz", name)
    write_model(root / "nested" / "d.tar.gz", "d")
    write_model(root / "broken.tar.gz", "broken")
    return root


def router_for(prefix: Path, url: str, tmp_path: Path, **options: Any) -> MultiModelRouter:
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    return MultiModelRouter(ModelSource(prefix), url, cache, container_models_dir=str(cache), **options)


def front_for(router: MultiModelRouter) -> Front:
    front = Front(router, port=free_port())
    front.start()
    return front


def call(front: Front, target: str | None, body: bytes = b"x", **headers: str) -> runtime_client.InvocationResponse:
    return runtime_client.invoke(front.url, body, content_type="text/plain", target_model=target, **headers)


def test_loads_on_first_use_and_evicts_the_least_recently_used(prefix: Path, tmp_path: Path,
                                                                stand_in: tuple[StandIn, str]) -> None:
    container, url = stand_in
    router = router_for(prefix, url, tmp_path)
    front = front_for(router)
    try:
        assert call(front, "a.tar.gz").body == b"a:x"
        assert call(front, "nested/d.tar.gz").body == b"d:x"
        assert call(front, "a.tar.gz").body == b"a:x"  # a is now the most recently used; d the least
        assert call(front, "b.tar.gz").body == b"b:x"  # full: d is unloaded, not a
        assert set(container.loaded.values()) == {"a", "b"}
        assert ("unload", model_key("nested/d.tar.gz")) in container.log
        assert router.counters.loads == 3 and router.counters.evictions == 1
        assert router.loaded_models() == ["a.tar.gz", "b.tar.gz"]
        # the artifact stays in the cache: loading d again does not extract it again
        extracted = tmp_path / "cache" / model_key("nested/d.tar.gz") / "model" / "marker.txt"
        before = extracted.stat().st_mtime_ns
        assert call(front, "nested/d.tar.gz").body == b"d:x"
        assert extracted.stat().st_mtime_ns == before
        # the container got the original TargetModel and the client's headers, nothing else
        sent = container.invoke_headers[-1]
        assert sent["X-Amzn-SageMaker-Target-Model"] == "nested/d.tar.gz"
        assert "Host" in sent and "X-Not-Forwarded" not in sent
    finally:
        front.stop()


def test_max_loaded_evicts_before_the_container_runs_out(prefix: Path, tmp_path: Path,
                                                        stand_in: tuple[StandIn, str]) -> None:
    container, url = stand_in
    container.capacity = 10
    router = router_for(prefix, url, tmp_path, max_loaded=1)
    front = front_for(router)
    try:
        for name in ("a", "b", "c", "a"):
            assert call(front, f"{name}.tar.gz").body == f"{name}:x".encode()
            assert list(container.loaded.values()) == [name]
        assert router.counters.evictions == 3
        assert not any(status == 507 for status in container.log)
    finally:
        front.stop()


def test_request_rules_and_errors(prefix: Path, tmp_path: Path, stand_in: tuple[StandIn, str]) -> None:
    _container, url = stand_in
    router = router_for(prefix, url, tmp_path)
    front = front_for(router)
    try:
        for target, words in [(None, "TargetModel is required"), ("../x.tar.gz", "'..'"),
                              ("/etc/passwd", "relative path"), ("missing.tar.gz", "no model artifact"),
                              ("a" * 1025, "limit is 1024")]:
            with pytest.raises(InvokeError) as info:
                call(front, target)
            assert info.value.error_code == "ValidationError" and info.value.status == 400
            assert words in str(info.value)
        with pytest.raises(InvokeError) as info:
            call(front, "broken.tar.gz")
        assert info.value.error_code == "ModelError" and info.value.status == 424
        assert info.value.original_status == 500 and "model_fn raised ValueError" in str(info.value)
        assert router.loaded_models() == []
        with pytest.raises(InvokeError) as info:
            runtime_client.invoke(front.url, b"x" * (6 * 1024 * 1024 + 1), target_model="a.tar.gz",
                                  enforce_limits=False)
        assert info.value.status == 413 and info.value.error_code == "ValidationError"
    finally:
        front.stop()


def test_unsafe_archive_is_refused(prefix: Path, tmp_path: Path, stand_in: tuple[StandIn, str]) -> None:
    _container, url = stand_in
    with tarfile.open(prefix / "evil.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    router = router_for(prefix, url, tmp_path)
    front = front_for(router)
    try:
        with pytest.raises(InvokeError) as info:
            call(front, "evil.tar.gz")
        assert info.value.error_code == "ValidationError" and "evil.tar.gz" in str(info.value)
        assert not (tmp_path / "escape.txt").exists()
        assert [p.name for p in (tmp_path / "cache").iterdir()] == []  # nothing half-written
    finally:
        front.stop()


def test_a_slow_load_is_model_not_ready_then_served(prefix: Path, tmp_path: Path,
                                                    stand_in: tuple[StandIn, str]) -> None:
    container, url = stand_in
    container.load_delay = 1.0
    router = router_for(prefix, url, tmp_path, invocation_timeout=0.2)
    front = front_for(router)
    try:
        with pytest.raises(InvokeError) as info:
            call(front, "a.tar.gz")
        assert info.value.error_code == "ModelNotReadyException" and info.value.status == 429
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the load went on; a retry is served once it is done
            try:
                assert call(front, "a.tar.gz").body == b"a:x"
                break
            except InvokeError as e:  # still loading; or loaded with too little of the 0.2 s left for the call
                assert e.error_code == "ModelNotReadyException" or (
                    e.error_code == "ModelError" and "timed out" in str(e)), e
                time.sleep(0.1)
        else:
            pytest.fail("the model never became ready")
        assert [entry for entry in container.log if entry[0] == "load"] == [("load", model_key("a.tar.gz"))]
    finally:
        front.stop()


def test_the_invocation_timeout_holds_for_the_load_and_the_call_together(prefix: Path, tmp_path: Path,
                                                                         stand_in: tuple[StandIn, str]) -> None:
    container, url = stand_in
    container.load_delay, container.invoke_delay = 0.6, 0.6  # each within 1 s, together over it
    router = router_for(prefix, url, tmp_path, invocation_timeout=1.0)
    front = front_for(router)
    try:
        started = time.monotonic()
        with pytest.raises(InvokeError) as info:
            call(front, "a.tar.gz")
        assert info.value.error_code == "ModelError" and "timed out" in str(info.value)
        assert time.monotonic() - started < 1.5  # not a second full timeout for the call after the load
        container.invoke_delay = 0.0
        assert call(front, "a.tar.gz").body == b"a:x"  # loaded meanwhile: served
    finally:
        front.stop()


def test_forwarded_headers_keep_only_invoke_endpoint_headers() -> None:
    headers = {"content-type": "text/csv", "ACCEPT": "application/json", "Cookie": "secret", "X-Other": "1",
               "x-amzn-sagemaker-custom-attributes": "a=1"}
    assert forwarded_headers(headers) == {"Content-Type": "text/csv", "Accept": "application/json",
                                          "X-Amzn-SageMaker-Custom-Attributes": "a=1"}
    with pytest.raises(FrontError, match="X-Amzn-SageMaker-Inference-Id: the value has 65 characters"):
        forwarded_headers({"X-Amzn-SageMaker-Inference-Id": "i" * 65})
    with pytest.raises(FrontError, match="visible US-ASCII"):
        forwarded_headers({"X-Amzn-SageMaker-Custom-Attributes": "é"})
    assert FORWARDED_HEADERS["X-Amzn-SageMaker-Target-Variant"] == 63


def test_front_port_in_use_is_one_line(stand_in: tuple[StandIn, str]) -> None:
    _container, url = stand_in
    port = int(url.rsplit(":", 1)[1])

    class Echo:
        async def open(self, session: Any) -> None: ...
        async def invoke(self, call: Call) -> Any: ...
        async def close(self) -> None: ...

    from smbyoc.errors import ServingError

    with pytest.raises(ServingError, match=f"cannot listen on 127.0.0.1:{port}"):
        Front(Echo(), port=port).start()


def test_model_source_lists_the_prefix(prefix: Path) -> None:
    assert ModelSource(prefix).names() == ["a.tar.gz", "b.tar.gz", "broken.tar.gz", "c.tar.gz", "nested/d.tar.gz"]
    assert json.dumps(model_key("a.tar.gz")).strip('"') == model_key("a.tar.gz")
    assert len({model_key(n) for n in ModelSource(prefix).names()}) == 5


def test_unmodified_boto3_against_the_front(prefix: Path, tmp_path: Path, stand_in: tuple[StandIn, str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    for name, value in {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    _container, url = stand_in
    router = router_for(prefix, url, tmp_path)
    front = Front(router, port=free_port(), endpoint_name="mme")
    front.start()
    try:
        client = boto3.client("sagemaker-runtime", endpoint_url=front.url)
        answer = client.invoke_endpoint(EndpointName="mme", Body=b"x", ContentType="text/plain",
                                        TargetModel="b.tar.gz", CustomAttributes="c=1")
        assert answer["Body"].read() == b"b:x"
        assert answer["ContentType"].startswith("text/plain")
        assert answer["InvokedProductionVariant"] == "AllTraffic"
        assert answer["CustomAttributes"] == "seen"
        with pytest.raises(client.exceptions.ModelError) as failed:
            client.invoke_endpoint(EndpointName="mme", Body=b"x", TargetModel="broken.tar.gz")
        error = failed.value.response
        assert error["OriginalStatusCode"] == 500 and "model_fn raised" in error["OriginalMessage"]
        assert "broken.tar.gz" in error["Error"]["Message"]
        with pytest.raises(client.exceptions.ValidationError, match="must be a relative path"):
            client.invoke_endpoint(EndpointName="mme", Body=b"x", TargetModel="../a.tar.gz")
        with pytest.raises(client.exceptions.ValidationError, match="Endpoint other of account"):
            client.invoke_endpoint(EndpointName="other", Body=b"x", TargetModel="a.tar.gz")
    finally:
        front.stop()


def test_an_unknown_container_route_is_refused_before_anything_starts(
        prefix: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from smbyoc.emulator import multi_model
    from smbyoc.emulator.endpoint import EndpointSpec
    from smbyoc.errors import ConfigError

    def no_port() -> int:
        raise AssertionError("a port was taken for an endpoint that was refused")

    monkeypatch.setattr(multi_model, "free_port", no_port)
    spec = multi_model.MultiModelSpec(EndpointSpec(model_data=None, port=free_port()), prefix)
    with pytest.raises(ConfigError, match="container_route.*network, published, not 'bridge'"):
        multi_model.MultiModelEndpoint(spec, container_route="bridge")
