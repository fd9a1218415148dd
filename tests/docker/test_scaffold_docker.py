"""`smbyoc init` end to end on a real Docker Engine: the new project's Dockerfiles build with the plain docker CLI
on smbyoc's local images (and on a "registry" copy named by SMBYOC_REGISTRY), and the project's own tests
(local-train, local-serve + invoke, validate) pass against the images built."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from smbyoc.images.defaults import ensure_default_image

pytestmark = pytest.mark.docker

NAME = "scaffold-e2e"
KINDS = ("train", "serve")


@pytest.fixture(scope="module")
def docker_cli() -> str:
    path = shutil.which("docker")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set and the docker CLI is not installed (scripts/setup-docker-engine)", pytrace=False)
        pytest.skip("the docker CLI is not installed (scripts/setup-docker-engine)")
    return path


@pytest.fixture(scope="module")
def base_images(docker_client: Any) -> dict[str, str]:
    return {kind: ensure_default_image(docker_client, kind) for kind in KINDS}  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("init") / NAME
    result = subprocess.run([sys.executable, "-m", "smbyoc.cli", "init", NAME, "--directory", str(root)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return root


def docker(docker_cli: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([docker_cli, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def layers(docker_cli: str, image: str) -> list[str]:
    result = docker(docker_cli, "image", "inspect", "--format", "{{json .RootFS.Layers}}", image)
    assert result.returncode == 0, result.stderr
    found: list[str] = json.loads(result.stdout)
    return found


def build(docker_cli: str, project: Path, kind: str, tag: str, *build_args: str) -> subprocess.CompletedProcess[str]:
    args = [a for value in build_args for a in ("--build-arg", value)]
    return docker(docker_cli, "build", "-q", *args, "-f", f"Dockerfile.{kind}", "-t", tag, ".", cwd=project)


def test_the_project_builds_with_docker_and_passes_its_own_tests(
        docker_cli: str, base_images: dict[str, str], project: Path, docker_test_prefix: str,
        docker_cleanup: list[str]) -> None:
    tags = {kind: f"{docker_test_prefix}/{NAME}-{kind}:test" for kind in KINDS}
    docker_cleanup.extend(tags.values())
    for kind in KINDS:
        built = build(docker_cli, project, kind, tags[kind])
        assert built.returncode == 0, built.stderr
        base = layers(docker_cli, base_images[kind])
        assert layers(docker_cli, tags[kind])[: len(base)] == base, f"{tags[kind]} is not FROM {base_images[kind]}"

    env = {**os.environ, "TRAIN_IMAGE": tags["train"], "SERVE_IMAGE": tags["serve"],
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}{os.pathsep}/usr/sbin"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"], cwd=project, env=env,
                            capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    summary = output.strip().splitlines()[-1]
    assert summary.startswith("5 passed") and "skipped" not in summary and "deselected" not in summary, summary


def test_smbyoc_registry_names_where_the_base_images_come_from(
        docker_cli: str, base_images: dict[str, str], project: Path, docker_test_prefix: str,
        docker_cleanup: list[str]) -> None:
    """A team's registry copy (here: smbyoc's serve image tagged under another name) is what FROM uses; a
    registry without it fails the build."""
    registry = f"{docker_test_prefix}/registry/smbyoc"
    copy, tag = f"{registry}/serve:cpu", f"{docker_test_prefix}/{NAME}-serve:registry"
    docker_cleanup.extend([copy, tag])
    assert docker(docker_cli, "tag", base_images["serve"], copy).returncode == 0
    built = build(docker_cli, project, "serve", tag, f"SMBYOC_REGISTRY={registry}")
    assert built.returncode == 0, built.stderr
    base = layers(docker_cli, copy)
    assert layers(docker_cli, tag)[: len(base)] == base

    missing = build(docker_cli, project, "serve", f"{docker_test_prefix}/{NAME}-serve:missing",
                    f"SMBYOC_REGISTRY={docker_test_prefix}/nowhere")
    assert missing.returncode != 0
    assert f"{docker_test_prefix}/nowhere/serve" in missing.stderr, missing.stderr
