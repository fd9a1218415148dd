"""The installed docker SDK really drives the engine: the ``docker`` floor in pyproject.toml is honest.

docker 7.0.0 cannot reach any engine once requests >= 2.32 is installed ("Not supported URL scheme
http+docker"; fixed in docker 7.1.0), and smbyoc then reports the engine as not running. scripts/test-min-deps
runs this file with the declared minimum versions (constraints/minimum.txt). Nothing here pulls an image:
the image is built ``FROM scratch`` from one file.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from smbyoc.docker.client import translate_docker_errors
from smbyoc.errors import DockerError

pytestmark = pytest.mark.docker

LABELS = {"com.smbyoc.test": "1"}


def test_sdk_builds_networks_and_creates_containers_on_the_real_engine(docker_client: Any, tmp_path: Path) -> None:
    import docker

    name = f"smbyoc-test-sdk-{uuid.uuid4().hex[:8]}"
    assert docker_client.version()["ApiVersion"]
    (tmp_path / "payload.txt").write_text("min-deps\n")
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY payload.txt /payload.txt\nCMD [\"/nothing\"]\n")
    tag = f"smbyoc-test/{name}:latest"
    stream = list(docker_client.api.build(path=str(tmp_path), tag=tag, rm=True, labels=LABELS, decode=True))
    assert not [chunk for chunk in stream if "error" in chunk], stream
    network = docker_client.networks.create(name, driver="bridge", internal=True, labels=LABELS)
    try:
        container = docker_client.containers.create(
            tag, name=name, hostname="algo-1", labels=LABELS, network=network.name,
            networking_config={network.name: docker_client.api.create_endpoint_config(aliases=["algo-1"])},
        )
        try:
            container.reload()
            assert container.status == "created"
            assert container.attrs["Config"]["Hostname"] == "algo-1"
            assert "algo-1" in container.attrs["NetworkSettings"]["Networks"][network.name]["Aliases"]
            listed = docker_client.containers.list(all=True, filters={"label": "com.smbyoc.test=1", "name": name})
            assert [c.id for c in listed] == [container.id]
        finally:
            container.remove(force=True)
    finally:
        network.remove()
        docker_client.images.remove(tag, force=True)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(tag)


def test_sdk_errors_become_one_smbyoc_error(docker_client: Any) -> None:
    missing = f"smbyoc-test/absent-{uuid.uuid4().hex[:8]}:latest"
    action = f"inspect {missing}"
    with pytest.raises(DockerError, match=r"inspect .*: image not found"), translate_docker_errors(action):
        docker_client.images.get(missing)
