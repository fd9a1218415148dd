"""The endpoint an endpoint configuration file describes (docs/endpoint-config.md), validated: an
:class:`EndpointDefinition` of frozen dataclasses with plain values (:class:`Model`, :class:`Container`,
:class:`Variant`), built by :mod:`smbyoc.emulator.endpoint_config`; data capture and the async configuration stay
validated dicts (with local paths) for the modules that run them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERIAL = "Serial"
DIRECT = "Direct"
SINGLE_MODEL = "SingleModel"
MULTI_MODEL = "MultiModel"


@dataclass(frozen=True)
class Container:
    """One ``ContainerDefinition`` of a model."""

    image: str
    #: ``ModelDataUrl`` as an absolute local path (a model.tar.gz or a directory; a directory for MultiModel).
    model_data: Path | None
    environment: Mapping[str, str] = field(default_factory=dict)
    #: ``ContainerHostname``; None when not given (a pipeline assigns names by position) and always for a
    #: ``PrimaryContainer``, for which SageMaker ignores it.
    hostname: str | None = None
    #: ``SingleModel`` or ``MultiModel``.
    mode: str = SINGLE_MODEL


@dataclass(frozen=True)
class Model:
    """One ``CreateModel`` request."""

    name: str
    containers: tuple[Container, ...]
    #: ``InferenceExecutionConfig.Mode``: ``Serial`` (default) or ``Direct``.
    mode: str = SERIAL
    #: ``EnableNetworkIsolation``, for the runner to honour.
    network_isolation: bool = False

    @property
    def is_multi_model(self) -> bool:
        return any(c.mode == MULTI_MODEL for c in self.containers)


@dataclass(frozen=True)
class Variant:
    """One production or shadow ``ProductionVariant``."""

    name: str
    model_name: str
    initial_instance_count: int | None  # None for a serverless variant
    instance_type: str | None  # None for a serverless variant
    #: ``InitialVariantWeight``, default 1.0.
    initial_weight: float = 1.0
    #: ``ServerlessConfig`` as validated (``MemorySizeInMB``, ``MaxConcurrency``, ``ProvisionedConcurrency``).
    serverless: Mapping[str, int] | None = None
    container_startup_health_check_timeout: int | None = None
    model_data_download_timeout: int | None = None
    volume_size_in_gb: int | None = None
    #: ``RoutingConfig.RoutingStrategy`` (instance choice inside the variant), when given.
    routing_strategy: str | None = None

    @property
    def is_serverless(self) -> bool:
        return self.serverless is not None


@dataclass(frozen=True)
class EndpointDefinition:
    """An endpoint as the file describes it, validated."""

    endpoint_name: str
    models: Mapping[str, Model]
    production_variants: tuple[Variant, ...]
    shadow_variants: tuple[Variant, ...]
    #: ``DataCaptureConfig`` as validated, ``DestinationS3Uri`` an absolute local path; None when absent.
    data_capture: Mapping[str, Any] | None
    #: ``AsyncInferenceConfig`` as validated, ``S3OutputPath``/``S3FailurePath`` each an absolute local path or an
    #: ``s3://`` URI (written through boto3).
    async_config: Mapping[str, Any] | None
    endpoint_config_name: str
    #: The file it was read from.
    source: Path
    #: The requests as given, local paths made absolute (what ``--json`` would print, S3 URIs aside).
    model_requests: tuple[Mapping[str, Any], ...] = ()
    endpoint_config_request: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_serverless(self) -> bool:
        return any(v.is_serverless for v in self.production_variants)

    @property
    def is_async(self) -> bool:
        return self.async_config is not None

    def model_of(self, variant: Variant) -> Model:
        return self.models[variant.model_name]
