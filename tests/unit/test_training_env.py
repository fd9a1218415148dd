"""TrainingEnv.from_env: reading the three config files, the platform's variables, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from smbyoc.errors import ConfigError
from smbyoc.training import Channel, InstanceGroup, TrainingEnv


def write(base: Path, name: str, content: Any) -> Path:
    path = base / "input" / "config" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.fixture
def job(tmp_path: Path) -> Path:
    write(tmp_path, "hyperparameters.json", {
        "epochs": "10", "optimizer": '"adam"', "raw": "adam", "sagemaker_program": '"train.py"',
        "sagemaker_submit_directory": '"s3://bucket/src/sourcedir.tar.gz"', "sagemaker_container_log_level": "10",
        "sagemaker_mpi_enabled": "true", "_tuning_objective_metric": '"loss"',
    })
    write(tmp_path, "resourceconfig.json", {
        "current_host": "algo-2", "hosts": ["algo-2", "algo-1", "algo-10"], "network_interface_name": "eth1",
        "current_instance_type": "ml.p3.2xlarge", "current_group_name": "g1",
        "instance_groups": [{"instance_group_name": "g1", "instance_type": "ml.p3.2xlarge",
                             "hosts": ["algo-1", "algo-2", "algo-10"]}],
    })
    write(tmp_path, "inputdataconfig.json", {
        "train": {"ContentType": "text/csv", "TrainingInputMode": "File", "S3DistributionType": "ShardedByS3Key",
                  "RecordWrapperType": "None"},
        "stream": {"TrainingInputMode": "Pipe", "S3DistributionType": "FullyReplicated",
                   "RecordWrapperType": "RecordIO", "CompressionType": "Gzip"},
    })
    return tmp_path


ENVIRON = {"TRAINING_JOB_NAME": "job-1", "TRAINING_JOB_ARN": "arn:aws:sagemaker:us-west-2:1:training-job/job-1",
           "SAGEMAKER_TRAINING_MODULE": "pkg.train:main"}


def test_full_job(job: Path) -> None:
    env = TrainingEnv.from_env(ENVIRON, job, detect_devices=False)
    assert env.paths.base_dir == job
    assert (env.job_name, env.job_arn) == ("job-1", ENVIRON["TRAINING_JOB_ARN"])
    assert env.hosts == ("algo-1", "algo-10", "algo-2")  # sorted as strings
    assert env.current_host == "algo-2" and not env.is_master and env.master_host == "algo-1"
    assert env.current_instance_type == "ml.p3.2xlarge" and env.current_group_name == "g1"
    assert env.instance_groups == (InstanceGroup("g1", "ml.p3.2xlarge", ("algo-1", "algo-2", "algo-10")),)
    assert env.network_interface_name == "eth1"
    assert env.hyperparameters == {"epochs": 10, "optimizer": "adam", "raw": "adam"}
    assert env.hyperparameters_raw["optimizer"] == '"adam"'
    assert env.additional_framework_parameters == {"sagemaker_mpi_enabled": True}
    assert env.user_entry_point == "train.py" and env.module_name == "train"
    assert env.module_dir == "s3://bucket/src/sourcedir.tar.gz"
    assert env.log_level == 10
    assert env.framework_module == "pkg.train:main"
    assert (env.num_gpus, env.num_neurons) == (0, 0) and env.num_cpus >= 1

    train, stream = env.channels["train"], env.channels["stream"]
    assert train == Channel("train", "File", "text/csv", "ShardedByS3Key", "None", None,
                            job / "input" / "data" / "train", train.config)
    assert (stream.input_mode, stream.record_wrapper_type, stream.compression_type) == ("Pipe", "RecordIO", "Gzip")
    assert stream.content_type is None
    assert stream.pipe_path(3) == job / "input" / "data" / "stream_3"
    assert env.channel_dir("train") == job / "input" / "data" / "train"


def test_program_env_var_wins_over_hyperparameter(job: Path) -> None:
    env = TrainingEnv.from_env({"SAGEMAKER_PROGRAM": "other.sh"}, job, detect_devices=False)
    assert (env.user_entry_point, env.module_name) == ("other.sh", "other.sh")


def test_defaults_when_files_are_absent(tmp_path: Path) -> None:
    env = TrainingEnv.from_env({}, tmp_path, detect_devices=False)
    assert env.hosts == ("algo-1",) and env.current_host == "algo-1" and env.is_master
    assert env.resource_config == {"current_host": "algo-1", "hosts": ["algo-1"]}
    assert env.channels == {} and env.hyperparameters == {} and env.hyperparameters_raw == {}
    assert env.user_entry_point is None and env.module_name is None
    assert env.module_dir == str(tmp_path / "code")
    assert (env.log_level, env.framework_module, env.job_name) == (20, None, "")
    assert (env.current_instance_type, env.current_group_name, env.network_interface_name) == (
        "local", "homogeneousCluster", "eth0")
    assert env.instance_groups == ()


def test_from_env_reads_os_environ(job: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(job))
    monkeypatch.setenv("TRAINING_JOB_NAME", "from-os")
    env = TrainingEnv.from_env(detect_devices=False)
    assert env.paths.base_dir == job and env.job_name == "from-os"


def test_to_dict_is_json_and_env_vars_are_strings(job: Path) -> None:
    env = TrainingEnv.from_env(ENVIRON, job, detect_devices=False)
    summary = json.loads(json.dumps(env.to_dict()))
    assert summary["hosts"] == ["algo-1", "algo-10", "algo-2"]
    assert summary["hyperparameters"]["optimizer"] == "adam"
    env_vars = env.to_env_vars()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items())
    assert env_vars["SM_CHANNEL_STREAM"] == str(job / "input" / "data" / "stream")
    assert env_vars["SM_CHANNELS"] == '["stream","train"]'
    assert env_vars["SM_HP_OPTIMIZER"] == "adam"
    assert json.loads(env_vars["SM_TRAINING_ENV"]) == summary
    assert env.to_cmd_args() == ["--epochs", "10", "--optimizer", "adam", "--raw", "adam"]
    assert "SM_TOPOLOGY" not in env_vars


def test_unknown_channel_names_the_channel(job: Path) -> None:
    env = TrainingEnv.from_env({}, job, detect_devices=False)
    with pytest.raises(ConfigError, match=r"'test'.*channels: stream, train"):
        env.channel_dir("test")


# ----------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("name", ["hyperparameters.json", "resourceconfig.json", "inputdataconfig.json"])
def test_malformed_file_names_the_file(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, name, '{"not json"')
    with pytest.raises(ConfigError, match="is not valid JSON") as info:
        TrainingEnv.from_env({}, tmp_path, detect_devices=False)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("name", ["hyperparameters.json", "resourceconfig.json", "inputdataconfig.json"])
def test_a_file_nested_too_deeply_names_the_file(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, name, "[" * 100_000 + "]" * 100_000)  # (json's RecursionError, not a bug of smbyoc)
    with pytest.raises(ConfigError, match="is not usable JSON: it nests deeper than the parser goes") as info:
        TrainingEnv.from_env({}, tmp_path, detect_devices=False)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("name", ["hyperparameters.json", "resourceconfig.json", "inputdataconfig.json"])
def test_file_that_is_not_an_object(tmp_path: Path, name: str) -> None:
    write(tmp_path, name, "[]")
    with pytest.raises(ConfigError, match=name):
        TrainingEnv.from_env({}, tmp_path, detect_devices=False)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"current_host": "algo-1"}, "hosts: must be a non-empty list"),
        ({"current_host": "algo-1", "hosts": []}, "hosts: must be a non-empty list"),
        ({"current_host": "algo-3", "hosts": ["algo-1"]}, "current_host: 'algo-3' is not one of"),
        ({"current_host": "algo-1", "hosts": ["algo-1", "algo-1"]}, "lists a host twice"),
        ({"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": 3}, "network_interface_name"),
        ({"current_host": "algo-1", "hosts": ["algo-1"], "instance_groups": [{"hosts": []}]},
         r"instance_groups\[0\]: instance_group_name"),
    ],
)
def test_bad_resource_config(tmp_path: Path, config: dict[str, Any], match: str) -> None:
    write(tmp_path, "resourceconfig.json", config)
    with pytest.raises(ConfigError, match=match):
        TrainingEnv.from_env({}, tmp_path, detect_devices=False)


@pytest.mark.parametrize(
    ("channels", "match"),
    [
        ({"train": {"TrainingInputMode": "Streaming"}}, "train: TrainingInputMode is \"Streaming\"; expected one of"),
        ({"train": {"S3DistributionType": "Sharded"}}, "train: S3DistributionType"),
        ({"train": {"RecordWrapperType": "TFRecord"}}, "train: RecordWrapperType"),
        ({"train": {"CompressionType": "Bzip2"}}, "train: CompressionType"),
        ({"train": {"ContentType": 5}}, "train: ContentType is 5; expected a string"),
        ({"train": "File"}, "train: expected an object"),
        ({"bad/name": {}}, "channel 'bad/name'"),
    ],
)
def test_bad_input_data_config(tmp_path: Path, channels: dict[str, Any], match: str) -> None:
    path = write(tmp_path, "inputdataconfig.json", channels)
    with pytest.raises(ConfigError, match=match) as info:
        TrainingEnv.from_env({}, tmp_path, detect_devices=False)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("hps", "match"),
    [
        ({"epochs": 10}, r"epochs: value 10 is a JSON number; .*always strings"),
        ({"flag": True}, "flag: value true is a JSON boolean"),
        ({"n": None}, "n: value null is a JSON null"),
        ({"l": [1]}, "l: value \\[1\\] is a JSON array"),
        ({f"k{i}": "1" for i in range(101)}, "101 hyperparameters given; SageMaker allows at most 100"),
        ({"k" * 257: "1"}, "key is 257 characters long"),
        ({"big": "x" * 2501}, "big: value is 2501 characters long; SageMaker allows at most 2500"),
    ],
)
def test_bad_hyperparameters(tmp_path: Path, hps: dict[str, Any], match: str) -> None:
    write(tmp_path, "hyperparameters.json", hps)
    with pytest.raises(ConfigError, match=match):
        TrainingEnv.from_env({}, tmp_path, detect_devices=False)


def test_limits_are_inclusive(tmp_path: Path) -> None:
    hps = {f"k{i}": "1" for i in range(99)}
    hps["k" * 256] = "v" * 2500
    write(tmp_path, "hyperparameters.json", hps)
    env = TrainingEnv.from_env({}, tmp_path, detect_devices=False)
    assert len(env.hyperparameters) == 100


@pytest.mark.parametrize(("value", "level"), [('"DEBUG"', 10), ('"30"', 30), ("40", 40)])
def test_log_level_forms(tmp_path: Path, value: str, level: int) -> None:
    write(tmp_path, "hyperparameters.json", {"sagemaker_container_log_level": value})
    assert TrainingEnv.from_env({}, tmp_path, detect_devices=False).log_level == level


def test_bad_log_level(tmp_path: Path) -> None:
    write(tmp_path, "hyperparameters.json", {"sagemaker_container_log_level": '"loud"'})
    with pytest.raises(ConfigError, match="sagemaker_container_log_level.*not a logging level"):
        TrainingEnv.from_env({}, tmp_path, detect_devices=False)


def test_importing_the_runtime_is_light() -> None:
    code = (
        "import sys, smbyoc.training, smbyoc.hyperparameters\n"
        "heavy = {'boto3', 'botocore', 'flask', 'numpy', 'torch', 'click', 'docker', 'sagemaker_training'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
