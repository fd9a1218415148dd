"""Multi-container endpoints: --container parsing, CreateModel's validation, the port plan, the Docker arguments,
and the Serial / Direct routers behind the real endpoint front, against real local HTTP servers."""

from __future__ import annotations

import http.client
import json
import logging
import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from helpers import free_port
from smbyoc.emulator import jobs
from smbyoc.emulator.endpoint import EndpointSpec
from smbyoc.emulator.front import Front
from smbyoc.emulator.multi_container import (
    ACCEPT_BIND_TO_PORT_LABEL,
    ContainerSpec,
    MultiContainerEndpoint,
    MultiContainerSpec,
    PortPlan,
    _DockerMember,
    parse_container,
    port_plan,
)
from smbyoc.emulator.pipeline import CONTAINER_HEADER, DirectRouter, SerialRouter, Target
from smbyoc.errors import ConfigError, ServingError

pytestmark = pytest.mark.usefixtures("front_event_loop")

# ------------------------------------------------------------------------------------ --container parsing


@pytest.mark.parametrize(("text", "image", "model"), [
    ("my-algo:1.0", "my-algo:1.0", None),
    ("my-algo", "my-algo", None),
    ("my-algo:1.0:./model.tar.gz", "my-algo:1.0", Path("model.tar.gz")),
    ("my-algo:/abs/dir", "my-algo", Path("/abs/dir")),
    ("localhost:5000/team/my-algo:1.0:../m/model.tar.gz", "localhost:5000/team/my-algo:1.0", Path("../m/model.tar.gz")),
    ("localhost:5000/my-algo", "localhost:5000/my-algo", None),
    ("1234.dkr.ecr.us-east-1.amazonaws.com/algo@sha256:abc:/m", "1234.dkr.ecr.us-east-1.amazonaws.com/algo@sha256:abc",
     Path("/m")),
    ("my-algo:1.0:file:///tmp/my%20model.tar.gz", "my-algo:1.0", Path("/tmp/my model.tar.gz")),
    ("./model", None, Path("model")),
    ("/abs/model.tar.gz", None, Path("/abs/model.tar.gz")),
])
def test_short_form(text: str, image: str | None, model: Path | None) -> None:
    spec = parse_container(text)
    assert (spec.image, spec.model_data, spec.hostname, dict(spec.environment)) == (image, model, None, {})
    assert spec.source == text


def test_short_form_expands_the_home_directory() -> None:
    assert parse_container("algo:~/m.tar.gz").model_data == Path.home() / "m.tar.gz"


def test_long_form() -> None:
    spec = parse_container("image=my-algo:1.0,model=./m.tar.gz,hostname=pre,env=A=1,env=B=x=y")
    assert spec == ContainerSpec("my-algo:1.0", Path("m.tar.gz"), "pre", {"A": "1", "B": "x=y"})
    process = parse_container("model=/m,hostname=scaler")
    assert (process.image, process.model_data, process.hostname) == (None, Path("/m"), "scaler")


@pytest.mark.parametrize(("text", "why"), [
    ("", "empty"),
    ("   ", "empty"),
    ("my algo:1.0", "not an image reference"),
    ("foo=bar", "not an image reference"),
    ("image=a,image=b", "image= is given twice"),
    ("image=a,nonsense", "expected image=, model=, hostname= or env="),
    ("image=a,colour=red", "expected image=, model=, hostname= or env="),
    ("image=a,env=NOVALUE", "expected env=KEY=VALUE"),
    ("image=a,hostname=", "hostname= is empty"),
    ("algo:file://host/m.tar.gz", "absolute local path"),
    ("image=a//b", "not an image reference"),
])
def test_bad_container_is_one_line_naming_it(text: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_container(text)
    message = str(info.value)
    assert message.startswith(f"--container {text}: ")
    assert why in message
    assert "\n" not in message


# ------------------------------------------------------------------------------------ CreateModel's checks


def spec_of(*containers: ContainerSpec, **kwargs: Any) -> MultiContainerSpec:
    return MultiContainerSpec(tuple(containers), backend=kwargs.pop("backend", "process"), **kwargs)


def test_two_to_fifteen_containers() -> None:
    spec_of(*[ContainerSpec()] * 2).validate()
    spec_of(*[ContainerSpec()] * 15).validate()
    with pytest.raises(ConfigError, match="1 container: a multi-container endpoint has 2 to 15"):
        spec_of(ContainerSpec()).validate()
    with pytest.raises(ConfigError, match="16 containers: a model has at most 15"):
        spec_of(*[ContainerSpec()] * 16).validate()


def test_hostnames_assigned_by_position_or_given_for_all() -> None:
    assert spec_of(ContainerSpec(), ContainerSpec(), ContainerSpec()).hostnames() == [
        "container-1", "container-2", "container-3"]
    assert spec_of(ContainerSpec(hostname="pre"), ContainerSpec(hostname="model")).validate().hostnames() == [
        "pre", "model"]
    with pytest.raises(ConfigError) as info:
        spec_of(ContainerSpec(hostname="pre", source="model=/a,hostname=pre"),
                ContainerSpec(source="model=/b")).validate()
    assert str(info.value).startswith("--container model=/b: ContainerHostname is given for some containers but")


@pytest.mark.parametrize("name", ["a_b", "-a", "a-", "a.b", "x" * 64, "ä"])
def test_hostname_pattern(name: str) -> None:
    with pytest.raises(ConfigError, match="must have at most 63 characters and satisfy the pattern"):
        spec_of(ContainerSpec(hostname=name), ContainerSpec(hostname="ok")).validate()


def test_hostname_pattern_accepts_sagemaker_examples() -> None:
    spec_of(ContainerSpec(hostname="secondContainer"), ContainerSpec(hostname="a--b9"),
            ContainerSpec(hostname="x" * 63)).validate()


def test_duplicate_hostnames() -> None:
    with pytest.raises(ConfigError, match="ContainerHostname 'same' is also container 1's"):
        spec_of(ContainerSpec(hostname="same"), ContainerSpec(hostname="same")).validate()


@pytest.mark.parametrize("mode", ["serial", "Pipeline", ""])
def test_execution_mode_is_serial_or_direct(mode: str) -> None:
    with pytest.raises(ConfigError, match=r"--inference-execution-mode .*: Member must satisfy enum value set: "
                                          r"\[Serial, Direct\]"):
        spec_of(ContainerSpec(), ContainerSpec(), execution_mode=mode).validate()
    spec_of(ContainerSpec(), ContainerSpec(), execution_mode="Direct").validate()


def test_images_only_in_docker_mode_and_required_there(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--container algo:1: an image runs only in docker mode"):
        spec_of(parse_container("algo:1"), ContainerSpec()).validate()
    with pytest.raises(ConfigError, match="--container ./m: docker mode needs the container's image"):
        spec_of(ContainerSpec(image="a"), parse_container("./m"), backend="docker").validate()


def test_missing_model_names_the_container(tmp_path: Path) -> None:
    text = f"algo:{tmp_path}/nope.tar.gz"
    with pytest.raises(ConfigError, match=f"--container {text}: the model .* does not exist"):
        spec_of(ContainerSpec(image="a"), parse_container(text), backend="docker").validate()


def test_environment_limits_of_create_model() -> None:
    with pytest.raises(ConfigError, match="environment variable name '1BAD' must match"):
        spec_of(ContainerSpec(environment={"1BAD": "x"}), ContainerSpec()).validate()
    with pytest.raises(ConfigError, match="101 environment variables; the limit is 100"):
        spec_of(ContainerSpec(environment={f"V{i}": "x" for i in range(101)}), ContainerSpec()).validate()
    with pytest.raises(ConfigError, match="keys and values have at most 1024 bytes"):
        spec_of(ContainerSpec(environment={"BIG": "x" * 1025}), ContainerSpec()).validate()
    each = {f"V{i}": "x" * 1000 for i in range(17)}  # 17 KB per container, 34 KB together
    spec_of(ContainerSpec(environment=each), ContainerSpec()).validate()
    with pytest.raises(ConfigError, match="the containers' environments have .* bytes together; a model's limit"):
        spec_of(ContainerSpec(environment=each), ContainerSpec(environment=each)).validate()


# ------------------------------------------------------------------------------------ port plan


def test_port_plan_defaults_and_bases() -> None:
    assert port_plan(3) == [PortPlan(8080, (9000, 9099)), PortPlan(8081, (9100, 9199)), PortPlan(8082, (9200, 9299))]
    assert port_plan(2, 7000, 20000, 10) == [PortPlan(7000, (20000, 20009)), PortPlan(7001, (20010, 20019))]
    assert port_plan(15)[-1] == PortPlan(8094, (10400, 10499))
    assert port_plan(1)[0].safe_range_text == "9000-9099"


def test_port_plan_refuses_overlaps_and_ports_past_65535() -> None:
    with pytest.raises(ConfigError, match="bind port 9050 falls in the safe port ranges 9000-9299"):
        port_plan(3, bind_port_base=9050)
    with pytest.raises(ConfigError, match="leaves 1-65535"):
        port_plan(15, safe_port_base=65000)
    with pytest.raises(ConfigError, match="leaves 1-65535"):
        spec_of(ContainerSpec(), ContainerSpec(), bind_port_base=0).validate()


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SMBYOC_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def test_platform_port_variables_override_the_users_with_a_warning(state: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="smbyoc")
    spec = spec_of(ContainerSpec(environment={"SAGEMAKER_BIND_TO_PORT": "1234", "MINE": "1"}),
                   ContainerSpec(), environment={"SAGEMAKER_SAFE_PORT_RANGE": "1-2", "ALL": "2"},
                   safe_port_base=30000, safe_port_span=50)
    endpoint = MultiContainerEndpoint(spec, sink=None, require_nginx=False)
    try:
        assert endpoint.environment(0) == {"MINE": "1", "ALL": "2", "SAGEMAKER_BIND_TO_PORT": "8080",
                                           "SAGEMAKER_SAFE_PORT_RANGE": "30000-30049"}
        assert endpoint.environment(1, bind_port=40001) == {"ALL": "2", "SAGEMAKER_BIND_TO_PORT": "40001",
                                                            "SAGEMAKER_SAFE_PORT_RANGE": "30050-30099"}
        warnings = [r.getMessage() for r in caplog.records if "overridden" in r.getMessage()]
        assert len(warnings) == 2
        assert "container container-1" in warnings[0] and "SAGEMAKER_BIND_TO_PORT and SAGEMAKER_SAFE_PORT_RANGE" \
            in warnings[0]
        (record,) = jobs.records(jobs.ENDPOINT)
        assert record.data["containers"] == ["container-1", "container-2"]
    finally:
        endpoint.close()
    assert jobs.records() == []
    assert not endpoint.root.exists()


# ------------------------------------------------------------------------------------ Docker (argument shapes)


class FakeImage:
    def __init__(self, labels: dict[str, str]) -> None:
        self.labels = labels


class FakeImages:
    def __init__(self, images: dict[str, dict[str, str]]) -> None:
        self.images = images

    def get(self, name: str) -> FakeImage:
        import docker.errors

        if name not in self.images:
            raise docker.errors.ImageNotFound(name)
        return FakeImage(self.images[name])


class FakeClient:
    def __init__(self, images: dict[str, dict[str, str]]) -> None:
        self.images = FakeImages(images)


def test_an_image_without_the_bind_to_port_label_is_refused_before_anything_starts(state: Path) -> None:
    client = FakeClient({"good:1": {ACCEPT_BIND_TO_PORT_LABEL: "true"}, "plain:1": {}})
    spec = MultiContainerSpec((parse_container("good:1"), parse_container("plain:1")))
    with pytest.raises(ConfigError) as info:
        MultiContainerEndpoint(spec, client=client, sink=None)
    assert str(info.value) == (
        f"--container plain:1: image plain:1 does not carry the label {ACCEPT_BIND_TO_PORT_LABEL}=true that every "
        "container of a multi-container endpoint needs (it listens on SAGEMAKER_BIND_TO_PORT); add LABEL "
        f"{ACCEPT_BIND_TO_PORT_LABEL}=true to its Dockerfile")
    assert jobs.records() == []
    with pytest.raises(Exception, match="is not present in the local Docker Engine"):
        MultiContainerEndpoint(MultiContainerSpec((parse_container("good:1"), parse_container("gone:1"))),
                               client=client, sink=None)


class FakeContainer:
    id = "abc123"


def test_docker_arguments_share_one_network_namespace(tmp_path: Path) -> None:
    spec = EndpointSpec(None, port=8081, environment={"SAGEMAKER_BIND_TO_PORT": "8081"}, instance_type="ml.m5.large")
    first = _DockerMember(spec, None, "pre:1", hostname="pre", job="smbyoc-endpoint-x", publish=[8080, 8081],
                          network_owner=None, sink=print, user=None, root=tmp_path / "pre", token="t")
    second = _DockerMember(spec, None, "model:1", hostname="model", job="smbyoc-endpoint-x", publish=[8080, 8081],
                           network_owner=first, sink=print, user="1000", root=tmp_path / "model", token="t")
    first.container = FakeContainer()
    one, two = first.container_args(), second.container_args()
    assert one["ports"] == {"8080/tcp": ("127.0.0.1", None), "8081/tcp": ("127.0.0.1", None)}
    assert "network_mode" not in one
    assert two["network_mode"] == "container:abc123" and "ports" not in two
    assert (one["name"], two["name"]) == ("smbyoc-endpoint-x-pre", "smbyoc-endpoint-x-model")
    assert two["labels"]["com.smbyoc.job"] == "smbyoc-endpoint-x" and two["labels"]["com.smbyoc.host"] == "model"
    assert two["command"] == ["serve"] and two["user"] == "1000"
    assert two["volumes"] == {str(tmp_path / "model" / "model"): {"bind": "/opt/ml/model", "mode": "ro"}}
    # Each container may use the whole instance (they share it, as on SageMaker).
    assert one["nano_cpus"] == two["nano_cpus"] == 2 * 10**9
    assert one["mem_limit"] == two["mem_limit"] == 8 * 1024**3


# ------------------------------------------------------------------------------------ routers behind the front


class Recorder(BaseHTTPRequestHandler):
    """A container: records what it received; its answer depends on the server's ``behaviour``."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        server: Any = self.server
        seen = {"path": self.path, "body": body.decode(), "content_type": self.headers.get("Content-Type"),
                "accept": self.headers.get("Accept"),
                "custom_attributes": self.headers.get("X-Amzn-SageMaker-Custom-Attributes"),
                "target": self.headers.get("X-Amzn-SageMaker-Target-Container-Hostname"),
                "user_agent": self.headers.get("X-Not-Forwarded")}
        server.seen.append(seen)
        status, reply, headers = server.behaviour(body, seen)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: Any) -> None:
        pass


def upper(body: bytes, seen: dict[str, Any]) -> tuple[int, bytes, dict[str, str]]:
    return 200, body.upper(), {"Content-Type": "text/x-upper", "X-Amzn-SageMaker-Custom-Attributes": "from-a"}


def no_type(body: bytes, seen: dict[str, Any]) -> tuple[int, bytes, dict[str, str]]:
    return 200, body + b"!", {}


def echo(body: bytes, seen: dict[str, Any]) -> tuple[int, bytes, dict[str, str]]:
    return 200, json.dumps(seen).encode(), {"Content-Type": "application/json",
                                           "X-Amzn-SageMaker-Custom-Attributes": "from-b"}


def fail(body: bytes, seen: dict[str, Any]) -> tuple[int, bytes, dict[str, str]]:
    return 500, b"boom", {"Content-Type": "text/plain"}


def slow(body: bytes, seen: dict[str, Any]) -> tuple[int, bytes, dict[str, str]]:
    time.sleep(2)
    return 200, b"late", {}


@pytest.fixture
def servers() -> Iterator[dict[str, Any]]:
    started: dict[str, Any] = {}
    for name, behaviour in (("a", upper), ("t", no_type), ("b", echo), ("c", fail), ("s", slow)):
        server: Any = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
        server.daemon_threads = True
        server.seen, server.behaviour = [], behaviour
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        started[name] = server
    yield started
    for server in started.values():
        server.shutdown()
        server.server_close()


def target(servers: dict[str, Any], name: str) -> Target:
    return Target.at(name, f"http://127.0.0.1:{servers[name].server_address[1]}")


@pytest.fixture
def front_of(servers):
    fronts: list[Front] = []

    def start(router: Any) -> str:
        front = Front(router, port=free_port())
        front.start()
        fronts.append(front)
        return front.url

    yield start
    for front in fronts:
        front.stop()


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("POST", "/invocations", body=body, headers=headers)
        answer = connection.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read()
    finally:
        connection.close()


CLIENT = {"Content-Type": "text/plain", "Accept": "application/json", "X-Amzn-SageMaker-Custom-Attributes": "k=v",
          "X-Not-Forwarded": "x"}


def test_serial_chains_bodies_and_content_types(servers, front_of) -> None:
    url = front_of(SerialRouter([target(servers, "a"), target(servers, "t"), target(servers, "b")]))
    status, headers, body = post(url, b"hello", CLIENT)
    assert status == 200
    seen = json.loads(body)
    # b got t's answer to a's answer to the client's request; t answered without a Content-Type.
    assert seen["body"] == "HELLO!" and seen["content_type"] is None and seen["path"] == "/invocations"
    assert servers["t"].seen[0]["content_type"] == "text/x-upper" and servers["t"].seen[0]["body"] == "HELLO"
    assert servers["a"].seen[0]["content_type"] == "text/plain"
    # The client's Accept and custom attributes reach every container; headers InvokeEndpoint lacks reach none.
    for name in ("a", "t", "b"):
        assert servers[name].seen[0]["accept"] == "application/json"
        assert servers[name].seen[0]["custom_attributes"] == "k=v"
        assert servers[name].seen[0]["user_agent"] is None
    # The last container's Content-Type and custom attributes are the endpoint's.
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Amzn-SageMaker-Custom-Attributes"] == "from-b"
    assert headers[CONTAINER_HEADER] == "b"


def test_serial_stops_at_the_first_error_and_names_the_container(servers, front_of, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="smbyoc")
    url = front_of(SerialRouter([target(servers, "a"), target(servers, "c"), target(servers, "b")]))
    status, headers, body = post(url, b"x", CLIENT)
    assert (status, body, headers[CONTAINER_HEADER]) == (500, b"boom", "c")
    assert "X-Amzn-ErrorType" not in headers  # the container's own answer, as in a single-container endpoint
    assert servers["b"].seen == []
    assert any("container c answered 500: boom" in r.getMessage() for r in caplog.records)


def test_serial_refuses_a_target_container_hostname(servers, front_of) -> None:
    url = front_of(SerialRouter([target(servers, "a"), target(servers, "b")]))
    status, headers, body = post(url, b"x", {**CLIENT, "X-Amzn-SageMaker-Target-Container-Hostname": "a"})
    assert (status, headers["X-Amzn-ErrorType"]) == (400, "ValidationError")
    assert "only for an endpoint configured for direct invocation" in json.loads(body)["Message"]
    assert servers["a"].seen == []


def test_serial_unreachable_and_too_slow_containers(servers, front_of) -> None:
    gone = Target.at("gone", f"http://127.0.0.1:{free_port()}")
    url = front_of(SerialRouter([target(servers, "a"), gone]))
    status, headers, body = post(url, b"x", CLIENT)
    assert (status, headers["X-Amzn-ErrorType"]) == (503, "ServiceUnavailable")
    assert "container gone cannot be reached" in json.loads(body)["Message"]
    url = front_of(SerialRouter([target(servers, "a"), target(servers, "s")], timeout=0.5))
    status, headers, body = post(url, b"x", CLIENT)
    assert (status, headers["X-Amzn-ErrorType"]) == (424, "ModelError")
    assert "timed out while waiting for a response from container s" in json.loads(body)["Message"]


def test_direct_routes_by_hostname(servers, front_of) -> None:
    url = front_of(DirectRouter([target(servers, "a"), target(servers, "b")]))
    status, headers, body = post(url, b"raw", {**CLIENT, "X-Amzn-SageMaker-Target-Container-Hostname": "b"})
    assert status == 200 and headers[CONTAINER_HEADER] == "b"
    seen = json.loads(body)
    assert (seen["body"], seen["content_type"], seen["target"]) == ("raw", "text/plain", "b")
    assert servers["a"].seen == []
    status, headers, body = post(url, b"raw", {**CLIENT, "X-Amzn-SageMaker-Target-Container-Hostname": "a"})
    assert (status, body, headers["Content-Type"], headers[CONTAINER_HEADER]) == (200, b"RAW", "text/x-upper", "a")


def test_direct_validation_errors(servers, front_of) -> None:
    url = front_of(DirectRouter([target(servers, "a"), target(servers, "b")]))
    status, headers, body = post(url, b"x", CLIENT)
    assert (status, headers["X-Amzn-ErrorType"]) == (400, "ValidationError")
    assert json.loads(body)["Message"] == (
        "TargetContainerHostname (X-Amzn-SageMaker-Target-Container-Hostname) is required: this endpoint is "
        "configured for direct invocation (its containers: a, b)")
    status, headers, body = post(url, b"x", {**CLIENT, "X-Amzn-SageMaker-Target-Container-Hostname": "zz"})
    assert (status, headers["X-Amzn-ErrorType"]) == (400, "ValidationError")
    assert json.loads(body)["Message"] == ("TargetContainerHostname 'zz' does not exist in the endpoint "
                                           "(its containers: a, b)")
    status, headers, _ = post(url, b"x", {**CLIENT, "X-Amzn-SageMaker-Target-Container-Hostname": "x" * 64})
    assert (status, headers["X-Amzn-ErrorType"]) == (400, "ValidationError")
    assert servers["a"].seen == [] and servers["b"].seen == []


# ------------------------------------------------------------------------------------ the endpoint, process mode

FAKE_SERVE = textwrap.dedent("""
    import json, os, signal, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    if os.environ.get("FAKE_FAIL"):
        print("cannot start: " + os.environ["FAKE_FAIL"], flush=True)
        sys.exit(3)
    if os.environ.get("FAKE_IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    model = os.path.join(os.environ["SAGEMAKER_BASE_DIR"], "model")
    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            reply = json.dumps({"got": body.decode(), "env": {k: os.environ.get(k) for k in (
                "SAGEMAKER_BIND_TO_PORT", "SAGEMAKER_SAFE_PORT_RANGE", "WHO")},
                "model": sorted(os.listdir(model))}).encode()
            self.send_response(200); self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply))); self.end_headers(); self.wfile.write(reply)
        def log_message(self, *a): pass
    port = int(os.environ["SAGEMAKER_BIND_TO_PORT"])
    print(f"listening on {port}", flush=True)
    ThreadingHTTPServer((os.environ.get("SMBYOC_SERVE_HOST", "127.0.0.1"), port), H).serve_forever()
""")


@pytest.fixture
def fake_serve(tmp_path: Path) -> list[str]:
    script = tmp_path / "fake_serve.py"
    script.write_text(FAKE_SERVE)
    return [sys.executable, str(script)]


def model_dir(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    (path / f"{name}.txt").write_text(name)
    return path


def test_process_endpoint_wires_ports_models_and_the_front(state, tmp_path, fake_serve) -> None:
    spec = spec_of(ContainerSpec(model_data=model_dir(tmp_path, "m1"), environment={"WHO": "one"}),
                   ContainerSpec(model_data=model_dir(tmp_path, "m2"), hostname=None, environment={"WHO": "two"}),
                   execution_mode="Direct", port=free_port(), startup_health_timeout=30)
    lines: list[str] = []
    with MultiContainerEndpoint(spec, sink=lines.append, command=fake_serve) as endpoint:
        assert endpoint.startup_seconds is not None and endpoint._exit_reason() is None
        answers = {}
        for name in ("container-1", "container-2"):
            status, headers, body = post(endpoint.url, b"hi", {"X-Amzn-SageMaker-Target-Container-Hostname": name})
            assert status == 200, body
            answers[name] = json.loads(body)
        one, two = answers["container-1"], answers["container-2"]
        assert (one["env"]["WHO"], one["model"], one["env"]["SAGEMAKER_SAFE_PORT_RANGE"]) == ("one", ["m1.txt"],
                                                                                             "9000-9099")
        assert (two["env"]["WHO"], two["model"], two["env"]["SAGEMAKER_SAFE_PORT_RANGE"]) == ("two", ["m2.txt"],
                                                                                             "9100-9199")
        assert one["env"]["SAGEMAKER_BIND_TO_PORT"] != two["env"]["SAGEMAKER_BIND_TO_PORT"]
        assert any(line.startswith("container-2 | listening on ") for line in lines)
        pids = [m.process.pid for m in endpoint.members]  # type: ignore[attr-defined]
        # A container that stops ends the endpoint, and says which one.
        os.kill(pids[1], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while endpoint._exit_reason() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert endpoint._exit_reason() == ("container container-2 (serve " + str(tmp_path / "m2") +
                                           ") stopped: serve exited with status -9")
    assert not any(os.path.exists(f"/proc/{pid}") and "fake_serve" in Path(f"/proc/{pid}/cmdline").read_text()
                   for pid in pids if os.path.exists(f"/proc/{pid}/cmdline"))
    assert not endpoint.root.exists() and jobs.records() == []


def test_a_container_that_fails_to_start_is_named_with_its_log(state, tmp_path, fake_serve) -> None:
    spec = spec_of(ContainerSpec(hostname="pre"), ContainerSpec(hostname="model", environment={"FAKE_FAIL": "no GPU"}),
                   port=free_port(), startup_health_timeout=30)
    endpoint = MultiContainerEndpoint(spec, sink=None, command=fake_serve)
    with pytest.raises(ServingError) as info:
        endpoint.start()
    message = str(info.value)
    assert message.startswith("container model (serve (no model)) stopped: serve exited with status 3")
    assert "last log lines of model:\ncannot start: no GPU" in message
    assert not endpoint.root.exists() and jobs.records() == []
    assert all(not m.running() for m in endpoint.members)


def test_close_kills_what_ignores_sigterm_after_the_stop_timeout(state, tmp_path, fake_serve) -> None:
    spec = spec_of(ContainerSpec(environment={"FAKE_IGNORE_TERM": "1"}), ContainerSpec(), port=free_port(),
                   stop_timeout=1.0, startup_health_timeout=30)
    endpoint = MultiContainerEndpoint(spec, sink=None, command=fake_serve)
    endpoint.start()
    started = time.monotonic()
    endpoint.close()
    assert time.monotonic() - started < 10  # both stopped at once: one grace period, not one each
    assert all(not m.running() for m in endpoint.members)
    assert [m.process.returncode for m in endpoint.members] == [-9, 0]  # type: ignore[attr-defined]


def test_the_front_port_in_use_fails_the_start_and_cleans_up(state, tmp_path, fake_serve) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        spec = spec_of(ContainerSpec(), ContainerSpec(), port=busy.getsockname()[1], startup_health_timeout=30)
        endpoint = MultiContainerEndpoint(spec, sink=None, command=fake_serve)
        with pytest.raises(ServingError, match="the endpoint front cannot listen on 127.0.0.1"):
            endpoint.start()
    assert all(not m.running() for m in endpoint.members) and len(endpoint.members) == 2
    assert not endpoint.root.exists() and jobs.records() == []


# ------------------------------------------------------------------------------------ build labels


def test_build_multi_model_passes_the_label_to_the_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`smbyoc build --kind serve --multi-model` → build_image(labels=...) → the labels of the engine's build."""
    from click.testing import CliRunner

    from smbyoc.cli import _register, cli
    from smbyoc.images import builder

    sent: list[dict[str, str]] = []
    monkeypatch.setattr(builder, "preflight", lambda *a, **k: "smbyoc/base:bookworm")
    monkeypatch.setattr(builder.build_context, "assemble",
                        lambda spec, dest, **k: builder.build_context.BuildContext(path=dest, dockerfile="Dockerfile"))
    monkeypatch.setattr(builder, "_stream_build",
                        lambda client, path, tag, buildargs, labels, *a: sent.append(labels) or "sha256:1")

    class Images:
        def get(self, tag: str) -> Any:
            return type("Image", (), {"id": "sha256:1", "attrs": {"Size": 1}})()

    class Client:
        images = Images()

    monkeypatch.setattr(builder, "get_client", Client)
    _register()
    runner = CliRunner()
    result = runner.invoke(cli, ["build", "--kind", "serve", "--multi-model", "-q", "-t", "x:mme"])
    assert result.exit_code == 0, result.output
    assert sent[-1][builder.MULTI_MODELS_LABEL] == "true"
    assert sent[-1]["org.smbyoc.kind"] == "serve" and builder.SOURCE_LABEL in sent[-1]
    result = runner.invoke(cli, ["build", "--kind", "serve", "-q", "-t", "x:plain"])
    assert result.exit_code == 0, result.output
    assert builder.MULTI_MODELS_LABEL not in sent[-1]
    result = runner.invoke(cli, ["build", "--kind", "train", "--multi-model", "-q"])
    assert result.exit_code != 0
    assert "--multi-model: only for --kind serve" in result.output
    assert len(sent) == 2


def test_a_killed_owner_leaves_nothing_the_sweep_does_not_remove(state, tmp_path, fake_serve) -> None:
    """kill -9 of the process that runs the endpoint: `smbyoc ps` sees an orphan, the sweep ends every container
    process (they all carry the endpoint's token) and removes the tree."""
    import subprocess

    from smbyoc.emulator.owners import start_time
    from smbyoc.emulator.sweep import sweep_orphans

    ready = tmp_path / "ready.json"
    owner_code = textwrap.dedent(f"""
        import json, sys, time
        from smbyoc.emulator.multi_container import ContainerSpec, MultiContainerEndpoint, MultiContainerSpec
        spec = MultiContainerSpec((ContainerSpec(), ContainerSpec(), ContainerSpec()), backend="process",
                                  port={free_port()}, startup_health_timeout=30)
        endpoint = MultiContainerEndpoint(spec, sink=None, command={fake_serve!r})
        endpoint.start()
        pids = [m.process.pid for m in endpoint.members]
        open({str(ready)!r} + ".tmp", "w").write(json.dumps({{"pids": pids, "root": str(endpoint.root)}}))
        import os; os.replace({str(ready)!r} + ".tmp", {str(ready)!r})
        time.sleep(300)
    """)
    owner = subprocess.Popen([sys.executable, "-c", owner_code], env={**os.environ})
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and owner.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "the endpoint did not start"
        info = json.loads(ready.read_text())
        owner.kill()
        owner.wait()
        (record,) = jobs.records(jobs.ENDPOINT)
        assert record.orphaned and record.data["containers"] == ["container-1", "container-2", "container-3"]
        assert all(start_time(pid) is not None for pid in info["pids"])
        removed = sweep_orphans()
        assert any(r.startswith(f"endpoint {record.name} (3 process(es)") for r in removed), removed
        assert all(start_time(pid) is None for pid in info["pids"])
        assert not Path(info["root"]).exists() and jobs.records() == []
    finally:
        if owner.poll() is None:
            owner.kill()
