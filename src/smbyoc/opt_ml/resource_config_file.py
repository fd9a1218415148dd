"""``/opt/ml/input/config/resourceconfig.json``: the hosts of the job and this container's place in it.

The platform writes (contract.md §1.3)::

    {"current_host": "algo-1", "current_instance_type": "ml.m5.xlarge",
     "current_group_name": "homogeneousCluster", "hosts": ["algo-1", "algo-2"],
     "instance_groups": [{"instance_group_name": "homogeneousCluster", "instance_type": "ml.m5.xlarge",
                          "hosts": ["algo-1", "algo-2"]}],
     "network_interface_name": "eth0"}

Reading: a missing file means one host ``algo-1`` (:data:`SINGLE_HOST`), so an image can be run by
hand with ``docker run image train`` (the toolkit would fail here). ``hosts`` is sorted (as the
platform writes it); ``current_host`` must be one of them. Absent optional keys take the defaults
below. A file that exists but is malformed is a :class:`~smbyoc.errors.ConfigError` naming the file
and the key.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smbyoc.errors import ConfigError
from smbyoc.jsonfile import read_json_object, write_json
from smbyoc.opt_ml import NOT_GIVEN
from smbyoc.paths import Paths

logger = logging.getLogger(__name__)

DEFAULT_INSTANCE_TYPE = "local"
DEFAULT_GROUP_NAME = "homogeneousCluster"
DEFAULT_NETWORK_INTERFACE = "eth0"
#: What a job without ``resourceconfig.json`` is (see the module docstring).
SINGLE_HOST: Mapping[str, Any] = {"current_host": "algo-1", "hosts": ["algo-1"]}


@dataclass(frozen=True)
class InstanceGroup:
    """One entry of ``instance_groups`` (heterogeneous clusters)."""

    name: str
    instance_type: str
    hosts: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"instance_group_name": self.name, "instance_type": self.instance_type, "hosts": list(self.hosts)}


@dataclass(frozen=True)
class ResourceConfig:
    """The file's content, typed; ``document`` is the JSON object as written (defaults to :meth:`to_json`)."""

    current_host: str
    hosts: tuple[str, ...]
    current_instance_type: str = DEFAULT_INSTANCE_TYPE
    current_group_name: str = DEFAULT_GROUP_NAME
    instance_groups: tuple[InstanceGroup, ...] = ()
    network_interface_name: str = DEFAULT_NETWORK_INTERFACE
    topology: tuple[Any, ...] = ()
    document: Mapping[str, Any] = field(default=NOT_GIVEN, repr=False)

    def __post_init__(self) -> None:
        if self.document is NOT_GIVEN:
            object.__setattr__(self, "document", self.to_json())

    @classmethod
    def homogeneous(
        cls, current_host: str, hosts: Sequence[str], instance_type: str,
        network_interface_name: str = DEFAULT_NETWORK_INTERFACE,
    ) -> ResourceConfig:
        """What SageMaker writes for ``current_host`` of a job of identical instances."""
        ordered = tuple(sorted(hosts))
        group = InstanceGroup(DEFAULT_GROUP_NAME, instance_type, ordered)
        return cls(current_host, ordered, instance_type, DEFAULT_GROUP_NAME, (group,), network_interface_name)

    def to_json(self) -> dict[str, Any]:
        """The file's JSON object, keys in the platform's order."""
        document: dict[str, Any] = {
            "current_host": self.current_host,
            "current_instance_type": self.current_instance_type,
            "current_group_name": self.current_group_name,
            "hosts": list(self.hosts),
            "instance_groups": [group.to_json() for group in self.instance_groups],
            "network_interface_name": self.network_interface_name,
        }
        if self.topology:
            document["topology"] = list(self.topology)
        return document

    @classmethod
    def from_json(cls, document: Mapping[str, Any], source: str | None = None) -> ResourceConfig:
        """Check ``document`` (ConfigError naming ``source`` and the key) and type it."""
        hosts = document.get("hosts")
        if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) and h for h in hosts):
            raise ConfigError("must be a non-empty list of host names", source=source, key="hosts")
        if len(set(hosts)) != len(hosts):
            raise ConfigError(f"lists a host twice: {hosts}", source=source, key="hosts")
        current = document.get("current_host")
        if not isinstance(current, str) or current not in hosts:
            raise ConfigError(f"{current!r} is not one of hosts {hosts}", source=source, key="current_host")
        topology = document.get("topology", [])
        if not isinstance(topology, list):
            raise ConfigError("expected a list", source=source, key="topology")
        return cls(
            current_host=current,
            hosts=tuple(sorted(hosts)),
            current_instance_type=_optional_str(document, "current_instance_type", source) or DEFAULT_INSTANCE_TYPE,
            current_group_name=_optional_str(document, "current_group_name", source) or DEFAULT_GROUP_NAME,
            instance_groups=_instance_groups(document, source),
            network_interface_name=_optional_str(document, "network_interface_name", source)
            or DEFAULT_NETWORK_INTERFACE,
            topology=tuple(topology),
            document=document,
        )


def read(paths: Paths) -> ResourceConfig:
    """``resourceconfig.json`` of the job; :data:`SINGLE_HOST` when the file does not exist."""
    path = paths.resource_config_file
    if not path.exists():
        logger.info("%s does not exist; assuming a single host algo-1", path)
        return ResourceConfig.from_json(copy.deepcopy(dict(SINGLE_HOST)), source=str(path))
    return ResourceConfig.from_json(read_json_object(path), source=str(path))


def write(paths: Paths, config: ResourceConfig) -> Path:
    """Write ``config`` as the platform does (its :meth:`~ResourceConfig.to_json`)."""
    return write_json(paths.resource_config_file, config.to_json())


def _optional_str(document: Mapping[str, Any], key: str, source: str | None) -> str | None:
    value = document.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"expected a string, got {json.dumps(value)}", source=source, key=key)
    return value


def _instance_groups(document: Mapping[str, Any], source: str | None) -> tuple[InstanceGroup, ...]:
    groups = document.get("instance_groups", [])
    if not isinstance(groups, list):
        raise ConfigError("expected a list", source=source, key="instance_groups")
    result = []
    for i, group in enumerate(groups):
        key = f"instance_groups[{i}]"
        if not isinstance(group, dict):
            raise ConfigError("expected an object", source=source, key=key)
        name, itype, ghosts = group.get("instance_group_name"), group.get("instance_type"), group.get("hosts")
        if not isinstance(name, str) or not name:
            raise ConfigError("instance_group_name must be a non-empty string", source=source, key=key)
        if not isinstance(itype, str):
            raise ConfigError("instance_type must be a string", source=source, key=key)
        if not isinstance(ghosts, list) or not all(isinstance(h, str) for h in ghosts):
            raise ConfigError("hosts must be a list of host names", source=source, key=key)
        result.append(InstanceGroup(name=name, instance_type=itype, hosts=tuple(ghosts)))
    return tuple(result)
