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

Port plan (SageMaker's concrete values are **[UNCONFIRMED]**): container *i* (0-based) listens on
``bind_port_base + i`` (8080, 8081, ...; in process mode a free port instead) with the safe range
``safe_port_base + safe_port_span*i`` .. ``+ safe_port_span - 1`` (9000-9099, 9100-9199, ...). A user
environment that sets either variable is overridden with a warning, since SageMaker sets them.

Hostnames left out are assigned by position, ``container-1``, ``container-2``, ... (SageMaker assigns "a
unique name based on the position"; the names it picks are **[UNCONFIRMED]**).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from smbyoc.emulator import containers, jobs, owners
from smbyoc.emulator.endpoint import (
    DEFAULT_STARTUP_HEALTH_TIMEOUT,
    ENDPOINT_STOP_TIMEOUT,
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
from smbyoc.emulator.pipeline import EXECUTION_MODES, SERIAL, Target, make_router
from smbyoc.emulator.runtime_client import wait_until_healthy
from smbyoc.errors import ConfigError, ServingError, SmbyocError
from smbyoc.serving.ports import free_port

log = logging.getLogger(__name__)

MIN_CONTAINERS = 2
#: BOTO ``ContainerDefinitionList`` max 15.
MAX_CONTAINERS = 15
ACCEPT_BIND_TO_PORT_LABEL = "com.amazonaws.sagemaker.capabilities.accept-bind-to-port"
#: BOTO ``ContainerHostname``: at most 63 characters of this pattern.
HOSTNAME_PATTERN = r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$"
_HOSTNAME_RE = re.compile(HOSTNAME_PATTERN)
#: BOTO ``EnvironmentMap``: keys of this pattern, at most 100 entries, keys and values ≤ 1024 bytes, all maps
#: of one model together ≤ 32 KB.
_ENV_KEY_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
MAX_ENV_ENTRIES = 100
MAX_ENV_ITEM_BYTES = 1024
MAX_ENV_TOTAL_BYTES = 32 * 1024
PLATFORM_VARIABLES = ("SAGEMAKER_BIND_TO_PORT", "SAGEMAKER_SAFE_PORT_RANGE")

_MODEL_PREFIXES = ("/", "./", "../", "~/", "file://")
_MODEL_START = re.compile(r":(?=/|\./|\.\./|~/|file://)")
_IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$")
_LONG_FORM = re.compile(r"^(image|model|hostname|env)=")
CONTAINER_FORMS = "IMAGE[:MODEL] (MODEL a path starting with / ./ ../ ~/ or a file:// URI) or " \
                  "image=IMAGE,model=PATH,hostname=NAME,env=KEY=VALUE"


@dataclass(frozen=True)
class ContainerSpec:
    """One ``ContainerDefinition`` of the model."""

    image: str | None = None  # None: smbyoc's `serve` as a local process (process mode)
    model_data: Path | None = None  # model.tar.gz or a directory
    hostname: str | None = None  # None: assigned by position
    environment: Mapping[str, str] = field(default_factory=dict)
    #: The ``--container`` text it was parsed from, for error messages.
    source: str | None = field(default=None, compare=False)


def _model_path(text: str, key: str) -> Path:
    if text.startswith("file://"):
        parts = urllib.parse.urlsplit(text)
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise ConfigError("a file:// URI needs an absolute local path (file:///path)", key=key)
        return Path(urllib.parse.unquote(parts.path))
    if not text:
        raise ConfigError("the model path is empty", key=key)
    return Path(text).expanduser()


def parse_container(text: str) -> ContainerSpec:
    """A ``--container`` value: ``IMAGE[:MODEL]``, ``MODEL`` alone (process mode), or the long form
    ``image=IMAGE,model=PATH,hostname=NAME,env=KEY=VALUE`` (``env`` repeatable; values cannot hold commas).

    In the short form MODEL must start with ``/``, ``./``, ``../``, ``~/`` or ``file://``: an image reference
    never has ``:`` followed by those (a tag has no ``/``, a registry port is digits), so
    ``localhost:5000/my-algo:1.0:./model.tar.gz`` and ``my-algo:1.0`` are unambiguous."""
    key = f"--container {text}"
    stripped = text.strip()
    if not stripped:
        raise ConfigError(f"empty; expected {CONTAINER_FORMS}", key=key)
    if _LONG_FORM.match(stripped):
        return _parse_long(stripped, text, key)
    image: str | None
    model: str | None
    if stripped.startswith(_MODEL_PREFIXES):
        image, model = None, stripped
    else:
        found = _MODEL_START.search(stripped)
        image, model = (stripped[:found.start()], stripped[found.end():]) if found else (stripped, None)
        _check_image(image, key)
    return ContainerSpec(image, None if model is None else _model_path(model, key), source=text)


def _check_image(image: str, key: str) -> None:
    if not _IMAGE_RE.match(image) or "//" in image:
        raise ConfigError(f"{image!r} is not an image reference (expected {CONTAINER_FORMS})", key=key)


def _parse_long(stripped: str, text: str, key: str) -> ContainerSpec:
    values: dict[str, str] = {}
    environment: dict[str, str] = {}
    for item in stripped.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep or name not in ("image", "model", "hostname", "env"):
            raise ConfigError(f"{item!r}: expected image=, model=, hostname= or env= items separated by commas",
                              key=key)
        if name == "env":
            env_key, env_sep, env_value = value.partition("=")
            if not env_sep or not env_key:
                raise ConfigError(f"{item!r}: expected env=KEY=VALUE", key=key)
            environment[env_key] = env_value
            continue
        if name in values:
            raise ConfigError(f"{name}= is given twice", key=key)
        if not value:
            raise ConfigError(f"{name}= is empty", key=key)
        values[name] = value
    if "image" in values:
        _check_image(values["image"], key)
    model = values.get("model")
    return ContainerSpec(values.get("image"), None if model is None else _model_path(model, key),
                         values.get("hostname"), environment, source=text)


@dataclass(frozen=True)
class PortPlan:
    """Where one container listens (``SAGEMAKER_BIND_TO_PORT``) and its ``SAGEMAKER_SAFE_PORT_RANGE``."""

    bind_port: int
    safe_range: tuple[int, int]

    @property
    def safe_range_text(self) -> str:
        return f"{self.safe_range[0]}-{self.safe_range[1]}"


def port_plan(count: int, bind_port_base: int = 8080, safe_port_base: int = 9000,
              safe_port_span: int = 100) -> list[PortPlan]:
    """The ports of ``count`` containers (module docstring); ConfigError when they overlap or leave 1-65535."""
    if safe_port_span < 1:
        raise ConfigError("must be at least 1", key=f"safe port span {safe_port_span}")
    plans = [PortPlan(bind_port_base + i, (safe_port_base + safe_port_span * i,
                                            safe_port_base + safe_port_span * (i + 1) - 1)) for i in range(count)]
    safe_low, safe_high = safe_port_base, safe_port_base + safe_port_span * count - 1
    top = max(safe_high, bind_port_base + count - 1)
    if bind_port_base < 1 or safe_port_base < 1 or top > 65535:
        raise ConfigError(f"the port plan leaves 1-65535 (bind ports from {bind_port_base}, safe ranges from "
                          f"{safe_port_base}, {safe_port_span} each, for {count} containers)", key="port plan")
    clash = next((p.bind_port for p in plans if safe_low <= p.bind_port <= safe_high), None)
    if clash is not None:
        raise ConfigError(f"bind port {clash} falls in the safe port ranges {safe_low}-{safe_high}", key="port plan")
    return plans


@dataclass(frozen=True)
class MultiContainerSpec:
    """A multi-container endpoint: the containers, the execution mode and the endpoint's own settings."""

    containers: tuple[ContainerSpec, ...]
    #: ``InferenceExecutionConfig.Mode``: ``Serial`` (an inference pipeline) or ``Direct``.
    execution_mode: str = SERIAL
    #: ``docker`` (``docker run IMAGE serve``) or ``process`` (smbyoc's ``serve`` as local processes).
    backend: str = "docker"
    port: int = 8080
    bind_address: str = "127.0.0.1"
    #: Environment for every container (each container's own ``environment`` wins).
    environment: Mapping[str, str] = field(default_factory=dict)
    startup_health_timeout: float = DEFAULT_STARTUP_HEALTH_TIMEOUT
    instance_type: str = "local"
    stop_timeout: float = ENDPOINT_STOP_TIMEOUT
    name_prefix: str = "smbyoc-endpoint"
    bind_port_base: int = 8080
    safe_port_base: int = 9000
    safe_port_span: int = 100
    #: SageMaker's 6 MB and 60 s limits at the front.
    enforce_limits: bool = True

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.bind_address in ("0.0.0.0", "") else self.bind_address
        return f"http://{host}:{self.port}"

    def culprit(self, position: int) -> str:
        """How errors name container ``position``: its ``--container`` text, else its position."""
        container = self.containers[position]
        return f"--container {container.source}" if container.source else f"container {position + 1}"

    def hostnames(self) -> list[str]:
        """Every container's hostname: as given, or ``container-<position>``."""
        return [c.hostname or f"container-{i + 1}" for i, c in enumerate(self.containers)]

    def port_plan(self) -> list[PortPlan]:
        return port_plan(len(self.containers), self.bind_port_base, self.safe_port_base, self.safe_port_span)

    def validate(self) -> MultiContainerSpec:
        """SageMaker's checks of CreateModel (count, hostnames, mode, environment) and ours (ports, backend)."""
        if self.backend not in ("docker", "process"):
            raise ConfigError("expected docker or process", key=f"--mode {self.backend}")
        if self.execution_mode not in EXECUTION_MODES:
            raise ConfigError("Member must satisfy enum value set: [Serial, Direct] (InferenceExecutionConfig Mode)",
                              key=f"--inference-execution-mode {self.execution_mode}")
        count = len(self.containers)
        if count > MAX_CONTAINERS:
            raise ConfigError(f"{count} containers: a model has at most {MAX_CONTAINERS} (CreateModel Containers "
                              f"must have length less than or equal to {MAX_CONTAINERS})", key="--container")
        if count < MIN_CONTAINERS:
            raise ConfigError(f"{count} container{'s' if count != 1 else ''}: a multi-container endpoint has "
                              f"{MIN_CONTAINERS} to {MAX_CONTAINERS} (for one, leave out --container)",
                              key="--container")
        given = [c.hostname is not None for c in self.containers]
        if any(given) and not all(given):
            missing = given.index(False)
            raise ConfigError("ContainerHostname is given for some containers but not for this one: give it for "
                              "every container of the model or for none", key=self.culprit(missing))
        seen: dict[str, int] = {}
        for i, name in enumerate(self.hostnames()):
            if len(name) > 63 or not _HOSTNAME_RE.match(name):
                raise ConfigError(f"ContainerHostname {name!r} must have at most 63 characters and satisfy the "
                                  f"pattern {HOSTNAME_PATTERN}", key=self.culprit(i))
            if name in seen:
                raise ConfigError(f"ContainerHostname {name!r} is also container {seen[name] + 1}'s: hostnames "
                                  "must be unique within the model", key=self.culprit(i))
            seen[name] = i
        total = 0
        for i, container in enumerate(self.containers):
            if self.backend == "process" and container.image is not None:
                raise ConfigError("an image runs only in docker mode (process mode runs smbyoc's serve)",
                                  key=self.culprit(i))
            if self.backend == "docker" and container.image is None:
                raise ConfigError("docker mode needs the container's image (IMAGE[:MODEL])", key=self.culprit(i))
            if container.model_data is not None and not container.model_data.exists():
                raise ConfigError(f"the model {container.model_data} does not exist", key=self.culprit(i))
            total += _check_environment({**self.environment, **container.environment}, self.culprit(i))
        if total > MAX_ENV_TOTAL_BYTES:
            raise ConfigError(f"the containers' environments have {total:,} bytes together; a model's limit is "
                              f"{MAX_ENV_TOTAL_BYTES:,} (32 KB)", key="--env")
        self.port_plan()
        EndpointSpec(None, port=self.port, bind_address=self.bind_address,
                     startup_health_timeout=self.startup_health_timeout, instance_type=self.instance_type).validate()
        return self


def _check_environment(environment: Mapping[str, str], key: str) -> int:
    """CreateModel's limits on one container's Environment; its size in bytes."""
    if len(environment) > MAX_ENV_ENTRIES:
        raise ConfigError(f"{len(environment)} environment variables; the limit is {MAX_ENV_ENTRIES}", key=key)
    size = 0
    for name, value in environment.items():
        if not _ENV_KEY_RE.match(name):
            raise ConfigError(f"environment variable name {name!r} must match [a-zA-Z_][a-zA-Z0-9_]*", key=key)
        for part in (name, value):
            if len(part.encode("utf-8")) > MAX_ENV_ITEM_BYTES:
                raise ConfigError(f"environment variable {name}: keys and values have at most "
                                  f"{MAX_ENV_ITEM_BYTES} bytes", key=key)
        size += len(name.encode("utf-8")) + len(value.encode("utf-8"))
    return size


def require_bind_to_port_label(client: Any, image: str, key: str) -> None:
    """SageMaker runs only images that declare they honour ``SAGEMAKER_BIND_TO_PORT`` in a multi-container model."""
    found = containers.require_image(client, image)
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
                require_bind_to_port_label(client, container.image, spec.culprit(i))
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
