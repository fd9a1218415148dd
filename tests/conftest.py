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

#: Tests marked ``heavy`` build multi-gigabyte, emulated (qemu) or TVM-carrying images; from a cold cache the
#: arm64 and CUDA ones take more than ten minutes: they run only when asked (``scripts/test --run-heavy``, or
#: SMBYOC_RUN_HEAVY=1). Their times are recorded in bench/README.md ("Image variants").
RUN_HEAVY_ENV = "SMBYOC_RUN_HEAVY"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-heavy", action="store_true", default=False,
                     help="also run the tests marked heavy (arm64 under qemu, CUDA images, serve images with TVM)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-heavy") or os.environ.get(RUN_HEAVY_ENV) == "1":
        return
    skip = pytest.mark.skip(reason=f"heavy: run with --run-heavy or {RUN_HEAVY_ENV}=1")
    for item in items:
        if "heavy" in item.keywords:
            item.add_marker(skip)


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


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A real AWS API server (moto in server mode: S3, ECR, SageMaker, CloudWatch Logs...) on loopback.

    Yields its URL. The code under test talks to it through the real boto3 client (``endpoint_url`` or
    ``AWS_ENDPOINT_URL*``), never a patched one. Skips where moto is not installed (the minimum-versions
    environment), fails under CI.
    """
    import shutil
    import subprocess
    import sys
    import time
    import urllib.request

    from helpers import free_port

    server = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if server is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set and moto_server is not installed (pip install -e '.[dev]')", pytrace=False)
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/moto-api/", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not start on {url}", pytrace=False)
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture()
def aws_env(monkeypatch: pytest.MonkeyPatch, moto_server: str) -> str:
    """Test credentials and region in the environment (the real credential chain finds them), nothing from
    the machine's own AWS config; ``AWS_ENDPOINT_URL`` points every service at ``moto_server``. Yields the URL.

    Each test gets a clean server (moto's reset API), so buckets and repositories never leak between tests.
    """
    import urllib.request

    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST"), timeout=10)
    return moto_server


@pytest.fixture(params=["asyncio", "uvloop"])
def front_event_loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The test runs twice: the endpoint front (and ``smbyoc.emulator.front.new_event_loop`` callers reading
    ``DEFAULT_EVENT_LOOP``) on asyncio's event loop, then on uvloop's (the front's default when installed).
    A module opts in with ``pytestmark = pytest.mark.usefixtures("front_event_loop")``."""
    from smbyoc.emulator import front

    pytest.importorskip(request.param)
    monkeypatch.setattr(front, "DEFAULT_EVENT_LOOP", request.param)
    return str(request.param)
