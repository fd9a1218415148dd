"""Fixtures shared across test directories."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

FOREIGN_IMAGE_DIR = Path(__file__).parent / "docker" / "foreign_image"
FOREIGN_IMAGE_TAG = "smbyoc-test/foreign:latest"
BASE_IMAGE = "smbyoc/base:bookworm"


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
