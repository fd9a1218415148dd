"""The training environment: the three config files, the platform's variables and the devices.

:class:`TrainingEnv` is a read-only snapshot built once by :meth:`TrainingEnv.from_env`. Its values
follow sagemaker-training's ``Environment`` (contract.md §2.2-2.3); :mod:`smbyoc.training.mapping`
turns the plain values it renders (:meth:`TrainingEnv.to_dict`) into the ``SM_*`` variables and the entry
point's arguments.

Each config file is read by its own module of :mod:`smbyoc.opt_ml` (contract.md §1.3; missing
``hyperparameters.json`` / ``inputdataconfig.json`` → ``{}``, missing ``resourceconfig.json`` → one host
``algo-1``; a malformed file is a :class:`~smbyoc.errors.ConfigError` naming the file and the key).
"""

from __future__ import annotations

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
from smbyoc.opt_ml import hyperparameters_file, input_data_config_file, resource_config_file
from smbyoc.opt_ml.input_data_config_file import Channel
from smbyoc.opt_ml.resource_config_file import InstanceGroup
from smbyoc.paths import Paths
from smbyoc.training import mapping, resources

logger = logging.getLogger(__name__)

DEFAULT_LOG_LEVEL = logging.INFO

__all__ = ["Channel", "InstanceGroup", "TrainingEnv"]


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
    topology: tuple[Any, ...] = ()
    """``resourceconfig.json``'s ``topology`` (empty when the file has none)."""

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

        resource = resource_config_file.read(paths)
        channels = input_data_config_file.read(paths)
        raw = hyperparameters_file.read(paths)
        parts = hp.split(hp.decode(raw))
        reserved = parts.sagemaker

        env_program = SAGEMAKER_PROGRAM.get(env)
        program: Any = env_program if env_program is not None else reserved.get("sagemaker_program")
        user_entry_point = None if program is None else str(program)
        module_name = None
        if user_entry_point is not None:
            module_name = user_entry_point[:-3] if user_entry_point.endswith(".py") else user_entry_point

        instance_type = resource.current_instance_type
        return cls(
            paths=paths,
            job_name=TRAINING_JOB_NAME.get(env),
            job_arn=TRAINING_JOB_ARN.get(env),
            hosts=resource.hosts,
            current_host=resource.current_host,
            current_instance_type=instance_type,
            current_group_name=resource.current_group_name,
            instance_groups=resource.instance_groups,
            network_interface_name=resource.network_interface_name,
            resource_config=resource.document,
            input_data_config={name: channel.config for name, channel in channels.items()},
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
            topology=resource.topology,
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
        return mapping.to_env_vars(self.to_dict())

    def to_cmd_args(self) -> list[str]:
        """The user hyperparameters as arguments, exactly as sagemaker-training's ``to_cmd_args()``."""
        return mapping.to_cmd_args(self.hyperparameters)

    def to_dict(self) -> dict[str, Any]:
        """The toolkit's ``dict(Environment())``: the ``SM_TRAINING_ENV`` document (also one log line)."""
        paths, groups = self.paths, self.instance_groups
        wanted = mapping.distribution_instance_groups(self.additional_framework_parameters, self.current_group_name)
        distribution_hosts = mapping.distribution_hosts(groups, self.hosts, wanted)
        master = mapping.master_hostname(distribution_hosts, self.hosts)
        entry_point = self.user_entry_point if self.program_from_env else self.sagemaker_hyperparameters.get(
            "sagemaker_program")
        return {
            "additional_framework_parameters": dict(self.additional_framework_parameters),
            "channel_input_dirs": self.channel_input_dirs,
            "current_host": self.current_host,
            "current_instance_group": self.current_group_name,
            "current_instance_group_hosts": mapping.current_instance_group_hosts(groups, self.current_group_name),
            "current_instance_type": self.current_instance_type,
            "distribution_hosts": distribution_hosts,
            "distribution_instance_groups": wanted,
            "framework_module": self.framework_module,
            "hosts": list(self.hosts),
            "hyperparameters": dict(self.hyperparameters),
            "input_config_dir": str(paths.input_config_dir),
            "input_data_config": dict(self.input_data_config),
            "input_dir": str(paths.input_dir),
            "instance_groups": [group.name for group in groups],
            "instance_groups_dict": {group.name: group.to_json() for group in groups},
            "is_hetero": len(groups) > 1,
            "is_master": self.current_host == master,
            "is_modelparallel_enabled": None if self.mp_parameters is None else self.mp_parameters != "{}",
            "is_smddpmprun_installed": self.smddpmprun_installed,
            "is_smddprun_installed": self.smddprun_installed,
            "job_name": self.job_name or None,
            # The raw value, as the toolkit reports it ("DEBUG" stays "DEBUG").
            "log_level": self.sagemaker_hyperparameters.get("sagemaker_container_log_level", self.log_level),
            "master_hostname": master,
            "model_dir": str(paths.model_dir),
            "module_dir": self.module_dir,
            # The toolkit takes str() of the hyperparameter, so a job without a program reports "None".
            "module_name": self.module_name if self.module_name is not None else "None",
            "network_interface_name": self.network_interface_name,
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "num_neurons": self.num_neurons,
            "output_data_dir": str(paths.output_data_dir),
            "output_dir": str(paths.output_dir),
            "output_intermediate_dir": str(paths.output_intermediate_dir),
            "resource_config": dict(self.resource_config),
            "topology": list(self.topology),
            "user_entry_point": entry_point,
        }


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
