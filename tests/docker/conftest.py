"""Shared fixtures for tests that need a real Docker Engine (marker ``docker``).

* ``docker_client`` (in tests/conftest.py): a ping-checked docker SDK client. With no engine it FAILS when
  ``CI`` is set (CI must run these tests for real; .ci/run starts the engine with scripts/setup-docker-engine)
  and skips otherwise, naming the reason.
* ``default_images``: the default cpu train and serve images (``smbyoc/train:cpu``, ``smbyoc/serve:cpu``),
  built once per session through :func:`smbyoc.images.builder.ensure_image` when absent.
* ``docker_test_prefix`` / ``docker_cleanup``: tag images ``smbyoc-test/...`` and remove them afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

TEST_PREFIX = "smbyoc-test"


def _local_base(client: Any) -> str | None:
    """smbyoc/base:bookworm when present (machines with no registry build it with scripts/build-base-image)."""
    import docker.errors

    try:
        client.images.get("smbyoc/base:bookworm")
    except docker.errors.ImageNotFound:
        return None
    return "smbyoc/base:bookworm"


@pytest.fixture(scope="session")
def default_images(docker_client: Any) -> dict[str, str]:
    """``{"train": tag, "serve": tag}`` of the default cpu images, built if absent."""
    from smbyoc.images.builder import ensure_image

    base = _local_base(docker_client)
    return {kind: ensure_image(kind, "cpu", client=docker_client, base_image=base)
            for kind in ("train", "serve")}


@pytest.fixture(scope="session")
def docker_test_prefix() -> str:
    return f"{TEST_PREFIX}/{uuid.uuid4().hex[:8]}"


def _left_by_this_run(labels: dict[str, str]) -> bool:
    """Owned by this test process, or by an owner that is gone (a CLI the tests ran, or killed): what this run
    must have cleaned up. A live owner elsewhere (another smbyoc on the same engine, e.g. a developer's
    `local-serve` or a second test run) is not this run's to judge."""
    from smbyoc.emulator.owners import Owner

    owner = Owner.from_labels(labels)
    return owner is None or owner.pid == os.getpid() or not owner.alive()


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind(docker_client: Any) -> Iterator[None]:
    """After all Docker tests: no container or network created by smbyoc in this run may remain."""
    yield
    label = {"label": "com.smbyoc.owner=smbyoc"}
    containers = [c.name for c in docker_client.containers.list(all=True, filters=label)
                  if _left_by_this_run(c.labels)]
    networks = [n.name for n in docker_client.networks.list(filters=label)
                if _left_by_this_run(n.attrs.get("Labels") or {})]
    assert not containers and not networks, f"left behind: containers {containers}, networks {networks}"
