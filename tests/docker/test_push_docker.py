"""``smbyoc push`` for real: the Docker Engine pushes to Debian's docker-registry on loopback (htpasswd auth), the
image is pulled back by the printed digest, and ``--ecr`` runs against moto (real boto3) with the layers sent to
the loopback registry, whose password is the one decoded from moto's ECR token.

The registries are started here (``docker-registry serve`` with a temporary config, a free 127.0.0.1 port,
storage in a temporary directory) and stopped afterwards; Docker treats 127.0.0.0/8 as an insecure registry
(plain HTTP) by default, which ``test_engine_allows_plain_http_on_loopback`` checks. docker-registry and
htpasswd come from scripts/setup-host-packages.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import free_port
from registry_support import Registry, run_registry

pytestmark = pytest.mark.docker

BASE_IMAGE = "smbyoc/base:bookworm"
#: moto's ECR token is base64("AWS:<account>-auth-token") for its default account.
MOTO_ACCOUNT = "123456789012"
ECR_USER, ECR_PASSWORD = "AWS", f"{MOTO_ACCOUNT}-auth-token"
ECR_HOST = f"{MOTO_ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """docker-registry with htpasswd auth; the user and password are those moto's ECR token carries."""
    with run_registry(tmp_path_factory.mktemp("push") / "auth", user=ECR_USER, password=ECR_PASSWORD) as reg:
        yield reg


@pytest.fixture(scope="module")
def readonly_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with run_registry(tmp_path_factory.mktemp("push") / "readonly", readonly=True) as reg:
        yield reg


@pytest.fixture(scope="module")
def tiny_image(docker_client: Any, docker_test_prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A two-layer image: smbyoc's base plus one small file unique to this run (so its layer is new here)."""
    import docker.errors

    try:
        docker_client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        message = f"{BASE_IMAGE} is missing; run scripts/build-base-image"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and {message}", pytrace=False)
        pytest.skip(message)
    context = tmp_path_factory.mktemp("tiny")
    (context / "hello.txt").write_text(f"smbyoc push test {uuid.uuid4()}\n")
    (context / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nCOPY hello.txt /hello.txt\n")
    tag = f"{docker_test_prefix}-push:v1"
    image, _ = docker_client.images.build(path=str(context), tag=tag, rm=True, labels={"com.smbyoc.test": "1"})
    try:
        yield tag
    finally:
        with contextlib.suppress(Exception):
            docker_client.images.remove(image.id, force=True)  # every tag the tests added goes with it


def smbyoc(*args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "smbyoc.cli", "push", *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one error line, asserting it is the only thing that says Error."""
    assert proc.returncode != 0, proc.stderr
    assert proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1] == errors[0]
    return errors[0]


def has_tag(docker_client: Any, reference: str) -> bool:
    import docker.errors

    try:
        docker_client.images.get(reference)
    except docker.errors.ImageNotFound:
        return False
    return True


def test_engine_allows_plain_http_on_loopback(docker_client: Any) -> None:
    config = docker_client.info()["RegistryConfig"]
    assert "127.0.0.0/8" in config["InsecureRegistryCIDRs"]


def test_push_prints_the_registrys_digest_and_pulls_back(docker_client: Any, registry: Registry,
                                                          tiny_image: str) -> None:
    name = "smbyoc-test/push-plain"
    proc = smbyoc(tiny_image, "--repository", f"{registry.host}/{name}:one", "--username", ECR_USER,
                  "--password-stdin", "--skip-validate", stdin=ECR_PASSWORD + "\n")
    assert proc.returncode == 0, proc.stderr
    uri = proc.stdout.strip().splitlines()[-1]
    prefix = f"{registry.host}/{name}@sha256:"
    assert uri.startswith(prefix) and len(uri) == len(prefix) + 64, uri
    digest = uri.split("@", 1)[1]

    status, headers, body = registry.get(f"/v2/{name}/manifests/one")
    assert status == 200
    assert headers["Docker-Content-Digest"] == digest
    assert headers["Content-Type"] == "application/vnd.docker.distribution.manifest.v2+json"
    layers = json.loads(body)["layers"]
    assert len(layers) == 2

    # Progress on stderr: one "pushing" line at most per layer, each layer ends pushed or already there.
    lines = proc.stderr.splitlines()
    for layer in {line.split(":")[0] for line in lines if line.endswith((": pushed", ": layer already exists"))}:
        assert sum(1 for line in lines if line.startswith(f"{layer}: pushing")) <= 1
    assert sum(1 for line in lines if line.endswith((": pushed", ": layer already exists"))) == 2
    assert f"pushed {registry.host}/{name}:one ({digest}, application/vnd.docker.distribution.manifest.v2+json" \
        in proc.stderr

    # Pulled back by the printed digest, it is the same image.
    pulled = docker_client.images.pull(uri, auth_config={"username": ECR_USER, "password": ECR_PASSWORD})
    assert pulled.id == docker_client.images.get(tiny_image).id
    assert uri in pulled.attrs["RepoDigests"]

    # The same image again (tag from the image: v1): every layer is already there, same digest.
    again = smbyoc(tiny_image, "-r", f"{registry.host}/{name}", "-u", ECR_USER, "--password-stdin",
                   "--skip-validate", "--quiet", stdin=ECR_PASSWORD)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"{registry.host}/{name}@{digest}"
    assert again.stderr == ""
    assert registry.get(f"/v2/{name}/manifests/v1")[1]["Docker-Content-Digest"] == digest


def test_wrong_password_is_one_line_and_leaves_no_tag(docker_client: Any, registry: Registry,
                                                      tiny_image: str) -> None:
    target = f"{registry.host}/smbyoc-test/push-denied:x"
    proc = smbyoc(tiny_image, "-r", target, "-u", ECR_USER, "--password-stdin", "--skip-validate", stdin="wrong\n")
    assert error_line(proc) == (f"Error: push {target}: the registry refused the credentials: unauthorized: "
                                f"authentication required (check --username/--password-stdin for {registry.host})")
    assert not has_tag(docker_client, target)
    assert registry.get("/v2/smbyoc-test/push-denied/manifests/x")[0] == 404


def test_read_only_registry_refuses(docker_client: Any, readonly_registry: Registry, tiny_image: str) -> None:
    target = f"{readonly_registry.host}/smbyoc-test/push-ro:x"
    proc = smbyoc(tiny_image, "-r", target, "--skip-validate")
    line = error_line(proc)
    assert line.startswith(f"Error: push {target}: the registry refused the push: "), line
    assert "read-only mode" in line or "405" in line, line
    assert not has_tag(docker_client, target)


def test_unreachable_registry(docker_client: Any, tiny_image: str) -> None:
    target = f"127.0.0.1:{free_port()}/smbyoc-test/push-nowhere:x"
    proc = smbyoc(tiny_image, "-r", target, "--skip-validate")
    assert error_line(proc).startswith(f"Error: push {target}: cannot reach the registry: ")
    assert not has_tag(docker_client, target)


def test_missing_local_image_is_one_line(registry: Registry, docker_test_prefix: str) -> None:
    proc = smbyoc(f"{docker_test_prefix}-absent:1", "-r", f"{registry.host}/smbyoc-test/x", "--skip-validate")
    assert error_line(proc) == (f"Error: no local image '{docker_test_prefix}-absent:1' (build it with `smbyoc "
                                "build` or `docker build` first)")


def _ecr(url: str) -> Any:
    import boto3

    return boto3.client("ecr", region_name="us-east-1", endpoint_url=url)


def test_ecr_creates_the_repository_and_prints_the_ecr_digest_uri(aws_env: str, registry: Registry,
                                                                  tiny_image: str, tmp_path: Path) -> None:
    policy = {"rules": [{"rulePriority": 1, "description": "expire untagged images after 3 days",
                         "selection": {"tagStatus": "untagged", "countType": "sinceImagePushed", "countUnit": "days",
                                       "countNumber": 3}, "action": {"type": "expire"}}]}
    (tmp_path / "policy.json").write_text(json.dumps(policy))
    name = "smbyoc-test/push-ecr"
    proc = smbyoc(tiny_image, "--ecr", "--repository", f"{name}:2.0", "--registry-url", registry.url,
                  "--immutable-tags", "--lifecycle-policy", str(tmp_path / "policy.json"))
    # No --skip-validate: the tiny image is no SageMaker image, so the gate refuses it.
    assert proc.returncode == 1
    assert "failed smbyoc validate" in error_line(proc)
    assert _ecr(aws_env).describe_repositories()["repositories"] == []  # nothing created before the gate
    assert registry.get(f"/v2/{name}/manifests/2.0")[0] == 404
    # The same verdict from a report that `smbyoc validate --json` wrote earlier (the CI form).
    report = tmp_path / "validate.json"
    checked = subprocess.run([sys.executable, "-m", "smbyoc.cli", "validate", tiny_image, "--json", str(report)],
                             capture_output=True, text=True, timeout=300)
    assert checked.returncode == 1 and json.loads(report.read_text())["ok"] is False
    proc = smbyoc(tiny_image, "--ecr", "--repository", f"{name}:2.0", "--registry-url", registry.url,
                  "--validate-report", str(report))
    assert proc.returncode == 1
    assert "according to --validate-report" in error_line(proc)
    assert _ecr(aws_env).describe_repositories()["repositories"] == []
    proc = smbyoc(tiny_image, "--ecr", "--repository", f"{name}:2.0", "--registry-url", registry.url,
                  "--immutable-tags", "--lifecycle-policy", str(tmp_path / "policy.json"), "--skip-validate")
    assert proc.returncode == 0, proc.stderr
    uri = proc.stdout.strip().splitlines()[-1]
    assert uri.startswith(f"{ECR_HOST}/{name}@sha256:"), uri
    digest = uri.split("@", 1)[1]
    # The layers went to the loopback registry, authenticated with the password from moto's token.
    assert registry.get(f"/v2/{name}/manifests/2.0")[1]["Docker-Content-Digest"] == digest
    ecr = _ecr(aws_env)
    (repo,) = ecr.describe_repositories(repositoryNames=[name])["repositories"]
    assert repo["imageTagMutability"] == "IMMUTABLE"
    assert repo["imageScanningConfiguration"] == {"scanOnPush": True}
    assert json.loads(ecr.get_lifecycle_policy(repositoryName=name)["lifecyclePolicyText"]) == policy
    assert "created ECR repository smbyoc-test/push-ecr (scan on push on, tags immutable, lifecycle policy)" \
        in proc.stderr


def test_ecr_failed_push_removes_the_repository_it_created(aws_env: str, readonly_registry: Registry,
                                                           docker_client: Any, tiny_image: str) -> None:
    name = "smbyoc-test/push-ecr-ro"
    proc = smbyoc(tiny_image, "--ecr", "-r", f"{ECR_HOST}/{name}:1", "--registry-url", readonly_registry.url,
                  "--no-scan-on-push", "--keep-last", "3", "--skip-validate")
    line = error_line(proc)
    assert line.startswith(f"Error: push {readonly_registry.host}/{name}:1: the registry refused the push: "), line
    assert f"removed the ECR repository {name} created for this push" in proc.stderr
    assert _ecr(aws_env).describe_repositories()["repositories"] == []
    assert not has_tag(docker_client, f"{readonly_registry.host}/{name}:1")


def test_ecr_unreachable_endpoint(aws_env: str, tiny_image: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    proc = smbyoc(tiny_image, "--ecr", "-r", "smbyoc-test/x", "--endpoint-url", dead, "--skip-validate")
    assert error_line(proc) == f"Error: ECR GetAuthorizationToken: cannot reach {dead} (check --endpoint-url and " \
                               "the network)"


def test_an_oci_manifest_read_back_is_refused(registry: Registry) -> None:
    """What an OCI-storing engine (containerd image store, buildx with provenance) would leave in a registry:
    the read-back names the media type and the fix. Uploaded through the registry API (this engine pushes
    Docker V2 Schema 2 only)."""
    import hashlib

    from smbyoc.errors import DockerError
    from smbyoc.push.credentials import RegistryCredentials
    from smbyoc.push.manifest import OCI_MANIFEST, read_manifest, sagemaker_problem

    name = "smbyoc-test/push-oci"
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    config_digest = "sha256:" + hashlib.sha256(config.encode()).hexdigest()
    status, headers, _ = registry.get(f"/v2/{name}/blobs/uploads/", method="POST", data=b"")
    assert status == 202, status
    location = headers["Location"]
    upload = location.split(registry.host, 1)[-1]
    separator = "&" if "?" in upload else "?"
    status, _, _ = registry.get(f"{upload}{separator}digest={config_digest}", method="PUT", data=config.encode(),
                                headers={"Content-Type": "application/octet-stream"})
    assert status == 201, status
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [],
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": config_digest, "size": len(config)}}).encode()
    status, _, _ = registry.get(f"/v2/{name}/manifests/oci", method="PUT", data=manifest,
                                headers={"Content-Type": OCI_MANIFEST})
    assert status == 201, status

    found = read_manifest([f"https://{registry.host}", registry.url], name, "oci",
                          RegistryCredentials(ECR_USER, ECR_PASSWORD), verify=False)
    assert (found.media_type, found.digest) == (OCI_MANIFEST, "sha256:" + hashlib.sha256(manifest).hexdigest())
    problem = sagemaker_problem(found.media_type)
    assert problem is not None and "--provenance=false" in problem
    with pytest.raises(DockerError, match="refused the credentials"):
        read_manifest([registry.url], name, "oci", RegistryCredentials(ECR_USER, "wrong"))
