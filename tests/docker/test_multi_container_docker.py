"""Multi-container endpoints with real containers: the preprocessing example's image in front of the default
model (Serial, and the same two as Direct), the contract-only foreign image under two hostnames, and what
SageMaker refuses before anything starts. Nothing may be left behind."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from helpers import free_port
from smbyoc.emulator.default_model import default_model
from smbyoc.emulator.multi_container import (
    ACCEPT_BIND_TO_PORT_LABEL,
    ContainerSpec,
    MultiContainerEndpoint,
    MultiContainerSpec,
    parse_container,
)
from smbyoc.emulator.pipeline import CONTAINER_HEADER
from smbyoc.emulator.runtime_client import request
from smbyoc.errors import ConfigError, ServingError
from smbyoc.examples import default_example, preprocessing

pytestmark = pytest.mark.docker

TARGET = "X-Amzn-SageMaker-Target-Container-Hostname"
PSI_PER_KPA = 0.14503773773020923
BASE_WITHOUT_LABEL = "smbyoc/base:bookworm"


def ours(client: Any, job: str | None = None) -> list[str]:
    """Names of smbyoc's containers (of endpoint ``job``)."""
    found = client.containers.list(all=True, filters={"label": "com.smbyoc.owner=smbyoc"})
    return sorted(c.name for c in found if job is None or (c.labels or {}).get("com.smbyoc.job") == job)


def readings() -> list[dict[str, float | None]]:
    """Validation rows in field units (°F, psi); the last one misses its humidity."""
    with next(default_example().channels["validation"].glob("*.csv")).open() as f:
        rows = [{k: float(v) for k, v in row.items() if k != "label"} for row in list(csv.DictReader(f))[:5]]
    out: list[dict[str, float | None]] = [
        {"temperature_f": r["temperature_c"] * 1.8 + 32, "pressure_psi": r["pressure_kpa"] * PSI_PER_KPA,
         **{k: v for k, v in r.items() if k not in ("temperature_c", "pressure_kpa")}} for r in rows]
    out[-1]["humidity_pct"] = None
    return out


def features(reading: dict[str, Any]) -> list[float]:
    """The default model's features for a reading, by model/scaling.json's rules, computed here on their own."""
    fill = {f["name"]: f.get("fill") for f in
            json.loads((preprocessing.model_dir() / "scaling.json").read_text())["features"]}
    return [(reading["temperature_f"] - 32.0) / 1.8, reading["vibration_rms"], reading["pressure_psi"] / PSI_PER_KPA,
            *(fill[k] if reading[k] is None else reading[k]
              for k in ("rpm", "current_a", "voltage_v", "humidity_pct", "acoustic_db"))]


def local_base(client: Any) -> str | None:
    """smbyoc/base:bookworm when present (machines with no registry build on it)."""
    return BASE_WITHOUT_LABEL if any(BASE_WITHOUT_LABEL in i.tags for i in client.images.list()) else None


def post(url: str, payload: Any, **headers: str) -> Any:
    body = json.dumps(payload).encode()
    return request(url, "POST", "/invocations", body, {"Content-Type": "application/json",
                                                       "Content-Length": str(len(body)), **headers})


@pytest.fixture(scope="module")
def pipeline_parts(default_images: dict[str, str], docker_client: Any) -> dict[str, Any]:
    image = preprocessing.ensure_preprocessing_image(docker_client, base_image=local_base(docker_client))
    model = default_model("docker", docker_client, default_images["train"])
    return {"preprocess": image, "serve": default_images["serve"], "model": model}


@pytest.fixture(scope="module")
def endpoints(pipeline_parts: dict[str, Any], docker_client: Any, tmp_path_factory) -> Iterator[dict[str, Any]]:
    state = tmp_path_factory.mktemp("state")
    made: dict[str, MultiContainerEndpoint] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SMBYOC_STATE_DIR", str(state))
        try:
            for mode in ("Serial", "Direct"):
                spec = MultiContainerSpec(
                    (ContainerSpec(pipeline_parts["preprocess"], preprocessing.model_dir(), "preprocess"),
                     ContainerSpec(pipeline_parts["serve"], pipeline_parts["model"], "model")),
                    execution_mode=mode, port=free_port(), environment={"SAGEMAKER_MODEL_SERVER_WORKERS": "1"},
                    instance_type="ml.m5.large", startup_health_timeout=120)
                made[mode] = MultiContainerEndpoint(spec, client=docker_client, sink=None)
                made[mode].start()
            yield made
        finally:
            for endpoint in made.values():
                endpoint.close()
    for endpoint in made.values():
        assert ours(docker_client, endpoint.root.name) == []
        assert not endpoint.root.exists()


def test_serial_pipeline_equals_the_model_given_preprocessed_features(endpoints) -> None:
    rows = readings()
    chained = post(endpoints["Serial"].url, {"instances": rows})
    assert chained.status == 200, chained.body
    assert chained.headers[CONTAINER_HEADER] == "model"
    direct = post(endpoints["Direct"].url, {"instances": [features(r) for r in rows]}, **{TARGET: "model"})
    assert direct.status == 200, direct.body
    assert json.loads(chained.body) == json.loads(direct.body)
    assert len(json.loads(chained.body)["predictions"]) == len(rows)
    raw = post(endpoints["Direct"].url, {"instances": [[v or 0.0 for v in r.values()] for r in rows]},
               **{TARGET: "model"})
    assert json.loads(raw.body) != json.loads(direct.body)  # the preprocessing mattered


def test_direct_mode_routes_to_each_hostname(endpoints) -> None:
    rows = readings()[:2]
    pre = post(endpoints["Direct"].url, rows, **{TARGET: "preprocess"})
    assert pre.status == 200 and pre.headers[CONTAINER_HEADER] == "preprocess"
    assert json.loads(pre.body) == {"instances": [features(r) for r in rows]}
    missing = post(endpoints["Direct"].url, rows)
    assert missing.status == 400 and missing.headers["X-Amzn-ErrorType"] == "ValidationError"


def test_containers_share_one_network_namespace(endpoints, docker_client) -> None:
    endpoint = endpoints["Serial"]
    first, second = (docker_client.containers.get(m.container.id) for m in endpoint.members)
    assert first.name == f"{endpoint.root.name}-preprocess" and second.name == f"{endpoint.root.name}-model"
    assert second.attrs["HostConfig"]["NetworkMode"] == f"container:{first.id}"
    published = first.attrs["HostConfig"]["PortBindings"]
    assert set(published) == {"8080/tcp", "8081/tcp"}
    assert all(b == [{"HostIp": "127.0.0.1", "HostPort": ""}] for b in published.values())
    for container, port, safe in ((first, "8080", "9000-9099"), (second, "8081", "9100-9199")):
        env = dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])
        assert (env["SAGEMAKER_BIND_TO_PORT"], env["SAGEMAKER_SAFE_PORT_RANGE"]) == (port, safe)
        assert container.attrs["Config"]["Cmd"] == ["serve"]
        mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
        assert mounts["/opt/ml/model"]["RW"] is False
        assert container.attrs["HostConfig"]["NanoCpus"] == 2 * 10**9  # ml.m5.large, for each container
        assert container.labels["com.smbyoc.job"] == endpoint.root.name
    assert [c.labels["com.smbyoc.host"] for c in (first, second)] == ["preprocess", "model"]


def test_foreign_containers_in_direct_mode_and_a_container_that_stops(foreign_image, docker_client, tmp_path,
                                                                     monkeypatch) -> None:
    monkeypatch.setenv("SMBYOC_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "weights-a").write_text("a")
    spec = MultiContainerSpec((parse_container(f"image={foreign_image},model={tmp_path / 'a'},hostname=echo-a"),
                               parse_container(f"image={foreign_image},hostname=echo-b")),
                              execution_mode="Direct", port=free_port(), startup_health_timeout=60)
    with MultiContainerEndpoint(spec, client=docker_client, sink=None) as endpoint:
        for name, files in (("echo-a", ["weights-a"]), ("echo-b", [])):
            answer = post(endpoint.url, {"x": 1}, **{TARGET: name, "X-Amzn-SageMaker-Custom-Attributes": "k=v"})
            assert answer.status == 200 and answer.headers[CONTAINER_HEADER] == name
            seen = json.loads(answer.body)
            assert (seen["echo"], seen["model_files"], seen["custom_attributes"]) == ('{"x": 1}', files, "k=v")
        docker_client.containers.get(endpoint.members[1].container.id).kill()
        reason = endpoint._exit_reason()
        assert reason is not None and reason.startswith(f"container echo-b ({foreign_image}) stopped: ")
    assert ours(docker_client, endpoint.root.name) == []


def test_a_container_that_never_gets_healthy_is_named_and_everything_removed(foreign_image, docker_client, tmp_path,
                                                                             monkeypatch) -> None:
    monkeypatch.setenv("SMBYOC_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "sick").mkdir()
    (tmp_path / "sick" / "unhealthy").write_text("1")
    spec = MultiContainerSpec((ContainerSpec(foreign_image), ContainerSpec(foreign_image, tmp_path / "sick")),
                              port=free_port(), startup_health_timeout=4)
    endpoint = MultiContainerEndpoint(spec, client=docker_client, sink=None)
    with pytest.raises(ServingError) as info:
        endpoint.start()
    message = str(info.value)
    assert message.startswith(f"container container-2 ({foreign_image}) did not become healthy: /ping at ")
    assert "last log lines of container-2:" in message and "GET /ping" in message
    assert ours(docker_client, endpoint.root.name) == []
    assert not endpoint.root.exists()


def test_an_image_without_the_label_is_refused_before_anything_starts(foreign_image, docker_client, tmp_path,
                                                                      monkeypatch) -> None:
    monkeypatch.setenv("SMBYOC_STATE_DIR", str(tmp_path / "state"))
    before = ours(docker_client)
    spec = MultiContainerSpec((ContainerSpec(foreign_image), parse_container(BASE_WITHOUT_LABEL)))
    with pytest.raises(ConfigError) as info:
        MultiContainerEndpoint(spec, client=docker_client, sink=None)
    assert str(info.value).startswith(f"--container {BASE_WITHOUT_LABEL}: image {BASE_WITHOUT_LABEL} does not carry "
                                      f"the label {ACCEPT_BIND_TO_PORT_LABEL}=true")
    assert ours(docker_client) == before
    assert not (tmp_path / "state").exists() or not list((tmp_path / "state").rglob("*.json"))


def test_sixteen_containers_and_duplicate_hostnames_are_refused(foreign_image, docker_client) -> None:
    before = ours(docker_client)
    with pytest.raises(ConfigError, match="16 containers: a model has at most 15"):
        MultiContainerEndpoint(MultiContainerSpec(tuple([ContainerSpec(foreign_image)] * 16)), client=docker_client,
                               sink=None)
    with pytest.raises(ConfigError, match="ContainerHostname 'twin' is also container 1's"):
        MultiContainerEndpoint(MultiContainerSpec((ContainerSpec(foreign_image, hostname="twin"),
                                                   ContainerSpec(foreign_image, hostname="twin"))),
                               client=docker_client, sink=None)
    assert ours(docker_client) == before


def test_build_multi_model_labels_the_image(docker_client, docker_test_prefix, docker_cleanup,
                                            default_images) -> None:
    """`smbyoc build --kind serve --multi-model` (the layers are the default serve image's: cached)."""
    from smbyoc.images.builder import MULTI_MODELS_LABEL

    tag = f"{docker_test_prefix}/serve:mme"
    docker_cleanup.append(tag)
    base = local_base(docker_client)
    proc = subprocess.run([sys.executable, "-m", "smbyoc.cli", "build", "--kind", "serve", "--multi-model", "-q",
                           "-t", tag, *(["--base-image", base] if base else [])],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    labels = docker_client.images.get(tag).labels
    assert labels[MULTI_MODELS_LABEL] == "true"
    assert labels[ACCEPT_BIND_TO_PORT_LABEL] == "true"
    assert MULTI_MODELS_LABEL not in (docker_client.images.get(default_images["serve"]).labels or {})
