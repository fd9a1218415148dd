"""Issue 13 against a real engine: the platform check with real arm64 and amd64 images (made without emulation:
``docker load`` of a hand-written image whose config says ``"architecture": "arm64"``; the engine takes that as
the image's ``Architecture``), for local-train, local-serve (a single image, every variant of an endpoint
configuration) and local-transform, before anything starts; ``smbyoc build --list`` against built images; and
no half-tagged image after a failing (damaged wheelhouse) or interrupted build."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smbyoc.emulator import containers
from smbyoc.errors import BuildError, ConfigError
from smbyoc.serving.ports import free_port

pytestmark = pytest.mark.docker

SMBYOC = str(Path(sys.executable).parent / "smbyoc")
OWNER = {"label": "com.smbyoc.owner=smbyoc"}


def _tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def load_tiny_image(client: Any, tag: str, arch: str, labels: dict[str, str] | None = None) -> Any:
    """A one-file image for ``arch`` in ``docker save`` form, loaded into the engine (no emulation needed)."""
    layer = _tar({"hello": f"#!/bin/sh\necho {arch}\n".encode()})
    config = {"architecture": arch, "os": "linux", "created": "2026-01-01T00:00:00Z",
              "config": {"Entrypoint": ["/hello"], "Labels": labels or {}},
              "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
              "history": [{"created": "2026-01-01T00:00:00Z", "created_by": "smbyoc test: tiny " + arch}]}
    config_bytes = json.dumps(config).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": ["layer/layer.tar"]}]
    client.images.load(_tar({"manifest.json": json.dumps(manifest).encode(), config_name: config_bytes,
                             "layer/layer.tar": layer}))
    return client.images.get(tag)


@pytest.fixture(scope="module")
def tiny(docker_client: Any, docker_test_prefix: str) -> Iterator[dict[str, str]]:
    tags = {arch: f"{docker_test_prefix}-tiny:{arch}" for arch in ("arm64", "amd64")}
    for arch, tag in tags.items():
        load_tiny_image(docker_client, tag, arch, {"org.smbyoc.kind": "serve", "org.smbyoc.variant": "tiny",
                                                   "org.smbyoc.source": "tiny-test"})
    yield tags
    for tag in tags.values():
        docker_client.images.remove(tag, force=True)


def owned_containers(client: Any) -> list[str]:
    return [c.name for c in client.containers.list(all=True, filters=OWNER)]


def one_line_refusal(args: list[str], cwd: Path) -> str:
    proc = subprocess.run([SMBYOC, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


# ---------------------------------------------------------------------------------------------- platform check


def test_the_engine_takes_the_architecture_of_a_loaded_image(docker_client: Any, tiny: dict[str, str]) -> None:
    assert docker_client.images.get(tiny["arm64"]).attrs["Architecture"] == "arm64"
    assert docker_client.images.get(tiny["amd64"]).attrs["Architecture"] == "amd64"


def test_require_image_checks_real_images_both_ways(docker_client: Any, tiny: dict[str, str]) -> None:
    containers.require_image(docker_client, tiny["arm64"], instance_type="ml.c7g.xlarge")
    containers.require_image(docker_client, tiny["amd64"], instance_type="ml.m5.large")
    containers.require_image(docker_client, tiny["arm64"], instance_type="local")
    with pytest.raises(ConfigError, match=rf"^image {tiny['arm64']} is linux/arm64 but ml.m5.large is an x86"):
        containers.require_image(docker_client, tiny["arm64"], instance_type="ml.m5.large")
    with pytest.raises(ConfigError, match=rf"^image {tiny['amd64']} is linux/amd64 but ml.c7g.xlarge is a Graviton"):
        containers.require_image(docker_client, tiny["amd64"], instance_type="ml.c7g.xlarge")
    # multi-model and multi-container images go through the same check
    from smbyoc.emulator.multi_container import require_bind_to_port_label
    from smbyoc.emulator.multi_model import require_multi_model_label

    with pytest.raises(ConfigError, match="is linux/arm64 but ml.m5.large"):
        require_multi_model_label(docker_client, tiny["arm64"], "ml.m5.large")
    with pytest.raises(ConfigError, match="is linux/amd64 but ml.c6g.large"):
        require_bind_to_port_label(docker_client, tiny["amd64"], "Containers[0]", "ml.c6g.large")


def test_local_train_refuses_before_anything_starts(docker_client: Any, tiny: dict[str, str],
                                                    tmp_path: Path) -> None:
    line = one_line_refusal(["local-train", "--image", tiny["arm64"], "--instance-type", "ml.m5.xlarge",
                             "--job-name", "arm-on-x86", "-o", str(tmp_path / "out")], tmp_path)
    assert f"image {tiny['arm64']} is linux/arm64 but ml.m5.xlarge is an x86 (linux/amd64) instance type" in line
    line = one_line_refusal(["local-train", "--image", tiny["amd64"], "--instance-type", "ml.c7g.xlarge",
                             "--job-name", "x86-on-arm", "-o", str(tmp_path / "out")], tmp_path)
    assert f"image {tiny['amd64']} is linux/amd64 but ml.c7g.xlarge is a Graviton (linux/arm64)" in line
    assert not (tmp_path / "out").exists() and owned_containers(docker_client) == []


def test_local_serve_refuses_single_images_and_any_variant_before_anything_starts(
        docker_client: Any, tiny: dict[str, str], tmp_path: Path) -> None:
    model = tmp_path / "model.tar.gz"
    with tarfile.open(model, "w:gz") as tar:
        tar.add(__file__, arcname="model.txt")
    line = one_line_refusal(["local-serve", "--image", tiny["arm64"], "--model-data", str(model),
                             "--instance-type", "ml.m5.large", "--port", str(free_port())], tmp_path)
    assert "is linux/arm64 but ml.m5.large is an x86" in line
    # an endpoint configuration: variant A fits, variant B (a shadow) does not; nothing of A may start
    from smbyoc.emulator.endpoint_config import parse_endpoint_config
    from smbyoc.emulator.hosted_endpoint import HostedEndpoint, HostingOptions

    def variant(name: str, model_name: str, instance_type: str) -> dict[str, Any]:
        return {"VariantName": name, "ModelName": model_name, "InstanceType": instance_type,
                "InitialInstanceCount": 1, "InitialVariantWeight": 1.0}

    document = {
        "EndpointName": "platforms",
        "Models": [{"ModelName": "a", "PrimaryContainer": {"Image": tiny["arm64"], "ModelDataUrl": "./model.tar.gz"}},
                   {"ModelName": "b", "PrimaryContainer": {"Image": tiny["arm64"], "ModelDataUrl": "./model.tar.gz"}}],
        "EndpointConfig": {"EndpointConfigName": "platforms-config",
                           "ProductionVariants": [variant("A", "a", "ml.c7g.large")],
                           "ShadowProductionVariants": [variant("B", "b", "ml.m5.large")]},
    }
    (tmp_path / "endpoint.json").write_text(json.dumps(document))
    definition = parse_endpoint_config(document, source=str(tmp_path / "endpoint.json"), base_dir=tmp_path)
    lines: list[str] = []
    endpoint = HostedEndpoint(definition, HostingOptions(mode="docker", port=free_port()), client=docker_client,
                              sink=lines.append)
    with pytest.raises(ConfigError, match=rf"^image {tiny['arm64']} is linux/arm64 but ml.m5.large is an x86"):
        endpoint.start()
    assert lines == [] and endpoint.instances == [] and owned_containers(docker_client) == []
    line = one_line_refusal(["local-serve", "--endpoint-config", str(tmp_path / "endpoint.json"),
                             "--port", str(free_port())], tmp_path)
    assert "is linux/arm64 but ml.m5.large is an x86" in line


def test_local_transform_refuses_before_anything_starts(docker_client: Any, tiny: dict[str, str],
                                                        tmp_path: Path) -> None:
    model = tmp_path / "model.tar.gz"
    with tarfile.open(model, "w:gz") as tar:
        tar.add(__file__, arcname="model.txt")
    (tmp_path / "in.csv").write_text("1,2\n")
    line = one_line_refusal(["local-transform", "--image", tiny["amd64"], "--model-data", str(model),
                             "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out"),
                             "--instance-type", "ml.c7g.xlarge"], tmp_path)
    assert f"image {tiny['amd64']} is linux/amd64 but ml.c7g.xlarge is a Graviton (linux/arm64)" in line
    assert not (tmp_path / "out").exists() and owned_containers(docker_client) == []


# ---------------------------------------------------------------------------------------------- build --list


def test_build_list_shows_the_built_images(docker_client: Any, default_images: dict[str, str],
                                           tiny: dict[str, str]) -> None:
    from smbyoc.images.wheelhouse import source_fingerprint

    proc = subprocess.run([SMBYOC, "build", "--list", "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = {row["tag"]: row for row in json.loads(proc.stdout)}
    for kind, tag in default_images.items():
        row = rows[tag]
        image = docker_client.images.get(tag)
        assert (row["kind"], row["variant"], row["platform"]) == (kind, "cpu", "linux/amd64")
        assert row["size_bytes"] == image.attrs["Size"] and row["id"] == image.id
        assert row["source"] == image.labels["org.smbyoc.source"]
        assert row["stale"] is (row["source"] != source_fingerprint())
        assert "accept-bind-to-port" in row["capabilities"]
        assert image.labels["org.smbyoc.platform"] == "linux/amd64"
    arm = rows[tiny["arm64"]]
    assert arm["platform"] == "linux/arm64" and arm["stale"] is True and arm["capabilities"] == []
    table = subprocess.run([SMBYOC, "build", "--list"], capture_output=True, text=True, timeout=120).stdout
    assert table.splitlines()[0].split()[:4] == ["TAG", "VARIANT", "KIND", "PLATFORM"]
    assert any(line.startswith(default_images["serve"] + " ") for line in table.splitlines())


# ---------------------------------------------------------------------------------------------- no half-tagged image


def _serve_wheelhouse(cache: Path) -> Path:
    """A copy of the cpu serve image's cached wheelhouse under ``cache`` (resolved there when not cached)."""
    from smbyoc.images import wheelhouse
    from smbyoc.images.variants import load_variant

    variant = load_variant("cpu")
    files = [variant.requirements_file("serve")]
    own = wheelhouse.smbyoc_runtime_requirements()
    name = f"cpu-{wheelhouse.wheelhouse_key(variant, files, own)}"
    source = wheelhouse.cache_dir() / "wheelhouses" / name
    target = cache / "wheelhouses" / name
    if (source / ".complete").is_file():
        shutil.copytree(source, target)
    else:
        wheelhouse.resolve_wheelhouse(variant, files, own, cache / "scratch", cache=cache)
    return target


def test_a_failing_build_moves_no_tag(docker_client: Any, docker_test_prefix: str, tiny: dict[str, str],
                                      tmp_path: Path) -> None:
    from smbyoc.images.builder import build_image

    cached = _serve_wheelhouse(tmp_path / "cache")
    victim = sorted(cached.glob("click-*.whl"))[0]
    victim.unlink()
    with zipfile.ZipFile(victim, "w") as z:  # a readable zip, but no wheel: pip fails inside the build
        z.writestr("nothing.txt", "")
    existing = f"{docker_test_prefix}-half:existing"
    fresh = f"{docker_test_prefix}-half:fresh"
    docker_client.images.get(tiny["amd64"]).tag(existing)
    before = docker_client.images.get(existing).id
    try:
        for tag in (existing, fresh):
            with pytest.raises(BuildError, match=rf"^building {tag} failed: "):
                build_image("serve", "cpu", tag, base_image="smbyoc/base:bookworm", cache=tmp_path / "cache",
                            client=docker_client)
        assert docker_client.images.get(existing).id == before
        assert not docker_client.images.list(name=fresh)
    finally:
        docker_client.images.remove(existing, force=True)


def test_an_interrupted_build_creates_no_tag(docker_client: Any, docker_test_prefix: str, tmp_path: Path) -> None:
    tag = f"{docker_test_prefix}-interrupted:serve"
    proc = subprocess.Popen([SMBYOC, "build", "--kind", "serve", "--no-cache", "--base-image", "smbyoc/base:bookworm",
                             "-t", tag], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + 300
    for line in proc.stdout:  # interrupt during the step that installs the wheelhouse
        seen.append(line)
        if "python3 -m venv /opt/smbyoc/venv" in line or time.monotonic() > deadline:
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=60)[0]
    assert proc.returncode != 0, "".join(seen) + rest
    # the engine cancels the build when the client goes: the tag never appears (watch past the build's length)
    for _ in range(30):
        assert not docker_client.images.list(name=tag), "the interrupted build tagged its image"
        time.sleep(1.0)
