"""The ``smbyoc api`` server: SageMaker's control-plane protocol and the Runtime API's InvokeEndpoint.

Control plane (botocore's ``sagemaker`` service model: ``protocol: json``, ``jsonVersion: 1.1``,
``targetPrefix: SageMaker``): ``POST /`` with ``X-Amz-Target: SageMaker.<Operation>`` and a JSON body; the answer
is ``application/x-amz-json-1.1``, an error is HTTP 400 (500 for the server's own faults) with
``{"__type": CODE, "message": ...}``, the shape botocore turns into ``ClientError``. Runtime: ``POST
/endpoints/<name>/invocations`` is passed on to that endpoint's front (the same route there), whose answer (or
Runtime API error, ``X-Amzn-ErrorType``) comes back unchanged; a ``sagemaker-runtime`` client with the same
``endpoint_url`` works.

The HTTP side is :class:`~smbyoc.emulator.http_server.HttpServer` (strict HTTP/1.1 parsing, the endpoint front's)
on an event loop of its own thread; each operation runs in a worker thread, as the engines block (staging, starting
endpoints), and the loop stays free for invocations, which go upstream through an
:class:`~smbyoc.emulator.upstream.UpstreamPool`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import math
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smbyoc.api import store as stores
from smbyoc.api import token as tokens
from smbyoc.api.errors import SERIALIZATION, UNKNOWN_OPERATION, ApiError
from smbyoc.api.hosting import Hosting
from smbyoc.api.processing import ProcessingJobs
from smbyoc.api.training import TrainingJobs
from smbyoc.api.transform import TransformJobs
from smbyoc.emulator.http_server import HttpServer, Request, Response
from smbyoc.emulator.loop_thread import LoopThread
from smbyoc.errors import ConfigError
from smbyoc.serving.ports import is_loopback

log = logging.getLogger(__name__)

JSON_TYPE = "application/x-amz-json-1.1"
TARGET_PREFIX = "SageMaker."
#: Request bodies: InvokeEndpoint's 6 MB (BOTO-RT ``BodyBlob.max``; no control-plane request comes near it).
MAX_BODY_BYTES = 6 * 1024 * 1024
#: Seconds an invocation may take through the proxy: the front's 60 s limit answers first.
PROXY_TIMEOUT = 75.0
_FORWARDED_PREFIXES = ("content-type", "accept", "x-amzn-sagemaker-", "x-amzn-inference-")
_UPSTREAM_OWN = frozenset({"content-length", "transfer-encoding", "connection", "date", "keep-alive", "server"})


@dataclass(frozen=True)
class ApiConfig:
    """How ``smbyoc api`` runs."""

    host: str = "127.0.0.1"
    port: int = 8770
    #: ``docker``: jobs and endpoints run their images, as SageMaker does; ``process``: local processes.
    mode: str = "docker"
    #: Where descriptions, logs and the token live (default: :func:`smbyoc.api.store.default_state_dir`).
    state_dir: Path | None = None
    region: str = "us-east-1"
    #: Require the token (always, when ``host`` is not loopback).
    require_token: bool = False
    #: The S3 endpoint for ``s3://`` locations (None: botocore's own, ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``).
    s3_endpoint_url: str | None = None
    #: Seconds between SIGTERM and SIGKILL when a training job is stopped.
    stop_timeout: float = 120.0

    def __post_init__(self) -> None:
        if self.mode not in ("docker", "process"):
            raise ConfigError("expected docker or process", key=f"--mode {self.mode}")
        if not 0 <= self.port <= 65535:
            raise ConfigError("expected 0-65535", key=f"--port {self.port}")

    @property
    def token_required(self) -> bool:
        return self.require_token or not is_loopback(self.host)


def _error(error: ApiError, request_id: str) -> Response:
    body = json.dumps({"__type": error.code, "message": error.message}).encode()
    return Response(error.status, body, {"Content-Type": JSON_TYPE, "x-amzn-RequestId": request_id,
                                         "x-amzn-ErrorType": error.code})


#: Levels of nesting a request body may have (SageMaker's deepest request shapes have about a dozen).
MAX_NESTING = 64


def _non_finite(text: str) -> Any:
    raise ValueError(f"{text} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is out of the range of a number")
    return value


def decode_body(body: bytes) -> dict[str, Any]:
    """A request's JSON object; SerializationException for anything else: not JSON, not an object, ``NaN`` or
    ``Infinity`` (which Python's parser takes and no JSON parser should), a number beyond a double, nesting deeper
    than :data:`MAX_NESTING`."""
    try:
        params = json.loads(body or b"{}", parse_constant=_non_finite, parse_float=_finite)
    except RecursionError:
        raise ApiError(SERIALIZATION, f"the request body nests deeper than {MAX_NESTING} levels") from None
    except ValueError as e:
        raise ApiError(SERIALIZATION, f"the request body is not JSON: {e}") from e
    if not isinstance(params, dict):
        raise ApiError(SERIALIZATION, "the request body must be a JSON object")
    level = 0
    todo: list[Any] = [params]
    while todo:
        level += 1
        if level > MAX_NESTING:
            raise ApiError(SERIALIZATION, f"the request body nests deeper than {MAX_NESTING} levels")
        todo = [child for item in todo for child in (item.values() if isinstance(item, dict) else item)
                if isinstance(child, (dict, list))]
    return params


class ApiServer:
    """``start()``, ``url``, ``close()``; state loaded at start, jobs and endpoints stopped at close."""

    def __init__(self, config: ApiConfig) -> None:
        self.config = config
        self.state_dir = (config.state_dir or stores.default_state_dir()).expanduser().resolve()
        self.store = stores.Store(self.state_dir)
        logs = self.state_dir / "logs"
        self.training = TrainingJobs(self.store, mode=config.mode, region=config.region,
                                     s3_endpoint_url=config.s3_endpoint_url, logs_dir=logs,
                                     stop_timeout=config.stop_timeout)
        self.processing = ProcessingJobs(self.store, mode=config.mode, region=config.region,
                                         s3_endpoint_url=config.s3_endpoint_url, logs_dir=logs,
                                         stop_timeout=config.stop_timeout)
        self.transform = TransformJobs(self.store, mode=config.mode, region=config.region,
                                       s3_endpoint_url=config.s3_endpoint_url, logs_dir=logs)
        self.hosting = Hosting(self.store, mode=config.mode, region=config.region,
                               s3_endpoint_url=config.s3_endpoint_url, logs_dir=logs)
        self.token: str | None = None
        self.token_created = False
        self.port = config.port
        self.operations: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "CreateTrainingJob": self.training.create,
            "DescribeTrainingJob": self.training.describe,
            "ListTrainingJobs": self.training.list,
            "StopTrainingJob": self.training.stop,
            "CreateModel": self.hosting.create_model,
            "DescribeModel": self.hosting.describe_model,
            "DeleteModel": self.hosting.delete_model,
            "ListModels": self.hosting.list_models,
            "CreateEndpointConfig": self.hosting.create_endpoint_config,
            "DescribeEndpointConfig": self.hosting.describe_endpoint_config,
            "DeleteEndpointConfig": self.hosting.delete_endpoint_config,
            "ListEndpointConfigs": self.hosting.list_endpoint_configs,
            "CreateEndpoint": self.hosting.create_endpoint,
            "DescribeEndpoint": self.hosting.describe_endpoint,
            "DeleteEndpoint": self.hosting.delete_endpoint,
            "ListEndpoints": self.hosting.list_endpoints,
            "UpdateEndpoint": self.hosting.update_endpoint,
            "UpdateEndpointWeightsAndCapacities": self.hosting.update_weights,
            "CreateProcessingJob": self.processing.create,
            "DescribeProcessingJob": self.processing.describe,
            "ListProcessingJobs": self.processing.list,
            "StopProcessingJob": self.processing.stop,
            "CreateTransformJob": self.transform.create,
            "DescribeTransformJob": self.transform.describe,
            "ListTransformJobs": self.transform.list,
            "StopTransformJob": self.transform.stop,
        }
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="smbyoc-api")
        self._serving = LoopThread(self._open, what="smbyoc api", name="smbyoc-api")
        self._upstream: Any = None
        self._closed = False

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "") else self.config.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    # ------------------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Load the state, listen (ServingError when that fails), then restart what the last server ran."""
        self.store.load()
        if self.config.token_required:
            self.token, self.token_created = tokens.load_or_create(self.state_dir)
        self.training.recover()
        self.processing.recover()
        self.transform.recover()
        self._serving.start(f"{self.config.host}:{self.config.port}")
        self.hosting.recover()

    def close(self) -> None:
        """Stop listening, then stop every running training job and endpoint (their containers or processes)."""
        if self._closed:
            return
        self._closed = True
        self._serving.stop()
        try:
            self.training.shutdown()
            self.processing.shutdown()
            self.transform.shutdown()
        finally:
            self.hosting.shutdown()
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ApiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _open(self, stack: contextlib.AsyncExitStack) -> None:
        """Listen, then open the pool invocations go upstream through; what closes them goes on ``stack`` (run in
        reverse order: the server, then the pool)."""
        from smbyoc.emulator.upstream import UpstreamPool

        server = HttpServer(self.handle, host=self.config.host, port=self.config.port, max_body=MAX_BODY_BYTES,
                            refuse=_refuse_body)
        await server.start()
        self.port = server.port
        self._upstream = UpstreamPool()
        stack.push_async_callback(self._upstream.close)
        stack.push_async_callback(server.close)

    # ------------------------------------------------------------------------------------ requests
    async def handle(self, request: Request) -> Response:
        request_id = str(uuid.uuid4())
        if request.method == "POST" and request.path == "/":
            return await self._control(request, request_id)
        parts = request.path.split("/")
        if request.method == "POST" and len(parts) == 4 and parts[1] == "endpoints" and parts[3] == "invocations":
            return await self._invoke(request, urllib.parse.unquote(parts[2]), request_id)
        if request.method == "GET" and request.path == "/ping":
            return Response(200, b"", {"x-amzn-RequestId": request_id})
        return _error(ApiError(UNKNOWN_OPERATION, f"no such route: {request.method} {request.path[:200]}",
                               status=404), request_id)

    async def _control(self, request: Request, request_id: str) -> Response:
        try:
            tokens.check(self.token, request.headers.get("authorization"))
            target = request.headers.get("x-amz-target", "")
            if not target.startswith(TARGET_PREFIX):
                raise ApiError(UNKNOWN_OPERATION, f"X-Amz-Target must be {TARGET_PREFIX}<Operation>, not "
                                                  f"{target[:100]!r}")
            operation = target[len(TARGET_PREFIX):]
            handler = self.operations.get(operation)
            if handler is None:
                raise ApiError(UNKNOWN_OPERATION, f"{operation[:100]} is not emulated by smbyoc api (it emulates "
                                                  f"{', '.join(sorted(self.operations))})")
            params = decode_body(request.body)
            loop = asyncio.get_running_loop()
            answer = await loop.run_in_executor(self._pool, self._call, operation, handler, params)
        except ApiError as e:
            log.info("%s: %s: %s", request.headers.get("x-amz-target", "?"), e.code, e.message)
            return _error(e, request_id)
        except Exception:
            log.exception("%s failed", request.headers.get("x-amz-target", "?"))
            return _error(ApiError("InternalFailure", "the server failed; see its log", status=500), request_id)
        return Response(200, json.dumps(answer).encode(), {"Content-Type": JSON_TYPE, "x-amzn-RequestId": request_id})

    @staticmethod
    def _call(operation: str, handler: Callable[[dict[str, Any]], dict[str, Any]],
              params: dict[str, Any]) -> dict[str, Any]:
        from smbyoc.api.validation import check

        check(operation, params)
        return handler(params)

    async def _invoke(self, request: Request, name: str, request_id: str) -> Response:
        from smbyoc.emulator.front import LOCAL_ACCOUNT
        from smbyoc.emulator.upstream import UpstreamError

        try:
            tokens.check(self.token, request.headers.get("authorization"))
        except ApiError as e:
            return _error(e, request_id)
        url = self.hosting.front_url(name)
        if url is None:
            message = f"Endpoint {name} of account {LOCAL_ACCOUNT} not found."
            body = json.dumps({"message": message}).encode()
            return Response(400, body, {"Content-Type": "application/json", "x-amzn-RequestId": request_id,
                                        "x-amzn-ErrorType": "ValidationError"})
        headers = {key: value for key, value in request.headers.items() if key.startswith(_FORWARDED_PREFIXES)}
        path = f"/endpoints/{urllib.parse.quote(name, safe='')}/invocations"
        try:
            try:
                answer = await self._upstream.request("POST", url + path, request.body, headers,
                                                      timeout=PROXY_TIMEOUT)
            except UpstreamError:
                # UpdateEndpoint switched to the new endpoint and stopped the old one as this request went to it
                # (no answer came): it goes once to the endpoint that serves now
                now = self.hosting.front_url(name)
                if now is None or now == url:
                    raise
                log.info("invocation of %s: the endpoint was updated meanwhile, sent to %s", name, now)
                answer = await self._upstream.request("POST", now + path, request.body, headers,
                                                      timeout=PROXY_TIMEOUT)
        except Exception as e:
            log.warning("invocation of %s: %s", name, e)
            body = json.dumps({"message": f"the endpoint {name} cannot be reached: {e}"}).encode()
            return Response(503, body, {"Content-Type": "application/json", "x-amzn-ErrorType": "ServiceUnavailable",
                                        "x-amzn-RequestId": request_id})
        back = {key: value for key, value in _header_items(answer.headers) if key.lower() not in _UPSTREAM_OWN}
        back.setdefault("x-amzn-RequestId", request_id)
        return Response(answer.status, answer.body, back)


def _refuse_body(request: Request) -> Response:
    """A body over 6 MB, answered as the Runtime API answers it (the server reads and drops the body first)."""
    size = f"has {request.content_length:,} bytes" if request.content_length is not None else "is over the limit"
    body = json.dumps({"message": f"the request body {size}; the limit is {MAX_BODY_BYTES:,} (6 MB)"}).encode()
    return Response(413, body, {"Content-Type": "application/json", "x-amzn-ErrorType": "ValidationError",
                                "x-amzn-RequestId": str(uuid.uuid4())})


def _header_items(headers: Any) -> list[tuple[str, str]]:
    items = headers.items() if hasattr(headers, "items") else headers
    return [(str(k), str(v)) for k, v in items]
