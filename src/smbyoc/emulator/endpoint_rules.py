"""The rules SageMaker enforces on the server side for an endpoint configuration file (step 5 of
:mod:`smbyoc.emulator.endpoint_config`; contract-endpoints.md §1, §2, §4.1, §5, §6; contract.md §3, §5, §6):
variants name known models, unique variant names, shadow variants, weights, serverless and its exclusions,
containers and hostnames, multi-model data, environment sizes.

The requests come here validated against botocore's model, with local paths resolved; each rule fails with one
:class:`ConfigError` from the :class:`Checker` that names the file and the field path.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from smbyoc.emulator.endpoint_definition import (
    DIRECT,
    MULTI_MODEL,
    SERIAL,
    SINGLE_MODEL,
    Container,
    Model,
    Variant,
)
from smbyoc.errors import ConfigError

#: CreateEndpointConfig: "you can only specify one variant for ProductionVariants and one variant for
#: ShadowProductionVariants" (contract-endpoints.md §2.1).
MAX_SHADOW_VARIANTS = 1
#: ContainerDefinition.Environment (contract.md §3.1): each key and value ≤ 1024 bytes; all maps of one model
#: together ≤ 32 KB.
MAX_ENV_ITEM_BYTES = 1024
MAX_ENV_TOTAL_BYTES = 32 * 1024
#: ProductionVariantServerlessConfig.MemorySizeInMB: "1 GB increments" from 1024 to 6144.
SERVERLESS_MEMORY_STEP_MB = 1024


class Checker(Protocol):
    """What a rule needs of the file's checker: the error naming the file and the field path ``key``."""

    def fail(self, key: str, message: str) -> ConfigError: ...


def containers_of(request: Mapping[str, Any], root: str) -> list[tuple[str, Mapping[str, Any]]]:
    """A CreateModel request's container definitions with their field paths (``Containers`` or ``PrimaryContainer``)."""
    if "Containers" in request:
        return [(f"{root}.Containers[{j}]", c) for j, c in enumerate(request["Containers"])]
    if "PrimaryContainer" in request:
        return [(f"{root}.PrimaryContainer", request["PrimaryContainer"])]
    return []


def build_model(checker: Checker, request: Mapping[str, Any], root: str, paths: Mapping[str, Path]) -> Model:
    """The :class:`Model` of one CreateModel request (``paths``: its S3-URI members as local paths)."""
    if "PrimaryContainer" in request and "Containers" in request:
        raise checker.fail(f"{root}.Containers", "give PrimaryContainer or Containers, not both")
    if "PrimaryContainer" not in request and "Containers" not in request:
        raise checker.fail(root, "a model needs PrimaryContainer or Containers")
    if "Containers" in request and not request["Containers"]:
        raise checker.fail(f"{root}.Containers", "0 entries; a model has 1 to 15 containers")
    mode = (request.get("InferenceExecutionConfig") or {}).get("Mode", SERIAL)
    pipeline = "Containers" in request
    containers: list[Container] = []
    total = 0
    for key, definition in containers_of(request, root):
        if "Image" not in definition:
            raise checker.fail(f"{key}.Image", "required field is missing (smbyoc runs the container's image)")
        container_mode = definition.get("Mode", SINGLE_MODEL)
        model_data = paths.get(f"{key}.ModelDataUrl")
        if container_mode == MULTI_MODEL:
            if mode == DIRECT:
                raise checker.fail(f"{key}.Mode", "a MultiModel container cannot be part of a Direct multi-container "
                                                  "model (SageMaker hosts multi-model containers alone or in a "
                                                  "serial pipeline)")
            if pipeline and len(request["Containers"]) > 1:
                raise checker.fail(f"{key}.Mode", "a MultiModel container inside a serial pipeline is not emulated "
                                                  "(smbyoc runs a multi-model container as a model of its own)")
            if model_data is None:
                raise checker.fail(f"{key}.ModelDataUrl", "required for Mode MultiModel: the prefix (a directory) "
                                                          "holding the models' .tar.gz files")
            if not model_data.is_dir():
                raise checker.fail(f"{key}.ModelDataUrl", f"{model_data} is not a directory: with Mode MultiModel "
                                                          "ModelDataUrl is the prefix holding the models")
        elif model_data is not None and not model_data.exists():
            raise checker.fail(f"{key}.ModelDataUrl", f"{model_data} does not exist")
        environment: dict[str, str] = dict(definition.get("Environment") or {})
        total += _environment_size(checker, environment, f"{key}.Environment")
        containers.append(Container(image=definition["Image"], model_data=model_data, environment=environment,
                                    hostname=definition.get("ContainerHostname") if pipeline else None,
                                    mode=container_mode))
    if total > MAX_ENV_TOTAL_BYTES:
        where = f"{root}.Containers" if pipeline else f"{root}.PrimaryContainer.Environment"
        raise checker.fail(where, f"the environment maps hold {total:,} bytes together; a model's limit is "
                                  f"{MAX_ENV_TOTAL_BYTES:,} (32 KB)")
    if pipeline:
        _check_hostnames(checker, containers, root)
    return Model(name=request["ModelName"], containers=tuple(containers), mode=mode,
                 network_isolation=bool(request.get("EnableNetworkIsolation", False)))


def _environment_size(checker: Checker, environment: Mapping[str, str], key: str) -> int:
    size = 0
    for name, value in environment.items():
        for part in (name, value):
            if len(part.encode("utf-8")) > MAX_ENV_ITEM_BYTES:
                raise checker.fail(f"{key}.{name}", f"keys and values have at most {MAX_ENV_ITEM_BYTES} bytes "
                                                    f"(UTF-8); this one has {len(part.encode('utf-8'))}")
        size += len(name.encode("utf-8")) + len(value.encode("utf-8"))
    return size


def _check_hostnames(checker: Checker, containers: list[Container], root: str) -> None:
    given = [c.hostname is not None for c in containers]
    if any(given) and not all(given):
        missing = given.index(False)
        raise checker.fail(f"{root}.Containers[{missing}].ContainerHostname",
                           "required because another container of the model has one: give ContainerHostname for "
                           "every container or for none")
    seen: dict[str, int] = {}
    for j, container in enumerate(containers):
        if container.hostname is None:
            continue
        if container.hostname in seen:
            raise checker.fail(f"{root}.Containers[{j}].ContainerHostname",
                               f"{container.hostname!r} is also Containers[{seen[container.hostname]}]'s: hostnames "
                               "are unique within a model")
        seen[container.hostname] = j


def build_variant(checker: Checker, request: Mapping[str, Any], root: str, models: Mapping[str, Model]) -> Variant:
    """The :class:`Variant` of one production or shadow variant of the CreateEndpointConfig request."""
    model_name = request.get("ModelName")
    if model_name is None:
        raise checker.fail(f"{root}.ModelName", "required field is missing (smbyoc hosts models, not inference "
                                                "components)")
    if model_name not in models:
        known = ", ".join(sorted(models))
        raise checker.fail(f"{root}.ModelName", f"{model_name!r} is not the ModelName of any of Models ({known})")
    serverless = request.get("ServerlessConfig")
    if serverless is not None:
        for member in ("InstanceType", "InitialInstanceCount"):
            if member in request:
                raise checker.fail(f"{root}.{member}", "not allowed with ServerlessConfig: a variant is serverless "
                                                       "or instance-based")
        memory = serverless["MemorySizeInMB"]
        if memory % SERVERLESS_MEMORY_STEP_MB:
            raise checker.fail(f"{root}.ServerlessConfig.MemorySizeInMB",
                               f"{memory} is not one of 1024, 2048, 3072, 4096, 5120, 6144 (1 GB increments)")
        provisioned = serverless.get("ProvisionedConcurrency")
        if provisioned is not None and provisioned > serverless["MaxConcurrency"]:
            raise checker.fail(f"{root}.ServerlessConfig.ProvisionedConcurrency",
                               f"{provisioned} is above MaxConcurrency {serverless['MaxConcurrency']}")
    else:
        for member in ("InstanceType", "InitialInstanceCount"):
            if member not in request:
                raise checker.fail(f"{root}.{member}", "required field is missing (or give ServerlessConfig)")
    return Variant(
        name=request["VariantName"], model_name=model_name,
        initial_instance_count=request.get("InitialInstanceCount"), instance_type=request.get("InstanceType"),
        initial_weight=float(request.get("InitialVariantWeight", 1.0)),
        serverless=dict(serverless) if serverless is not None else None,
        container_startup_health_check_timeout=request.get("ContainerStartupHealthCheckTimeoutInSeconds"),
        model_data_download_timeout=request.get("ModelDataDownloadTimeoutInSeconds"),
        volume_size_in_gb=request.get("VolumeSizeInGB"),
        routing_strategy=(request.get("RoutingConfig") or {}).get("RoutingStrategy"))


def check_endpoint(checker: Checker, request: Mapping[str, Any], production: tuple[Variant, ...],
                   shadows: tuple[Variant, ...], models: Mapping[str, Model],
                   given: Mapping[str, tuple[str, Mapping[str, Any]]]) -> None:
    """The rules across variants and the endpoint config (``given``: model name → its field path and request)."""
    seen: dict[str, str] = {}
    for group, variants in (("ProductionVariants", production), ("ShadowProductionVariants", shadows)):
        for i, variant in enumerate(variants):
            key = f"EndpointConfig.{group}[{i}].VariantName"
            if variant.name in seen:
                raise checker.fail(key, f"{variant.name!r} is also {seen[variant.name]}'s name: variant names are "
                                        "unique across production and shadow variants")
            seen[variant.name] = f"EndpointConfig.{group}[{i}]"
    if shadows:
        if len(shadows) > MAX_SHADOW_VARIANTS:
            raise checker.fail("EndpointConfig.ShadowProductionVariants",
                               f"{len(shadows)} entries; an endpoint has at most {MAX_SHADOW_VARIANTS} shadow variant")
        if len(production) != 1:
            raise checker.fail("EndpointConfig.ProductionVariants",
                               f"{len(production)} entries; with a shadow variant an endpoint has exactly one "
                               "production variant")
    if all(v.initial_weight == 0 for v in production):
        raise checker.fail("EndpointConfig.ProductionVariants",
                           "every InitialVariantWeight is 0: no variant would get any traffic")
    capture = "DataCaptureConfig" in request
    is_async = "AsyncInferenceConfig" in request
    serverless = [(f"EndpointConfig.ProductionVariants[{i}]", v) for i, v in enumerate(production) if v.is_serverless]
    serverless += [(f"EndpointConfig.ShadowProductionVariants[{i}]", v) for i, v in enumerate(shadows)
                   if v.is_serverless]
    if serverless:
        key, variant = serverless[0]
        _refuse_with_serverless(checker, key, variant, production, shadows, capture, is_async,
                                models[variant.model_name], *given[variant.model_name])
    if shadows and is_async:
        raise checker.fail("EndpointConfig.ShadowProductionVariants", "shadow variants are for real-time endpoints; "
                                                                       "this one has an AsyncInferenceConfig")
    for group, variants in (("ProductionVariants", production), ("ShadowProductionVariants", shadows)):
        for i, variant in enumerate(variants):
            if not models[variant.model_name].is_multi_model:
                continue
            key = f"EndpointConfig.{group}[{i}].ModelName"
            if capture:
                raise checker.fail("EndpointConfig.DataCaptureConfig",
                                   f"data capture is not available for multi-model endpoints ({key} "
                                   f"{variant.model_name!r} has a MultiModel container)")
            if is_async:
                raise checker.fail("EndpointConfig.AsyncInferenceConfig",
                                   f"asynchronous inference is not available for multi-model endpoints ({key} "
                                   f"{variant.model_name!r} has a MultiModel container)")
            if shadows:
                raise checker.fail(key, f"{variant.model_name!r} has a MultiModel container: shadow testing is not "
                                        "available for multi-model endpoints")
    if capture and is_async:
        raise checker.fail("EndpointConfig.DataCaptureConfig", "data capture is not available for asynchronous "
                                                               "endpoints")


def _refuse_with_serverless(checker: Checker, key: str, variant: Variant, production: tuple[Variant, ...],
                            shadows: tuple[Variant, ...], capture: bool, is_async: bool, model: Model,
                            model_key: str, model_request: Mapping[str, Any]) -> None:
    """Serverless endpoints exclude multiple variants, data capture, multi-model, pipelines, VPC configuration
    and network isolation (contract-endpoints.md §5.2), shadow testing and asynchronous inference (DG feature
    matrix)."""
    why = f"a serverless endpoint ({key} has a ServerlessConfig)"
    if len(production) > 1:
        raise checker.fail("EndpointConfig.ProductionVariants", f"{len(production)} entries; {why} has exactly one "
                                                                "production variant")
    if shadows:
        raise checker.fail("EndpointConfig.ShadowProductionVariants", f"shadow variants are not available for {why}")
    if capture:
        raise checker.fail("EndpointConfig.DataCaptureConfig", f"data capture is not available for {why}")
    if is_async:
        raise checker.fail("EndpointConfig.AsyncInferenceConfig", f"asynchronous inference is not available for {why}")
    for (container_key, _), container in zip(containers_of(model_request, model_key), model.containers, strict=True):
        if container.mode == MULTI_MODEL:
            raise checker.fail(f"{container_key}.Mode", f"multi-model containers are not available for {why}")
    if len(model.containers) > 1:
        raise checker.fail(f"{model_key}.Containers", f"{len(model.containers)} containers; inference pipelines and "
                                                      f"multi-container models are not available for {why}")
    if "VpcConfig" in model_request:
        raise checker.fail(f"{model_key}.VpcConfig", f"VPC configuration is not available for {why}")
    if model.network_isolation:
        raise checker.fail(f"{model_key}.EnableNetworkIsolation", f"network isolation is not available for {why}")
