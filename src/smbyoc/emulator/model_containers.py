"""The model of a multi-container endpoint (contract.md §6), before anything runs: its containers
(:class:`ContainerSpec`, parsed from ``--container`` by :func:`parse_container`), where each listens
(:class:`PortPlan`) and the whole :class:`MultiContainerSpec` with CreateModel's checks. The endpoint that runs
it is :mod:`smbyoc.emulator.multi_container`.

Port plan (SageMaker's concrete values are **[UNCONFIRMED]**): container *i* (0-based) listens on
``bind_port_base + i`` (8080, 8081, ...; in process mode a free port instead) with the safe range
``safe_port_base + safe_port_span*i`` .. ``+ safe_port_span - 1`` (9000-9099, 9100-9199, ...). A user
environment that sets either variable is overridden with a warning, since SageMaker sets them.

Hostnames left out are assigned by position, ``container-1``, ``container-2``, ... (SageMaker assigns "a
unique name based on the position"; the names it picks are **[UNCONFIRMED]**).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from smbyoc.emulator.endpoint import DEFAULT_STARTUP_HEALTH_TIMEOUT, ENDPOINT_STOP_TIMEOUT, EndpointSpec
from smbyoc.emulator.pipeline import EXECUTION_MODES, SERIAL
from smbyoc.errors import ConfigError

MIN_CONTAINERS = 2
#: BOTO ``ContainerDefinitionList`` max 15.
MAX_CONTAINERS = 15
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
