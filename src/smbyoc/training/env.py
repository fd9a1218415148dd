"""The training environment: the three config files, the platform's variables and the devices.

:class:`TrainingEnv` is a read-only snapshot built once by :meth:`TrainingEnv.from_env`. Its values
follow sagemaker-training's ``Environment`` (contract.md §2.2-2.3); :mod:`smbyoc.training.mapping`
turns it into the ``SM_*`` variables and the entry point's arguments.

Config files (contract.md §1.3):

* ``hyperparameters.json`` and ``inputdataconfig.json`` missing → ``{}`` (a job without
  hyperparameters or channels). ``resourceconfig.json`` missing → one host ``algo-1``
  (``{"current_host": "algo-1", "hosts": ["algo-1"]}``), so the image can be run by hand with
  ``docker run image train``; the toolkit would fail here. A file that exists but is malformed is always
  a :class:`~smbyoc.errors.ConfigError` naming the file and the key.
* ``hosts`` is sorted (as the platform writes it); ``current_host`` must be one of them.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smbyoc import hyperparameters as hp
from smbyoc.environment_variables import (
    SAGEMAKER_PROGRAM,
    SAGEMAKER_TRAINING_MODULE,
    SM_HP_MP_PARAMETERS,
    TRAINING_JOB_ARN,
    TRAINING_JOB_NAME,
)
from smbyoc.errors import ConfigError
from smbyoc.jsonfile import read_json
from smbyoc.paths import Paths, check_channel_name
from smbyoc.training import mapping, resources

logger = logging.getLogger(__name__)

INPUT_MODES = ("File", "FastFile", "Pipe")
S3_DISTRIBUTION_TYPES = ("FullyReplicated", "ShardedByS3Key")
RECORD_WRAPPER_TYPES = ("None", "RecordIO")
COMPRESSION_TYPES = ("None", "Gzip")

DEFAULT_INSTANCE_TYPE = "local"
DEFAULT_GROUP_NAME = "homogeneousCluster"
DEFAULT_NETWORK_INTERFACE = "eth0"
DEFAULT_LOG_LEVEL = logging.INFO
#: Used only when resourceconfig.json does not exist (see the module docstring).
SINGLE_HOST_RESOURCE_CONFIG: Mapping[str, Any] = {"current_host": "algo-1", "hosts": ["algo-1"]}


@dataclass(frozen=True)
class Channel:
    """One entry of ``inputdataconfig.json``."""

    name: str
    input_mode: str
    content_type: str | None
    s3_distribution_type: str
    record_wrapper_type: str
    compression_type: str | None
    path: Path
    config: Mapping[str, Any]

    def pipe_path(self, epoch: int) -> Path:
        """``<channel>_<epoch>``: the Pipe-mode FIFO for one epoch."""
        return self.path.parent / f"{self.name}_{epoch}"


@dataclass(frozen=True)
class InstanceGroup:
    """One entry of ``resourceconfig.json``'s ``instance_groups`` (heterogeneous clusters)."""

    name: str
    instance_type: str
    hosts: tuple[str, ...]


@dataclass(frozen=True)
class TrainingEnv:
    """Everything the ``train`` program and the user's code need to know about the job."""

    paths: Paths
    job_name: str
    job_arn: str
    hosts: tuple[str, ...]
    current_host: str
    current_instance_type: str
    current_group_name: str
    instance_groups: tuple[InstanceGroup, ...]
    network_interface_name: str
    resource_config: Mapping[str, Any]
    input_data_config: Mapping[str, Any]
    channels: Mapping[str, Channel]
    hyperparameters_raw: Mapping[str, str]
    hyperparameters: Mapping[str, Any]
    additional_framework_parameters: Mapping[str, Any]
    user_entry_point: str | None
    module_name: str | None
    module_dir: str
    log_level: int
    framework_module: str | None
    num_cpus: int
    num_gpus: int
    num_neurons: int
    # Additions to the agreed API (all defaulted): what the toolkit-compatible mapping needs verbatim.
    sagemaker_hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    """Every reserved / ``sagemaker_*`` hyperparameter, decoded (the toolkit's raw values)."""
    program_from_env: bool = False
    """Whether the entry point came from ``SAGEMAKER_PROGRAM`` (not the hyperparameter)."""
    mp_parameters: str | None = None
    """``SM_HP_MP_PARAMETERS`` from the platform environment (model parallelism), if set."""
    smddprun_installed: bool = False
    smddpmprun_installed: bool = False

    # ------------------------------------------------------------------------------- construction
    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        base_dir: str | Path | None = None,
        *,
        detect_devices: bool = True,
    ) -> TrainingEnv:
        """Read the config files under ``base_dir`` (default ``SAGEMAKER_BASE_DIR``) and ``environ``.

        ``detect_devices=False`` skips every subprocess probe (GPUs, Neuron cores, smddprun): the
        counts are then 0 and only the CPU count is measured.
        """
        env: Mapping[str, str] = os.environ if environ is None else environ
        paths = Paths.from_env(env, base_dir)

        resource_config = _read_resource_config(paths.resource_config_file)
        input_data_config = _read_json_object(paths.input_data_config_file, default={})
        raw = hp.read_hyperparameters_file(paths.hyperparameters_file)
        parts = hp.split(hp.decode(raw))
        reserved = parts.sagemaker

        rc_source = str(paths.resource_config_file)
        hosts = tuple(sorted(resource_config["hosts"]))
        current_host = resource_config["current_host"]
        current_instance_type = _optional_str(resource_config, "current_instance_type", rc_source)
        current_group_name = _optional_str(resource_config, "current_group_name", rc_source)
        interface = _optional_str(resource_config, "network_interface_name", rc_source)
        groups = _instance_groups(resource_config, rc_source)
        channels = _channels(input_data_config, paths)

        env_program = SAGEMAKER_PROGRAM.get(env)
        program: Any = env_program if env_program is not None else reserved.get("sagemaker_program")
        user_entry_point = None if program is None else str(program)
        module_name = None
        if user_entry_point is not None:
            module_name = user_entry_point[:-3] if user_entry_point.endswith(".py") else user_entry_point

        instance_type = current_instance_type or DEFAULT_INSTANCE_TYPE
        return cls(
            paths=paths,
            job_name=TRAINING_JOB_NAME.get(env),
            job_arn=TRAINING_JOB_ARN.get(env),
            hosts=hosts,
            current_host=current_host,
            current_instance_type=instance_type,
            current_group_name=current_group_name or DEFAULT_GROUP_NAME,
            instance_groups=groups,
            network_interface_name=interface or DEFAULT_NETWORK_INTERFACE,
            resource_config=resource_config,
            input_data_config=input_data_config,
            channels=channels,
            hyperparameters_raw=raw,
            hyperparameters=parts.user,
            additional_framework_parameters=parts.framework,
            user_entry_point=user_entry_point,
            module_name=module_name,
            module_dir=str(reserved.get("sagemaker_submit_directory", str(paths.code_dir))),
            log_level=_log_level(reserved, str(paths.hyperparameters_file)),
            framework_module=SAGEMAKER_TRAINING_MODULE.get(env),
            num_cpus=resources.count_cpus(),
            num_gpus=resources.count_gpus() if detect_devices else 0,
            num_neurons=resources.count_neuron_cores(instance_type) if detect_devices else 0,
            sagemaker_hyperparameters=reserved,
            program_from_env=env_program is not None,
            mp_parameters=SM_HP_MP_PARAMETERS.get(env),
            smddprun_installed=detect_devices and shutil.which("smddprun") is not None,
            smddpmprun_installed=detect_devices and shutil.which("smddpmprun") is not None,
        )

    # ----------------------------------------------------------------------------------- queries
    @property
    def is_master(self) -> bool:
        """Whether this host is the first of ``hosts`` (the one that coordinates distributed jobs)."""
        return self.current_host == self.hosts[0]

    @property
    def master_host(self) -> str:
        return self.hosts[0]

    @property
    def is_distributed(self) -> bool:
        return len(self.hosts) > 1

    @property
    def current_instance_group(self) -> InstanceGroup | None:
        return next((g for g in self.instance_groups if g.name == self.current_group_name), None)

    @property
    def channel_input_dirs(self) -> dict[str, str]:
        return {name: str(channel.path) for name, channel in self.channels.items()}

    def channel_dir(self, name: str) -> Path:
        """``input/data/<name>`` for a channel of this job; ConfigError for any other name."""
        channel = self.channels.get(name)
        if channel is None:
            known = ", ".join(sorted(self.channels)) or "none"
            raise ConfigError(f"this job has no such channel (channels: {known})", key=f"channel {name!r}")
        return channel.path

    # --------------------------------------------------------------------------------- renderings
    def to_env_vars(self) -> dict[str, str]:
        """Every ``SM_*`` variable, exactly as sagemaker-training's ``Environment.to_env_vars()``."""
        return mapping.to_env_vars(self)

    def to_cmd_args(self) -> list[str]:
        """The user hyperparameters as arguments, exactly as sagemaker-training's ``to_cmd_args()``."""
        return mapping.to_cmd_args(self.hyperparameters)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary for one startup log line (the ``SM_TRAINING_ENV`` document)."""
        return mapping.training_env(self)


# ------------------------------------------------------------------------------------- file readers


def _read_json_object(path: Path, default: Mapping[str, Any] | None) -> dict[str, Any]:
    data = read_json(path) if default is None else read_json(path, missing=dict(default))
    if not isinstance(data, dict):
        raise ConfigError(f"expected a JSON object, got {type(data).__name__}", source=str(path))
    return data


def _read_resource_config(path: Path) -> dict[str, Any]:
    if not path.exists():
        logger.info("%s does not exist; assuming a single host algo-1", path)
        return copy.deepcopy(dict(SINGLE_HOST_RESOURCE_CONFIG))
    config = _read_json_object(path, default=None)
    source = str(path)
    hosts = config.get("hosts")
    if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) and h for h in hosts):
        raise ConfigError("must be a non-empty list of host names", source=source, key="hosts")
    if len(set(hosts)) != len(hosts):
        raise ConfigError(f"lists a host twice: {hosts}", source=source, key="hosts")
    current = config.get("current_host")
    if not isinstance(current, str) or current not in hosts:
        raise ConfigError(f"{current!r} is not one of hosts {hosts}", source=source, key="current_host")
    return config


def _optional_str(config: Mapping[str, Any], key: str, source: str) -> str | None:
    value = config.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"expected a string, got {json.dumps(value)}", source=source, key=key)
    return value


def _instance_groups(config: Mapping[str, Any], source: str) -> tuple[InstanceGroup, ...]:
    groups = config.get("instance_groups", [])
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


def _channels(input_data_config: Mapping[str, Any], paths: Paths) -> dict[str, Channel]:
    source = str(paths.input_data_config_file)
    channels: dict[str, Channel] = {}
    for name, entry in input_data_config.items():
        try:
            check_channel_name(name)
        except ConfigError as e:
            raise ConfigError(e.message, source=source) from None
        if not isinstance(entry, dict):
            raise ConfigError("expected an object", source=source, key=name)

        def get(key: str, allowed: tuple[str, ...] | None, default: str | None, e: dict[str, Any] = entry,
                n: str = name) -> str | None:
            return _channel_field(e, key, allowed, default, source, n)

        channels[name] = Channel(
            name=name,
            input_mode=get("TrainingInputMode", INPUT_MODES, "File") or "File",
            content_type=get("ContentType", None, None),
            s3_distribution_type=get("S3DistributionType", S3_DISTRIBUTION_TYPES, "FullyReplicated")
            or "FullyReplicated",
            record_wrapper_type=get("RecordWrapperType", RECORD_WRAPPER_TYPES, "None") or "None",
            compression_type=get("CompressionType", COMPRESSION_TYPES, None),
            path=paths.channel_dir(name),
            config=entry,
        )
    return channels


def _channel_field(
    entry: Mapping[str, Any], key: str, allowed: tuple[str, ...] | None, default: str | None,
    source: str, channel: str,
) -> str | None:
    value = entry.get(key, default)
    if value is None:
        return None
    if not isinstance(value, str) or (allowed is not None and value not in allowed):
        expected = "one of " + ", ".join(allowed) if allowed else "a string"
        raise ConfigError(f"{key} is {json.dumps(value)}; expected {expected}", source=source, key=channel)
    return value


def _log_level(reserved: Mapping[str, Any], source: str) -> int:
    value = reserved.get("sagemaker_container_log_level", DEFAULT_LOG_LEVEL)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return int(text)
        level = logging.getLevelName(text.upper())
        if isinstance(level, int):
            return level
    raise ConfigError(
        f"{json.dumps(value)} is not a logging level (10 debug, 20 info, 30 warning, 40 error)",
        source=source, key="sagemaker_container_log_level",
    )
