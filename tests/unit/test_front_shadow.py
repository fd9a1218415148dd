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
from mme_support import write_handler_model
from smbyoc.emulator.endpoint_config import parse_endpoint_config
from smbyoc.emulator.hosted_endpoint import HostedEndpoint, HostingOptions
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
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]), []).append(
                    int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    values, todo, processes = set(), [pid], 0
    while todo:
        process = todo.pop()
        todo += children.get(process, [])
        processes += 1
        for task in Path(f"/proc/{process}/task").iterdir():
            values.add(int((task / "stat").read_text().rsplit(")", 1)[1].split()[16]))
    return values, processes


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
                                               ("front_event_loop", "trio")])
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
