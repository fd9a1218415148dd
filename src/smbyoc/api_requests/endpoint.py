"""``CreateModel`` + ``CreateEndpointConfig`` + ``CreateEndpoint`` for a local endpoint (contract-endpoints.md §9).

Two sources, as ``local-serve`` has them:

* :func:`endpoint_config_requests`: an endpoint configuration file (docs/endpoint-config.md) already holds the
  requests in API shape. Every S3-URI member must be an S3 URI (a local path is one line naming its field path);
  the file then passes the same parser ``local-serve --endpoint-config`` uses (structure, botocore's model, the
  rules SageMaker enforces on its side), with a temporary folder standing in for each S3 object so nothing is
  downloaded; images are mapped to their ECR URIs and models without a role get ``--role-arn``; each request is
  checked again as sent.
* :func:`model_endpoint_requests`: one model (or a multi-model prefix) behind one ``AllTraffic`` variant.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from smbyoc.api_requests.calls import ApiRequests
from smbyoc.api_requests.locations import is_s3_location, s3_location
from smbyoc.api_requests.validate import check_request
from smbyoc.errors import ConfigError

#: The variant ``local-serve --image --model-data`` stands for (the SDK's name for a single variant).
DEFAULT_VARIANT = "AllTraffic"


# -------------------------------------------------------------------------------------- one model, one variant


def model_endpoint_requests(
    *,
    endpoint_name: str,
    role_arn: str | None,
    image_uri: str | None,
    model_data_uri: str | os.PathLike[str] | None,
    instance_type: str,
    environment: Mapping[str, str] | None = None,
    multi_model: bool = False,
    instance_count: int = 1,
    startup_health_timeout: float | None = None,
) -> ApiRequests:
    """The requests for one model served by one variant; ``multi_model``: ``model_data_uri`` is the prefix of a
    multi-model endpoint's ``.tar.gz`` files (``Mode: MultiModel``)."""
    option = "--multi-model" if multi_model else "--model-data"
    if not role_arn:
        raise ConfigError("required: the IAM role SageMaker assumes for the model (ExecutionRoleArn)",
                          key="--role-arn")
    if not image_uri:
        raise ConfigError("required: the ECR image SageMaker runs (default: --image)", key="--image-uri")
    if model_data_uri is None:
        raise ConfigError("required: the s3:// URI of the model SageMaker downloads (ModelDataUrl)", key=option)
    if instance_type == "local":
        raise ConfigError("has no SageMaker value; give an ml.* instance type (e.g. ml.m5.large)",
                          key="--instance-type local")
    container: dict[str, Any] = {"Image": image_uri, "ModelDataUrl": s3_location(model_data_uri, option)}
    if environment:
        container["Environment"] = dict(environment)
    if multi_model:
        container["Mode"] = "MultiModel"
    model = {"ModelName": endpoint_name, "ExecutionRoleArn": role_arn, "PrimaryContainer": container}
    variant: dict[str, Any] = {"VariantName": DEFAULT_VARIANT, "ModelName": endpoint_name,
                               "InitialInstanceCount": instance_count, "InstanceType": instance_type,
                               "InitialVariantWeight": 1.0}
    if startup_health_timeout is not None:
        if startup_health_timeout != int(startup_health_timeout):
            raise ConfigError("SageMaker takes whole seconds",
                              key=f"--startup-health-timeout {startup_health_timeout:g}")
        variant["ContainerStartupHealthCheckTimeoutInSeconds"] = int(startup_health_timeout)
    config = {"EndpointConfigName": endpoint_name, "ProductionVariants": [variant]}
    endpoint = {"EndpointName": endpoint_name, "EndpointConfigName": endpoint_name}
    for operation, request in (("CreateModel", model), ("CreateEndpointConfig", config), ("CreateEndpoint", endpoint)):
        check_request(operation, request)
    return ApiRequests((("CreateModel", model), ("CreateEndpointConfig", config), ("CreateEndpoint", endpoint)))


# ---------------------------------------------------------------------------------- an endpoint configuration file


def read_document(path: Path) -> Any:
    """The file's document (JSON, or YAML with PyYAML), read as ``local-serve --endpoint-config`` reads it."""
    from smbyoc.emulator import endpoint_config

    return endpoint_config.read_document(path)


def _uri_members(document: Any) -> Iterator[tuple[str, tuple[str | int, ...], str]]:
    """``(field path, keys from the document's root, text)`` of every S3-URI member of the file's requests."""
    from smbyoc.emulator.api_validation import service_model, uri_slots

    if not isinstance(document, dict):
        return
    models = document.get("Models")
    if isinstance(models, list):
        shape = service_model().shape_for("CreateModelInput")
        for i, model in enumerate(models):
            for path, keys, text in uri_slots(model, shape, f"Models[{i}]"):
                yield path, ("Models", i, *keys), text
    shape = service_model().shape_for("CreateEndpointConfigInput")
    for path, keys, text in uri_slots(document.get("EndpointConfig"), shape, "EndpointConfig"):
        yield path, ("EndpointConfig", *keys), text


def _set(document: Any, keys: tuple[str | int, ...], value: str) -> None:
    for key in keys[:-1]:
        document = document[key]
    document[keys[-1]] = value


def _containers(model: Mapping[str, Any], root: str) -> list[tuple[str, dict[str, Any]]]:
    from smbyoc.emulator.endpoint_rules import containers_of

    return [(key, container) for key, container in containers_of(model, root) if isinstance(container, dict)]


def image_mapping(values: Sequence[str], images: Sequence[str]) -> dict[str, str]:
    """``--image-uri`` values as local image → ECR URI: ``IMAGE=URI`` for one image of the file, or a plain
    ``URI`` when the file names a single image."""
    mapping: dict[str, str] = {}
    distinct = sorted(set(images))
    for value in values:
        local, sep, uri = value.partition("=")
        if sep:
            if local not in distinct:
                raise ConfigError(f"the file names no image {local!r} (its images: {', '.join(distinct)})",
                                  key=f"--image-uri {value}")
            mapping[local] = uri
        elif len(distinct) == 1:
            mapping[distinct[0]] = value
        else:
            raise ConfigError(f"the file names {len(distinct)} images ({', '.join(distinct)}); give IMAGE=URI for "
                              "each", key=f"--image-uri {value}")
    return mapping


def endpoint_config_requests(
    path: str | os.PathLike[str],
    *,
    role_arn: str | None = None,
    image_uris: Sequence[str] = (),
    endpoint_name: str | None = None,
) -> ApiRequests:
    """The requests of the endpoint configuration file ``path``, as SageMaker takes them, checked offline."""
    from smbyoc.emulator.endpoint_config import parse_endpoint_config

    file = Path(path)
    source = str(file)
    document = read_document(file)
    members = list(_uri_members(document))
    for field, _, text in members:
        if not is_s3_location(text):
            raise ConfigError(f"{text} is a local path; SageMaker needs an s3:// URI", source=source, key=field)
    with tempfile.TemporaryDirectory(prefix="smbyoc-request-") as stand_in:
        local = copy.deepcopy(document)
        for _, keys, _ in members:
            _set(local, keys, stand_in)
        parse_endpoint_config(local, source=source, base_dir=Path(os.path.abspath(file)).parent)

    models: list[dict[str, Any]] = copy.deepcopy(document["Models"])
    config: dict[str, Any] = copy.deepcopy(document["EndpointConfig"])
    containers = [item for i, model in enumerate(models) for item in _containers(model, f"Models[{i}]")]
    mapping = image_mapping(image_uris, [c["Image"] for _, c in containers])
    for _, container in containers:
        container["Image"] = mapping.get(container["Image"], container["Image"])
    for model in models:
        if role_arn and "ExecutionRoleArn" not in model:
            model["ExecutionRoleArn"] = role_arn
    endpoint = {"EndpointName": endpoint_name or document.get("EndpointName") or config["EndpointConfigName"],
                "EndpointConfigName": config["EndpointConfigName"]}
    for i, model in enumerate(models):
        check_request("CreateModel", model, source=source, root=f"Models[{i}]")
    check_request("CreateEndpointConfig", config, source=source, root="EndpointConfig")
    check_request("CreateEndpoint", endpoint, source=source)
    return ApiRequests((*(("CreateModel", m) for m in models), ("CreateEndpointConfig", config),
                        ("CreateEndpoint", endpoint)))
