"""``SM_*`` environment variables and entry-point arguments, exactly as sagemaker-training makes them.

Rules (contract.md §2.4-2.5, checked against the toolkit by ``tests/unit/test_mapping_oracle.py``):

* name: ``"SM_" + key.upper()`` (dashes and other characters kept: ``learning-rate`` →
  ``SM_HP_LEARNING-RATE``); when two keys upper-case to the same name the later one wins;
* value: ``str`` as is, ``None`` → ``""``, anything else compact JSON with sorted keys and ASCII escapes
  (``True`` → ``true``, ``[1, 2]`` → ``[1,2]``);
* arguments: keys sorted, ``--key`` (``-k`` for a one-character key), value ``str(v)`` (``True``,
  ``[1, 2]``), a dict as ``k=v,k2=v2`` sorted by key, ``None`` → ``""``.

``SM_TRAINING_ENV`` carries the toolkit's ``Environment`` properties under the same names, so code that
reads it keeps working. Deliberate differences from the toolkit, all outside what SageMaker produces:

* ``hosts`` is sorted (the platform always writes it sorted; the toolkit copies the file's order);
* ``num_cpus`` honours cgroup quotas (see :mod:`smbyoc.training.resources`);
* an empty ``TRAINING_JOB_NAME`` / ``SAGEMAKER_PROGRAM`` / ``SM_HP_MP_PARAMETERS`` counts as unset;
* ``PYTHONPATH`` is not part of this mapping: whoever starts the user's process decides it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smbyoc.training.env import TrainingEnv

#: Framework switches that put the current instance group into distribution (toolkit rule).
DISTRIBUTION_SWITCHES = (
    "sagemaker_mpi_enabled",
    "sagemaker_parameter_server_enabled",
    "sagemaker_distributed_dataparallel_enabled",
    "sagemaker_pytorch_ddp_enabled",
    "sagemaker_pytorch_xla_multi_worker_enabled",
    "sagemaker_multi_worker_mirrored_strategy_enabled",
    "sagemaker_torch_distributed_enabled",
)
_DEFAULT_GROUP = "homogeneousCluster"


# ------------------------------------------------------------------------------------ generic rules


def env_var_name(key: object) -> str:
    return f"SM_{str(key).upper()}" if key else ""


def env_var_value(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("latin1")
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def mapping_to_env_vars(mapping: Mapping[str, Any]) -> dict[str, str]:
    """``{"hp_lr": 0.1}`` → ``{"SM_HP_LR": "0.1"}``."""
    return {env_var_name(k): env_var_value(v) for k, v in mapping.items()}


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin1")
    return str(value)


def cmd_arg_name(key: object) -> str:
    name = _text(key)
    if not name:
        return ""
    return f"--{name}" if len(name) > 1 else f"-{name}"


def cmd_arg_value(value: object) -> str:
    if isinstance(value, Mapping):
        return ",".join(f"{k!s}={v!s}" for k, v in sorted(value.items()))
    return _text(value)


def to_cmd_args(mapping: Mapping[str, Any]) -> list[str]:
    """``{"epochs": 10, "x": True}`` → ``["--epochs", "10", "-x", "True"]``."""
    args: list[str] = []
    for key in sorted(mapping):
        args += [cmd_arg_name(key), cmd_arg_value(mapping[key])]
    return args


# ----------------------------------------------------------------------- toolkit-derived properties


def _contains(container: object, item: object) -> bool:
    try:
        return item in container  # type: ignore[operator]
    except TypeError:
        return False


def _groups_config(env: TrainingEnv) -> list[Mapping[str, Any]]:
    groups = env.resource_config.get("instance_groups", [])
    return list(groups) if isinstance(groups, list) else []


def current_group_name(env: TrainingEnv) -> Any:
    return env.resource_config.get("current_group_name", _DEFAULT_GROUP)


def distribution_instance_groups(env: TrainingEnv) -> Any:
    """``sagemaker_distribution_instance_groups``, else the current group when a distribution is on."""
    framework = env.additional_framework_parameters
    if "sagemaker_distribution_instance_groups" in framework:
        return framework["sagemaker_distribution_instance_groups"]
    if any(framework.get(switch, False) for switch in DISTRIBUTION_SWITCHES):
        return [current_group_name(env)]
    return []


def distribution_hosts(env: TrainingEnv) -> list[str]:
    groups = _groups_config(env)
    if not groups:
        return list(env.hosts)
    wanted = distribution_instance_groups(env)
    hosts: list[str] = []
    for group in groups:
        if _contains(wanted, group.get("instance_group_name")):
            hosts.extend(group.get("hosts", []))
    return hosts


def master_hostname(env: TrainingEnv) -> str:
    """The toolkit's master: first distribution host, else first host."""
    hosts = distribution_hosts(env)
    return hosts[0] if hosts else env.hosts[0]


def current_instance_group_hosts(env: TrainingEnv) -> list[str]:
    current = current_group_name(env)
    for group in _groups_config(env):
        if group.get("instance_group_name") == current:
            return list(group.get("hosts", []))
    return []


def _user_entry_point(env: TrainingEnv) -> Any:
    if env.program_from_env:
        return env.user_entry_point
    return env.sagemaker_hyperparameters.get("sagemaker_program")


def _module_name(env: TrainingEnv) -> str:
    # The toolkit takes str() of the hyperparameter, so a job without a program reports "None".
    return env.module_name if env.module_name is not None else "None"


def _modelparallel_enabled(env: TrainingEnv) -> bool | None:
    if env.mp_parameters is None:
        return None
    return env.mp_parameters != "{}"


def training_env(env: TrainingEnv) -> dict[str, Any]:
    """The toolkit's ``dict(Environment())``: the document exported as ``SM_TRAINING_ENV``."""
    paths = env.paths
    groups = _groups_config(env)
    master = master_hostname(env)
    return {
        "additional_framework_parameters": dict(env.additional_framework_parameters),
        "channel_input_dirs": env.channel_input_dirs,
        "current_host": env.current_host,
        "current_instance_group": current_group_name(env),
        "current_instance_group_hosts": current_instance_group_hosts(env),
        "current_instance_type": env.resource_config.get("current_instance_type", "local"),
        "distribution_hosts": distribution_hosts(env),
        "distribution_instance_groups": distribution_instance_groups(env),
        "framework_module": env.framework_module,
        "hosts": list(env.hosts),
        "hyperparameters": dict(env.hyperparameters),
        "input_config_dir": str(paths.input_config_dir),
        "input_data_config": dict(env.input_data_config),
        "input_dir": str(paths.input_dir),
        "instance_groups": [g.get("instance_group_name") for g in groups],
        "instance_groups_dict": {g.get("instance_group_name"): g for g in groups},
        "is_hetero": len(groups) > 1,
        "is_master": env.current_host == master,
        "is_modelparallel_enabled": _modelparallel_enabled(env),
        "is_smddpmprun_installed": env.smddpmprun_installed,
        "is_smddprun_installed": env.smddprun_installed,
        "job_name": env.job_name or None,
        "log_level": env.sagemaker_hyperparameters.get("sagemaker_container_log_level", 20),
        "master_hostname": master,
        "model_dir": str(paths.model_dir),
        "module_dir": env.module_dir,
        "module_name": _module_name(env),
        "network_interface_name": env.resource_config.get("network_interface_name", "eth0"),
        "num_cpus": env.num_cpus,
        "num_gpus": env.num_gpus,
        "num_neurons": env.num_neurons,
        "output_data_dir": str(paths.output_data_dir),
        "output_dir": str(paths.output_dir),
        "output_intermediate_dir": str(paths.output_intermediate_dir),
        "resource_config": dict(env.resource_config),
        "topology": env.resource_config.get("topology", []),
        "user_entry_point": _user_entry_point(env),
    }


def to_env_vars(env: TrainingEnv) -> dict[str, str]:
    """Every ``SM_*`` variable of the toolkit's ``Environment.to_env_vars()`` (PYTHONPATH aside)."""
    doc = training_env(env)
    values: dict[str, Any] = {
        "hosts": doc["hosts"],
        "network_interface_name": doc["network_interface_name"],
        "hps": doc["hyperparameters"],
        "user_entry_point": doc["user_entry_point"],
        "framework_params": doc["additional_framework_parameters"],
        "resource_config": doc["resource_config"],
        "input_data_config": doc["input_data_config"],
        "output_data_dir": doc["output_data_dir"],
        "channels": sorted(doc["channel_input_dirs"]),
        "current_host": doc["current_host"],
        "current_instance_type": doc["current_instance_type"],
        "current_instance_group": doc["current_instance_group"],
        "current_instance_group_hosts": doc["current_instance_group_hosts"],
        "instance_groups": doc["instance_groups"],
        "instance_groups_dict": doc["instance_groups_dict"],
        "distribution_instance_groups": doc["distribution_instance_groups"],
        "is_hetero": doc["is_hetero"],
        "module_name": doc["module_name"],
        "log_level": doc["log_level"],
        "framework_module": doc["framework_module"],
        "input_dir": doc["input_dir"],
        "input_config_dir": doc["input_config_dir"],
        "output_dir": doc["output_dir"],
        "num_cpus": doc["num_cpus"],
        "num_gpus": doc["num_gpus"],
        "num_neurons": doc["num_neurons"],
        "model_dir": doc["model_dir"],
        "module_dir": doc["module_dir"],
        "training_env": doc,
        "user_args": to_cmd_args(env.hyperparameters),
        "output_intermediate_dir": doc["output_intermediate_dir"],
    }
    if doc["topology"]:
        values["topology"] = doc["topology"]
    for name, path in doc["channel_input_dirs"].items():
        values[f"channel_{name}"] = path
    for key, value in env.hyperparameters.items():
        values[f"hp_{key}"] = value
    return mapping_to_env_vars(values)

