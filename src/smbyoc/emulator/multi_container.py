"""Multi-container endpoints (contract.md §6): 2-15 containers on one instance, behind one endpoint.

``CreateModel(Containers=[...], InferenceExecutionConfig={"Mode": "Serial" | "Direct"})``: an inference pipeline
(``Serial``: each container's answer is the next one's request) or direct invocation (``Direct``: the client
names the container). The containers run side by side as on one instance, each told its port by
``SAGEMAKER_BIND_TO_PORT`` and given a ``SAGEMAKER_SAFE_PORT_RANGE`` of its own; an endpoint front
(:mod:`smbyoc.emulator.front`) on the user's port runs the router (:mod:`smbyoc.emulator.pipeline`).

* Docker mode: every image must carry ``com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true``
  (checked before anything starts). The containers share ONE network namespace, as processes of one instance
  share its network: the first container owns it and publishes every container's port on 127.0.0.1 (host
  ports chosen by the engine), the others join it (``network_mode=container:<first>``). Each runs
  ``serve`` with its own model read-only at /opt/ml/model, the instance type's CPU and memory limits (each
  container may use the whole instance, as on SageMaker, where they share it: the sum is not enforced) and
  smbyoc's labels (``smbyoc ps``, the orphan sweep).
* Process mode: one smbyoc ``serve`` per container on a free 127.0.0.1 port.

The containers, their port plan (where each listens, ``SAGEMAKER_SAFE_PORT_RANGE``) and CreateModel's checks
are :mod:`smbyoc.emulator.model_containers`; this module re-exports them.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from smbyoc.emulator import containers, jobs, owners
from smbyoc.emulator.endpoint import (
    DockerEndpoint,
    Endpoint,
    EndpointSpec,
    LineSink,
    ProcessEndpoint,
    _print_line,
    _Tail,
    resolve_nginx,
)
from smbyoc.emulator.front import INVOCATION_TIMEOUT, Front
from smbyoc.emulator.model_containers import (
    CONTAINER_FORMS,
    HOSTNAME_PATTERN,
    MAX_CONTAINERS,
    MAX_ENV_ENTRIES,
    MAX_ENV_ITEM_BYTES,
    MAX_ENV_TOTAL_BYTES,
    MIN_CONTAINERS,
    PLATFORM_VARIABLES,
    ContainerSpec,
    MultiContainerSpec,
    PortPlan,
    parse_container,
    port_plan,
)
from smbyoc.emulator.pipeline import DIRECT, EXECUTION_MODES, SERIAL, Target, make_router
from smbyoc.emulator.runtime_client import wait_until_healthy
from smbyoc.errors import ConfigError, ServingError, SmbyocError
from smbyoc.serving.ports import free_port

#: The endpoint's names, and those of :mod:`smbyoc.emulator.model_containers` and the execution modes it re-exports.
__all__ = [
    "ACCEPT_BIND_TO_PORT_LABEL", "CONTAINER_FORMS", "DIRECT", "EXECUTION_MODES", "HOSTNAME_PATTERN", "MAX_CONTAINERS",
    "MAX_ENV_ENTRIES", "MAX_ENV_ITEM_BYTES", "MAX_ENV_TOTAL_BYTES", "MIN_CONTAINERS", "PLATFORM_VARIABLES", "SERIAL",
    "ContainerSpec", "MultiContainerEndpoint", "MultiContainerSpec", "PortPlan", "parse_container", "port_plan",
    "require_bind_to_port_label",
]

log = logging.getLogger(__name__)

ACCEPT_BIND_TO_PORT_LABEL = "com.amazonaws.sagemaker.capabilities.accept-bind-to-port"


def require_bind_to_port_label(client: Any, image: str, key: str, instance_type: str | None = None) -> None:
    """SageMaker runs only images that declare they honour ``SAGEMAKER_BIND_TO_PORT`` in a multi-container model
    (and, like every image, only on an instance type of its platform)."""
    found = containers.require_image(client, image, instance_type=instance_type)
    labels = getattr(found, "labels", None) or {}
    if str(labels.get(ACCEPT_BIND_TO_PORT_LABEL, "")).lower() != "true":
        raise ConfigError(f"image {image} does not carry the label {ACCEPT_BIND_TO_PORT_LABEL}=true that every "
                          "container of a multi-container endpoint needs (it listens on SAGEMAKER_BIND_TO_PORT); "
                          f"add LABEL {ACCEPT_BIND_TO_PORT_LABEL}=true to its Dockerfile", key=key)



class _DockerMember(DockerEndpoint):
    """One container of the endpoint: the first owns the shared network namespace and publishes every port."""

    def __init__(self, spec: EndpointSpec, client: Any, image: str, *, hostname: str, job: str,
                 publish: Sequence[int], network_owner: _DockerMember | None, sink: LineSink,
                 user: str | None, root: Path, token: str) -> None:
        super().__init__(spec, client, image, sink, user, root=root, token=token)
        self.hostname = hostname
        self.job = job
        self.publish = tuple(publish)
        self.network_owner = network_owner
        self.published_url: str | None = None

    @property
    def url(self) -> str:
        return self.published_url or self.spec.url

    def container_args(self) -> dict[str, Any]:
        args = super().container_args()
        args["name"] = f"{self.job}-{self.hostname}"
        args["labels"] = containers.labels(self.job, self.hostname)
        del args["ports"]
        if self.network_owner is None:
            args["ports"] = {f"{port}/tcp": ("127.0.0.1", None) for port in self.publish}
        else:
            assert self.network_owner.container is not None
            args["network_mode"] = f"container:{self.network_owner.container.id}"
        return args

    def published_ports(self, timeout: float = 10.0) -> dict[int, int]:
        """Container port → the host port the engine chose on 127.0.0.1, for every published port."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.container is not None
            self.container.reload()
            bindings = self.container.attrs.get("NetworkSettings", {}).get("Ports") or {}
            found = {port: int(b["HostPort"]) for port in self.publish
                     for b in bindings.get(f"{port}/tcp") or [] if b.get("HostIp") == "127.0.0.1"}
            if len(found) == len(self.publish):
                return found
            why = self._exit_reason()
            if why is not None or time.monotonic() > deadline:
                raise ServingError(why or f"the Docker Engine published no host port for {sorted(self.publish)}")
            time.sleep(0.1)


class MultiContainerEndpoint:
    """2-15 containers as on one instance and the front on the endpoint's port (module docstring).

    The surface ``local-serve`` uses on :class:`~smbyoc.emulator.endpoint.Endpoint`: ``start()`` (the seconds
    until every container answered /ping 200 and the front listens), ``url``, ``tail``, ``_exit_reason()``,
    ``close()`` and the context manager."""

    kind = "multi-container"

    def __init__(self, spec: MultiContainerSpec, *, client: Any = None, user: str | None = None,
                 require_nginx: bool = False, sink: LineSink | None = _print_line,
                 command: list[str] | None = None) -> None:
        """``client``: a Docker client (docker mode). ``user``: docker mode, run every container as this user.
        ``require_nginx``: process mode, fail when nginx is missing. ``command``: process mode, argv of serve."""
        self.spec = spec.validate()
        self.hostnames = spec.hostnames()
        self.plan = spec.port_plan()
        self.client = client
        self.user = user
        self.command = command
        self.uses_nginx = False
        if spec.backend == "docker":
            if client is None:
                raise ConfigError("docker mode needs a Docker client", key="client")
            for i, container in enumerate(spec.containers):
                assert container.image is not None
                require_bind_to_port_label(client, container.image, spec.culprit(i), spec.instance_type)
        else:
            if user is not None:
                raise ConfigError("only for --mode docker", key="--user")
            self.uses_nginx = resolve_nginx({**os.environ, **spec.environment}, require=require_nginx)
        for i, container in enumerate(spec.containers):
            overridden = [v for v in PLATFORM_VARIABLES if v in {**spec.environment, **container.environment}]
            if overridden:
                log.warning("%s: %s set by SageMaker for multi-container endpoints; the value given is overridden",
                            self.describe(i), " and ".join(overridden))
        self.tail = _Tail(sink)
        self.root = Path(tempfile.mkdtemp(prefix=f"{spec.name_prefix}-"))
        self.token = owners.new_token()
        jobs.register(jobs.ENDPOINT, self.root.name, mode=spec.backend, tree=str(self.root), url=spec.url,
                      token=self.token, containers=self.hostnames, execution_mode=spec.execution_mode)
        self.members: list[Endpoint] = []
        self._published: dict[int, int] = {}  # docker mode: container port -> host port on 127.0.0.1
        self.front: Front | None = None
        self.router: Any = None
        self.startup_seconds: float | None = None
        self._closed = False

    @property
    def url(self) -> str:
        return self.spec.url

    def describe(self, position: int) -> str:
        """``container <hostname> (<image>)``, the name errors use."""
        container = self.spec.containers[position]
        what = container.image or f"serve {container.model_data or '(no model)'}"
        return f"container {self.hostnames[position]} ({what})"

    def environment(self, position: int, bind_port: int | None = None) -> dict[str, str]:
        """The container's environment: the endpoint's, the container's, then the platform's port variables
        (``bind_port``: process mode's free host port instead of the plan's)."""
        plan = self.plan[position]
        given = {**self.spec.environment, **self.spec.containers[position].environment}
        return {**{k: v for k, v in given.items() if k not in PLATFORM_VARIABLES},
                "SAGEMAKER_BIND_TO_PORT": str(bind_port or plan.bind_port),
                "SAGEMAKER_SAFE_PORT_RANGE": plan.safe_range_text}

    # ------------------------------------------------------------------------------------ lifecycle
    def start(self, with_front: bool = True) -> float:
        """Start every container, wait until each answers /ping 200 (within the startup health check timeout,
        counted from the start), then start the front (unless ``with_front`` is false: an endpoint's instance,
        whose :attr:`router` the endpoint's own front calls); the seconds it took. On any failure everything
        started is removed and the error names the container and shows its last log lines."""
        started = time.monotonic()
        try:
            for position in range(len(self.spec.containers)):
                self._launch(position)
            for position, member in enumerate(self.members):
                self._wait(position, member, started + self.spec.startup_health_timeout)
            targets = [Target.at(name, m.url) for name, m in zip(self.hostnames, self.members, strict=True)]
            timeout = INVOCATION_TIMEOUT if self.spec.enforce_limits else 24 * 3600.0
            self.router = make_router(self.spec.execution_mode, targets, timeout=timeout)
            if with_front:
                self.front = Front(self.router, host=self.spec.bind_address, port=self.spec.port,
                                   enforce_limits=self.spec.enforce_limits)
                self.front.start()
        except BaseException:
            self.close()
            raise
        self.startup_seconds = time.monotonic() - started
        return self.startup_seconds

    def _member(self, position: int) -> Endpoint:
        hostname = self.hostnames[position]
        container = self.spec.containers[position]
        prefix = f"{hostname} | "
        spec = EndpointSpec(container.model_data, port=self.plan[position].bind_port, bind_address="127.0.0.1",
                            environment=self.environment(position),
                            startup_health_timeout=self.spec.startup_health_timeout,
                            instance_type=self.spec.instance_type, stop_timeout=self.spec.stop_timeout,
                            name_prefix=self.spec.name_prefix)
        root = self.root / hostname
        if container.image is None:  # the plan's port is inside a container; a process gets a free host port
            port = free_port()
            spec = replace(spec, port=port, environment=self.environment(position, port))
            return ProcessEndpoint(spec, lambda line: self.tail(prefix + line), self.command, root=root,
                                   token=self.token, uses_nginx=self.uses_nginx)
        owner = self.members[0] if self.members else None
        assert owner is None or isinstance(owner, _DockerMember)
        return _DockerMember(spec, self.client, container.image, hostname=hostname, job=self.root.name,
                             publish=[p.bind_port for p in self.plan], network_owner=owner,
                             sink=lambda line: self.tail(prefix + line), user=self.user, root=root, token=self.token)

    def _launch(self, position: int) -> None:
        member = self._member(position)
        self.members.append(member)
        try:
            member.launch()
            if isinstance(member, _DockerMember) and member.network_owner is None:
                published = member.published_ports()
                member.published_url = f"http://127.0.0.1:{published[member.publish[0]]}"
                self._published = published
            elif isinstance(member, _DockerMember):
                member.published_url = f"http://127.0.0.1:{self._published[self.plan[position].bind_port]}"
        except SmbyocError as e:
            raise ServingError(self._explain(position, f"did not start: {e}")) from e

    def _wait(self, position: int, member: Endpoint, deadline: float) -> None:
        try:
            wait_until_healthy(member.url, max(deadline - time.monotonic(), 0.001), interval=0.25,
                               alive=self._exit_reason)
        except ServingError as e:
            culprit = next((i for i, m in enumerate(self.members) if m._exit_reason() is not None), position)
            message = str(e)
            if culprit == position and self.describe(position) not in message:
                message = f"did not become healthy: {message}"
            raise ServingError(self._explain(culprit, message)) from e

    def _explain(self, position: int, message: str) -> str:
        name = self.describe(position)
        parts = [message if message.startswith(name) else f"{name} {message}"]
        if position < len(self.members):
            tail = self.members[position].tail.text().strip()
            if tail:
                parts.append(f"last log lines of {self.hostnames[position]}:\n{tail}")
        return "\n".join(parts)

    def _exit_reason(self) -> str | None:
        """None while every container runs; else which one stopped and why."""
        for position, member in enumerate(self.members):
            why = member._exit_reason()
            if why is not None:
                return f"{self.describe(position)} stopped: {why}"
        return None

    def close(self) -> None:
        """Stop the front, then every container at once: SIGTERM, SIGKILL to those still running after
        ``stop_timeout`` (30 s); remove the containers and the temporary tree, end the record."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.front is not None:
                self.front.stop()
            self._stop_members()
        finally:
            owners.end_processes(self.token)
            shutil.rmtree(self.root, ignore_errors=True)
            jobs.unregister(jobs.ENDPOINT, self.root.name)

    def _stop_members(self) -> None:
        for member in self.members:
            member.terminate()
        deadline = time.monotonic() + self.spec.stop_timeout
        running = [m for m in self.members if m.running()]
        while running and time.monotonic() < deadline:
            time.sleep(0.2)
            running = [m for m in running if m.running()]
        for member in running:
            log.warning("%s did not stop within %g s: SIGKILL", self.describe(self.members.index(member)),
                        self.spec.stop_timeout)
            member.kill()
        for member in reversed(self.members):  # the network owner last
            try:
                member.close()
            except Exception as e:
                log.warning("could not remove %s: %s", self.describe(self.members.index(member)), e)

    def __enter__(self) -> MultiContainerEndpoint:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
