"""The one place that creates the docker SDK client and translates Docker errors into smbyoc's.

Other modules call :func:`get_client` and wrap engine calls in :func:`translate_docker_errors`, so every
Docker failure reaches the user as one :class:`~smbyoc.errors.DockerError` (or ``BuildError``) line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from smbyoc.environment_variables import DOCKER_HOST
from smbyoc.errors import BuildError, DockerError

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"


def docker_host(environ: Mapping[str, str] | None = None) -> str:
    return DOCKER_HOST.get(environ) or DEFAULT_DOCKER_HOST


def engine_not_running(environ: Mapping[str, str] | None = None) -> DockerError:
    return DockerError(f"no Docker Engine answers at {docker_host(environ)}; run scripts/setup-docker-engine")


def get_client(environ: Mapping[str, str] | None = None, *, timeout: int = 600) -> Any:
    """A ``docker.DockerClient`` from the environment that has answered a ping.

    Raises DockerError with one line when the SDK is missing or no engine answers.
    """
    try:
        import docker
    except ImportError as e:
        raise DockerError("the docker SDK is not installed; pip install 'smbyoc[docker]'") from e
    import os

    env = dict(os.environ if environ is None else environ)
    try:
        client = docker.from_env(environment=env, timeout=timeout)
        client.ping()
    except docker.errors.DockerException as e:
        raise engine_not_running(env) from e
    except Exception as e:  # requests' ConnectionError, socket errors: the engine is not there
        raise engine_not_running(env) from e
    return client


def translate(error: BaseException, action: str) -> DockerError | BuildError:
    """The smbyoc error for a docker SDK/requests error raised while doing ``action``."""
    import docker.errors
    import requests.exceptions

    if isinstance(error, docker.errors.BuildError):
        return BuildError(f"{action}: {error.msg}")
    if isinstance(error, docker.errors.ImageNotFound):
        return DockerError(f"{action}: image not found: {error.explanation or error}")
    if isinstance(error, docker.errors.NotFound):
        return DockerError(f"{action}: not found: {error.explanation or error}")
    if isinstance(error, docker.errors.APIError):
        return DockerError(f"{action}: the Docker Engine refused: {error.explanation or error}")
    if isinstance(error, requests.exceptions.ConnectionError):
        return engine_not_running()
    if isinstance(error, requests.exceptions.ReadTimeout):
        return DockerError(f"{action}: the Docker Engine did not answer in time")
    return DockerError(f"{action}: {error}")


@contextlib.contextmanager
def translate_docker_errors(action: str) -> Iterator[None]:
    """``with translate_docker_errors("build smbyoc/serve:cpu"): ...`` — raises DockerError/BuildError."""
    import docker.errors
    import requests.exceptions

    try:
        yield
    except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
        raise translate(e, action) from e
