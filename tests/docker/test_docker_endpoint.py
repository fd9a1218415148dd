"""Docker mode of local-serve and invoke against the real engine, with the foreign contract-only image."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from helpers import free_port
from smbyoc.emulator.endpoint import DockerEndpoint, EndpointSpec
from smbyoc.emulator.runtime_client import MAX_BODY_BYTES, InvokeError, invoke
from smbyoc.errors import ServingError

pytestmark = pytest.mark.docker

SMBYOC = [sys.executable, "-m", "smbyoc.cli"]


def model_tar(tmp_path: Path, files: dict[str, str]) -> Path:
    src = tmp_path / "model-src"
    src.mkdir(exist_ok=True)
    for name, text in files.items():
        (src / name).write_text(text)
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in files:
            tar.add(src / name, arcname=name)
    return archive


def endpoint_containers(docker_client) -> list[str]:
    return [c.name for c in docker_client.containers.list(all=True, filters={"label": "com.smbyoc.owner=smbyoc"})
            if c.name.startswith("smbyoc-endpoint-")]


def test_foreign_image_serves_and_is_published_on_loopback_only(foreign_image, docker_client, tmp_path) -> None:
    spec = EndpointSpec(model_data=model_tar(tmp_path, {"weights.txt": "1"}), port=free_port(),
                        startup_health_timeout=60)
    with DockerEndpoint(spec, docker_client, foreign_image, sink=None) as endpoint:
        assert endpoint.startup_seconds is not None
        response = invoke(endpoint.url, b'{"x": 1}', content_type="application/json", accept="application/json",
                          custom_attributes="trace=1")
        reply = json.loads(response.body)
        assert reply["echo"] == '{"x": 1}'
        assert reply["model_files"] == ["weights.txt"]
        assert reply["custom_attributes"] == "trace=1"
        container = docker_client.containers.get(endpoint.container.id)
        bindings = container.attrs["HostConfig"]["PortBindings"]["8080/tcp"]
        assert bindings == [{"HostIp": "127.0.0.1", "HostPort": str(spec.port)}]
        mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
        assert mounts["/opt/ml/model"]["RW"] is False
        assert container.attrs["Config"]["Cmd"] == ["serve"]
    assert endpoint_containers(docker_client) == []


def test_invoke_enforces_sagemaker_limits(foreign_image, docker_client, tmp_path) -> None:
    spec = EndpointSpec(model_data=model_tar(tmp_path, {"m": "1"}), port=free_port(), startup_health_timeout=60)
    with DockerEndpoint(spec, docker_client, foreign_image, sink=None) as endpoint:
        with pytest.raises(InvokeError, match="ValidationError: request body has 6,291,457 bytes"):
            invoke(endpoint.url, b"x" * (MAX_BODY_BYTES + 1))
        # The foreign server echoes the body back inside JSON: a 6 MB body makes a response over the limit.
        with pytest.raises(InvokeError, match="ModelError: the model's response has") as info:
            invoke(endpoint.url, b"x" * MAX_BODY_BYTES)
        assert info.value.original_status == 200
        # Unknown route -> the container's 404 becomes a ModelError with the original status.
        from smbyoc.emulator.runtime_client import request

        assert request(endpoint.url, "GET", "/nope").status == 404


def test_never_healthy_container_reports_why(foreign_image, docker_client, tmp_path) -> None:
    spec = EndpointSpec(model_data=model_tar(tmp_path, {"unhealthy": "1"}), port=free_port(),
                        startup_health_timeout=3)
    endpoint = DockerEndpoint(spec, docker_client, foreign_image, sink=None)
    started = time.monotonic()
    with pytest.raises(ServingError) as info:
        endpoint.start()
    assert time.monotonic() - started < 30
    message = str(info.value)
    assert "did not answer 200 within the startup health check timeout of 3 s" in message
    assert "503" in message
    assert "foreign serve listening" in message  # the last log lines
    assert endpoint_containers(docker_client) == []


def test_container_that_exits_is_reported_with_status(foreign_image, docker_client, tmp_path) -> None:
    # An invalid port makes the foreign server crash at start.
    spec = EndpointSpec(model_data=None, port=free_port(), startup_health_timeout=60,
                        environment={"SAGEMAKER_BIND_TO_PORT": "not-a-port"})
    endpoint = DockerEndpoint(spec, docker_client, foreign_image, sink=None)
    with pytest.raises(ServingError, match="the container exited with status 1") as info:
        endpoint.start()
    assert "ValueError" in str(info.value)
    assert endpoint_containers(docker_client) == []


def test_image_without_serve_is_one_clear_error(docker_client, tmp_path) -> None:
    from smbyoc.errors import DockerError

    spec = EndpointSpec(model_data=None, port=free_port(), startup_health_timeout=60)
    endpoint = DockerEndpoint(spec, docker_client, "smbyoc/base:bookworm", sink=None)
    with pytest.raises(DockerError, match='"serve": executable file not found'):
        endpoint.start()
    assert endpoint_containers(docker_client) == []


def test_local_serve_cli_ctrl_c_and_invoke(foreign_image, docker_client, tmp_path) -> None:
    port = free_port()
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [*SMBYOC, "local-serve", "--image", foreign_image, "--model-data", str(model_tar(tmp_path, {"m": "1"})),
         "--port", str(port), "--ready-file", str(ready)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 60
    while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ready.read_text().strip() == f"http://127.0.0.1:{port}"
    ok = subprocess.run([*SMBYOC, "invoke", "--url", f"http://127.0.0.1:{port}", '{"a": 1}'], capture_output=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["echo"] == '{"a": 1}'
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)  # while the container is being stopped: a second signal must not cut the cleanup short
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Endpoint stopped." in err and "Aborted" not in err
    assert not ready.exists()
    assert endpoint_containers(docker_client) == []


def test_local_serve_needs_model_for_a_given_image(foreign_image, tmp_path) -> None:
    proc = subprocess.run([*SMBYOC, "local-serve", "--image", foreign_image], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode != 0
    assert "--model-data" in proc.stderr
