"""Offline checks of a SageMaker request: botocore's own service model, then what the shapes no longer enforce.

:func:`request_problems` runs :func:`smbyoc.emulator.api_validation.api_problems` (botocore's ParamValidator, then
``max``, ``enum`` and ``pattern``; contract-endpoints.md §9.2) and, when the shape is satisfied, the checks a
bring-your-own-container request needs beyond it (§9.1): an ECR image, an execution role, resources and a
stopping condition for a training job, the spot and input-mode rules SageMaker applies on its side.
:func:`check_request` turns the problems into one :class:`~smbyoc.errors.ConfigError`, one line per culprit path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from smbyoc.api_requests.locations import image_problem
from smbyoc.errors import ConfigError

#: Operation → its input shape in botocore's sagemaker service model.
SHAPES = {
    "CreateTrainingJob": "CreateTrainingJobRequest",
    "CreateModel": "CreateModelInput",
    "CreateEndpointConfig": "CreateEndpointConfigInput",
    "CreateEndpoint": "CreateEndpointInput",
    "CreateTransformJob": "CreateTransformJobRequest",
}
#: ``StoppingCondition.MaxRuntimeInSeconds``: 28 days (DG; the shape has no maximum).
MAX_RUNTIME_SECONDS = 28 * 24 * 3600
#: ``MaxConcurrentTransforms x MaxPayloadInMB`` (BOTO ``CreateTransformJob``).
MAX_TRANSFORM_PAYLOAD_PRODUCT = 100

Problems = list[tuple[str, str]]


def _at(root: str, path: str) -> str:
    return f"{root}.{path}" if root and path else root or path


def request_problems(operation: str, request: Mapping[str, Any], root: str = "") -> Problems:
    """Every problem of ``request`` for ``operation`` as ``(field path, message)``, paths under ``root``."""
    from smbyoc.emulator.api_validation import api_problems

    problems = api_problems(SHAPES[operation], request, root)
    if not problems:  # the BYOC rules read the request's members: only once their types are right
        problems = [(_at(root, path), message) for path, message in _BYOC_CHECKS[operation](request)]
    return _one_per_path(problems)


def _one_per_path(problems: Problems) -> Problems:
    """One entry per field path, its messages joined in order (a path can break a length and a pattern rule)."""
    merged: dict[str, list[str]] = {}
    for path, message in problems:
        if message not in merged.setdefault(path, []):
            merged[path].append(message)
    return [(path, "; ".join(messages)) for path, messages in merged.items()]


def problems_error(source: str, problems: Sequence[tuple[str, str]]) -> ConfigError:
    """One ConfigError: ``SOURCE: PATH: why`` for the first problem, one more such line for each other one."""
    (path, message), *rest = problems
    more = "".join(f"\n{source}: {p}: {m}" if p else f"\n{source}: {m}" for p, m in rest)
    return ConfigError(message + more, source=source, key=path or None)


def check_request(operation: str, request: Mapping[str, Any], *, source: str | None = None, root: str = "") -> None:
    """Raise one ConfigError naming every culprit path of ``request``; nothing when SageMaker would take it."""
    problems = request_problems(operation, request, root)
    if problems:
        raise problems_error(source or operation, problems)


# -------------------------------------------------------------------------------------------- the BYOC rules


def _training_job(request: Mapping[str, Any]) -> Problems:
    problems: Problems = []
    algorithm = request.get("AlgorithmSpecification")
    if algorithm is None:
        problems.append(("AlgorithmSpecification", "required for a bring-your-own-container job (TrainingImage, "
                                                   "TrainingInputMode)"))
    elif "AlgorithmName" in algorithm:
        problems.append(("AlgorithmSpecification.AlgorithmName", "names a marketplace algorithm; a "
                                                                 "bring-your-own-container job gives TrainingImage"))
    elif not algorithm.get("TrainingImage"):
        problems.append(("AlgorithmSpecification.TrainingImage", "required: the ECR image SageMaker runs"))
    elif (why := image_problem(algorithm["TrainingImage"])) is not None:
        problems.append(("AlgorithmSpecification.TrainingImage", why))
    resources = request.get("ResourceConfig")
    if resources is None:
        problems.append(("ResourceConfig", "required: InstanceType, InstanceCount, VolumeSizeInGB"))
    else:
        for member, what in (("InstanceType", "an ml.* instance type"), ("InstanceCount", "at least 1"),
                             ("VolumeSizeInGB", "at least 1 GB")):
            if member not in resources:
                problems.append((f"ResourceConfig.{member}", f"required: {what}"))
            elif member != "InstanceType" and resources[member] < 1:
                problems.append((f"ResourceConfig.{member}", f"{resources[member]} is below the minimum 1"))
    problems += _stopping_condition(request)
    problems += _channels(request.get("InputDataConfig") or [], (algorithm or {}).get("TrainingInputMode", "File"))
    return problems


def _stopping_condition(request: Mapping[str, Any]) -> Problems:
    stopping = request.get("StoppingCondition") or {}
    runtime = stopping.get("MaxRuntimeInSeconds")
    wait = stopping.get("MaxWaitTimeInSeconds")
    spot = bool(request.get("EnableManagedSpotTraining"))
    problems: Problems = []
    if runtime is None:
        problems.append(("StoppingCondition.MaxRuntimeInSeconds", "required: the job's time limit in seconds"))
    elif runtime > MAX_RUNTIME_SECONDS:
        problems.append(("StoppingCondition.MaxRuntimeInSeconds", f"{runtime} is above the maximum "
                                                                  f"{MAX_RUNTIME_SECONDS} (28 days)"))
    if spot and wait is None:
        problems.append(("StoppingCondition.MaxWaitTimeInSeconds", "required with EnableManagedSpotTraining: how "
                                                                   "long to wait for spot capacity and run"))
    elif wait is not None and not spot:
        problems.append(("StoppingCondition.MaxWaitTimeInSeconds", "only with EnableManagedSpotTraining"))
    elif wait is not None and runtime is not None and wait < runtime:
        problems.append(("StoppingCondition.MaxWaitTimeInSeconds", f"{wait} is below MaxRuntimeInSeconds {runtime}"))
    return problems


def _channels(channels: Sequence[Mapping[str, Any]], job_mode: str) -> Problems:
    """SageMaker's per-channel rules (BOTO ``Channel``, ``S3DataSource``; contract.md §1.4)."""
    problems: Problems = []
    seen: set[str] = set()
    for i, channel in enumerate(channels):
        at = f"InputDataConfig[{i}]"
        name = channel["ChannelName"]
        if name in seen:
            problems.append((f"{at}.ChannelName", f"{name!r} is the name of an earlier channel"))
        seen.add(name)
        mode = channel.get("InputMode", job_mode)
        source = (channel.get("DataSource") or {}).get("S3DataSource") or {}
        if mode == "FastFile" and source.get("S3DataType", "S3Prefix") != "S3Prefix":
            problems.append((f"{at}.DataSource.S3DataSource.S3DataType", "FastFile input mode needs S3Prefix"))
        for member in ("CompressionType", "RecordWrapperType"):
            if channel.get(member, "None") != "None" and mode != "Pipe":
                problems.append((f"{at}.{member}", f"{channel[member]} is used only in Pipe input mode (this channel "
                                                   f"is {mode})"))
    return problems


def _model(request: Mapping[str, Any]) -> Problems:
    problems: Problems = []
    if not request.get("ExecutionRoleArn"):
        problems.append(("ExecutionRoleArn", "required: the IAM role SageMaker assumes to pull the image and the "
                                             "model (give --role-arn)"))
    containers = [("PrimaryContainer", request["PrimaryContainer"])] if "PrimaryContainer" in request else \
        [(f"Containers[{i}]", c) for i, c in enumerate(request.get("Containers") or ())]
    if not containers:
        problems.append(("PrimaryContainer", "required: the container SageMaker runs (or Containers)"))
    for at, container in containers:
        image = container.get("Image")
        vpc = (container.get("ImageConfig") or {}).get("RepositoryAccessMode") == "Vpc"
        if not image:
            problems.append((f"{at}.Image", "required: the ECR image SageMaker runs"))
        elif not vpc and (why := image_problem(image)) is not None:
            problems.append((f"{at}.Image", why))
    return problems


def _transform_job(request: Mapping[str, Any]) -> Problems:
    concurrency, payload = request.get("MaxConcurrentTransforms"), request.get("MaxPayloadInMB")
    if concurrency and payload and concurrency * payload > MAX_TRANSFORM_PAYLOAD_PRODUCT:
        return [("MaxConcurrentTransforms", f"{concurrency} x MaxPayloadInMB {payload} is above "
                                            f"{MAX_TRANSFORM_PAYLOAD_PRODUCT}")]
    return []


def _nothing(request: Mapping[str, Any]) -> Problems:
    return []


_BYOC_CHECKS: dict[str, Callable[[Mapping[str, Any]], Problems]] = {
    "CreateTrainingJob": _training_job,
    "CreateModel": _model,
    "CreateEndpointConfig": _nothing,  # the variant rules: smbyoc.emulator.endpoint_rules, through the file's parser
    "CreateEndpoint": _nothing,
    "CreateTransformJob": _transform_job,
}
