"""Our SM_* variables and arguments against sagemaker-training's on the same /opt/ml tree.

The toolkit reads SAGEMAKER_BASE_DIR into module globals at import time, runs nvidia-smi / neuron-ls /
``which``, and asks boto3 for a region. The in-process comparisons patch those globals and probes
(``toolkit_run``); one test runs the unpatched toolkit in a fresh subprocess to show the patching
hides nothing. Device counts are made equal by giving both sides the same numbers.

Deliberate differences (none shows up in these comparisons, see smbyoc.training.mapping): hosts are
sorted (the files here are sorted, as SageMaker writes them), num_cpus honours cgroup quotas (both sides
get the same number), PYTHONPATH is not part of the mapping (the toolkit adds it in write_env_vars).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smbyoc.training import TrainingEnv

pytestmark = pytest.mark.oracle

CONTRACT_HPS = {
    "epochs": "10", "learning-rate": "0.001", "flag": "true", "name": '"abc"', "raw": "abc",
    "lst": "[1, 2]", "d": '{"a": 1}', "x": "1", "sagemaker_program": '"train.py"',
    "sagemaker_mpi_enabled": "true",
}
SINGLE_HOST = {"current_host": "algo-1", "hosts": ["algo-1"]}
ENV_VARS_READ = (
    "SAGEMAKER_PROGRAM", "TRAINING_JOB_NAME", "SAGEMAKER_TRAINING_MODULE", "SM_HP_MP_PARAMETERS",
    "CURRENT_HOST", "SAGEMAKER_SUBMIT_DIRECTORY", "SAGEMAKER_CONTAINER_LOG_LEVEL", "SAGEMAKER_JOB_NAME",
    "SAGEMAKER_REGION",
)
DEVICES = {"num_cpus": 7, "num_gpus": 2, "num_neurons": 0}


def write_tree(base: Path, hps: Mapping[str, Any], rc: Mapping[str, Any] | None = None,
               idc: Mapping[str, Any] | None = None, ensure_ascii: bool = True) -> None:
    config = base / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    (base / "code").mkdir(exist_ok=True)
    files = {"hyperparameters.json": hps, "resourceconfig.json": rc or SINGLE_HOST,
             "inputdataconfig.json": idc or {}}
    for name, content in files.items():
        (config / name).write_text(json.dumps(content, ensure_ascii=ensure_ascii), encoding="utf-8")


@pytest.fixture(scope="module")
def toolkit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    # Import with SAGEMAKER_BASE_DIR set so the import creates nothing outside a temporary directory.
    base = tmp_path_factory.mktemp("toolkit-import")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAGEMAKER_BASE_DIR", str(base))
        yield importlib.import_module("sagemaker_training.environment")


class _NoRegionSession:
    region_name = None


def toolkit_run(tk: ModuleType, base: Path, environ: Mapping[str, str],
                devices: Mapping[str, int] = DEVICES) -> tuple[dict[str, str], list[str]]:
    """sagemaker_training's Environment().to_env_vars() / to_cmd_args() for the tree at ``base``."""
    b = str(base)
    globals_ = {
        "base_dir": b, "code_dir": os.path.join(b, "code"), "model_dir": os.path.join(b, "model"),
        "input_dir": os.path.join(b, "input"), "_input_data_dir": os.path.join(b, "input", "data"),
        "input_config_dir": os.path.join(b, "input", "config"), "output_dir": os.path.join(b, "output"),
        "output_data_dir": os.path.join(b, "output", "data"),
        "output_intermediate_dir": os.path.join(b, "output", "intermediate"),
        "hyperparameters_file_dir": os.path.join(b, "input", "config", "hyperparameters.json"),
        "input_data_config_file_dir": os.path.join(b, "input", "config", "inputdataconfig.json"),
        "resource_config_file_dir": os.path.join(b, "input", "config", "resourceconfig.json"),
    }
    with pytest.MonkeyPatch.context() as mp:
        for name, value in globals_.items():
            assert hasattr(tk, name), name
            mp.setattr(tk, name, value)
        mp.setattr(tk, "num_cpus", lambda: devices["num_cpus"])
        mp.setattr(tk, "num_gpus", lambda: devices["num_gpus"])
        mp.setattr(tk, "num_neurons", lambda instance_type: devices["num_neurons"])
        mp.setattr(tk, "validate_smddprun", lambda: False)
        mp.setattr(tk, "validate_smddpmprun", lambda: False)
        mp.setattr(tk.boto3.session, "Session", _NoRegionSession)
        for name in ENV_VARS_READ:
            mp.delenv(name, raising=False)
        for name, value in environ.items():
            mp.setenv(name, value)
        env = tk.Environment()
        return env.to_env_vars(), env.to_cmd_args()


def ours(base: Path, environ: Mapping[str, str], devices: Mapping[str, int] = DEVICES) -> TrainingEnv:
    env = TrainingEnv.from_env(dict(environ), base, detect_devices=False)
    return dataclasses.replace(env, **devices)


def assert_same(tk: ModuleType, base: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    environ = environ or {}
    theirs_vars, theirs_args = toolkit_run(tk, base, environ)
    env = ours(base, environ)
    our_vars = env.to_env_vars()
    theirs_vars.pop("PYTHONPATH", None)  # never part of to_env_vars, excluded on principle
    # Compare SM_TRAINING_ENV key by key first: a clearer failure than one long string.
    assert json.loads(our_vars["SM_TRAINING_ENV"]) == json.loads(theirs_vars["SM_TRAINING_ENV"])
    assert our_vars == theirs_vars
    assert list(our_vars) == list(theirs_vars)  # same order, so collisions resolve the same way
    assert env.to_cmd_args() == theirs_args
    assert json.loads(our_vars["SM_USER_ARGS"]) == theirs_args
    return our_vars


# ------------------------------------------------------------------------------ the contract vector


def test_contract_vector_matches_contract_and_toolkit(toolkit: ModuleType, tmp_path: Path) -> None:
    write_tree(tmp_path, CONTRACT_HPS)
    env_vars = assert_same(toolkit, tmp_path)
    # contract.md §2.4 / §2.5, written out literally.
    assert env_vars["SM_HPS"] == (
        '{"d":{"a":1},"epochs":10,"flag":true,"learning-rate":0.001,"lst":[1,2],"name":"abc","raw":"abc","x":1}'
    )
    expected_hp = {"EPOCHS": "10", "LEARNING-RATE": "0.001", "FLAG": "true", "NAME": "abc", "RAW": "abc",
                   "LST": "[1,2]", "D": '{"a":1}', "X": "1"}
    assert {k[len("SM_HP_"):]: v for k, v in env_vars.items() if k.startswith("SM_HP_")} == expected_hp
    assert ours(tmp_path, {}).to_cmd_args() == [
        "-d", "a=1", "--epochs", "10", "--flag", "True", "--learning-rate", "0.001", "--lst", "[1, 2]",
        "--name", "abc", "--raw", "abc", "-x", "1",
    ]
    assert env_vars["SM_FRAMEWORK_PARAMS"] == '{"sagemaker_mpi_enabled":true}'
    assert env_vars["SM_USER_ENTRY_POINT"] == "train.py"
    assert env_vars["SM_MODULE_NAME"] == "train"


def test_unpatched_toolkit_in_a_subprocess_agrees(tmp_path: Path) -> None:
    """The real toolkit, imported fresh with SAGEMAKER_BASE_DIR set and nothing patched."""
    write_tree(tmp_path, CONTRACT_HPS, idc={"train": {"TrainingInputMode": "File"}})
    script = (
        "import json, sys\n"
        "from sagemaker_training import environment\n"
        "env = environment.Environment()\n"
        "json.dump({'vars': env.to_env_vars(), 'args': env.to_cmd_args(), 'cpus': env.num_cpus,"
        " 'gpus': env.num_gpus, 'neurons': env.num_neurons, 'smddp': env.is_smddprun_installed,"
        " 'smddpm': env.is_smddpmprun_installed}, sys.stdout)\n"
    )
    child_env = {k: v for k, v in os.environ.items() if k not in ENV_VARS_READ}
    child_env.update(SAGEMAKER_BASE_DIR=str(tmp_path), TRAINING_JOB_NAME="job-1", AWS_DEFAULT_REGION="us-west-2")
    out = subprocess.run([sys.executable, "-c", script], env=child_env, capture_output=True, text=True,
                         timeout=120, check=True)
    theirs = json.loads(out.stdout)
    env = dataclasses.replace(
        TrainingEnv.from_env(child_env, tmp_path),
        num_cpus=theirs["cpus"],  # the toolkit ignores cgroup quotas (see resources.py)
        smddprun_installed=theirs["smddp"], smddpmprun_installed=theirs["smddpm"],
    )
    assert (env.num_gpus, env.num_neurons) == (theirs["gpus"], theirs["neurons"])
    assert env.to_env_vars() == theirs["vars"]
    assert env.to_cmd_args() == theirs["args"]


# --------------------------------------------------------------------------------- hand-written jobs

HAND_WRITTEN: dict[str, dict[str, Any]] = {
    "multi-host": dict(
        hps={"epochs": '"5"', "batch-size": "64", "sagemaker_program": '"train.py"',
             "sagemaker_container_log_level": "10", "sagemaker_job_name": '"j"', "sagemaker_region": '"eu-west-1"',
             "sagemaker_submit_directory": '"s3://b/k/sourcedir.tar.gz"'},
        rc={"current_host": "algo-2", "hosts": ["algo-1", "algo-2", "algo-3"], "network_interface_name": "eth1",
            "current_instance_type": "ml.p3.16xlarge"},
        environ={"TRAINING_JOB_NAME": "multi", "SAGEMAKER_TRAINING_MODULE": "pkg.mod:main"},
    ),
    "instance-groups": dict(
        hps={"sagemaker_mpi_enabled": "true", "sagemaker_distribution_instance_groups": '["train1"]',
             "sagemaker_program": '"run.sh"', "lr": "0.1"},
        rc={"current_host": "algo-3", "hosts": ["algo-1", "algo-2", "algo-3"], "current_group_name": "train2",
            "current_instance_type": "ml.c5.xlarge", "network_interface_name": "eth0",
            "instance_groups": [
                {"instance_group_name": "train1", "instance_type": "ml.p3.16xlarge", "hosts": ["algo-2", "algo-1"]},
                {"instance_group_name": "train2", "instance_type": "ml.c5.xlarge", "hosts": ["algo-3"]}],
            "topology": [{"hostName": "algo-1", "capacityUnitId": "cu-1"}]},
    ),
    "homogeneous-group-with-ddp": dict(
        hps={"sagemaker_distributed_dataparallel_enabled": "true", "sagemaker_program": '"t.py"'},
        rc={"current_host": "algo-1", "hosts": ["algo-1", "algo-2"], "current_group_name": "homogeneousCluster",
            "instance_groups": [{"instance_group_name": "homogeneousCluster", "instance_type": "ml.g5.xlarge",
                                 "hosts": ["algo-1", "algo-2"]}]},
    ),
    "channels-all-fields": dict(
        hps={"a": "1"},
        idc={"train": {"ContentType": "text/csv", "TrainingInputMode": "Pipe", "S3DistributionType": "ShardedByS3Key",
                       "RecordWrapperType": "RecordIO", "CompressionType": "Gzip"},
             "val.x-1_y": {"TrainingInputMode": "FastFile", "S3DistributionType": "FullyReplicated",
                           "RecordWrapperType": "None"},
             "Test": {"TrainingInputMode": "File"}},
        environ={"SAGEMAKER_PROGRAM": "entry.py", "SM_HP_MP_PARAMETERS": "{}"},
    ),
    "awkward-values": dict(
        hps={"learning-rate": "1e-05", "k": "v", "b": "True", "n": "null", "e": "", "u": '"h\\u00e9llo \\u2603"',
             "clé": "værdi ☃", "nested": '{"z": [1, {"y": null}], "a": {"b": true}}', "l": '["a", 1, 2.5, null]',
             "py": "{'a': 1}", "big": "12345678901234567890", "neg": "-0", "f": "1.0", "inf": "1e999",
             "space": " 42 ", "MiXeD": "x", "mixed": "y", "dot.key": "1", "sagemaker_foo": '"bar"',
             "_tuning_objective_metric": '"loss"', "default_user_module_name": '"m"'},
        environ={"SM_HP_MP_PARAMETERS": '{"partitions": 2}', "SAGEMAKER_PROGRAM": "prog"},
    ),
    "no-program": dict(hps={"only": '"x"'}),
    "log-level-name": dict(hps={"sagemaker_container_log_level": '"DEBUG"', "sagemaker_program": "5"}),
}


@pytest.mark.parametrize("name", sorted(HAND_WRITTEN))
def test_hand_written_jobs_match_toolkit(toolkit: ModuleType, tmp_path: Path, name: str) -> None:
    case = HAND_WRITTEN[name]
    write_tree(tmp_path, case["hps"], case.get("rc"), case.get("idc"), ensure_ascii=False)
    env_vars = assert_same(toolkit, tmp_path, case.get("environ"))
    assert env_vars["SM_NUM_GPUS"] == "2"  # the device numbers really were passed to both sides
    if name == "no-program":
        assert env_vars["SM_MODULE_NAME"] == "None"  # the toolkit's str(None), kept for compatibility
    if name == "instance-groups":
        assert "SM_TOPOLOGY" in env_vars and env_vars["SM_IS_HETERO"] == "true"


# ------------------------------------------------------------------------------ generated hyperparameters

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
wire_values = st.one_of(
    json_values.map(json.dumps),          # the SDK's framework estimators
    json_values.map(str),                 # the generic Estimator's str(v)
    st.text(max_size=40),                 # anything a user types
).filter(lambda v: len(v) <= 2500)
user_keys = st.one_of(
    st.text(min_size=1, max_size=20),
    st.text(alphabet="abcXYZ-_.", min_size=1, max_size=3),
    st.text(min_size=200, max_size=256),
)
# The toolkit puts job name and region into os.environ, so it crashes unless they decode to strings
# that can be environment values (no NUL, no lone surrogates).
env_safe_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=30)
string_values = env_safe_text.map(json.dumps)
sagemaker_entries = st.fixed_dictionaries({}, optional={
    "sagemaker_mpi_enabled": wire_values, "sagemaker_submit_directory": wire_values,
    "sagemaker_s3_output": wire_values, "sagemaker_custom": wire_values,
    "_tuning_objective_metric": wire_values, "sagemaker_job_name": string_values,
    "sagemaker_region": string_values,
})


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(user=st.dictionaries(user_keys, wire_values, max_size=12), sm=sagemaker_entries,
       program=st.sampled_from(['"train.py"', "train.py", '"pkg/run.sh"']))
def test_generated_hyperparameters_match_toolkit(toolkit: ModuleType, user: dict[str, str],
                                                  sm: dict[str, str], program: str) -> None:
    hps = {**user, **sm, "sagemaker_program": program}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        write_tree(base, hps)
        assert_same(toolkit, base)
