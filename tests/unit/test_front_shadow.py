"""A shadow variant's instances run at a lower CPU priority than production's (the local stand-in for the separate
instances SageMaker gives a shadow variant): nice in process mode, CPU shares in docker mode; real ``serve``
processes and real containers."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from helpers import free_port
from mme_support import expected, write_handler_model
from smbyoc.emulator.endpoint_config import parse_endpoint_config
from smbyoc.emulator.hosted_endpoint import HostedEndpoint, HostingOptions
from smbyoc.emulator.owners import process_tree
from smbyoc.errors import ConfigError


def document(tmp: Path, image: str = "smbyoc/serve:cpu") -> dict[str, Any]:
    write_handler_model(tmp / "prod.tar.gz", "prod", 1.0, 0.0)
    write_handler_model(tmp / "candidate.tar.gz", "candidate", 2.0, 0.0)

    def variant(name: str, model: str) -> dict[str, Any]:
        return {"VariantName": name, "ModelName": model, "InstanceType": "ml.m5.large", "InitialInstanceCount": 1,
                "InitialVariantWeight": 1.0}

    return {"EndpointName": "prio",
            "Models": [{"ModelName": name, "PrimaryContainer": {
                "Image": image, "ModelDataUrl": str(tmp / f"{name}.tar.gz"),
                "Environment": {"SAGEMAKER_MODEL_SERVER_WORKERS": "1"}}} for name in ("prod", "candidate")],
            "EndpointConfig": {"EndpointConfigName": "prio-config",
                               "ProductionVariants": [variant("Production", "prod")],
                               "ShadowProductionVariants": [variant("Candidate", "candidate")]}}


def start(tmp: Path, client: Any = None, **options: Any) -> HostedEndpoint:
    doc = document(tmp, **({"image": options.pop("image")} if "image" in options else {}))
    definition = parse_endpoint_config(doc, source=str(tmp / "endpoint.json"), base_dir=tmp)
    endpoint = HostedEndpoint(definition, HostingOptions(port=free_port(), seed=1, **options), client=client,
                              sink=lambda line: None)
    endpoint.start()
    return endpoint


def tree_nice(pid: int) -> tuple[set[int], int]:
    """The nice values of every thread of ``pid`` and its descendants (serve, gunicorn and nginx each start a
    session of their own), and how many processes that is."""
    values, processes = set(), process_tree(pid)
    for process in processes:
        for task in Path(f"/proc/{process}/task").iterdir():
            values.add(int((task / "stat").read_text().rsplit(")", 1)[1].split()[16]))
    return values, len(processes)


def autogroup_nice(pid: int) -> set[int]:
    """The nice values of the autogroups (one per session) of ``pid``'s tree, except this process's session."""
    return {int(Path(f"/proc/{process}/autogroup").read_text().split()[-1])
            for process in process_tree(pid) if os.getsid(process) != os.getsid(0)}


def invoke(endpoint: HostedEndpoint) -> Any:
    request = urllib.request.Request(f"{endpoint.url}/endpoints/prio/invocations", data=b"[1]", method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


@pytest.mark.parametrize("nice", [19, 0])
def test_shadow_processes_run_at_the_shadow_nice_value(tmp_path: Path, nice: int) -> None:
    endpoint = start(tmp_path, mode="process", shadow_nice=nice)
    try:
        by_name = {i.name: i.handle.process.pid for i in endpoint.instances}
        base = os.nice(0)  # (this process's own nice value)
        production, shadow = tree_nice(by_name["Production-1"]), tree_nice(by_name["Candidate-1"])
        assert production[0] == {base} and shadow[0] == {max(base, nice)}  # every thread of serve and children
        assert shadow[1] >= 3  # serve, gunicorn (master and a worker) and, with nginx on PATH, nginx
        if Path("/proc/self/autogroup").exists():  # the kernel groups by session: nice counts only inside one
            ours = Path("/proc/self/autogroup").read_text()
            assert autogroup_nice(by_name["Candidate-1"]) == {nice}  # gunicorn's and nginx's sessions too
            assert autogroup_nice(by_name["Production-1"]) == {0}
            assert Path("/proc/self/autogroup").read_text() == ours  # never the caller's own session
        assert invoke(endpoint)  # production answers; the shadow still gets its copy
        router = endpoint.router
        assert router is not None
        deadline = time.monotonic() + 30
        while router.shadow_stats.sent < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert router.shadow_stats.sent == 1 and router.variants["Candidate"].stats.invocations == 1
    finally:
        endpoint.close()


@pytest.mark.parametrize(("option", "value"), [("shadow_nice", 20), ("shadow_nice", -1), ("shadow_cpu_shares", 1),
                                               ("front_event_loop", "trio"), ("container_route", "bridge")])
def test_bad_hosting_options_name_the_option(option: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=option):
        HostingOptions(**{option: value})


@pytest.mark.docker
def test_shadow_containers_get_low_cpu_shares(tmp_path: Path, docker_client: Any) -> None:
    from smbyoc.images.defaults import ensure_default_image

    image = ensure_default_image(docker_client, "serve")
    endpoint = start(tmp_path, docker_client, mode="docker", image=image)
    try:
        shares = {}
        for instance in endpoint.instances:
            instance.handle.container.reload()
            shares[instance.name] = instance.handle.container.attrs["HostConfig"]["CpuShares"]
        assert shares == {"Production-1": 0, "Candidate-1": 2}  # 0: docker's default (1024)
        assert invoke(endpoint)
    finally:
        endpoint.close()


@pytest.mark.docker
@pytest.mark.parametrize("route", ["network", "published"])
def test_the_front_reaches_docker_containers_at_their_network_address(tmp_path: Path, docker_client: Any,
                                                                      route: str) -> None:
    """As SageMaker's front reaches an instance over the network: the container's bridge address (routed from the
    host on Linux), not its published port, which docker-proxy serves with a user-space copy of every byte."""
    from smbyoc.images.defaults import ensure_default_image

    image = ensure_default_image(docker_client, "serve")
    endpoint = start(tmp_path, docker_client, mode="docker", image=image, container_route=route)
    try:
        for instance in endpoint.instances:
            instance.handle.container.reload()
            addresses = [n["IPAddress"] for n in instance.handle.container.attrs["NetworkSettings"]["Networks"]
                         .values() if n.get("IPAddress")]
            wanted = f"http://{addresses[0]}:8080" if route == "network" else instance.handle.url
            assert instance.router.url == wanted + "/invocations"
        for _ in range(2):
            assert invoke(endpoint) == expected("prod", 1.0, 0.0, [1])
        router = endpoint.router
        assert router is not None
        deadline = time.monotonic() + 30
        while router.shadow_stats.sent < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert router.shadow_stats.sent == 2 and router.shadow_stats.failed == 0
    finally:
        endpoint.close()


class _Container:
    """Argument shapes of docker-py's Container for DockerEndpoint.network_url."""

    def __init__(self, addresses: list[str]) -> None:
        self.attrs = {"NetworkSettings": {"Networks": {f"net{i}": {"IPAddress": a} for i, a in enumerate(addresses)}}}

    def reload(self) -> None:
        pass


def test_network_url_falls_back_when_the_address_cannot_be_reached(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    import socket

    from smbyoc.emulator import endpoint as endpoint_module
    from smbyoc.emulator.endpoint import DockerEndpoint, EndpointSpec

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        monkeypatch.setattr(endpoint_module, "CONTAINER_PORT", listening.getsockname()[1])
        handle = DockerEndpoint(EndpointSpec(None, port=free_port()), client=None, image="x", sink=None,
                                root=tmp_path / "endpoint")  # (a member's tree: nothing registered)
        handle.container = _Container([])
        assert handle.network_url() is None  # no address (e.g. --network none)
        handle.container = _Container(["127.0.0.1"])
        assert handle.network_url() == f"http://127.0.0.1:{listening.getsockname()[1]}"
        handle.container = _Container(["", "127.0.0.1"])  # the first network without an address
        assert handle.network_url() == f"http://127.0.0.1:{listening.getsockname()[1]}"
    handle.container = _Container(["127.0.0.1"])  # nothing listens there any more: the published port it is
    assert handle.network_url() is None
    handle.container = None
    assert handle.network_url() is None
