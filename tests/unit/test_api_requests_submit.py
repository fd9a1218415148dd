"""``--submit``: the requests sent with real boto3 to a real SageMaker API stand-in (moto in server mode on loopback,
fixture ``aws_env``), the job followed to its terminal status with its CloudWatch Logs; moto's jobs complete at
once, its endpoints are InService at once. The follow loop's other branches (several polls, Failed, Stopped, Ctrl-C)
run against a scripted client: those are error paths moto cannot produce.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import click
import pytest

from helpers import cli_runner, with_request_options
from smbyoc.api_requests.calls import ApiRequests
from smbyoc.api_requests.submit import Clients, LogTail, submit
from smbyoc.cli.request_options import (
    maybe_print_or_submit_endpoint,
    maybe_print_or_submit_training,
    maybe_print_or_submit_transform,
)
from smbyoc.errors import JobFailedError

boto3 = pytest.importorskip("boto3")

ROLE = "arn:aws:iam::123456789012:role/SageMakerExecutionRole"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/my-algo:1"
GROUP = "/aws/sagemaker/TrainingJobs"



@pytest.fixture()
def local_train() -> click.Command:
    from smbyoc.cli.train_cmd import local_train

    return with_request_options(local_train, "training", maybe_print_or_submit_training)


def train_args(job: str, *extra: str) -> list[str]:
    return ["--image", IMAGE, "-c", "train=s3://bucket/data/train", "-H", "epochs=3", "--job-name", job,
            "--instance-type", "ml.m5.large", "--instance-count", "2", "--output-path", "s3://bucket/out",
            "--role-arn", ROLE, *extra]


def put_logs(job: str, lines: dict[str, list[str]]) -> None:
    logs = boto3.client("logs")
    with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
        logs.create_log_group(logGroupName=GROUP)
    now = int(time.time() * 1000)
    for host, messages in lines.items():
        stream = f"{job}/{host}-1700000000"
        logs.create_log_stream(logGroupName=GROUP, logStreamName=stream)
        logs.put_log_events(logGroupName=GROUP, logStreamName=stream,
                            logEvents=[{"timestamp": now + i, "message": m} for i, m in enumerate(messages)])


# ------------------------------------------------------------------------------------------------- against moto


def test_submit_a_training_job_and_follow_it_with_its_logs(aws_env: str, local_train: click.Command) -> None:
    put_logs("churn-1", {"algo-1": ["epoch 1 loss 0.7", "epoch 2 loss 0.4"], "algo-2": ["worker ready"]})
    put_logs("churn-10", {"algo-1": ["another job's line"]})
    result = cli_runner().invoke(local_train, train_args("churn-1", "--print-request", "--submit"))
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)["CreateTrainingJob"]
    lines = result.stderr.splitlines()
    assert lines[0] == "Create training job: churn-1 (arn:aws:sagemaker:us-east-1:123456789012:training-job/churn-1)"
    assert "Starting: Preparing the instances for training" in lines
    assert [line for line in lines if line.startswith("[")] == [
        "[algo-1] epoch 1 loss 0.7", "[algo-1] epoch 2 loss 0.4", "[algo-2] worker ready"]
    assert lines[-1] == "Training job churn-1: Completed (model: s3://bucket/out/churn-1/output/model.tar.gz)"
    sent = boto3.client("sagemaker").describe_training_job(TrainingJobName="churn-1")
    for member in ("RoleArn", "HyperParameters", "InputDataConfig", "OutputDataConfig", "ResourceConfig",
                   "StoppingCondition", "EnableNetworkIsolation", "EnableManagedSpotTraining"):
        assert sent[member] == printed[member], member
    assert sent["AlgorithmSpecification"]["TrainingImage"] == IMAGE


def test_no_wait_returns_once_the_job_is_created(aws_env: str, local_train: click.Command) -> None:
    result = cli_runner().invoke(local_train, train_args("churn-2", "--submit", "--no-wait"))
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "Create training job: churn-2 (arn:aws:sagemaker:us-east-1:123456789012:training-job/churn-2)"]


def test_submit_a_transform_job(aws_env: str) -> None:
    from smbyoc.cli.transform_cmd import local_transform

    command = with_request_options(local_transform, "transform", maybe_print_or_submit_transform)
    args = ["--image", IMAGE, "--model-data", "s3://bucket/model.tar.gz", "--input", "s3://bucket/in/a.csv",
            "--output", "s3://bucket/out", "--job-name", "batch-1", "--split-type", "Line", "--instance-type",
            "ml.m5.large", "--role-arn", ROLE, "--submit"]
    result = cli_runner().invoke(command, args)
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "Create model: batch-1 (arn:aws:sagemaker:us-east-1:123456789012:model/batch-1)",
        "Create transform job: batch-1 (arn:aws:sagemaker:us-east-1:123456789012:transform-job/batch-1)",
        "Completed",
        "Transform job batch-1: Completed (output: s3://bucket/out)"]
    model = boto3.client("sagemaker").describe_model(ModelName="batch-1")
    assert model["PrimaryContainer"]["ModelDataUrl"] == "s3://bucket/model.tar.gz"


def test_submit_an_endpoint_and_wait_until_in_service(aws_env: str) -> None:
    from smbyoc.cli.serve_cmd import local_serve

    command = with_request_options(local_serve, "endpoint", maybe_print_or_submit_endpoint)
    args = ["--image", IMAGE, "--model-data", "s3://bucket/model.tar.gz", "--instance-type", "ml.m5.large",
            "--endpoint-name", "churn-rt", "--role-arn", ROLE, "--submit"]
    result = cli_runner().invoke(command, args)
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        "Create model: churn-rt", "Create endpoint config: churn-rt", "Create endpoint: churn-rt", "InService",
        "Endpoint churn-rt: InService"]
    config = boto3.client("sagemaker").describe_endpoint_config(EndpointConfigName="churn-rt")
    assert config["ProductionVariants"][0]["InstanceType"] == "ml.m5.large"


# ------------------------------------------------------------------------------------------- bad input, one line


def test_a_missing_role_is_one_line_before_any_call(local_train: click.Command,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing is sent: it would fail differently
    args = [a for a in train_args("churn-4", "--submit") if a != ROLE and a != "--role-arn"]
    result = cli_runner().invoke(local_train, args)
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == "Error: --role-arn: required: the IAM role SageMaker assumes for the job (RoleArn)\n"


def test_no_credentials_is_one_line_naming_the_chain(aws_env: str, local_train: click.Command,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    result = cli_runner().invoke(local_train, train_args("churn-5", "--submit"))
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: use sagemaker: no AWS credentials found in the credential chain "
                                    "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE")
    assert len(result.stderr.splitlines()) == 1
    assert "churn-5" not in boto3_jobs(aws_env)


def boto3_jobs(url: str) -> list[str]:
    client = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                   region_name="us-east-1").client("sagemaker", endpoint_url=url)
    summaries = client.list_training_jobs()["TrainingJobSummaries"]
    return [s["TrainingJobName"] for s in summaries]


def test_an_unreachable_endpoint_is_one_line(aws_env: str, local_train: click.Command,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from helpers import cli_runner, free_port

    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    result = cli_runner().invoke(local_train, train_args("churn-6", "--submit"))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: create training job churn-6: cannot reach {url}")
    assert len(result.stderr.splitlines()) == 1


# ------------------------------------------------------------------------- the follow loop, with a scripted client


class ScriptedSageMaker:
    """Describe* answers in order (the last one repeats); create_* returns an ARN."""

    def __init__(self, descriptions: list[dict[str, Any]]) -> None:
        self.descriptions = descriptions
        self.calls: list[str] = []

    def _next(self, name: str) -> dict[str, Any]:
        self.calls.append(name)
        answer = self.descriptions.pop(0) if len(self.descriptions) > 1 else self.descriptions[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def create_training_job(self, **request: Any) -> dict[str, str]:
        self.calls.append("create_training_job")
        return {"TrainingJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{request['TrainingJobName']}"}

    def create_model(self, **request: Any) -> dict[str, str]:
        return {"ModelArn": "arn:model"}

    def create_endpoint_config(self, **request: Any) -> dict[str, str]:
        return {"EndpointConfigArn": "arn:config"}

    def create_endpoint(self, **request: Any) -> dict[str, str]:
        return {"EndpointArn": "arn:endpoint"}

    def describe_training_job(self, TrainingJobName: str) -> dict[str, Any]:  # noqa: N803 - boto3's name
        return self._next("describe_training_job")

    def describe_endpoint(self, EndpointName: str) -> dict[str, Any]:  # noqa: N803 - boto3's name
        return self._next("describe_endpoint")


class ScriptedLogs:
    """One new event per poll on algo-1's stream."""

    def __init__(self) -> None:
        self.polls = 0

    def describe_log_streams(self, **request: Any) -> dict[str, Any]:
        self.polls += 1
        return {"logStreams": [{"logStreamName": "job/algo-1-1700000000"}]}

    def get_log_events(self, **request: Any) -> dict[str, Any]:
        token = int(request.get("nextToken", "0"))
        if token < self.polls:
            return {"events": [{"message": f"line {token + 1}\n"}], "nextForwardToken": str(token + 1)}
        return {"events": [], "nextForwardToken": str(token)}


def transition(status: str, message: str) -> dict[str, str]:
    return {"Status": status, "StatusMessage": message}


def training(status: str, *transitions: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {"TrainingJobStatus": status, "SecondaryStatusTransitions": list(transitions), **extra}


STARTING = transition("Starting", "Launching requested ML instances")
TRAINING = transition("Training", "Training image download completed. Training in progress.")


def run_scripted(descriptions: list[Any], calls: ApiRequests | None = None) -> tuple[list[str], list[float], Any]:
    sagemaker = ScriptedSageMaker(descriptions)
    lines: list[str] = []
    sleeps: list[float] = []
    requests = calls or ApiRequests((("CreateTrainingJob", {"TrainingJobName": "job"}),))
    outcome: Any
    try:
        outcome = submit(requests, clients=Clients(sagemaker_client=sagemaker, logs_client=ScriptedLogs()),
                         echo=lines.append, poll_seconds=7.0, sleep=sleeps.append)
    except (JobFailedError, KeyboardInterrupt) as e:
        outcome = e
    return lines, sleeps, outcome


def test_each_transition_and_log_line_is_printed_once() -> None:
    lines, sleeps, outcome = run_scripted([
        training("InProgress", STARTING),
        training("InProgress", STARTING, transition("Downloading", "Downloading the training image")),
        training("InProgress", STARTING, transition("Downloading", "Downloading the training image"), TRAINING),
        training("Completed", STARTING, transition("Downloading", "Downloading the training image"), TRAINING,
                 transition("Completed", "Training job completed"),
                 ModelArtifacts={"S3ModelArtifacts": "s3://b/o/job/output/model.tar.gz"}),
    ])
    assert outcome["TrainingJobStatus"] == "Completed"
    assert lines == [
        "Create training job: job (arn:aws:sagemaker:us-east-1:123456789012:training-job/job)",
        "Starting: Launching requested ML instances", "[algo-1] line 1",
        "Downloading: Downloading the training image", "[algo-1] line 2",
        "Training: Training image download completed. Training in progress.", "[algo-1] line 3",
        "Completed: Training job completed", "[algo-1] line 4",
        "Training job job: Completed (model: s3://b/o/job/output/model.tar.gz)"]
    assert sleeps == [7.0, 7.0, 7.0]


def test_failed_ends_with_the_failure_reason() -> None:
    lines, _, outcome = run_scripted([
        training("InProgress", STARTING),
        training("Failed", STARTING, transition("Failed", "Training job failed"),
                 FailureReason="AlgorithmError: ExecuteUserScriptError: loss is NaN\x1b[31m"),
    ])
    assert isinstance(outcome, JobFailedError) and outcome.exit_code == 1
    assert str(outcome) == "training job job: Failed: AlgorithmError: ExecuteUserScriptError: loss is NaN\\x1b[31m"
    assert lines[-2:] == ["Failed: Training job failed", "[algo-1] line 2"]


def test_stopped_exits_like_a_stopped_local_job() -> None:
    _, _, outcome = run_scripted([training("Stopped", transition("Stopped", "Stopped by the user"))])
    assert isinstance(outcome, JobFailedError) and outcome.exit_code == 130 and outcome.status == "Stopped"


def test_ctrl_c_stops_following_and_says_how_to_stop_the_job() -> None:
    lines, _, outcome = run_scripted([training("InProgress", STARTING), KeyboardInterrupt()])
    assert isinstance(outcome, KeyboardInterrupt)
    assert lines[-1] == ("Stopped following; it keeps running on SageMaker. To stop it: "
                         "aws sagemaker stop-training-job --training-job-name job")


def test_a_failed_endpoint_is_one_line_with_its_reason() -> None:
    calls = ApiRequests((("CreateModel", {"ModelName": "m"}), ("CreateEndpointConfig", {"EndpointConfigName": "c"}),
                         ("CreateEndpoint", {"EndpointName": "ep", "EndpointConfigName": "c"})))
    lines, sleeps, outcome = run_scripted([{"EndpointStatus": "Creating"}, {"EndpointStatus": "Creating"},
                                           {"EndpointStatus": "Failed", "FailureReason": "The primary container "
                                            "did not pass the ping health check."}], calls)
    assert isinstance(outcome, JobFailedError)
    assert str(outcome) == ("endpoint ep: Failed: The primary container did not pass the ping health check. (logs: "
                            "CloudWatch log group /aws/sagemaker/Endpoints/ep)")
    assert lines[-2:] == ["Creating", "Failed"] and sleeps == [7.0, 7.0]


def test_the_cli_turns_ctrl_c_into_exit_130(local_train: click.Command, monkeypatch: pytest.MonkeyPatch) -> None:
    scripted = ScriptedSageMaker([training("InProgress", STARTING), KeyboardInterrupt()])
    monkeypatch.setattr(Clients, "sagemaker", lambda self: scripted)
    monkeypatch.setattr(Clients, "logs", lambda self: ScriptedLogs())
    monkeypatch.setattr("smbyoc.api_requests.submit.POLL_SECONDS", 0.0)
    result = cli_runner().invoke(local_train, train_args("churn-7", "--submit"))
    assert result.exit_code == 130, result.output
    assert result.stderr.splitlines()[-1].endswith("aws sagemaker stop-training-job --training-job-name churn-7")


def test_log_streams_of_a_job_that_has_not_logged_yet(aws_env: str) -> None:
    lines: list[str] = []
    tail = LogTail(boto3.client("logs"), GROUP, "nothing-yet/algo-", lines.append)
    assert tail.poll() == 0 and lines == []


@pytest.fixture(autouse=True)
def _no_stray_credentials(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests without ``aws_env`` never reach a real account: no shared files, no metadata service."""
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    yield
