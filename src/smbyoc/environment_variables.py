"""Every environment variable smbyoc reads, declared once: name, type, default and meaning.

Code reads variables only through these declarations (``SAGEMAKER_BIND_TO_PORT.get(environ)``), so an
invalid value always produces an :class:`~smbyoc.errors.EnvVarError` naming the variable and the value.
The README's table is generated from this registry (``smbyoc env-vars --markdown``) and a test keeps it
in sync.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from smbyoc.errors import EnvVarError

T = TypeVar("T")

Scope = Literal["training", "serving", "both", "emulator"]
SetBy = Literal["platform", "sdk", "user", "smbyoc"]


class _ParseError(ValueError):
    """Raised by parsers; turned into EnvVarError by :meth:`EnvVar.get`."""


@dataclass(frozen=True)
class EnvVar(Generic[T]):
    """One declared environment variable."""

    name: str
    parse: Callable[[str], T]
    default: T
    help: str
    scope: Scope
    set_by: SetBy
    type_name: str = "string"
    default_text: str | None = None

    def raw(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The raw value, or None when unset (an empty string counts as unset)."""
        env = os.environ if environ is None else environ
        value = env.get(self.name)
        return value if value not in (None, "") else None

    def is_set(self, environ: Mapping[str, str] | None = None) -> bool:
        return self.raw(environ) is not None

    def get(self, environ: Mapping[str, str] | None = None) -> T:
        """The parsed value, or the default when unset; raises EnvVarError for a bad value."""
        value = self.raw(environ)
        if value is None:
            return self.default
        try:
            return self.parse(value)
        except (_ParseError, ValueError) as e:
            raise EnvVarError(self.name, value, str(e) or f"expected {self.type_name}") from e


REGISTRY: dict[str, EnvVar[object]] = {}


def _declare(var: EnvVar[T]) -> EnvVar[T]:
    if var.name in REGISTRY:  # pragma: no cover - programming error
        raise RuntimeError(f"environment variable {var.name} declared twice")
    REGISTRY[var.name] = var  # type: ignore[assignment]
    return var


# ---------------------------------------------------------------------------------------------- parsers


def parse_str(value: str) -> str:
    return value


def parse_optional_str(value: str) -> str | None:
    return value


def parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise _ParseError("expected a boolean (true/false, 1/0, yes/no)")


def int_parser(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value.strip())
        except ValueError:
            raise _ParseError("expected an integer") from None
        if minimum is not None and number < minimum:
            raise _ParseError(f"must be at least {minimum}")
        if maximum is not None and number > maximum:
            raise _ParseError(f"must be at most {maximum}")
        return number

    return parse


def optional_int_parser(
    minimum: int | None = None, maximum: int | None = None
) -> Callable[[str], int | None]:
    inner = int_parser(minimum, maximum)

    def parse(value: str) -> int | None:
        return inner(value)

    return parse


def parse_nginx_worker_processes(value: str) -> str | None:
    """``auto`` (nginx's one per CPU) or a count of nginx worker processes."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return str(int_parser(1, 1024)(value))
    except _ParseError as e:
        raise _ParseError(f"{e} (or auto)") from None


def float_parser(minimum: float | None = None) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            number = float(value.strip())
        except ValueError:
            raise _ParseError("expected a number") from None
        if not math.isfinite(number):
            raise _ParseError("expected a finite number")
        if minimum is not None and number < minimum:
            raise _ParseError(f"must be at least {minimum:g}")
        return number

    return parse


def parse_port_range(value: str) -> tuple[int, int] | None:
    """``"XXXX-YYYY"``, inclusive, as SageMaker sets SAGEMAKER_SAFE_PORT_RANGE (contract.md §6)."""
    parts = value.strip().split("-")
    if len(parts) != 2:
        raise _ParseError("expected a port range LOW-HIGH, e.g. 9000-9999")
    try:
        low, high = int(parts[0]), int(parts[1])
    except ValueError:
        raise _ParseError("expected a port range LOW-HIGH, e.g. 9000-9999") from None
    if not (1 <= low <= high <= 65535):
        raise _ParseError("ports must satisfy 1 <= LOW <= HIGH <= 65535")
    return (low, high)


#: BatchStrategy as CreateTransformJob spells it, and as the container contract does (contract.md §4).
BATCH_STRATEGY_SPELLINGS = {"MultiRecord": "MULTI_RECORD", "SingleRecord": "SINGLE_RECORD"}


def parse_batch_strategy(value: str) -> str:
    """``MULTI_RECORD``/``SINGLE_RECORD`` from either spelling (``MultiRecord``, ``multi_record``...)."""
    key = value.strip().replace("_", "").replace("-", "").lower()
    for api, container in BATCH_STRATEGY_SPELLINGS.items():
        if key == api.lower():
            return container
    raise _ParseError("expected MULTI_RECORD or SINGLE_RECORD (or MultiRecord / SingleRecord)")


def choice_parser(*choices: str, case_sensitive: bool = False) -> Callable[[str], str]:
    def parse(value: str) -> str:
        candidate = value.strip()
        for choice in choices:
            if candidate == choice or (not case_sensitive and candidate.lower() == choice.lower()):
                return choice
        raise _ParseError("expected one of " + ", ".join(choices))

    return parse


# ----------------------------------------------------------------------------------------- both sides

SAGEMAKER_BASE_DIR = _declare(EnvVar(
    "SAGEMAKER_BASE_DIR", parse_str, "/opt/ml",
    "Root of the SageMaker directory tree; every path is derived from it (as in the SageMaker toolkits).",
    "both", "user"))
SAGEMAKER_PROGRAM = _declare(EnvVar[str | None](
    "SAGEMAKER_PROGRAM", parse_optional_str, None,
    "Training: the entry point (wins over the `sagemaker_program` hyperparameter). "
    "Serving: the handler module (default `inference.py`).",
    "both", "sdk", default_text="training: hyperparameter; serving: inference.py"))
SAGEMAKER_SUBMIT_DIRECTORY = _declare(EnvVar[str | None](
    "SAGEMAKER_SUBMIT_DIRECTORY", parse_optional_str, None,
    "Serving: where the handler module lives (directory, `file://` URI, `.tar.gz` or `s3://` URI); "
    "default `/opt/ml/model/code`. Training uses the `sagemaker_submit_directory` hyperparameter instead.",
    "both", "sdk", default_text="/opt/ml/model/code"))
SAGEMAKER_CONTAINER_LOG_LEVEL = _declare(EnvVar(
    "SAGEMAKER_CONTAINER_LOG_LEVEL", int_parser(0, 50), 20,
    "Python logging level of the runtime (10 debug, 20 info, 30 warning, ...).", "both", "sdk",
    type_name="integer"))
SAGEMAKER_REGION = _declare(EnvVar[str | None](
    "SAGEMAKER_REGION", parse_optional_str, None,
    "AWS region, used only to download `s3://` code with boto3.", "both", "sdk"))
SMBYOC_ARCHIVE_MAX_BYTES = _declare(EnvVar(
    "SMBYOC_ARCHIVE_MAX_BYTES", int_parser(1), 100 * 1024**3,
    "Most bytes extracted from one archive (`model.tar.gz`, `sourcedir.tar.gz`); the declared sizes are "
    "summed before anything is written and the bytes written are counted, and a larger archive is refused.",
    "both", "user", type_name="bytes", default_text="107374182400 (100 GiB)"))
SMBYOC_ARCHIVE_MAX_MEMBERS = _declare(EnvVar(
    "SMBYOC_ARCHIVE_MAX_MEMBERS", int_parser(1), 100_000,
    "Most members (files, directories, links) in one extracted archive; an archive with more is refused "
    "before anything is written.", "both", "user", type_name="integer"))

# ------------------------------------------------------------------------------------------- training

TRAINING_JOB_NAME = _declare(EnvVar(
    "TRAINING_JOB_NAME", parse_str, "",
    "Name of the training job (set by SageMaker and by the emulator).", "training", "platform"))
TRAINING_JOB_ARN = _declare(EnvVar(
    "TRAINING_JOB_ARN", parse_str, "",
    "ARN of the training job (set by SageMaker and by the emulator).", "training", "platform"))
SAGEMAKER_TRAINING_MODULE = _declare(EnvVar[str | None](
    "SAGEMAKER_TRAINING_MODULE", parse_optional_str, None,
    "`module:function` to call instead of running an entry point (framework images do this).",
    "training", "user"))
SM_STUDIO_LOCAL_MODE = _declare(EnvVar(
    "SM_STUDIO_LOCAL_MODE", parse_bool, False,
    "When true, skip waiting for the other hosts' names to resolve (as the training toolkit does).",
    "training", "sdk", type_name="boolean"))
SM_HP_MP_PARAMETERS = _declare(EnvVar[str | None](
    "SM_HP_MP_PARAMETERS", parse_optional_str, None,
    "Model-parallel parameters set by SageMaker; only reported (`is_modelparallel_enabled` in "
    "`SM_TRAINING_ENV`), as the training toolkit does.",
    "training", "platform"))
SMBYOC_ALLOW_REQUIREMENTS_INSTALL = _declare(EnvVar(
    "SMBYOC_ALLOW_REQUIREMENTS_INSTALL", parse_bool, True,
    "Whether `train` may `pip install` a `requirements.txt` or package found with the user code. "
    "Set false for network-isolated jobs: installing at start then fails with a clear error.",
    "training", "user", type_name="boolean"))
SMBYOC_HYPERPARAMETER_SCHEMA = _declare(EnvVar[str | None](
    "SMBYOC_HYPERPARAMETER_SCHEMA", parse_optional_str, None,
    "Path of a hyperparameter declaration (JSON) used to type and check hyperparameters; "
    "default `hyperparameters.schema.json` next to the user code, when present.",
    "training", "user"))
SMBYOC_HOST_RESOLUTION_TIMEOUT = _declare(EnvVar(
    "SMBYOC_HOST_RESOLUTION_TIMEOUT", float_parser(0), 900.0,
    "Seconds to wait, in multi-host jobs, until every host name resolves (the toolkit waits 15 min).",
    "training", "user", type_name="seconds"))
SMBYOC_LAUNCHER = _declare(EnvVar(
    "SMBYOC_LAUNCHER", choice_parser("process", "torchrun"), "process",
    "How `train` starts a Python program: `process` (one process) or `torchrun` (one process per GPU, "
    "or 1, per host, with rendezvous at the first host).",
    "training", "user", type_name="process|torchrun"))
SMBYOC_MASTER_PORT = _declare(EnvVar(
    "SMBYOC_MASTER_PORT", int_parser(1, 65535), 29500,
    "Rendezvous port on the first host used by `SMBYOC_LAUNCHER=torchrun` (`MASTER_PORT`).",
    "training", "user", type_name="port"))
SMBYOC_NPROC_PER_NODE = _declare(EnvVar[int | None](
    "SMBYOC_NPROC_PER_NODE", optional_int_parser(1, 1024), None,
    "Processes per host started by `SMBYOC_LAUNCHER=torchrun`.", "training", "user",
    type_name="integer", default_text="GPU count, else 1"))
SMBYOC_PIPE_WAIT_TIMEOUT = _declare(EnvVar(
    "SMBYOC_PIPE_WAIT_TIMEOUT", float_parser(0), 600.0,
    "Seconds a Pipe-mode reader waits for the next `<channel>_<epoch>` FIFO to appear.",
    "training", "user", type_name="seconds"))

# -------------------------------------------------------------------------------------------- serving

SAGEMAKER_BIND_TO_PORT = _declare(EnvVar(
    "SAGEMAKER_BIND_TO_PORT", int_parser(1, 65535), 8080,
    "Port `serve` listens on (SageMaker sets it for inference pipelines).", "serving", "platform",
    type_name="port"))
SAGEMAKER_SAFE_PORT_RANGE = _declare(EnvVar[tuple[int, int] | None](
    "SAGEMAKER_SAFE_PORT_RANGE", parse_port_range, None,
    "`LOW-HIGH` ports a container may use for extra listeners (inference pipelines).",
    "serving", "platform", type_name="port range"))
SAGEMAKER_MODEL_SERVER_WORKERS = _declare(EnvVar[int | None](
    "SAGEMAKER_MODEL_SERVER_WORKERS", optional_int_parser(1, 512), None,
    "Number of gunicorn worker processes.", "serving", "sdk", type_name="integer",
    default_text="CPU count"))
SAGEMAKER_MODEL_SERVER_TIMEOUT = _declare(EnvVar(
    "SAGEMAKER_MODEL_SERVER_TIMEOUT", int_parser(1), 60,
    "Seconds a request may take before the worker is stopped (nginx and gunicorn).",
    "serving", "sdk", type_name="seconds",
    default_text="60; 600 with SAGEMAKER_BATCH=true (InvocationsTimeoutInSeconds' default)"))
SAGEMAKER_MAX_PAYLOAD_IN_MB = _declare(EnvVar(
    "SAGEMAKER_MAX_PAYLOAD_IN_MB", int_parser(0, 100), 6,
    "Largest request body accepted, in MiB (larger gets 413 from nginx); 0: no limit (batch transform's "
    "chunked bodies). Reported as MaxPayloadInMB by `/execution-parameters`.", "serving", "platform",
    type_name="MiB", default_text="6; with SAGEMAKER_BATCH=true SMBYOC_BATCH_MAX_BODY_IN_MB"))
SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT = _declare(EnvVar(
    "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", parse_str, "application/json",
    "Response content type used when a request has no Accept header or `*/*`.", "serving", "user"))
SAGEMAKER_MULTI_MODEL = _declare(EnvVar(
    "SAGEMAKER_MULTI_MODEL", parse_bool, False,
    "Set to true by SageMaker for multi-model endpoints.", "serving", "platform", type_name="boolean"))
SAGEMAKER_BATCH = _declare(EnvVar(
    "SAGEMAKER_BATCH", parse_bool, False,
    "Set to true by SageMaker for batch transform containers.", "serving", "platform",
    type_name="boolean"))
SAGEMAKER_BATCH_STRATEGY = _declare(EnvVar[str | None](
    "SAGEMAKER_BATCH_STRATEGY", parse_batch_strategy, None,
    "Batch transform strategy chosen in CreateTransformJob; reported by `/execution-parameters`.",
    "serving", "platform", type_name="SINGLE_RECORD|MULTI_RECORD"))
SAGEMAKER_MAX_CONCURRENT_TRANSFORMS = _declare(EnvVar[int | None](
    "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", optional_int_parser(1), None,
    "Parallel requests in a batch transform; reported by `/execution-parameters`.",
    "serving", "platform", type_name="integer"))
SMBYOC_BATCH_MAX_BODY_IN_MB = _declare(EnvVar(
    "SMBYOC_BATCH_MAX_BODY_IN_MB", int_parser(0, 102400), 100,
    "Largest request body with SAGEMAKER_BATCH=true when SAGEMAKER_MAX_PAYLOAD_IN_MB is unset, in MiB "
    "(CreateTransformJob allows up to 100); 0: no limit.", "serving", "user", type_name="MiB"))
SMBYOC_BATCH_RECORDS = _declare(EnvVar(
    "SMBYOC_BATCH_RECORDS", parse_bool, False,
    "Hand the handler a MultiRecord mini-batch as a list of records (CSV lines, JSON Lines, RecordIO "
    "records) and join its one output record per input record (as `batch_records = True` in the "
    "handler module; docs/serving.md).", "serving", "user", type_name="boolean"))
SAGEMAKER_USE_NGINX = _declare(EnvVar(
    "SAGEMAKER_USE_NGINX", parse_bool, True,
    "When false, gunicorn binds the port itself with no nginx in front (as `serve --no-nginx`).",
    "serving", "user", type_name="boolean"))
SMBYOC_GUNICORN_WORKER_CLASS = _declare(EnvVar(
    "SMBYOC_GUNICORN_WORKER_CLASS", choice_parser("auto", "upstream", "sync", "gthread"), "auto",
    "gunicorn worker class of `serve`: `auto` is smbyoc's `upstream` worker behind nginx and gunicorn's "
    "`sync` without nginx or with SMBYOC_SERVE_PROTOCOL=uwsgi (docs/serving.md explains the measured choice).",
    "serving", "user", type_name="auto|upstream|sync|gthread"))
SMBYOC_SERVE_PROTOCOL = _declare(EnvVar(
    "SMBYOC_SERVE_PROTOCOL", choice_parser("http", "uwsgi"), "http",
    "How nginx talks to gunicorn in `serve`: `http` (`proxy_pass`) or `uwsgi` (`uwsgi_pass` to gunicorn's "
    "`--protocol uwsgi`, with gunicorn's sync worker unless SMBYOC_GUNICORN_WORKER_CLASS says gthread). "
    "Only behind nginx (docs/serving.md has the measurements).",
    "serving", "user", type_name="http|uwsgi"))
SMBYOC_NGINX_WORKER_PROCESSES = _declare(EnvVar[str | None](
    "SMBYOC_NGINX_WORKER_PROCESSES", parse_nginx_worker_processes, None,
    "nginx worker processes of `serve`: a count or `auto` (one per CPU). One nginx worker proxies far more "
    "requests than a Python worker serves; more only take CPU from the model (docs/serving.md).",
    "serving", "user", type_name="integer|auto", default_text="CPU count / 4, at least 1"))
SMBYOC_GUNICORN_THREADS = _declare(EnvVar(
    "SMBYOC_GUNICORN_THREADS", int_parser(1, 256), 4,
    "Threads per gunicorn worker with the `gthread` worker class (a spare thread keeps `/ping` fast "
    "while predictions run).", "serving", "user", type_name="integer"))
SMBYOC_SERVE_RUNTIME_DIR = _declare(EnvVar[str | None](
    "SMBYOC_SERVE_RUNTIME_DIR", parse_optional_str, None,
    "Writable directory for nginx.conf, the pid file, nginx temp files and the gunicorn socket; "
    "default a new temporary directory.", "serving", "user", default_text="a new temporary directory"))
SMBYOC_ONNX_THREADS = _declare(EnvVar[int | None](
    "SMBYOC_ONNX_THREADS", optional_int_parser(1, 1024), None,
    "onnxruntime intra-op threads per worker for the default ONNX handler.", "serving", "user",
    type_name="integer", default_text="CPU count / workers"))
SMBYOC_MAX_DECODED_PAYLOAD_IN_MB = _declare(EnvVar[int | None](
    "SMBYOC_MAX_DECODED_PAYLOAD_IN_MB", optional_int_parser(1, 102400), None,
    "Largest decoded size of an `application/x-npy` / `application/x-npz` request, in MiB: declared NPY "
    "shapes and zip member sizes are checked before anything is allocated; larger gets 413.",
    "serving", "user", type_name="MiB", default_text="4 x the request body limit (none when it has none)"))
SMBYOC_MME_MEMORY_BUDGET_MB = _declare(EnvVar[int | None](
    "SMBYOC_MME_MEMORY_BUDGET_MB", optional_int_parser(1, 16 * 1024 * 1024), None,
    "Multi-model endpoints: the most memory `serve` (all its processes) may use, in MiB; a model load that "
    "would go over it (checked before, with the model's size on disk, and after) answers 507, as SageMaker's "
    "MME containers do when out of memory.", "serving", "user", type_name="MiB",
    default_text="90 % of the cgroup memory limit, else of MemTotal"))
SMBYOC_MME_MAX_MODELS = _declare(EnvVar(
    "SMBYOC_MME_MAX_MODELS", int_parser(0, 1_000_000), 0,
    "Multi-model endpoints: the most models loaded at once (each worker holds a copy of each); loading one "
    "more answers 507. 0: no cap.", "serving", "user", type_name="integer"))
SMBYOC_SERVE_HOST = _declare(EnvVar(
    "SMBYOC_SERVE_HOST", parse_str, "0.0.0.0",
    "Address `serve` listens on (SageMaker needs all interfaces; tests use 127.0.0.1).",
    "serving", "user", type_name="address"))

# ---------------------------------------------------------------------------------- build (host side)

DOCKER_HOST = _declare(EnvVar[str | None](
    "DOCKER_HOST", parse_optional_str, None,
    "Docker Engine address used by `smbyoc build` and the emulator (read by the docker SDK too).",
    "emulator", "user", default_text="unix:///var/run/docker.sock"))
SMBYOC_STATE_DIR = _declare(EnvVar[str | None](
    "SMBYOC_STATE_DIR", parse_optional_str, None,
    "Where running emulated jobs are recorded for `smbyoc stop`.", "emulator", "user",
    default_text="$XDG_RUNTIME_DIR/smbyoc or ~/.local/state/smbyoc"))
SMBYOC_OWNER_TOKEN = _declare(EnvVar[str | None](
    "SMBYOC_OWNER_TOKEN", parse_optional_str, None,
    "Set by the emulator on the processes of a process-mode job or endpoint, so that `smbyoc stop` and the "
    "orphan sweep find all of them (also those that left the process group; nginx, which writes its process "
    "title over its environment, gets it on its command line).", "emulator", "smbyoc"))
SMBYOC_CACHE_DIR = _declare(EnvVar[str | None](
    "SMBYOC_CACHE_DIR", parse_optional_str, None,
    "Cache of resolved wheelhouses, smbyoc wheels, base root file systems and S3 downloads (s3/, keyed by ETag).",
    "emulator", "user",
    default_text="~/.cache/smbyoc"))
SMBYOC_NPY_ALLOW_PICKLE = _declare(EnvVar(
    "SMBYOC_NPY_ALLOW_PICKLE", parse_bool, False,
    "Let the default `application/x-npy` decoder unpickle object arrays, as sagemaker-inference does. "
    "Off by default: unpickling a request body runs code chosen by whoever can invoke the endpoint.",
    "serving", "user", type_name="boolean"))
