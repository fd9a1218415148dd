"""``SM_*`` environment variables and entry-point arguments, exactly as sagemaker-training makes them.

Rules (contract.md §2.4-2.5, checked against the toolkit by ``tests/unit/test_mapping_oracle.py``):

* name: ``"SM_" + key.upper()`` (dashes and other characters kept: ``learning-rate`` →
  ``SM_HP_LEARNING-RATE``); when two keys upper-case to the same name the later one wins;
* value: ``str`` as is, ``None`` → ``""``, anything else compact JSON with sorted keys and ASCII escapes
  (``True`` → ``true``, ``[1, 2]`` → ``[1,2]``);
* arguments: keys sorted, ``--key`` (``-k`` for a one-character key), value ``str(v)`` (``True``,
  ``[1, 2]``), a dict as ``k=v,k2=v2`` sorted by key, ``None`` → ``""``.

``SM_TRAINING_ENV`` carries the toolkit's ``Environment`` properties under the same names, so code that
reads it keeps working. As in the toolkit, the environment renders itself
(:meth:`smbyoc.training.env.TrainingEnv.to_dict`) and this module only takes plain values: it imports
nothing of :mod:`smbyoc.training.env`.

Deliberate differences from the toolkit, all outside what SageMaker produces:

* ``hosts`` is sorted (the platform always writes it sorted; the toolkit copies the file's order);
* ``current_instance_type``, ``current_instance_group`` and ``network_interface_name`` are the typed
  values of :mod:`smbyoc.opt_ml.resource_config_file`, so an empty or ``null`` value in the file reads
  as its default (the toolkit passes ``""`` / ``null`` on);
* ``num_cpus`` honours cgroup quotas (see :mod:`smbyoc.training.resources`);
* an empty ``TRAINING_JOB_NAME`` / ``SAGEMAKER_PROGRAM`` / ``SM_HP_MP_PARAMETERS`` counts as unset;
* ``PYTHONPATH`` is not part of this mapping: whoever starts the user's process decides it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from smbyoc.opt_ml.resource_config_file import InstanceGroup

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


def distribution_instance_groups(framework_params: Mapping[str, Any], current_group: str) -> Any:
    """``sagemaker_distribution_instance_groups``, else the current group when a distribution is on."""
    if "sagemaker_distribution_instance_groups" in framework_params:
        return framework_params["sagemaker_distribution_instance_groups"]
    if any(framework_params.get(switch, False) for switch in DISTRIBUTION_SWITCHES):
        return [current_group]
    return []


def distribution_hosts(groups: Sequence[InstanceGroup], hosts: Sequence[str], wanted: object) -> list[str]:
    """The hosts of the ``wanted`` instance groups; every host of a job without instance groups."""
    if not groups:
        return list(hosts)
    result: list[str] = []
    for group in groups:
        if _contains(wanted, group.name):
            result.extend(group.hosts)
    return result


def master_hostname(distribution_hosts: Sequence[str], hosts: Sequence[str]) -> str:
    """The toolkit's master: first distribution host, else first host."""
    return distribution_hosts[0] if distribution_hosts else hosts[0]


def current_instance_group_hosts(groups: Sequence[InstanceGroup], current_group: str) -> list[str]:
    for group in groups:
        if group.name == current_group:
            return list(group.hosts)
    return []


def to_env_vars(training_env: Mapping[str, Any]) -> dict[str, str]:
    """Every ``SM_*`` variable of the toolkit's ``Environment.to_env_vars()`` (PYTHONPATH aside).

    ``training_env`` is the ``SM_TRAINING_ENV`` document (:meth:`TrainingEnv.to_dict`).
    """
    doc = training_env
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
        "user_args": to_cmd_args(doc["hyperparameters"]),
        "output_intermediate_dir": doc["output_intermediate_dir"],
    }
    if doc["topology"]:
        values["topology"] = doc["topology"]
    for name, path in doc["channel_input_dirs"].items():
        values[f"channel_{name}"] = path
    for key, value in doc["hyperparameters"].items():
        values[f"hp_{key}"] = value
    return mapping_to_env_vars(values)
