"""CreateTrainingJob for a local training job (smbyoc.api_requests.training_job, docs/sagemaker-requests.md).

Every request built here is checked with botocore's own validator, unmodified (``validate_parameters`` against
the installed sagemaker service model): the same dict is what SageMaker gets. The hyperparameters are compared with
what the emulator writes to hyperparameters.json for the same job. Each bad input is one ConfigError line naming
the option or the field path.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pytest

from helpers import cli_runner, with_request_options
from smbyoc.api_requests.training_job import training_job_request, training_spec_for_request
from smbyoc.api_requests.validate import check_request, request_problems
from smbyoc.cli import library_errors
from smbyoc.cli.request_options import maybe_print_or_submit_training, request_options
from smbyoc.emulator.job_spec import SDK_SUBMIT_DIR_KEY
from smbyoc.emulator.local_training import ChannelSetting, LocalTrainingJob, training_spec
from smbyoc.errors import ConfigError

botocore_validate = pytest.importorskip("botocore.validate")
botocore_session = pytest.importorskip("botocore.session")

ROLE = "arn:aws:iam::123456789012:role/SageMakerExecutionRole"
IMAGE = "123456789012.dkr.ecr.us-west-2.amazonaws.com/my-algo:1.0"
SOURCE = "s3://bucket/code/sourcedir.tar.gz"


def botocore_check(operation: str, request: dict[str, Any]) -> None:
    """botocore's ParamValidator on the request as built (raises ParamValidationError)."""
    model = botocore_session.get_session().get_service_model("sagemaker")
    botocore_validate.validate_parameters(request, model.operation_model(operation).input_shape)


def job(**changes: Any) -> LocalTrainingJob:
    base: dict[str, Any] = {
        "image": IMAGE, "entry_point": "train.py", "job_name": "churn-xgb-1", "instance_type": "ml.m5.xlarge",
        "channels": (("train", Path("s3://bucket/data/train")), ("validation", Path("s3://bucket/data/validation"))),
        "content_types": {"train": "text/csv", "validation": "text/csv"},
        "hyperparameters": {"epochs": 10, "optimizer": "adam", "layers": [64, 32], "verbose": True},
    }
    base.update(changes)
    return LocalTrainingJob(**base)


def request_for(local: LocalTrainingJob, **options: Any) -> dict[str, Any]:
    uris = {name: str(path).replace("s3:/", "s3://", 1) for name, path in local.channels}
    spec = training_spec_for_request(local, source_dir=options.pop("source_dir", SOURCE))
    base: dict[str, Any] = {"role_arn": ROLE, "image_uri": IMAGE, "output_path": "s3://bucket/output",
                            "channel_uris": uris}
    base.update(options)
    return training_job_request(spec, **base)


def test_a_full_training_job_maps_every_field_and_passes_botocore() -> None:
    local = job(
        channel_settings=(ChannelSetting("input_mode", "Pipe"), ChannelSetting("input_mode", "File", "validation"),
                          ChannelSetting("compression", "Gzip", "train"),
                          ChannelSetting("record_wrapper", "RecordIO", "train"),
                          ChannelSetting("distribution", "ShardedByS3Key", "train"),
                          ChannelSetting("data_type", "ManifestFile", "validation")),
        environment={"LOG_LEVEL": "debug"}, max_runtime_seconds=7200, network_isolation=True,
        json_encode_hyperparameters=True)
    request = request_for(local, metric_definitions=[("validation:rmse", r"rmse=(\S+)")], volume_size_gb=50,
                          container_entrypoint=["python3", "-m", "smbyoc.training.main"],
                          container_arguments=["--verbose"], output_kms_key_id="alias/ml")
    botocore_check("CreateTrainingJob", request)
    assert request["TrainingJobName"] == "churn-xgb-1" and request["RoleArn"] == ROLE
    assert request["AlgorithmSpecification"] == {
        "TrainingImage": IMAGE, "TrainingInputMode": "File",
        "MetricDefinitions": [{"Name": "validation:rmse", "Regex": r"rmse=(\S+)"}],
        "ContainerEntrypoint": ["python3", "-m", "smbyoc.training.main"], "ContainerArguments": ["--verbose"]}
    train, validation = request["InputDataConfig"]
    assert train == {"ChannelName": "train", "InputMode": "Pipe", "ContentType": "text/csv",
                     "CompressionType": "Gzip", "RecordWrapperType": "RecordIO",
                     "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://bucket/data/train",
                                                     "S3DataDistributionType": "ShardedByS3Key"}}}
    assert validation == {"ChannelName": "validation", "ContentType": "text/csv", "CompressionType": "None",
                          "RecordWrapperType": "None",
                          "DataSource": {"S3DataSource": {"S3DataType": "ManifestFile",
                                                          "S3Uri": "s3://bucket/data/validation",
                                                          "S3DataDistributionType": "FullyReplicated"}}}
    assert request["OutputDataConfig"] == {"S3OutputPath": "s3://bucket/output", "CompressionType": "GZIP",
                                           "KmsKeyId": "alias/ml"}
    assert request["ResourceConfig"] == {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50}
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200}
    assert request["EnableNetworkIsolation"] is True and request["EnableManagedSpotTraining"] is False
    assert request["Environment"] == {"LOG_LEVEL": "debug"}
    assert "CheckpointConfig" not in request
    assert request_problems("CreateTrainingJob", request) == []


@pytest.mark.parametrize("json_encode", [False, True])
def test_hyperparameters_are_the_strings_the_emulator_writes(json_encode: bool, tmp_path: Path) -> None:
    """The emulator's own spec (local code, local channels) and the request's agree on every hyperparameter but
    sagemaker_submit_directory, which points at the code's S3 URI instead of /opt/ml/code."""
    (tmp_path / "src").mkdir()
    (tmp_path / "data").mkdir()
    local = job(json_encode_hyperparameters=json_encode)
    emulated, _ = training_spec(job(json_encode_hyperparameters=json_encode, source_dir=tmp_path / "src",
                                    channels=(("train", tmp_path / "data"), ("validation", tmp_path / "data"))))
    request = request_for(local)
    sent = request["HyperParameters"]
    assert all(isinstance(v, str) for v in sent.values())
    assert {k: v for k, v in sent.items() if k != SDK_SUBMIT_DIR_KEY} == \
        {k: v for k, v in emulated.hyperparameters.items() if k != SDK_SUBMIT_DIR_KEY}
    assert sent[SDK_SUBMIT_DIR_KEY] == json.dumps(SOURCE)
    assert emulated.hyperparameters[SDK_SUBMIT_DIR_KEY] == json.dumps("/opt/ml/code")
    assert sent["epochs"] == "10"
    assert sent["optimizer"] == ('"adam"' if json_encode else "adam")
    assert sent["verbose"] == ("true" if json_encode else "True")


def test_spot_with_checkpoints() -> None:
    request = request_for(job(spot_interruption_after=30.0, max_runtime_seconds=3600),
                          checkpoint_uri=Path("s3://bucket/checkpoints/churn"), max_wait_seconds=7200)
    botocore_check("CreateTrainingJob", request)
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert request["CheckpointConfig"] == {"S3Uri": "s3://bucket/checkpoints/churn", "LocalPath": "/opt/ml/checkpoints"}
    explicit = request_for(job(), spot=True, max_wait_seconds=86400)
    assert explicit["EnableManagedSpotTraining"] is True
    assert explicit["StoppingCondition"] == {"MaxRuntimeInSeconds": 86400, "MaxWaitTimeInSeconds": 86400}


def test_multi_instance_job_with_an_image_that_brings_its_code() -> None:
    request = request_for(job(entry_point=None, hyperparameters={}, instance_count=4, instance_type="ml.p3.16xlarge",
                              channels=(("train", Path("s3://bucket/data/train")),), content_types={},
                              channel_settings=(ChannelSetting("input_mode", "FastFile"),
                                                ChannelSetting("distribution", "ShardedByS3Key"))),
                          source_dir=None)
    botocore_check("CreateTrainingJob", request)
    assert request["ResourceConfig"] == {"InstanceType": "ml.p3.16xlarge", "InstanceCount": 4, "VolumeSizeInGB": 30}
    assert request["AlgorithmSpecification"]["TrainingInputMode"] == "FastFile"
    assert "InputMode" not in request["InputDataConfig"][0]
    assert request["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3DataDistributionType"] == "ShardedByS3Key"
    assert "HyperParameters" not in request


def test_the_generated_job_name_is_the_emulators() -> None:
    request = request_for(job(job_name=None))
    assert request["TrainingJobName"].startswith("train-")
    botocore_check("CreateTrainingJob", request)


# --------------------------------------------------------------------------------------------------- bad input


def error_of(call: Callable[[], object]) -> str:
    with pytest.raises(ConfigError) as info:
        call()
    text = str(info.value)
    assert "Traceback" not in text
    return text


@pytest.mark.parametrize(("local", "options", "expected"), [
    (job(channels=(("train", Path("./data")),), content_types={}), {"channel_uris": {"train": "./data"}},
     "--channel train: ./data is a local path; SageMaker needs an s3:// URI"),
    (job(), {"output_path": "smbyoc-output"},
     "--output-path: smbyoc-output is a local path; SageMaker needs an s3:// URI"),
    (job(), {"output_path": None}, "--output-path: required: where SageMaker writes model.tar.gz"),
    (job(), {"checkpoint_uri": Path("ckpt")},
     "--checkpoint-s3-dir: ckpt is a local path; SageMaker needs an s3:// URI"),
    (job(), {"role_arn": None}, "--role-arn: required: the IAM role"),
    (job(), {"image_uri": None}, "--image-uri: required"),
    (job(instance_type="local"), {}, "--instance-type local: has no SageMaker value; give an ml.* instance type"),
    (job(instance_type="ml.m5.huge"), {},
     "CreateTrainingJob: ResourceConfig.InstanceType: 'ml.m5.huge' is not one of the"),
    (job(), {"image_uri": "my-algo:latest"},
     "CreateTrainingJob: AlgorithmSpecification.TrainingImage: 'my-algo:latest' is not an ECR image URI"),
    (job(), {"role_arn": "SageMakerRole"}, "CreateTrainingJob: RoleArn: length 13 is below the minimum 20; "
                                           "'SageMakerRole' does not match the pattern arn:aws"),
    (job(job_name="bad_name"), {}, "CreateTrainingJob: TrainingJobName: 'bad_name' does not match the pattern"),
    (job(hyperparameters={"x": "y" * 2501}), {}, "CreateTrainingJob: HyperParameters.x: 2501 characters; at most 2500"),
    (job(environment={"1BAD": "v"}), {}, "CreateTrainingJob: Environment.1BAD: '1BAD' does not match the pattern"),
    (job(max_runtime_seconds=1.5), {}, "--max-runtime 1.5: SageMaker takes whole seconds"),
    (job(max_runtime_seconds=30 * 86400), {},
     "CreateTrainingJob: StoppingCondition.MaxRuntimeInSeconds: 2592000 is above the maximum 2419200 (28 days)"),
    (job(spot_interruption_after=10.0), {},
     "CreateTrainingJob: StoppingCondition.MaxWaitTimeInSeconds: required with EnableManagedSpotTraining"),
    (job(max_runtime_seconds=3600), {"spot": True, "max_wait_seconds": 600},
     "CreateTrainingJob: StoppingCondition.MaxWaitTimeInSeconds: 600 is below MaxRuntimeInSeconds 3600"),
    (job(), {"max_wait_seconds": 600},
     "CreateTrainingJob: StoppingCondition.MaxWaitTimeInSeconds: only with EnableManagedSpotTraining"),
    (job(channel_settings=(ChannelSetting("compression", "Gzip", "train"),)), {},
     "CreateTrainingJob: InputDataConfig[0].CompressionType: Gzip is used only in Pipe input mode (this channel is "
     "File)"),
    (job(channel_settings=(ChannelSetting("input_mode", "FastFile"), ChannelSetting("data_type", "ManifestFile",
                                                                                   "train"))), {},
     "CreateTrainingJob: InputDataConfig[0].DataSource.S3DataSource.S3DataType: FastFile input mode needs S3Prefix"),
    (job(), {"source_dir": "./src"}, "--source-dir: ./src is a local path; SageMaker needs an s3:// URI"),
    (job(), {"source_dir": None}, "--source-dir: required with -e/--entry-point"),
    (job(image=None, entry_point=None), {}, "--image: the bundled default example runs from local files"),
    (job(train_command=("./train",)), {}, "--train-command: is a local program"),
])
def test_each_bad_input_is_one_line_naming_the_culprit(local: LocalTrainingJob, options: dict[str, Any],
                                                       expected: str) -> None:
    text = error_of(lambda: request_for(local, **options))
    assert text.startswith(expected), text
    assert "\n" not in text


def test_several_problems_are_one_line_each() -> None:
    request = request_for(job())
    request["ResourceConfig"]["InstanceCount"] = 0
    del request["StoppingCondition"]
    text = error_of(lambda: check_request("CreateTrainingJob", request))
    assert text.splitlines() == [
        "CreateTrainingJob: ResourceConfig.InstanceCount: 0 is below the minimum 1",
        "CreateTrainingJob: StoppingCondition.MaxRuntimeInSeconds: required: the job's time limit in seconds"]


def test_unknown_and_missing_members_are_named_by_botocore_paths() -> None:
    request = request_for(job())
    request["ResourceConfig"]["InstanceTyp"] = request["ResourceConfig"].pop("InstanceType")
    text = error_of(lambda: check_request("CreateTrainingJob", request))
    assert text == "CreateTrainingJob: ResourceConfig.InstanceTyp: unknown field (did you mean InstanceType?)"


# ----------------------------------------------------------------------------------------------- the CLI options



@pytest.fixture()
def local_train() -> click.Command:
    from smbyoc.cli.train_cmd import local_train

    return with_request_options(local_train, "training", maybe_print_or_submit_training)


def test_print_request_from_local_train_options(local_train: click.Command) -> None:
    args = ["--image", IMAGE, "-e", "train.py", "-s", SOURCE, "-c", "train=s3://bucket/data/train",
            "--content-type", "train=text/csv", "--input-mode", "Pipe", "-H", "epochs=3", "--job-name", "cli-job",
            "--instance-type", "ml.m5.large", "--instance-count", "2", "--max-runtime", "600",
            "--checkpoint-s3-dir", "s3://bucket/ckpt", "--spot-interruption-after", "5", "--max-wait", "1200",
            "--network-isolation", "--env", "A=1", "--metric-definition", "loss=loss: (\\S+)",
            "--output-path", "s3://bucket/out", "--print-request"]
    result = cli_runner().invoke(local_train, args, auto_envvar_prefix="SMBYOC_LOCAL_TRAIN",
                                env={"SMBYOC_LOCAL_TRAIN_ROLE_ARN": ROLE})
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert list(document) == ["CreateTrainingJob"]
    request = document["CreateTrainingJob"]
    botocore_check("CreateTrainingJob", request)
    spec = training_spec_for_request(LocalTrainingJob(
        image=IMAGE, entry_point="train.py", channels=(("train", Path("s3://bucket/data/train")),),
        content_types={"train": "text/csv"}, channel_settings=(ChannelSetting("input_mode", "Pipe"),),
        hyperparameters={"epochs": "3"}, job_name="cli-job", instance_type="ml.m5.large", instance_count=2,
        environment={"A": "1"}, max_runtime_seconds=600, network_isolation=True, spot_interruption_after=5),
        source_dir=SOURCE)
    assert request == training_job_request(
        spec, role_arn=ROLE, image_uri=IMAGE, output_path="s3://bucket/out",
        channel_uris={"train": "s3://bucket/data/train"}, checkpoint_uri="s3://bucket/ckpt", max_wait_seconds=1200,
        metric_definitions=[("loss", "loss: (\\S+)")])
    assert "LOCAL JOB" not in result.output


def test_output_dir_in_s3_is_the_output_path(local_train: click.Command) -> None:
    args = ["--image", IMAGE, "--instance-type", "ml.m5.large", "--role-arn", ROLE, "-o", "s3://bucket/models",
            "--print-request"]
    result = cli_runner().invoke(local_train, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["CreateTrainingJob"]["OutputDataConfig"]["S3OutputPath"] == "s3://bucket/models"


def test_without_the_options_the_local_job_runs(local_train: click.Command) -> None:
    result = cli_runner().invoke(local_train, ["--image", IMAGE])
    assert result.exit_code == 0 and result.output == "LOCAL JOB\n"


def test_cli_bad_input_is_one_line_and_a_non_zero_exit(local_train: click.Command) -> None:
    args = ["--image", IMAGE, "-c", "train=./data", "--instance-type", "ml.m5.large", "--role-arn", ROLE,
            "--output-path", "s3://bucket/o", "--print-request"]
    result = cli_runner().invoke(local_train, args)
    assert result.exit_code == 1
    assert result.stderr == "Error: --channel train: ./data is a local path; SageMaker needs an s3:// URI\n"
    assert result.stdout == ""



def test_the_decorator_as_commands_take_it() -> None:
    """``@request_options`` right under ``@click.command``, the handler first in the body: the options come after
    the command's own in --help, never reach its arguments, and read SMBYOC_<COMMAND>_ROLE_ARN under smbyoc's
    group settings."""
    from smbyoc.cli import CONTEXT_SETTINGS

    seen: dict[str, Any] = {}

    @click.command("local-train")
    @request_options("training")
    @click.option("--image")
    @click.option("--instance-type", default="local")
    @click.option("-o", "--output-dir", type=click.Path(path_type=Path), default=Path("smbyoc-output"))
    @library_errors
    def command(**kwargs: Any) -> None:
        """Train. Example: x"""
        seen.update(kwargs)
        if maybe_print_or_submit_training():
            return
        click.echo("LOCAL JOB")

    group = click.Group(commands=[command], context_settings=CONTEXT_SETTINGS)
    help_text = cli_runner().invoke(group, ["local-train", "-h"]).output
    assert help_text.index("--output-dir") < help_text.index("--print-request") < help_text.index("--metric-definition")
    result = cli_runner().invoke(group, ["local-train", "--image", IMAGE, "--instance-type", "ml.m5.large", "-o",
                                        "s3://bucket/out", "--print-request"],
                                env={"SMBYOC_LOCAL_TRAIN_ROLE_ARN": ROLE})
    assert result.exit_code == 0, result.output
    assert set(seen) == {"image", "instance_type", "output_dir"}
    request = json.loads(result.stdout)["CreateTrainingJob"]
    assert (request["RoleArn"], request["OutputDataConfig"]["S3OutputPath"]) == (ROLE, "s3://bucket/out")
    local = cli_runner().invoke(group, ["local-train", "--image", IMAGE])
    assert local.output == "LOCAL JOB\n"
