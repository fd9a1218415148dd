"""`smbyoc build --emit-context DIR`, built with the docker CLI itself: `docker build DIR` (the legacy builder)
and `docker buildx build --provenance=false --output type=docker DIR` (BuildKit) give the image `smbyoc build`
gives (same config, installed packages and files), and what a registry receives is a Docker V2 schema 2
manifest (SageMaker rejects OCI image indexes).

Needs the docker CLI with the buildx plugin (scripts/setup-docker-buildx) and docker-registry
(scripts/setup-host-packages); under CI a missing one fails, elsewhere it skips.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from registry_support import run_registry

pytestmark = pytest.mark.docker

BASE_IMAGE = "smbyoc/base:bookworm"
#: The image config fields that make two images behave alike under `docker run` (and SageMaker).
CONFIG_FIELDS = ("Entrypoint", "Cmd", "Env", "Labels", "User", "WorkingDir", "ExposedPorts", "Volumes",
                 "StopSignal", "Healthcheck", "Shell", "OnBuild")
SCHEMA2 = "application/vnd.docker.distribution.manifest.v2+json"
#: Every manifest type, so the registry answers with whatever it stored (an index would come back as one).
ACCEPT = ", ".join(["application/vnd.oci.image.index.v1+json",
                    "application/vnd.docker.distribution.manifest.list.v2+json",
                    "application/vnd.oci.image.manifest.v1+json", SCHEMA2])
#: Run in each image: every file under /opt/ml and /opt/smbyoc (the venv, smbyoc, the entry point) with its
#: mode and sha256. Byte code is compared by name only: a .pyc header holds the install time, and pip's
#: --target install (smbyoc in /opt/smbyoc/app) compiles in a temporary directory whose name it embeds.
LIST_FILES = r"""
import hashlib, os, stat, sys
for top in sys.argv[1:]:
    for d, dirs, files in os.walk(top):
        for n in sorted(files + [x for x in dirs if os.path.islink(os.path.join(d, x))]):
            p = os.path.join(d, n)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                print(p, "->", os.readlink(p))
            elif p.endswith(".pyc"):
                print(p)
            else:
                with open(p, "rb") as f:
                    print(p, oct(st.st_mode & 0o7777), hashlib.sha256(f.read()).hexdigest())
"""


def missing(what: str, fix: str) -> None:
    message = f"{what} is not installed on this host; install it with {fix}"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and {message}", pytrace=False)
    pytest.skip(message)


def docker(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    """Run the docker CLI; its stdout, or a failure with the tail of its output."""
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, f"docker {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc.stdout


def smbyoc_build(*args: str) -> str:
    smbyoc = str(Path(sys.executable).with_name("smbyoc"))
    proc = subprocess.run([smbyoc, "build", "-q", *args], capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def image_config(client: Any, tag: str) -> dict[str, Any]:
    config = client.images.get(tag).attrs["Config"]
    return {name: config.get(name) or None for name in CONFIG_FIELDS}


def image_files(client: Any, tag: str) -> list[str]:
    out = client.containers.run(tag, ["-c", LIST_FILES, "/opt/ml", "/opt/smbyoc"],
                                entrypoint="/opt/smbyoc/venv/bin/python", remove=True, network_mode="none")
    return out.decode().splitlines()


def pip_freeze(client: Any, tag: str) -> list[str]:
    out = client.containers.run(tag, ["-m", "pip", "freeze", "--all", "--disable-pip-version-check"],
                                entrypoint="/opt/smbyoc/venv/bin/python", remove=True, network_mode="none")
    return out.decode().splitlines()


@pytest.fixture(scope="module")
def emitted(docker_client: Any, docker_test_prefix: str, docker_cleanup: list[str],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A serve context with user code, emitted by the CLI, and the image `smbyoc build` makes of the same."""
    import docker.errors

    root = tmp_path_factory.mktemp("emit")
    code = root / "code"
    (code / "__pycache__").mkdir(parents=True)
    (code / "__pycache__" / "inference.cpython-311.pyc").write_bytes(b"stale")
    (code / ".git").mkdir()
    (code / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (code / "inference.py").write_text("def model_fn(model_dir):\n    return model_dir\n")
    (code / "lib").mkdir()
    (code / "lib" / "util.py").write_text("ANSWER = 42\n")
    try:
        docker_client.images.get(BASE_IMAGE)
        base = ["--base-image", BASE_IMAGE]
    except docker.errors.ImageNotFound:
        base = []  # a machine with a registry: the variant's public default
    reference = f"{docker_test_prefix}-emit:smbyoc-build"
    docker_cleanup.append(reference)
    # Emitted first, then built: both from the same smbyoc checkout (its fingerprint is a label).
    started = time.monotonic()
    out = smbyoc_build("--kind", "serve", "--context", str(code), "--emit-context", str(root / "ctx"),
                       "--tag", "my-model:serve", *base)
    emit_seconds = time.monotonic() - started
    smbyoc_build("--kind", "serve", "--context", str(code), "--tag", reference, *base)
    ctx = Path(out)
    assert ctx == root / "ctx" and (ctx / "Dockerfile").is_file()
    # What a user drops into the context later stays out of the image (.dockerignore), as with smbyoc build.
    (ctx / "code" / "__pycache__").mkdir()
    (ctx / "code" / "__pycache__" / "late.cpython-311.pyc").write_bytes(b"late")
    print(f"emit: {emit_seconds:.1f}s")
    yield {"ctx": ctx, "reference": reference}


def assert_same_image(client: Any, tag: str, reference: str) -> None:
    assert image_config(client, tag) == image_config(client, reference)
    assert pip_freeze(client, tag) == pip_freeze(client, reference)
    files = image_files(client, tag)
    assert files == image_files(client, reference)
    code_files = sorted(line.split()[0] for line in files if line.startswith("/opt/ml/"))
    assert code_files == ["/opt/ml/code/inference.py", "/opt/ml/code/lib/util.py"]


def test_plain_docker_build_gives_the_smbyoc_build_image(docker_client: Any, emitted: dict[str, Any],
                                                         docker_test_prefix: str, docker_cleanup: list[str]) -> None:
    tag = f"{docker_test_prefix}-emit:docker-build"
    docker_cleanup.append(tag)
    started = time.monotonic()
    # The legacy builder (what `docker build` is without BuildKit); --no-cache: built here, not reused.
    docker("build", "--no-cache", "-q", "-t", tag, str(emitted["ctx"]), env={"DOCKER_BUILDKIT": "0"})
    print(f"docker build (legacy builder, no cache): {time.monotonic() - started:.1f}s")
    assert_same_image(docker_client, tag, emitted["reference"])
    assert docker_client.images.get(tag).id != docker_client.images.get(emitted["reference"]).id


def buildx_available() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "buildx", "version"], capture_output=True, check=False).returncode == 0


def test_buildx_build_gives_the_smbyoc_build_image(docker_client: Any, emitted: dict[str, Any],
                                                   docker_test_prefix: str, docker_cleanup: list[str]) -> None:
    if not buildx_available():
        missing("the docker buildx plugin", "scripts/setup-docker-buildx")
    tag = f"{docker_test_prefix}-emit:buildx"
    docker_cleanup.append(tag)
    started = time.monotonic()
    # The README's BuildKit form, with the engine's own BuildKit (the `docker` driver of the default builder).
    docker("buildx", "build", "--builder", "default", "--no-cache", "--provenance=false", "--output", "type=docker",
           "--progress", "plain", "-t", tag, str(emitted["ctx"]))
    print(f"docker buildx build (no cache): {time.monotonic() - started:.1f}s")
    assert_same_image(docker_client, tag, emitted["reference"])


@pytest.fixture(scope="module")
def registry(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A docker-registry on a free loopback port (the engine pushes to 127.0.0.0/8 over plain HTTP)."""
    with run_registry(tmp_path_factory.mktemp("emit") / "registry") as running:
        yield running.host


@pytest.mark.parametrize("built_by", ["docker-build", "buildx"])
def test_pushed_manifest_is_docker_v2_schema2(docker_client: Any, emitted: dict[str, Any], registry: str,
                                              docker_test_prefix: str, built_by: str) -> None:
    local = f"{docker_test_prefix}-emit:{built_by}"
    try:
        docker_client.images.get(local)
    except Exception:  # noqa: BLE001 - the build test above failed or skipped
        pytest.skip(f"{local} was not built (see the {built_by} test)")
    remote = f"{registry}/emit:{built_by}"  # one repository: the pushes share the base layers
    docker("tag", local, remote)
    try:
        started = time.monotonic()
        docker("push", "-q", remote)
        print(f"push {built_by}: {time.monotonic() - started:.1f}s")
    finally:
        with contextlib.suppress(Exception):
            docker_client.images.remove(remote)
    request = urllib.request.Request(f"http://{registry}/v2/emit/manifests/{built_by}", headers={"Accept": ACCEPT})
    with urllib.request.urlopen(request, timeout=30) as response:
        content_type = response.headers["Content-Type"]
        manifest = json.loads(response.read())
    assert content_type == SCHEMA2
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == SCHEMA2
    assert manifest["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    assert "manifests" not in manifest  # no index, so no attestation manifests beside the image
    assert {layer["mediaType"] for layer in manifest["layers"]} == {"application/vnd.docker.image.rootfs.diff.tar.gzip"}
    assert manifest["config"]["digest"] == docker_client.images.get(local).id


def test_labels_survive_the_dockerfile_quoting(docker_client: Any, docker_test_prefix: str,
                                               docker_cleanup: list[str], tmp_path: Path) -> None:
    """Label values that a Dockerfile would expand or split reach the image unchanged (a LABEL-only build)."""
    from smbyoc.images.context import label_instruction

    labels = {"org.example.dollar": "$HOME ${PATH}", "org.example.quote": 'say "hi" \\ and \'bye\'',
              "org.example.space": "  two  spaces  ", "org.example.unicode": "naïve ✓", "org.example.empty": ""}
    (tmp_path / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\n{label_instruction(labels)}")
    tag = f"{docker_test_prefix}-emit:labels"
    docker_cleanup.append(tag)
    for env, suffix in (({"DOCKER_BUILDKIT": "0"}, "legacy"), ({"DOCKER_BUILDKIT": "1"}, "buildkit")):
        if suffix == "buildkit" and not buildx_available():
            continue
        docker("build", "-q", "-t", tag, str(tmp_path), env=env)
        got = docker_client.images.get(tag).labels
        assert {k: got.get(k) for k in labels} == labels, suffix
