"""Fixtures shared across test directories."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from host_tools import require_host_tool
from smbyoc.errors import DockerError

FOREIGN_IMAGE_DIR = Path(__file__).parent / "docker" / "foreign_image"
FOREIGN_IMAGE_TAG = "smbyoc-test/foreign:latest"
BASE_IMAGE = "smbyoc/base:bookworm"


@pytest.fixture(scope="session")
def nginx_on_path() -> str:
    """nginx for tests that start the real `serve` (see :func:`require_host_tool`)."""
    return require_host_tool("nginx")


@pytest.fixture(scope="session")
def docker_client() -> Any:
    from smbyoc.docker.client import get_client

    try:
        return get_client()
    except DockerError as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and {e}", pytrace=False)
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def docker_cleanup(docker_client: Any) -> Iterator[list[str]]:
    """Append image tags to the yielded list; they are removed at the end of the session."""
    tags: list[str] = []
    yield tags
    for tag in tags:
        with contextlib.suppress(Exception):
            docker_client.images.remove(tag, force=True)


@pytest.fixture(scope="session")
def foreign_image(docker_client: Any) -> Iterator[str]:
    """A SageMaker image written directly against the contract, with nothing of smbyoc inside."""
    image, _ = docker_client.images.build(
        path=str(FOREIGN_IMAGE_DIR), tag=FOREIGN_IMAGE_TAG, buildargs={"BASE_IMAGE": BASE_IMAGE}, rm=True,
        labels={"com.smbyoc.test": "1"},
    )
    yield FOREIGN_IMAGE_TAG
    with contextlib.suppress(Exception):
        docker_client.images.remove(image.id, force=True)
