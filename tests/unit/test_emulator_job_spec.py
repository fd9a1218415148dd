import json
import re
from pathlib import Path

import pytest

from smbyoc.emulator.instance_types import lookup
from smbyoc.emulator.job_spec import (
    ChannelSpec,
    TrainingJobSpec,
    build_hyperparameters,
    default_job_name,
    load_hyperparameters_argument,
    to_wire_value,
)
from smbyoc.errors import ConfigError


def spec(**kw):
    base = dict(job_name="job-1", hyperparameters={})
    base.update(kw)
    return TrainingJobSpec(**base)


def test_hosts_sorted_as_strings_like_sagemaker():
    hosts = spec(instance_count=11).hosts
    assert hosts[:4] == ("algo-1", "algo-10", "algo-11", "algo-2")
    assert len(hosts) == 11


def test_resource_config_shape():
    rc = spec(instance_count=2, instance_type="ml.m5.large").resource_config("algo-2")
    assert rc["current_host"] == "algo-2"
    assert rc["hosts"] == ["algo-1", "algo-2"]
    assert rc["current_instance_type"] == "ml.m5.large"
    assert rc["network_interface_name"] == "eth0"
    assert rc["instance_groups"] == [
        {"instance_group_name": "homogeneousCluster", "instance_type": "ml.m5.large", "hosts": ["algo-1", "algo-2"]}
    ]


def test_input_data_config_uses_file_key_names(tmp_path):
    ch = ChannelSpec("train", tmp_path, content_type="text/csv")
    assert ch.to_input_data_config() == {
        "ContentType": "text/csv",
        "TrainingInputMode": "File",
        "S3DistributionType": "FullyReplicated",
        "RecordWrapperType": "None",
    }
    assert "ContentType" not in ChannelSpec("v", tmp_path).to_input_data_config()


def test_job_arn():
    assert spec(job_name="My-Job").job_arn == "arn:aws:sagemaker:us-east-1:000000000000:training-job/my-job"


@pytest.mark.parametrize(
    ("value", "plain", "encoded"),
    [
        ("adam", "adam", '"adam"'),
        (10, "10", "10"),
        (0.5, "0.5", "0.5"),
        (True, "True", "true"),
        ([1, 2], "[1, 2]", "[1, 2]"),
        ({"a": 1}, '{"a": 1}', '{"a": 1}'),
        (None, "None", "null"),
    ],
)
def test_wire_values_follow_the_sdk(value, plain, encoded):
    assert to_wire_value(value, json_encode=False) == plain
    assert to_wire_value(value, json_encode=True) == encoded


def test_cli_pairs_are_typed_when_json_encoding():
    hps = build_hyperparameters({"lr": 0.1}, [("epochs", "10"), ("opt", "adam")], json_encode=True)
    assert hps == {"lr": "0.1", "epochs": "10", "opt": '"adam"'}
    hps = build_hyperparameters({"lr": 0.1}, [("epochs", "10"), ("opt", "adam")], json_encode=False)
    assert hps == {"lr": "0.1", "epochs": "10", "opt": "adam"}


def test_hyperparameters_argument_json_and_file(tmp_path):
    assert load_hyperparameters_argument('{"a": 1}') == {"a": 1}
    f = tmp_path / "hp.json"
    f.write_text(json.dumps({"b": "x"}))
    assert load_hyperparameters_argument(f"@{f}") == {"b": "x"}
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_hyperparameters_argument("{nope")
    with pytest.raises(ConfigError, match="JSON object"):
        load_hyperparameters_argument("[1]")
    with pytest.raises(ConfigError, match="missing.json: cannot read"):
        load_hyperparameters_argument(f"@{tmp_path}/missing.json")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"job_name": "bad name"}, "job name 'bad name'"),
        ({"job_name": "x" * 64}, "job name"),
        ({"instance_count": 0}, "instance count 0: must be at least 1"),
        ({"instance_type": "ml.m5.huge"}, "unknown instance type"),
        ({"instance_type": "m5.large"}, "expected an ML instance type"),
        ({"hyperparameters": {"k": "v" * 2501}}, "hyperparameter 'k'"),
        ({"hyperparameters": {"k" * 257: "v"}}, "keys are 1-256 characters"),
        ({"hyperparameters": {str(i): "v" for i in range(101)}}, "at most 100"),
        ({"hyperparameters": {"k": 1}}, "values must be strings"),
        ({"environment": {"1BAD": "x"}}, "environment variable '1BAD'"),
        ({"environment": {"OK": "x" * 513}}, "at most 512"),
    ],
)
def test_validation_names_the_culprit(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        spec(**kwargs).validate()


def test_channel_validation(tmp_path):
    with pytest.raises(ConfigError, match="channel 'train' path .*no such file"):
        spec(channels=(ChannelSpec("train", tmp_path / "missing"),)).validate()
    with pytest.raises(ConfigError, match="channel 'a b'"):
        spec(channels=(ChannelSpec("a b", tmp_path),)).validate()
    for name in (".", ".."):  # SageMaker's pattern takes them; input/data/.. is input/
        with pytest.raises(ConfigError, match=f"channel '{re.escape(name)}': '.' and '..' name no folder"):
            spec(channels=(ChannelSpec(name, tmp_path),)).validate()
    spec(channels=(ChannelSpec("...", tmp_path),)).validate()  # a name like any other
    with pytest.raises(ConfigError, match="given twice"):
        spec(channels=(ChannelSpec("t", tmp_path), ChannelSpec("t", tmp_path))).validate()
    with pytest.raises(ConfigError, match="input mode 'Stream'"):
        spec(channels=(ChannelSpec("t", tmp_path, input_mode="Stream"),)).validate()


def test_default_job_name_is_valid():
    name = default_job_name("my_prog.py " * 10)
    assert len(name) <= 63
    spec(job_name=name).validate()


def test_instance_types():
    m5 = lookup("ml.m5.large")
    assert (m5.vcpus, m5.memory_gib, m5.gpus) == (2, 8, 0)
    assert lookup("ml.g5.12xlarge").gpus == 4
    assert lookup("ml.trn1.32xlarge").neuron_devices == 16
    assert lookup("local").is_local
    assert lookup("ml.m6g.large").arch == "arm64"
    with pytest.raises(ConfigError, match="known m5 sizes"):
        lookup("ml.m5.3xlarge")


def test_path_type(tmp_path: Path):
    assert ChannelSpec("x", tmp_path).source == tmp_path
