"""The CreateProcessingJob request of a local processing job: read, merged with flags, checked, turned into a spec.

A request (a file in boto3's exact shape, flags, or both: :func:`merge_request`; flags win, inputs and outputs
by name) is checked once, before anything is created, by botocore's own service model
(:func:`smbyoc.emulator.api_validation.api_problems`: errors read like the API's, naming the field path), then
by the rules the shape does not carry (contract-endpoints.md §7.2, §7.5: ``LocalPath`` below
``/opt/ml/processing/``, unique names, Gzip only with Pipe) and what the emulator refuses (``DatasetDefinition``,
``FeatureStoreOutput``), every culprit on its own line. Local paths and ``file://`` URIs
may stand where SageMaker wants ``s3://`` URIs: they are checked as placeholder S3 URIs. ``local`` and
``local_gpu`` instance types are checked as ``ml.m5.xlarge``.
"""

from __future__ import annotations

import copy
import json
import os
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smbyoc.emulator.processing_spec import (
    DEFAULT_INSTANCE_TYPE,
    DEFAULT_MAX_RUNTIME_SECONDS,
    DEFAULT_ROLE_ARN,
    DEFAULT_VOLUME_SIZE_GB,
    END_OF_JOB,
    PROCESSING_ROOT,
    ProcessingInput,
    ProcessingJobSpec,
    ProcessingOutput,
    is_s3,
)
from smbyoc.errors import ConfigError

#: Instance types of SDK local mode, checked against the API as this one.
_LOCAL_TYPES = ("local", "local_gpu")
_STAND_IN_INSTANCE_TYPE = "ml.m5.xlarge"
_PLACEHOLDER_URI = "s3://smbyoc-local-path/placeholder"
_SHAPE = "CreateProcessingJobRequest"


# ------------------------------------------------------------------------------------------ from a request


def _stand_in(request: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``request`` in which local paths are placeholder S3 URIs and local instance types real ones."""
    stand_in = copy.deepcopy(dict(request))
    for item in stand_in.get("ProcessingInputs") or []:
        s3 = item.get("S3Input") if isinstance(item, dict) else None
        if isinstance(s3, dict) and isinstance(s3.get("S3Uri"), str) and not is_s3(s3["S3Uri"]):
            s3["S3Uri"] = _PLACEHOLDER_URI
    outputs = (stand_in.get("ProcessingOutputConfig") or {})
    for item in (outputs.get("Outputs") or []) if isinstance(outputs, dict) else []:
        s3 = item.get("S3Output") if isinstance(item, dict) else None
        if isinstance(s3, dict) and isinstance(s3.get("S3Uri"), str) and not is_s3(s3["S3Uri"]):
            s3["S3Uri"] = _PLACEHOLDER_URI
    cluster = (stand_in.get("ProcessingResources") or {}).get("ClusterConfig") \
        if isinstance(stand_in.get("ProcessingResources"), dict) else None
    if isinstance(cluster, dict) and cluster.get("InstanceType") in _LOCAL_TYPES:
        cluster["InstanceType"] = _STAND_IN_INSTANCE_TYPE
    return stand_in


def request_problems(request: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every problem of ``request`` as ``(field path, message)``: botocore's model first, then the rules it does
    not carry and what the emulator refuses (only once the shape is right)."""
    from smbyoc.emulator.api_validation import api_problems

    problems = api_problems(_SHAPE, _stand_in(request))
    return problems or _rule_problems(request)


def _rule_problems(request: Mapping[str, Any]) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    seen_paths: list[tuple[str, str]] = []
    names: set[str] = set()

    def local_path(where: str, value: str | None) -> None:
        if value is None:
            problems.append((f"{where}.LocalPath", "required by the emulator (where the data lies in the "
                                                   "container, below /opt/ml/processing/)"))
            return
        normal = posixpath.normpath(value)
        if not normal.startswith(PROCESSING_ROOT + "/"):
            problems.append((f"{where}.LocalPath", f"{value!r} must begin with {PROCESSING_ROOT}/"))
            return
        for other_where, other in seen_paths:
            if normal == other or normal.startswith(other + "/") or other.startswith(normal + "/"):
                problems.append((f"{where}.LocalPath", f"{value!r} overlaps {other_where}.LocalPath {other!r}"))
        seen_paths.append((where, normal))

    for i, item in enumerate(request.get("ProcessingInputs") or []):
        where = f"ProcessingInputs[{i}]"
        if item["InputName"] in names:
            problems.append((f"{where}.InputName", f"{item['InputName']!r} is used twice"))
        names.add(item["InputName"])
        if "DatasetDefinition" in item:
            problems.append((f"{where}.DatasetDefinition", "Athena/Redshift datasets are not emulated; give an "
                                                            "S3Input (a local path, file:// or s3:// URI)"))
            continue
        s3 = item.get("S3Input")
        if s3 is None:
            problems.append((f"{where}.S3Input", "required (exactly one of S3Input or DatasetDefinition)"))
            continue
        local_path(f"{where}.S3Input", s3.get("LocalPath"))
        mode = s3.get("S3InputMode", "File")
        if s3.get("S3CompressionType", "None") == "Gzip" and mode != "Pipe":
            problems.append((f"{where}.S3Input.S3CompressionType", "Gzip can only be used when Pipe mode is "
                                                                   "specified as the S3InputMode"))
    output_config = request.get("ProcessingOutputConfig") or {}
    for i, item in enumerate(output_config.get("Outputs") or []):
        where = f"ProcessingOutputConfig.Outputs[{i}]"
        if item["OutputName"] in names:
            problems.append((f"{where}.OutputName", f"{item['OutputName']!r} is already the name of an input "
                                                    "or output"))
        names.add(item["OutputName"])
        if "FeatureStoreOutput" in item:
            problems.append((f"{where}.FeatureStoreOutput", "Feature Store outputs are not emulated; give an "
                                                             "S3Output"))
            continue
        s3 = item.get("S3Output")
        if s3 is None:
            problems.append((f"{where}.S3Output", "required (exactly one of S3Output or FeatureStoreOutput)"))
            continue
        local_path(f"{where}.S3Output", s3.get("LocalPath"))
    cluster = request["ProcessingResources"].get("ClusterConfig")
    if cluster is None:
        problems.append(("ProcessingResources.ClusterConfig", "required"))
    return problems


def check_request(request: Mapping[str, Any], *, source: str) -> None:
    """One ConfigError naming every culprit path of ``request`` (``source``: the file, or ``options``)."""
    from smbyoc.api_requests.validate import problems_error

    problems = request_problems(request)
    if problems:
        raise problems_error(source, problems)


def spec_from_request(request: Mapping[str, Any], *, source: str = "request", region: str = "us-east-1",
                      gpus: int | None = None) -> ProcessingJobSpec:
    """The checked spec of a CreateProcessingJob ``request`` (input and output URIs not yet resolved)."""
    check_request(request, source=source)
    app = request["AppSpecification"]
    cluster = request["ProcessingResources"]["ClusterConfig"]
    inputs = tuple(
        ProcessingInput(
            name=item["InputName"], uri=item["S3Input"]["S3Uri"], local_path=item["S3Input"]["LocalPath"],
            data_type=item["S3Input"]["S3DataType"], input_mode=item["S3Input"].get("S3InputMode", "File"),
            distribution=item["S3Input"].get("S3DataDistributionType", "FullyReplicated"),
            compression=item["S3Input"].get("S3CompressionType", "None"))
        for item in request.get("ProcessingInputs") or [])
    outputs = tuple(
        ProcessingOutput(name=item["OutputName"], uri=item["S3Output"]["S3Uri"],
                         local_path=item["S3Output"]["LocalPath"], upload_mode=item["S3Output"]["S3UploadMode"])
        for item in (request.get("ProcessingOutputConfig") or {}).get("Outputs") or [])
    known = {"ProcessingJobName", "ProcessingResources", "AppSpecification", "RoleArn", "StoppingCondition",
             "ProcessingInputs", "Environment"}
    extra = {k: v for k, v in request.items() if k not in known}
    if "ProcessingOutputConfig" in extra:
        extra["ProcessingOutputConfig"] = {k: v for k, v in extra["ProcessingOutputConfig"].items() if k != "Outputs"}
    return ProcessingJobSpec(
        job_name=request["ProcessingJobName"], image=app["ImageUri"], inputs=inputs, outputs=outputs,
        entrypoint=tuple(app["ContainerEntrypoint"]) if "ContainerEntrypoint" in app else None,
        arguments=tuple(app["ContainerArguments"]) if "ContainerArguments" in app else None,
        environment=dict(request.get("Environment") or {}), instance_type=cluster["InstanceType"],
        instance_count=cluster["InstanceCount"], volume_size_gb=cluster["VolumeSizeInGB"],
        max_runtime_seconds=(request.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds",
                                                                         DEFAULT_MAX_RUNTIME_SECONDS),
        network_isolation=bool((request.get("NetworkConfig") or {}).get("EnableNetworkIsolation", False)),
        role_arn=request["RoleArn"], region=region, gpus=gpus, extra=extra,
    )


def load_request(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A CreateProcessingJob request from a JSON file; one line naming the file for anything unreadable."""
    source = os.fspath(path)
    try:
        document = json.loads(Path(source).read_text())
    except FileNotFoundError:
        raise ConfigError("no such file", key=f"--request {source}") from None
    except OSError as e:
        raise ConfigError(f"cannot read it: {e.strerror}", key=f"--request {source}") from None
    except ValueError as e:
        raise ConfigError(f"not JSON: {e}", source=source) from None
    if not isinstance(document, dict):
        raise ConfigError("expected a JSON object (the CreateProcessingJob request)", source=source)
    return document


# ------------------------------------------------------------------------------------------ from flags


@dataclass(frozen=True)
class RequestOverrides:
    """What flags set; None / empty: keep the request's (or the default)."""

    job_name: str | None = None
    image: str | None = None
    #: ``(name, uri, local path or None)``: replaces the input of that name, else is added.
    inputs: Sequence[tuple[str, str, str | None]] = ()
    #: ``(name, local path or None, uri)``.
    outputs: Sequence[tuple[str, str | None, str]] = ()
    #: ``(field, input or output name or None for all, value)``: S3InputMode, S3DataDistributionType,
    #: S3DataType, S3CompressionType (inputs), S3UploadMode (outputs).
    settings: Sequence[tuple[str, str | None, str]] = ()
    entrypoint: Sequence[str] | None = None
    arguments: Sequence[str] | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    instance_type: str | None = None
    instance_count: int | None = None
    max_runtime_seconds: int | None = None
    network_isolation: bool | None = None
    role_arn: str | None = None


INPUT_SETTINGS = ("S3InputMode", "S3DataDistributionType", "S3DataType", "S3CompressionType")
OUTPUT_SETTINGS = ("S3UploadMode",)


def merge_request(base: Mapping[str, Any] | None, flags: RequestOverrides, *, default_name: str) -> dict[str, Any]:
    """The request ``base`` (a request file, or nothing) with the flags applied and the emulator's defaults
    filled in where both are silent: a generated job name, ``DEFAULT_ROLE_ARN``, one ``local`` instance of
    30 GB. Not checked (see :func:`spec_from_request`)."""
    request: dict[str, Any] = copy.deepcopy(dict(base or {}))
    if flags.job_name is not None:
        request["ProcessingJobName"] = flags.job_name
    request.setdefault("ProcessingJobName", default_name)
    if flags.role_arn is not None:
        request["RoleArn"] = flags.role_arn
    request.setdefault("RoleArn", DEFAULT_ROLE_ARN)
    app = request.setdefault("AppSpecification", {})
    if isinstance(app, dict):
        if flags.image is not None:
            app["ImageUri"] = flags.image
        if flags.entrypoint is not None:
            app["ContainerEntrypoint"] = list(flags.entrypoint)
        if flags.arguments is not None:
            app["ContainerArguments"] = list(flags.arguments)
    resources = request.setdefault("ProcessingResources", {})
    cluster = resources.setdefault("ClusterConfig", {}) if isinstance(resources, dict) else None
    if isinstance(cluster, dict):
        if flags.instance_type is not None:
            cluster["InstanceType"] = flags.instance_type
        if flags.instance_count is not None:
            cluster["InstanceCount"] = flags.instance_count
        cluster.setdefault("InstanceType", DEFAULT_INSTANCE_TYPE)
        cluster.setdefault("InstanceCount", 1)
        cluster.setdefault("VolumeSizeInGB", DEFAULT_VOLUME_SIZE_GB)
    if flags.max_runtime_seconds is not None:
        stopping = request.setdefault("StoppingCondition", {})
        if isinstance(stopping, dict):
            stopping["MaxRuntimeInSeconds"] = flags.max_runtime_seconds
    if flags.network_isolation is not None:
        network = request.setdefault("NetworkConfig", {})
        if isinstance(network, dict):
            network["EnableNetworkIsolation"] = flags.network_isolation
    if flags.environment:
        environment = request.setdefault("Environment", {})
        if isinstance(environment, dict):
            environment.update(flags.environment)
    if flags.inputs:
        inputs = request.setdefault("ProcessingInputs", [])
        for name, uri, local in flags.inputs:
            entry = {"InputName": name, "S3Input": {
                "S3Uri": uri, "LocalPath": local or f"{PROCESSING_ROOT}/input/{name}", "S3DataType": "S3Prefix",
                "S3InputMode": "File", "S3DataDistributionType": "FullyReplicated"}}
            _put(inputs, "InputName", entry)
    if flags.outputs:
        output_config = request.setdefault("ProcessingOutputConfig", {})
        outputs = output_config.setdefault("Outputs", []) if isinstance(output_config, dict) else []
        for name, local, uri in flags.outputs:
            entry = {"OutputName": name, "S3Output": {
                "S3Uri": uri, "LocalPath": local or f"{PROCESSING_ROOT}/output/{name}", "S3UploadMode": END_OF_JOB}}
            _put(outputs, "OutputName", entry)
    for setting, target, value in flags.settings:
        _apply_setting(request, setting, target, value)
    return request


def _put(items: Any, key: str, entry: dict[str, Any]) -> None:
    if not isinstance(items, list):
        return
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get(key) == entry[key]:
            items[i] = entry
            return
    items.append(entry)


def _apply_setting(request: dict[str, Any], setting: str, name: str | None, value: str) -> None:
    if setting in INPUT_SETTINGS:
        items, key, member, option = request.get("ProcessingInputs") or [], "InputName", "S3Input", "input"
    elif setting in OUTPUT_SETTINGS:
        items = (request.get("ProcessingOutputConfig") or {}).get("Outputs") or []
        key, member, option = "OutputName", "S3Output", "output"
    else:
        raise ConfigError(f"expected one of {', '.join(INPUT_SETTINGS + OUTPUT_SETTINGS)}", key=f"setting {setting!r}")
    names = [item.get(key) for item in items if isinstance(item, dict)]
    if name is not None and name not in names:
        raise ConfigError(f"no such {option} (the job's: {', '.join(map(str, names)) or 'none'})",
                          key=f"{setting} {name}={value}")
    for item in items:
        if isinstance(item, dict) and (name is None or item.get(key) == name) and isinstance(item.get(member), dict):
            item[member][setting] = value


def anchor_local_paths(request: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """``request`` (changed in place) with every relative local ``S3Uri`` made absolute against ``base_dir``
    (a request file's folder, as endpoint-configuration files are read)."""
    slots = [item.get("S3Input") for item in request.get("ProcessingInputs") or [] if isinstance(item, dict)]
    outputs = request.get("ProcessingOutputConfig")
    if isinstance(outputs, dict):
        slots += [item.get("S3Output") for item in outputs.get("Outputs") or [] if isinstance(item, dict)]
    for slot in slots:
        uri = slot.get("S3Uri") if isinstance(slot, dict) else None
        if isinstance(slot, dict) and isinstance(uri, str) and uri and "://" not in uri and not os.path.isabs(uri):
            slot["S3Uri"] = str((base_dir / os.path.expanduser(uri)).resolve())
    return request
