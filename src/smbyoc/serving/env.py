"""The serving environment, read once from the process environment (contract.md §3.5, §4, §6)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from smbyoc import environment_variables as ev
from smbyoc.errors import ConfigError
from smbyoc.paths import Paths

DEFAULT_PROGRAM = "inference.py"
#: The multi-model registry shared by the workers of one ``serve``, inside its private runtime directory
#: (:mod:`smbyoc.serving.multi_model`); the supervisor creates it (mode 0700).
MME_REGISTRY_DIR = "mme-registry"
#: Seconds a multi-model endpoint's model load may take (SageMaker keeps loading for up to 360 s,
#: contract.md §5): nginx's timeout for ``POST /models``, and how long a loading worker keeps its
#: gunicorn heartbeat going.
MME_LOAD_TIMEOUT = 360
MIB = 1024 * 1024
#: SAGEMAKER_MODEL_SERVER_TIMEOUT's default under SAGEMAKER_BATCH: InvocationsTimeoutInSeconds' default
#: (CreateTransformJob ModelClientConfig, contract.md §4).
BATCH_TIMEOUT = 600


def body_limit(environ: Mapping[str, str]) -> tuple[int, str]:
    """The largest request body in MiB (0: no limit) and the variable that set it (docs/serving.md):
    ``SAGEMAKER_MAX_PAYLOAD_IN_MB`` when set; else, with ``SAGEMAKER_BATCH``, ``SMBYOC_BATCH_MAX_BODY_IN_MB``
    (a transform job's payloads may reach 100 MB, or any size when MaxPayloadInMB is 0); else 6."""
    if ev.SAGEMAKER_MAX_PAYLOAD_IN_MB.is_set(environ) or not ev.SAGEMAKER_BATCH.get(environ):
        return ev.SAGEMAKER_MAX_PAYLOAD_IN_MB.get(environ), ev.SAGEMAKER_MAX_PAYLOAD_IN_MB.name
    return ev.SMBYOC_BATCH_MAX_BODY_IN_MB.get(environ), ev.SMBYOC_BATCH_MAX_BODY_IN_MB.name


def cpu_count() -> int:
    """CPUs this process may run on (affinity-aware), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ServingEnv:
    """Everything ``serve`` needs to know, as plain values."""

    port: int = 8080
    host: str = "0.0.0.0"
    safe_port_range: tuple[int, int] | None = None
    workers: int = 1
    timeout: int = 60
    max_payload_mb: int = 6
    max_payload_set: bool = False
    max_body_mb: int = 6
    max_body_source: str = "SAGEMAKER_MAX_PAYLOAD_IN_MB"
    timeout_from_env: bool = True
    default_accept: str = "application/json"
    program: str = DEFAULT_PROGRAM
    submit_dir: Path = Path("/opt/ml/model/code")
    model_dir: Path = Path("/opt/ml/model")
    base_dir: Path = Path("/opt/ml")
    multi_model: bool = False
    batch: bool = False
    batch_strategy: str | None = None
    max_concurrent_transforms: int | None = None
    batch_records: bool = False
    use_nginx: bool = True
    log_level: int = 20
    worker_class: str = "auto"
    protocol: str = "http"
    threads: int = 4
    nginx_workers: str = "1"
    runtime_dir: Path | None = None
    onnx_threads: int | None = None
    npy_allow_pickle: bool = False
    max_decoded_mb: int | None = None
    mme_memory_budget_mb: int | None = None
    mme_max_models: int = 0

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, base_dir: str | Path | None = None
    ) -> ServingEnv:
        env = os.environ if environ is None else environ
        paths = Paths.from_env(env, base_dir)
        multi_model = ev.SAGEMAKER_MULTI_MODEL.get(env)
        model_dir = paths.multi_model_dir if multi_model else paths.model_dir
        runtime_dir = ev.SMBYOC_SERVE_RUNTIME_DIR.get(env)
        batch = ev.SAGEMAKER_BATCH.get(env)
        max_body_mb, max_body_source = body_limit(env)
        timeout = ev.SAGEMAKER_MODEL_SERVER_TIMEOUT.get(env)
        timeout_from_env = not batch or ev.SAGEMAKER_MODEL_SERVER_TIMEOUT.is_set(env)
        if not timeout_from_env:
            timeout = BATCH_TIMEOUT
        return cls(
            port=ev.SAGEMAKER_BIND_TO_PORT.get(env),
            host=ev.SMBYOC_SERVE_HOST.get(env),
            safe_port_range=ev.SAGEMAKER_SAFE_PORT_RANGE.get(env),
            workers=ev.SAGEMAKER_MODEL_SERVER_WORKERS.get(env) or cpu_count(),
            timeout=timeout,
            max_payload_mb=ev.SAGEMAKER_MAX_PAYLOAD_IN_MB.get(env),
            max_payload_set=ev.SAGEMAKER_MAX_PAYLOAD_IN_MB.is_set(env),
            max_body_mb=max_body_mb,
            max_body_source=max_body_source,
            timeout_from_env=timeout_from_env,
            default_accept=ev.SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT.get(env).strip(),
            program=ev.SAGEMAKER_PROGRAM.get(env) or DEFAULT_PROGRAM,
            submit_dir=resolve_submit_dir(ev.SAGEMAKER_SUBMIT_DIRECTORY.get(env), paths.model_code_dir),
            model_dir=model_dir,
            base_dir=paths.base_dir,
            multi_model=multi_model,
            batch=batch,
            batch_strategy=ev.SAGEMAKER_BATCH_STRATEGY.get(env),
            max_concurrent_transforms=ev.SAGEMAKER_MAX_CONCURRENT_TRANSFORMS.get(env),
            batch_records=ev.SMBYOC_BATCH_RECORDS.get(env),
            use_nginx=ev.SAGEMAKER_USE_NGINX.get(env),
            log_level=ev.SAGEMAKER_CONTAINER_LOG_LEVEL.get(env),
            worker_class=ev.SMBYOC_GUNICORN_WORKER_CLASS.get(env),
            protocol=ev.SMBYOC_SERVE_PROTOCOL.get(env),
            threads=ev.SMBYOC_GUNICORN_THREADS.get(env),
            nginx_workers=ev.SMBYOC_NGINX_WORKER_PROCESSES.get(env) or str(max(1, cpu_count() // 4)),
            runtime_dir=Path(runtime_dir) if runtime_dir else None,
            onnx_threads=ev.SMBYOC_ONNX_THREADS.get(env),
            npy_allow_pickle=ev.SMBYOC_NPY_ALLOW_PICKLE.get(env),
            max_decoded_mb=ev.SMBYOC_MAX_DECODED_PAYLOAD_IN_MB.get(env),
            mme_memory_budget_mb=ev.SMBYOC_MME_MEMORY_BUDGET_MB.get(env),
            mme_max_models=ev.SMBYOC_MME_MAX_MODELS.get(env),
        )

    @property
    def max_body_bytes(self) -> int:
        """The largest request body nginx, the worker and the app accept; 0: no limit."""
        return self.max_body_mb * MIB

    @property
    def max_body_text(self) -> str:
        """The body limit and the variable that set it, for error messages."""
        if not self.max_body_mb:
            return f"{self.max_body_source}=0 (no limit)"
        return f"{self.max_body_source}={self.max_body_mb} ({self.max_body_bytes} bytes)"

    @property
    def timeout_text(self) -> str:
        if self.timeout_from_env:
            return f"SAGEMAKER_MODEL_SERVER_TIMEOUT={self.timeout} s"
        return f"{self.timeout} s (SAGEMAKER_BATCH's default; SAGEMAKER_MODEL_SERVER_TIMEOUT is unset)"

    @property
    def max_decoded_payload_mb(self) -> int:
        """``SMBYOC_MAX_DECODED_PAYLOAD_IN_MB``, by default 4 x the body limit; 0 (no limit) when the body
        has none either."""
        return self.max_decoded_mb if self.max_decoded_mb is not None else 4 * self.max_body_mb

    @property
    def module_name(self) -> str:
        """The handler module name: ``SAGEMAKER_PROGRAM`` without a trailing ``.py``."""
        name = self.program
        return name[:-3] if name.endswith(".py") else name

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def resolve_submit_dir(value: str | None, default: Path) -> Path:
    """``SAGEMAKER_SUBMIT_DIRECTORY`` as a local directory (a path or a ``file://`` URI).

    ``s3://`` URIs and archives are not fetched at serve time (the model archive or the image should
    carry the code); they produce one clear error naming the variable.
    """
    if value is None:
        return default
    if value.startswith("file://"):
        return Path(value[len("file://") :])
    if "://" in value or value.endswith((".tar.gz", ".tgz")):
        raise ConfigError(
            f"{value!r} is not a local directory; serve only reads handler code from a directory "
            "(put the code in model.tar.gz under code/ or in the image)",
            key="environment variable SAGEMAKER_SUBMIT_DIRECTORY",
        )
    return Path(value)
