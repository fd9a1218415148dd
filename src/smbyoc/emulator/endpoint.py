"""Emulated real-time endpoints: ``serve`` as a local process or ``docker run IMAGE serve``.

The model (``model.tar.gz`` or a directory) is safely extracted or copied into a temporary
``/opt/ml/model`` (read-only in Docker), the server is started, and ``/ping`` is polled with SageMaker's
rules (2 s per request, every 0.25 s, within the startup health check window, 240 s by default). The
server's last log lines are kept so that a failure can say why. Stopping sends SIGTERM, then SIGKILL
after 30 s, as SageMaker does for endpoints. Temporary trees and containers are always removed.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from smbyoc import environment_variables as ev
from smbyoc.archives import is_tar_archive, safe_extract
from smbyoc.emulator import containers, jobs, owners
from smbyoc.emulator.instance_types import lookup
from smbyoc.emulator.runtime_client import wait_until_healthy
from smbyoc.errors import ConfigError, ServingError
from smbyoc.serving.ports import port_is_free

log = logging.getLogger(__name__)

#: SageMaker: SIGTERM, then SIGKILL 30 s later, for endpoint containers.
ENDPOINT_STOP_TIMEOUT = 30.0
#: SageMaker: the container must pass /ping within 4 minutes (ContainerStartupHealthCheckTimeoutInSeconds).
DEFAULT_STARTUP_HEALTH_TIMEOUT = 240.0
#: How an endpoint front reaches a container (``HostingOptions.container_route``): at its address on the Docker
#: network (the published port where the host cannot reach it), or always through the port published on 127.0.0.1.
CONTAINER_ROUTES = ("network", "published")
CONTAINER_PORT = 8080
LOG_TAIL_LINES = 40

LineSink = Callable[[str], None]


def check_container_route(route: str) -> None:
    """ConfigError naming ``container_route`` unless ``route`` is one of :data:`CONTAINER_ROUTES`."""
    if route not in CONTAINER_ROUTES:
        raise ConfigError(f"must be one of {', '.join(CONTAINER_ROUTES)}, not {route!r}", key="container_route")


def prepare_model_dir(model_data: Path | None, target: Path) -> Path:
    """Put the model at ``target``: a ``.tar.gz`` is extracted safely, a directory is copied."""
    target.mkdir(parents=True, exist_ok=True)
    if model_data is None:
        return target
    if not model_data.exists():
        raise ConfigError("no such file or directory", key=f"--model-data {model_data}")
    if model_data.is_dir():
        shutil.copytree(model_data, target, dirs_exist_ok=True, symlinks=True)
    elif is_tar_archive(model_data):
        safe_extract(model_data, target)
    else:
        raise ConfigError("expected a model.tar.gz or a directory", key=f"--model-data {model_data}")
    return target


class ContainerLimits(Protocol):
    """What a container's ``docker run`` limits are made of: an
    :class:`~smbyoc.emulator.instance_types.InstanceType`, or a serverless instance's limits
    (:func:`smbyoc.emulator.serverless.serverless_limits`). None: no limit."""

    @property
    def vcpus(self) -> float | None: ...

    @property
    def memory_bytes(self) -> int | None: ...


@dataclass(frozen=True)
class EndpointSpec:
    model_data: Path | None
    port: int = 8080
    bind_address: str = "127.0.0.1"
    environment: Mapping[str, str] = field(default_factory=dict)
    startup_health_timeout: float = DEFAULT_STARTUP_HEALTH_TIMEOUT
    instance_type: str = "local"
    stop_timeout: float = ENDPOINT_STOP_TIMEOUT
    #: Start of the temporary tree's, the record's and the container's names (a transform job: its host).
    name_prefix: str = "smbyoc-endpoint"
    #: Limits that replace ``instance_type``'s in Docker mode (a serverless variant's memory and vCPUs); None: the
    #: instance type's. A local process has no limits either way.
    resources: ContainerLimits | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.bind_address in ("0.0.0.0", "") else self.bind_address
        return f"http://{host}:{self.port}"

    def validate(self) -> EndpointSpec:
        if not 1 <= self.port <= 65535:
            raise ConfigError("expected 1-65535", key=f"--port {self.port}")
        if self.startup_health_timeout <= 0:
            raise ConfigError("must be positive", key=f"--startup-health-timeout {self.startup_health_timeout}")
        lookup(self.instance_type)
        return self


class _Tail:
    """The last lines a server printed, while passing them on live."""

    def __init__(self, sink: LineSink | None) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self.sink = sink

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        if self.sink is not None:
            self.sink(line)

    def text(self) -> str:
        return "\n".join(self.lines)


def _print_line(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Endpoint:
    """Base: model preparation, health wait, cleanup. Use as a context manager."""

    kind = "endpoint"

    def __init__(self, spec: EndpointSpec, sink: LineSink | None = _print_line, *, root: Path | None = None,
                 token: str | None = None) -> None:
        """``root`` and ``token``: this server is one member of a larger endpoint (a multi-container endpoint)
        that owns the tree, the record and the token; :meth:`close` then stops the server and removes ``root``
        only, and the owner ends what carries the token."""
        self.spec = spec.validate()
        self.tail = _Tail(sink)
        self.member = root is not None
        if root is not None:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.root = root
            self.token = token or owners.new_token()
        else:
            self.root = Path(tempfile.mkdtemp(prefix=f"{self.spec.name_prefix}-"))
            # Recorded so that `smbyoc ps` lists it and a sweep removes what a killed owner leaves.
            self.token = owners.new_token()
            jobs.register(jobs.ENDPOINT, self.root.name, mode=self.kind, tree=str(self.root), url=self.spec.url,
                          token=self.token)
        self.model_dir = self.root / "model"
        self.startup_seconds: float | None = None

    # subclasses ------------------------------------------------------------------------------
    def _start(self) -> None:
        raise NotImplementedError

    def _exit_reason(self) -> str | None:
        raise NotImplementedError

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``spec.stop_timeout`` seconds; returns once the server is gone."""
        raise NotImplementedError

    def terminate(self) -> None:
        """Send SIGTERM and return at once (:meth:`stop` finishes the job)."""
        raise NotImplementedError

    def running(self) -> bool:
        """Whether the server was started and has not stopped."""
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    def wait(self) -> int:
        raise NotImplementedError

    # shared ----------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self.spec.url

    def front_url(self, route: str = "network") -> str:
        """Where an endpoint front calls this server (``route``: ``HostingOptions.container_route``); a local
        process has one address."""
        return self.url

    def launch(self) -> None:
        """Put the model in place and start the server, without waiting for /ping."""
        prepare_model_dir(self.spec.model_data, self.model_dir)
        self._start()

    def start(self) -> float:
        """Start the server and wait until /ping answers 200; the seconds from start to healthy."""
        try:
            self.launch()
            self.startup_seconds = wait_until_healthy(
                self.url, self.spec.startup_health_timeout, interval=0.25, alive=self._exit_reason)
        except BaseException as e:
            reason = self._exit_reason()
            self.close()
            if isinstance(e, ServingError):
                raise ServingError(self._explain(str(e), reason)) from e
            raise
        return self.startup_seconds

    def _explain(self, message: str, reason: str | None) -> str:
        parts = [message]
        if reason and reason not in message:
            parts.append(reason)
        tail = self.tail.text().strip()
        if tail:
            parts.append("last log lines:\n" + tail)
        return "\n".join(parts)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            if not self.member:  # a member's owner ends the processes of the shared token, once all stopped
                owners.end_processes(self.token)  # what left serve's process group (nginx, gunicorn)
            shutil.rmtree(self.root, ignore_errors=True)
            if not self.member:
                jobs.unregister(jobs.ENDPOINT, self.root.name)

    def __enter__(self) -> Endpoint:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: What a user loses when ``serve`` runs without nginx (printed once, as one line).
NO_NGINX_WARNING = (
    "nginx is not installed: serving through gunicorn alone, unlike the image (/ping is answered by a "
    "Python worker, so a busy model delays it; slow clients hold a worker; request bodies are not buffered "
    "by nginx). Install nginx (apt-get install nginx) or pass --require-nginx to make this an error."
)


def resolve_nginx(environ: Mapping[str, str], *, require: bool) -> bool:
    """Whether a local ``serve`` with ``environ`` will have nginx in front; warns once when it falls back.

    ``SAGEMAKER_USE_NGINX=false`` in ``environ`` means no nginx, asked for. Otherwise nginx must be on
    ``PATH``; when it is not, ``require`` makes that a :class:`ServingError`, else one warning.
    """
    if not ev.SAGEMAKER_USE_NGINX.get(environ):
        return False
    if shutil.which("nginx", path=environ.get("PATH")) is not None:
        return True
    if require:
        raise ServingError("nginx not found on PATH (--require-nginx); install nginx (apt-get install nginx) "
                           "or drop --require-nginx to serve through gunicorn alone")
    log.warning(NO_NGINX_WARNING)
    return False


class ProcessEndpoint(Endpoint):
    """``serve`` in a local process.

    ``serve`` puts nginx in front of gunicorn, as in the image. A laptop rarely has nginx: when it is not
    on PATH the endpoint runs gunicorn alone (``SAGEMAKER_USE_NGINX=false``) with one warning saying what
    differs, unless ``require_nginx`` is set, which makes a missing nginx an error before anything starts.
    """

    kind = "process"

    def __init__(self, spec: EndpointSpec, sink: LineSink | None = _print_line,
                 command: list[str] | None = None, *, require_nginx: bool = False, root: Path | None = None,
                 token: str | None = None, uses_nginx: bool | None = None) -> None:
        """``uses_nginx``: already decided by the caller (the members of a multi-container endpoint warn once)."""
        self.uses_nginx = (resolve_nginx({**os.environ, **spec.environment}, require=require_nginx)
                           if uses_nginx is None else uses_nginx)
        super().__init__(spec, sink, root=root, token=token)
        self.command = command or [sys.executable, "-m", "smbyoc.serving.main"]
        self.process: subprocess.Popen[bytes] | None = None
        self._pump: threading.Thread | None = None

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_"))}
        env.update({"SAGEMAKER_BASE_DIR": str(self.root), "SAGEMAKER_BIND_TO_PORT": str(self.spec.port),
                    "SMBYOC_SERVE_HOST": self.spec.bind_address, "PYTHONUNBUFFERED": "1"})
        env.update(self.spec.environment)
        if not self.uses_nginx:
            env["SAGEMAKER_USE_NGINX"] = "false"
        return env

    def launch(self) -> None:
        # serve's nginx would fail to bind, and /ping, answered by the other program, would look healthy
        if not port_is_free(self.spec.port, self.spec.bind_address):
            raise ServingError(f"{self.spec.bind_address}:{self.spec.port} is in use by another program; choose "
                               "another port (local-serve --port)")
        super().launch()

    def _start(self) -> None:
        self.process = subprocess.Popen(
            self.command, env={**self.environment(), owners.TOKEN_VARIABLE: self.token}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        process = self.process
        if not self.member:
            jobs.update(jobs.ENDPOINT, self.root.name, child=owners.Owner.of(process.pid).to_dict())

        def pump() -> None:
            assert process.stdout is not None
            for raw in process.stdout:
                self.tail(raw.decode("utf-8", "replace").rstrip("\n"))

        self._pump = threading.Thread(target=pump, daemon=True)
        self._pump.start()

    def _exit_reason(self) -> str | None:
        if self.process is None or self.process.poll() is None:
            return None
        if self._pump is not None:
            self._pump.join(2)
        return f"serve exited with status {self.process.returncode}"

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(self.spec.stop_timeout)
        except subprocess.TimeoutExpired:
            log.warning("serve did not stop within %g s: SIGKILL", self.spec.stop_timeout)
            self.kill()
            process.wait()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def wait(self) -> int:
        assert self.process is not None
        return self.process.wait()


class DockerEndpoint(Endpoint):
    """``docker run IMAGE serve`` with the model read-only at /opt/ml/model, port published on 127.0.0.1."""

    kind = "docker"

    def __init__(self, spec: EndpointSpec, client: Any, image: str, sink: LineSink | None = _print_line,
                 user: str | None = None, *, root: Path | None = None, token: str | None = None) -> None:
        super().__init__(spec, sink, root=root, token=token)
        self.client = client
        self.image = image
        self.user = user
        self.container: Any = None

    def container_args(self) -> dict[str, Any]:
        instance = self.spec.resources if self.spec.resources is not None else lookup(self.spec.instance_type)
        name = f"{self.spec.name_prefix}-{containers.unique_suffix()}"
        args: dict[str, Any] = {
            "image": self.image,
            "command": ["serve"],
            "name": name,
            "environment": dict(self.spec.environment),
            "volumes": {str(self.model_dir): {"bind": "/opt/ml/model", "mode": "ro"}},
            "ports": {f"{CONTAINER_PORT}/tcp": (self.spec.bind_address, self.spec.port)},
            "labels": containers.labels(name),
            "detach": True,
        }
        args.update(containers.resource_args(instance, self.user))
        return args

    def _start(self) -> None:
        from smbyoc.docker.client import translate_docker_errors

        containers.require_image(self.client, self.image, instance_type=self.spec.instance_type)
        # The model directory must be readable by whatever user the image runs as.
        for path in [self.root, *self.root.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o444 | (0o111 if path.is_dir() else 0))
        with translate_docker_errors(f"start endpoint container from {self.image}"):
            self.container = self.client.containers.create(**self.container_args())
            self.container.start()
        containers.stream_logs(self.container, "endpoint", lambda _host, line: self.tail(line))

    def front_url(self, route: str = "network") -> str:
        """``network``: the container's network address when this machine reaches it, else the published port;
        ``published``: the published port (through docker-proxy)."""
        return (self.network_url() if route == "network" else None) or self.url

    def network_url(self, timeout: float = 0.5) -> str | None:
        """``http://ADDRESS:8080``, the container's address on its Docker network, when this machine can connect to
        it (Linux: a bridge network is routed from the host), as SageMaker's front reaches an instance; None when
        it cannot (Docker Desktop's VM, rootless Docker's namespace) or the container has no address: then only the
        published port reaches it."""
        if self.container is None:
            return None
        import socket

        try:
            self.container.reload()
            networks = (self.container.attrs.get("NetworkSettings") or {}).get("Networks") or {}
        except Exception as e:
            log.debug("endpoint container's networks: %s", e)
            return None
        for network in networks.values():
            address = (network or {}).get("IPAddress")
            if not address:
                continue
            try:
                socket.create_connection((address, CONTAINER_PORT), timeout=timeout).close()
            except OSError as e:
                log.debug("container address %s:%d unreachable from here (%s): the published port it is", address,
                          CONTAINER_PORT, e)
                continue
            return f"http://{address}:{CONTAINER_PORT}"
        return None

    def _exit_reason(self) -> str | None:
        if self.container is None:
            return None
        try:
            self.container.reload()
        except Exception:
            return "the container is gone"
        if self.container.status in ("exited", "dead"):
            code = self.container.attrs.get("State", {}).get("ExitCode")
            return f"the container exited with status {code}"
        return None

    def stop(self) -> None:
        container, self.container = self.container, None
        if container is None:
            return
        try:
            container.stop(timeout=int(self.spec.stop_timeout))
        except Exception as e:
            log.debug("stop endpoint container: %s", e)
        containers.remove_quietly(container, container.name)

    def running(self) -> bool:
        return self.container is not None and self._exit_reason() is None

    def terminate(self) -> None:
        if self.container is not None:
            try:
                self.container.kill(signal="SIGTERM")
            except Exception as e:  # already stopped
                log.debug("SIGTERM to endpoint container: %s", e)

    def kill(self) -> None:
        if self.container is not None:
            try:
                self.container.kill()
            except Exception as e:
                log.debug("kill endpoint container: %s", e)

    def wait(self) -> int:
        assert self.container is not None
        return int(self.container.wait().get("StatusCode", 1))
