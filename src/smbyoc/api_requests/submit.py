"""Sending :class:`~smbyoc.api_requests.calls.ApiRequests` with boto3 and following what they started.

Clients come from :func:`smbyoc.aws.client.client` (the standard credential chain, checked up front; endpoints from
``AWS_ENDPOINT_URL[_SAGEMAKER|_LOGS]``) and every call runs inside
:func:`~smbyoc.aws.client.translate_aws_errors`, so a refusal is one :class:`~smbyoc.errors.AwsError` line.

Following, as the SDK's ``logs=True`` does: a training job's ``SecondaryStatusTransitions`` and its CloudWatch
Logs streams ``/aws/sagemaker/TrainingJobs/<job>/algo-*`` until a terminal status; a transform job's status and
``/aws/sagemaker/TransformJobs/<job>/*``; an endpoint's status until ``InService``. ``Failed`` (and
``Stopped``) raise :class:`~smbyoc.errors.JobFailedError` with the ``FailureReason``. Ctrl-C stops following, says
how to stop what keeps running on SageMaker, and raises ``KeyboardInterrupt`` again.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from smbyoc import exit_codes
from smbyoc.api_requests.calls import ApiRequests
from smbyoc.aws.client import translate_aws_errors
from smbyoc.errors import AwsError, JobFailedError
from smbyoc.logs import terminal_safe

log = logging.getLogger(__name__)

Echo = Callable[[str], None]
#: Seconds between two DescribeTrainingJob / DescribeEndpoint calls (the SDK polls every 5 s as well).
POLL_SECONDS = 5.0
TRAINING_LOG_GROUP = "/aws/sagemaker/TrainingJobs"
TRANSFORM_LOG_GROUP = "/aws/sagemaker/TransformJobs"
_TERMINAL = ("Completed", "Failed", "Stopped")
_ENDPOINT_BUSY = ("Creating", "Updating", "SystemUpdating", "RollingBack")
_METHODS = {"CreateTrainingJob": "create_training_job", "CreateModel": "create_model",
            "CreateEndpointConfig": "create_endpoint_config", "CreateEndpoint": "create_endpoint",
            "CreateTransformJob": "create_transform_job"}
_NAMES = {"CreateTrainingJob": "TrainingJobName", "CreateModel": "ModelName",
          "CreateEndpointConfig": "EndpointConfigName", "CreateEndpoint": "EndpointName",
          "CreateTransformJob": "TransformJobName"}


def _words(operation: str) -> str:
    """``CreateTrainingJob`` → ``create training job``."""
    return re.sub(r"(?<!^)(?=[A-Z])", " ", operation).lower()


@dataclass
class Clients:
    """The boto3 clients a submission uses, made on first use (tests may hand in their own)."""

    region: str | None = None
    sagemaker_client: Any = None
    logs_client: Any = None

    def sagemaker(self) -> Any:
        if self.sagemaker_client is None:
            from smbyoc.aws.client import client

            self.sagemaker_client = client("sagemaker", region=self.region)
        return self.sagemaker_client

    def logs(self) -> Any:
        if self.logs_client is None:
            from smbyoc.aws.client import client

            self.logs_client = client("logs", region=self.region)
        return self.logs_client


def create(requests: ApiRequests, clients: Clients, echo: Echo) -> dict[str, str]:
    """Send every request in order; operation → the ARN SageMaker returned (the last one of each operation)."""
    sagemaker = clients.sagemaker()
    arns: dict[str, str] = {}
    for operation, request in requests:
        name = request[_NAMES[operation]]
        with translate_aws_errors(f"{_words(operation)} {name}"):
            response = getattr(sagemaker, _METHODS[operation])(**request)
        arn = next((str(v) for k, v in response.items() if k.endswith("Arn")), "")
        arns[operation] = arn
        echo(f"{_words(operation).capitalize()}: {name}" + (f" ({arn})" if arn else ""))
    return arns


def submit(requests: ApiRequests, *, clients: Clients | None = None, echo: Echo = print, follow: bool = True,
           poll_seconds: float | None = None, sleep: Callable[[float], None] = time.sleep) -> Mapping[str, Any]:
    """Create everything ``requests`` holds, then (``follow``) follow the job or endpoint to its end, asking for
    its status every ``poll_seconds`` (default :data:`POLL_SECONDS`).

    Returns the last Describe* response (or the ARNs when not following); raises JobFailedError when the job
    ends ``Failed``/``Stopped`` or the endpoint ``Failed``.
    """
    clients = clients or Clients()
    poll = POLL_SECONDS if poll_seconds is None else poll_seconds
    arns = create(requests, clients, echo)
    if not follow:
        return arns
    if (training := requests.get("CreateTrainingJob")) is not None:
        name = training["TrainingJobName"]
        return _following(f"aws sagemaker stop-training-job --training-job-name {name}", echo,
                          lambda: follow_training_job(name, clients, echo, poll, sleep))
    if (transform := requests.get("CreateTransformJob")) is not None:
        name = transform["TransformJobName"]
        return _following(f"aws sagemaker stop-transform-job --transform-job-name {name}", echo,
                          lambda: follow_transform_job(name, clients, echo, poll, sleep))
    if (endpoint := requests.get("CreateEndpoint")) is not None:
        name = endpoint["EndpointName"]
        return _following(f"aws sagemaker delete-endpoint --endpoint-name {name}", echo,
                          lambda: wait_for_endpoint(name, clients, echo, poll, sleep))
    return arns


def _following(stop_command: str, echo: Echo, follow: Callable[[], Mapping[str, Any]]) -> Mapping[str, Any]:
    try:
        return follow()
    except KeyboardInterrupt:
        echo(f"Stopped following; it keeps running on SageMaker. To stop it: {stop_command}")
        raise


# ------------------------------------------------------------------------------------------------------- logs


@dataclass
class LogTail:
    """New events of a job's CloudWatch Logs streams (``prefix`` in ``group``), printed as ``[host] message``."""

    logs: Any
    group: str
    prefix: str
    echo: Echo
    tokens: dict[str, str] = field(default_factory=dict)

    def streams(self) -> list[str]:
        names: list[str] = []
        request: dict[str, Any] = {"logGroupName": self.group, "logStreamNamePrefix": self.prefix}
        while True:
            try:
                with translate_aws_errors(f"list the log streams {self.group}/{self.prefix}*"):
                    response = self.logs.describe_log_streams(**request)
            except AwsError as e:
                if e.code == "ResourceNotFoundException":  # no log group yet: the job has not logged
                    return names
                raise
            names += [s["logStreamName"] for s in response.get("logStreams", ())]
            if not response.get("nextToken") or response["nextToken"] == request.get("nextToken"):
                return sorted(names)
            request["nextToken"] = response["nextToken"]

    def poll(self) -> int:
        """Print what was logged since the last poll; the number of events printed."""
        printed = 0
        for stream in self.streams():
            host = stream[len(self.prefix) - len(self.prefix.rpartition("/")[2]):]
            host = re.sub(r"-\d{6,}$", "", host)
            while True:
                request: dict[str, Any] = {"logGroupName": self.group, "logStreamName": stream, "startFromHead": True}
                if stream in self.tokens:
                    request["nextToken"] = self.tokens[stream]
                with translate_aws_errors(f"read the log stream {self.group}/{stream}"):
                    response = self.logs.get_log_events(**request)
                for event in response.get("events", ()):
                    self.echo(f"[{host}] {terminal_safe(str(event.get('message', '')).rstrip())}")
                    printed += 1
                token = response.get("nextForwardToken")
                if not token or token == self.tokens.get(stream):
                    break
                self.tokens[stream] = token
                if not response.get("events"):
                    break
        return printed


# -------------------------------------------------------------------------------------------- following a job


def follow_training_job(name: str, clients: Clients, echo: Echo, poll_seconds: float = POLL_SECONDS,
                        sleep: Callable[[float], None] = time.sleep) -> Mapping[str, Any]:
    """Print the job's status transitions and log lines until it ends; its last DescribeTrainingJob response."""
    sagemaker = clients.sagemaker()
    tail = LogTail(clients.logs(), TRAINING_LOG_GROUP, f"{name}/algo-", echo)
    shown: list[tuple[str, str]] = []
    while True:
        with translate_aws_errors(f"describe training job {name}"):
            description: Mapping[str, Any] = sagemaker.describe_training_job(TrainingJobName=name)
        for i, transition in enumerate(description.get("SecondaryStatusTransitions") or ()):
            seen = (str(transition.get("Status", "")), str(transition.get("StatusMessage", "")))
            if i >= len(shown) or shown[i] != seen:
                echo(f"{seen[0]}: {seen[1]}" if seen[1] else seen[0])
                shown[i:i + 1] = [seen]
        tail.poll()
        status = description["TrainingJobStatus"]
        if status in _TERMINAL:
            break
        sleep(poll_seconds)
    model = (description.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
    _ended("Training job", name, status, description, echo, f"model: {model}" if model else "")
    return description


def follow_transform_job(name: str, clients: Clients, echo: Echo, poll_seconds: float = POLL_SECONDS,
                         sleep: Callable[[float], None] = time.sleep) -> Mapping[str, Any]:
    """Print the transform job's status changes and log lines until it ends; its last DescribeTransformJob."""
    sagemaker = clients.sagemaker()
    tail = LogTail(clients.logs(), TRANSFORM_LOG_GROUP, f"{name}/", echo)
    last = None
    while True:
        with translate_aws_errors(f"describe transform job {name}"):
            description: Mapping[str, Any] = sagemaker.describe_transform_job(TransformJobName=name)
        status = description["TransformJobStatus"]
        if status != last:
            echo(status)
            last = status
        tail.poll()
        if status in _TERMINAL:
            break
        sleep(poll_seconds)
    output = (description.get("TransformOutput") or {}).get("S3OutputPath")
    _ended("Transform job", name, status, description, echo, f"output: {output}" if output else "")
    return description


def wait_for_endpoint(name: str, clients: Clients, echo: Echo, poll_seconds: float = POLL_SECONDS,
                      sleep: Callable[[float], None] = time.sleep) -> Mapping[str, Any]:
    """Wait until the endpoint is ``InService`` (its logs: ``/aws/sagemaker/Endpoints/<name>``)."""
    sagemaker = clients.sagemaker()
    last = None
    while True:
        with translate_aws_errors(f"describe endpoint {name}"):
            description: Mapping[str, Any] = sagemaker.describe_endpoint(EndpointName=name)
        status = description["EndpointStatus"]
        if status != last:
            echo(status)
            last = status
        if status not in _ENDPOINT_BUSY:
            break
        sleep(poll_seconds)
    if status != "InService":
        reason = terminal_safe(str(description.get("FailureReason") or "no FailureReason given"))
        raise JobFailedError(f"endpoint {name}: {status}: {reason} (logs: CloudWatch log group "
                             f"/aws/sagemaker/Endpoints/{name})", status=status)
    echo(f"Endpoint {name}: InService")
    return description


def _ended(what: str, name: str, status: str, description: Mapping[str, Any], echo: Echo, detail: str) -> None:
    if status == "Completed":
        echo(f"{what} {name}: Completed" + (f" ({detail})" if detail else ""))
        return
    reason = terminal_safe(str(description.get("FailureReason") or "no FailureReason given"))
    raise JobFailedError(f"{what.lower()} {name}: {status}: {reason}", status=status,
                         exit_code=exit_codes.STOPPED if status == "Stopped" else exit_codes.FAILURE)
