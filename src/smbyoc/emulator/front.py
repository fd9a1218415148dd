"""The endpoint front: SageMaker's side of an endpoint, on the port clients call.

A plain ``local-serve`` lets clients talk to its one container directly. Where SageMaker does more than pass a
request to one container, a front stands in between: a multi-model endpoint (SageMaker loads the TargetModel
into the container before it invokes it) and a multi-container endpoint (it chains the containers, or routes to
the one named). What it does with a request is a :class:`Router`'s business; the front owns the HTTP side:

* an HTTP/1.1 server on the endpoint's port, :class:`~smbyoc.emulator.http_server.HttpServer` (a strict
  asyncio Protocol over httptools; aiohttp's server cost the front ≈124 µs of CPU per request, bench/README.md),
  in its own thread and event loop (uvloop's when installed), so that the CLI stays synchronous; it answers
  ``GET /ping``, ``POST /invocations``, the Runtime API's routes and the control routes (:meth:`Front.handle`);
* one pool of keep-alive connections to the containers the routers share, an
  :class:`~smbyoc.emulator.upstream.UpstreamPool` (a small HTTP/1.1 client: aiohttp's client cost a hop
  270-420 µs of the front's CPU, bench/README.md), used through :func:`post` and :func:`send`;
* SageMaker's request rules before a router sees anything: only the headers InvokeEndpoint defines reach a
  container (contract.md §3.3), each within its length limit, and the 6 MB body limit;
* errors the platform raises (not the container) answered with ``X-Amzn-ErrorType`` and a JSON body
  ``{"message": ...}``, the shape of the SageMaker Runtime API, so that :mod:`smbyoc.emulator.runtime_client`
  and botocore read the error code and message.

A container's own answer (any status) is passed back unchanged: ``/invocations`` here stands for the container's
``/invocations``, as it does in plain mode (``smbyoc invoke`` turns a non-2xx answer into ``ModelError`` the way
InvokeEndpoint does).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
import urllib.parse
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from smbyoc.emulator.http_server import HttpServer, Request, Response, ServerLimits, plain
from smbyoc.emulator.loop_thread import LoopThread
from smbyoc.emulator.upstream import UpstreamError, UpstreamPool
from smbyoc.errors import ConfigError

log = logging.getLogger(__name__)

#: BOTO ``BodyBlob.max``: InvokeEndpoint's request and response bodies.
MAX_BODY_BYTES = 6 * 1024 * 1024
#: The largest refused request body that is read (and dropped) before the answer; beyond it the connection is
#: closed after the answer.
DRAIN_LIMIT = 64 * 1024 * 1024
#: A container must answer ``/invocations`` within 60 s (contract.md §3.3).
INVOCATION_TIMEOUT = 60.0

#: The request headers InvokeEndpoint defines, with their length limits (contract.md §3.3); SageMaker strips the
#: rest before the container sees the request.
FORWARDED_HEADERS: Mapping[str, int | None] = {
    "Content-Type": 1024,
    "Accept": 1024,
    "X-Amzn-SageMaker-Custom-Attributes": 1024,
    "X-Amzn-SageMaker-Target-Model": 1024,
    "X-Amzn-SageMaker-Target-Variant": 63,
    "X-Amzn-SageMaker-Target-Container-Hostname": 63,
    "X-Amzn-SageMaker-Inference-Id": 64,
    "X-Amzn-SageMaker-Enable-Explanations": 64,
    "X-Amzn-SageMaker-Inference-Component": 63,
    "X-Amzn-SageMaker-Session-Id": 256,
}
#: Response headers a container's answer keeps on its way back (besides Content-Type).
RETURNED_HEADERS = (
    "X-Amzn-SageMaker-Custom-Attributes",
    "X-Amzn-SageMaker-New-Session-Id",
    "X-Amzn-SageMaker-Closed-Session-Id",
)
ERROR_TYPE_HEADER = "X-Amzn-ErrorType"
VARIANT_HEADER = "x-Amzn-Invoked-Production-Variant"
CONTROL_TOKEN_HEADER = "X-Smbyoc-Control-Token"  # noqa: S105 - a header name, not a secret
#: The account and region local ARNs name (nothing here is in AWS).
LOCAL_ACCOUNT = "000000000000"
LOCAL_REGION = "local"
#: The variant name the SageMaker Python SDK gives a one-variant endpoint.
DEFAULT_VARIANT = "AllTraffic"


class FrontError(Exception):
    """An error the platform answers itself: ``code`` is the SageMaker Runtime error name (``ValidationError``,
    ``ModelError``, ``ModelNotReadyException``, ``ServiceUnavailable``...), ``fields`` extra members of the
    error body (``OriginalStatusCode``...)."""

    def __init__(self, status: int, code: str, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields


def validation_error(message: str) -> FrontError:
    return FrontError(400, "ValidationError", message)


@dataclass(frozen=True)
class Call:
    """One invocation as the platform passes it on: the body and the forwarded headers only."""

    body: bytes
    headers: Mapping[str, str]

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


@dataclass(frozen=True)
class Reply:
    """A container's answer: status, body and the headers that go back to the client."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    #: The production variant that answered (``x-Amzn-Invoked-Production-Variant``); None: the front's default.
    variant: str | None = None
    #: The container that answered, for ModelError's wording (``from <container>``); None: ``primary``.
    container: str | None = None

    @property
    def content_type(self) -> str | None:
        return self.headers.get("Content-Type")

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class AsyncInvocations(Protocol):
    """The handler of ``POST /endpoints/{name}/async-invocations`` (InvokeEndpointAsync) on an async endpoint."""

    async def open(self, session: Any) -> None:
        """Called once in the front's event loop (after the router's ``open``): recover the queue, start work."""

    async def submit(self, headers: Mapping[str, str], body: bytes) -> Reply:
        """Accept one request (202 with the InferenceId body and the location headers) or raise FrontError."""

    async def close(self) -> None:
        """Called once when the front stops (before the router's ``close``)."""


class Control(Protocol):
    """The endpoint's control side on ``/_smbyoc/endpoints/{name}`` (``smbyoc endpoint describe`` and
    ``update-weights``); every call must carry the endpoint's control token (``X-Smbyoc-Control-Token``)."""

    @property
    def token(self) -> str:
        """The secret every control call must carry."""

    def describe(self) -> dict[str, Any]:
        """DescribeEndpoint's answer, with statistics."""

    def update_weights(self, desired: list[dict[str, Any]]) -> None:
        """UpdateEndpointWeightsAndCapacities' ``DesiredWeightsAndCapacities``; raise FrontError when refused."""


class Router(Protocol):
    """What a front does with an invocation (a multi-model loader, a serial pipeline, a direct router)."""

    async def open(self, session: Any) -> None:
        """Called once in the front's event loop before the first request; ``session`` is the front's shared
        :class:`~smbyoc.emulator.upstream.UpstreamPool` (keep-alive connections to the containers), to pass to
        :func:`post` / :func:`send` (or its ``request``) in that loop only."""

    async def invoke(self, call: Call) -> Reply:
        """Answer one invocation; raise :class:`FrontError` for what the platform refuses."""

    async def close(self) -> None:
        """Called once when the front stops."""


_FORWARDED = tuple((name, name.lower(), limit) for name, limit in FORWARDED_HEADERS.items())
#: Headers whose botocore pattern is ``\p{ASCII}*``, and those whose pattern is ``\A\S[\p{Print}]*\z`` (min 1).
_ASCII_HEADERS = frozenset({"Content-Type", "Accept"})
_PRINTABLE_HEADERS = frozenset({"X-Amzn-SageMaker-Inference-Id", "X-Amzn-SageMaker-Target-Model"})


def check_printable(name: str, value: str) -> str:
    r"""``value`` of header ``name`` as botocore's ``\A\S[\p{Print}]*\z`` takes it: at least one character, printable
    US-ASCII, not starting with a space; else a ``ValidationError`` naming the header."""
    if not value:
        raise validation_error(f"{name}: the value is empty; it needs at least 1 character")
    if value[0] == " " or not (value.isascii() and value.isprintable()):
        raise validation_error(f"{name}: the value must be printable US-ASCII characters and not start with a "
                               "space")
    return value


def forwarded_headers(headers: Mapping[str, str], *, lowered: bool = False) -> dict[str, str]:
    """The headers of ``headers`` (any case; ``lowered``: its names are lower-case already) that InvokeEndpoint
    defines, spelled as SageMaker spells them; a value over its limit is a ``ValidationError`` naming the
    header."""
    source = headers if lowered else {name.lower(): value for name, value in headers.items()}
    kept: dict[str, str] = {}
    for name, key, limit in _FORWARDED:
        value = source.get(key)
        if value is None:
            continue
        if limit is not None and len(value) > limit:
            raise validation_error(f"{name}: the value has {len(value)} characters; the limit is {limit}")
        if name in _ASCII_HEADERS:
            if not value.isascii():
                raise validation_error(f"{name}: the value must be US-ASCII characters")
        elif name in _PRINTABLE_HEADERS:
            check_printable(name, value)
        elif name == "X-Amzn-SageMaker-Custom-Attributes" and not (value.isascii() and value.isprintable()):
            raise validation_error(f"{name}: the value must be visible US-ASCII characters")
        kept[name] = value
    return kept


def returned_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers of a container's answer that go back to the client."""
    kept: dict[str, str] = {}
    content_type = headers.get("Content-Type")
    if content_type is not None:
        kept["Content-Type"] = content_type
    for name in RETURNED_HEADERS:
        value = headers.get(name)
        if value is not None:
            kept[name] = value
    return kept


def post(session: UpstreamPool, url: str, body: bytes, headers: Mapping[str, str], *,
         timeout: float = INVOCATION_TIMEOUT, what: str = "the container") -> Coroutine[Any, Any, Reply]:
    """POST ``body`` to ``url`` over ``session``; the answer as a :class:`Reply` (any status).

    A container that does not answer within ``timeout`` is a ``ModelError`` as SageMaker reports it (424, no
    original status); one that cannot be reached, or whose answer is broken or over the upstream pool's limits, is
    ``ServiceUnavailable`` (503). (A plain function returning :func:`send`'s coroutine: one frame less per hop.)"""
    return send(session, "POST", url, body, headers, timeout=timeout, what=what)


async def send(session: UpstreamPool, method: str, url: str, body: bytes, headers: Mapping[str, str], *,
               timeout: float = INVOCATION_TIMEOUT, what: str = "the container") -> Reply:
    """:func:`post` for any method: the one place the upstream client's errors become the platform's."""
    if timeout <= 0:  # a deadline already passed (a pipeline's later hop): the pool refuses such a timeout
        raise FrontError(424, "ModelError", f"Your invocation timed out while waiting for a response from {what}. "
                         "Review the endpoint's log.")
    try:
        answer = await session.request(method, url, body, headers, timeout=timeout)
    except asyncio.TimeoutError as e:
        raise FrontError(424, "ModelError", f"Your invocation timed out while waiting for a response from "
                         f"{what}. Review the endpoint's log.") from e
    except UpstreamError as e:
        raise FrontError(503, "ServiceUnavailable", f"{what} cannot be reached or its answer is unusable: {e}") from e
    return Reply(answer.status, answer.body, returned_headers(answer.headers))


def error_payload(error: FrontError) -> bytes:
    """The error body: ``Message`` (the member botocore's ``ModelError``/``ValidationError`` shapes name) and the
    error's other members."""
    return json.dumps({"Message": error.message, **error.fields}).encode("utf-8")


def model_error(reply: Reply, endpoint_name: str, region: str = LOCAL_REGION) -> FrontError:
    """InvokeEndpoint's ``ModelError`` (424) for a container's non-2xx ``reply``."""
    from smbyoc.emulator.runtime_client import model_error_message

    message = reply.body.decode("utf-8", "replace")
    return FrontError(424, "ModelError", model_error_message(reply.status, message, reply.container or "primary"),
                      OriginalStatusCode=reply.status, OriginalMessage=message,
                      LogStreamArn=f"arn:aws:logs:{region}:{LOCAL_ACCOUNT}:log-group:/aws/sagemaker/Endpoints/"
                                   f"{endpoint_name}")


_ASYNC_ROUTE = "async-invocations"
#: ``/endpoints/{name}/invocations``, ``/endpoints/{name}/async-invocations``, ``/_smbyoc/endpoints/{name}[/weights]``
_STREAM_ROUTE = "invocations-response-stream"
_ROUTE = re.compile(r"/(endpoints|_smbyoc/endpoints)/([^/]+)"
                    r"(?:/(invocations|async-invocations|invocations-response-stream|weights))?")
EVENT_LOOPS = ("auto", "asyncio", "uvloop")
#: The event loop of a front made without ``event_loop`` (the tests run every front test on both loops).
DEFAULT_EVENT_LOOP = "auto"


def new_event_loop(kind: str = "auto") -> asyncio.AbstractEventLoop:
    """A new event loop: uvloop's (libuv; the front's thread spends ≈1/4 less CPU per request, bench/README.md)
    when ``kind`` is ``uvloop``, or ``auto`` and uvloop is installed; else asyncio's."""
    if kind not in EVENT_LOOPS:
        raise ConfigError(f"{kind!r} is not one of {', '.join(EVENT_LOOPS)}", key="event_loop")
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise ConfigError("uvloop is not installed (pip install uvloop)", key="event_loop") from None
        else:
            return cast(asyncio.AbstractEventLoop, uvloop.new_event_loop())
    return asyncio.new_event_loop()


class Front:
    """The HTTP front of one endpoint. ``start()`` returns once it listens; ``stop()`` ends it.

    ``event_loop``: ``auto`` (uvloop when installed), ``asyncio`` or ``uvloop`` (None: :data:`DEFAULT_EVENT_LOOP`);
    ``limits``: the HTTP server's (:class:`~smbyoc.emulator.http_server.ServerLimits`)."""

    def __init__(self, router: Router, *, host: str = "127.0.0.1", port: int = 8080,
                 max_body: int = MAX_BODY_BYTES, enforce_limits: bool = True,
                 endpoint_name: str = "local-endpoint", variant_name: str = DEFAULT_VARIANT,
                 async_invocations: AsyncInvocations | None = None, control: Control | None = None,
                 event_loop: str | None = None, limits: ServerLimits | None = None) -> None:
        event_loop = event_loop or DEFAULT_EVENT_LOOP
        if event_loop not in EVENT_LOOPS:
            raise ConfigError(f"{event_loop!r} is not one of {', '.join(EVENT_LOOPS)}", key="event_loop")
        self.router = router
        self.control = control
        self.async_invocations = async_invocations
        self.endpoint_name = endpoint_name
        self.variant_name = variant_name
        self.host = host
        self.port = port
        self.max_body = max_body
        self.enforce_limits = enforce_limits
        self.event_loop = event_loop
        self.limits = limits
        self._invocations_path = f"/endpoints/{endpoint_name}/invocations"
        self._serving = LoopThread(self._open, what="the endpoint front", name="endpoint-front",
                                   new_loop=lambda: new_event_loop(self.event_loop))
        self._server: HttpServer | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def _loop(self) -> asyncio.AbstractEventLoop | None:
        """The front's event loop (None before ``start()``)."""
        return self._serving.loop

    @property
    def _thread(self) -> threading.Thread | None:
        """The thread running the front's event loop (None when it does not run)."""
        return self._serving.thread

    @property
    def loop_name(self) -> str:
        """The running event loop's module (``asyncio`` or ``uvloop``); empty before ``start()``."""
        return "" if self._loop is None else type(self._loop).__module__.split(".")[0]

    # ------------------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Listen on ``host:port`` (raises :class:`ServingError` when that fails)."""
        self._serving.start(f"{self.host}:{self.port}")

    def stop(self) -> None:
        self._serving.stop()

    async def _open(self, stack: contextlib.AsyncExitStack) -> None:
        """Open the routers on one upstream pool, then listen; what closes them goes on ``stack`` (run in reverse
        order: the server, then the routers, then the pool)."""
        max_body = self.max_body if self.enforce_limits else None
        server = self._server = HttpServer(self.handle, host=self.host, port=self.port,
                                           refuse=self.refuse_body, max_body=max_body, drain_limit=DRAIN_LIMIT,
                                           limits=self.limits)
        session = UpstreamPool()
        stack.push_async_callback(session.close)
        stack.push_async_callback(self._close_handlers)
        stack.push_async_callback(server.close)
        await self.router.open(session)
        if self.async_invocations is not None:
            await self.async_invocations.open(session)
        await server.start()

    async def _close_handlers(self) -> None:
        try:
            if self.async_invocations is not None:
                await self.async_invocations.close()
        finally:
            await self.router.close()

    # ------------------------------------------------------------------------------------ routes
    async def handle(self, request: Request) -> Response:
        """Every request the front's HTTP server reads (the routes of the module docstring)."""
        path, method = request.path, request.method
        if path == self._invocations_path:  # the hot route first
            if method != "POST":
                return _not_allowed("POST")
            return await self._answer(request, runtime_api=True)
        if path == "/invocations":
            if method != "POST":
                return _not_allowed("POST")
            return await self._answer(request, runtime_api=False)
        if path == "/ping":
            if method not in ("GET", "HEAD"):
                return _not_allowed("GET, HEAD")
            return Response(200, b'{"status": "Healthy"}', {"Content-Type": "application/json"})
        route = _ROUTE.fullmatch(path)
        if route is None:
            return plain(404, "404: Not Found")
        prefix, name, action = route.groups()
        if "%" in name:
            name = urllib.parse.unquote(name, errors="surrogateescape")
        if prefix == "endpoints":
            if action not in ("invocations", _ASYNC_ROUTE, _STREAM_ROUTE):
                return plain(404, "404: Not Found")
            if method != "POST":
                return _not_allowed("POST")
            if action == _STREAM_ROUTE:
                return self.error_response(validation_error(
                    "InvokeEndpointWithResponseStream is not emulated by smbyoc's endpoint front; use "
                    "InvokeEndpoint (or InvokeEndpointAsync on an asynchronous endpoint)"))
            if action == _ASYNC_ROUTE:
                return await self._async_invocations(request, name)
            if name == self.endpoint_name:  # (spelled with percent-escapes)
                return await self._answer(request, runtime_api=True)
            return self.error_response(validation_error(
                f"Endpoint {name} of account {LOCAL_ACCOUNT} not found. (This front serves {self.endpoint_name}.)"))
        if action is None:
            if method not in ("GET", "HEAD"):
                return _not_allowed("GET, HEAD")
            return self._describe(request, name)
        if action != "weights":
            return plain(404, "404: Not Found")
        if method != "POST":
            return _not_allowed("POST")
        return self._update_weights(request, name)

    def refuse_body(self, request: Request) -> Response:
        """The answer to a request whose body is over the 6 MB limit (the HTTP server reads and drops it)."""
        if request.path.endswith("/" + _ASYNC_ROUTE):
            return self.error_response(validation_error("the request body is over the front's limit"))
        if request.content_length is not None:
            return self.error_response(FrontError(413, "ValidationError", f"the request body has "
                                                  f"{request.content_length:,} bytes; the limit is "
                                                  f"{self.max_body:,} (6 MB)"))
        return self.error_response(FrontError(413, "ValidationError", f"the request body is over the limit of "
                                              f"{self.max_body:,} bytes (6 MB)"))

    def _controlled(self, request: Request, name: str) -> Control:
        """The control object, when the request names this endpoint and carries its token."""
        import hmac

        if self.control is None or name != self.endpoint_name:
            raise validation_error(f"Could not find endpoint \"{name}\".")
        given = request.headers.get(CONTROL_TOKEN_HEADER.lower(), "")  # (any bytes: decoded with surrogateescape)
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), self.control.token.encode()):
            raise FrontError(403, "AccessDeniedException", f"{CONTROL_TOKEN_HEADER} is missing or wrong")
        return self.control

    def _describe(self, request: Request, name: str) -> Response:
        try:
            answer = self._controlled(request, name).describe()
        except FrontError as e:
            return self.error_response(e)
        return _json(answer)

    def _update_weights(self, request: Request, name: str) -> Response:
        try:
            control = self._controlled(request, name)
            try:
                payload = json.loads(request.body)
                desired = payload["DesiredWeightsAndCapacities"]
                if not isinstance(desired, list) or not desired:
                    raise TypeError
            except (ValueError, KeyError, TypeError) as e:
                raise validation_error("expected {\"DesiredWeightsAndCapacities\": [{\"VariantName\": ..., "
                                       "\"DesiredWeight\": ...}, ...]}") from e
            control.update_weights(desired)
        except FrontError as e:
            return self.error_response(e)
        except Exception as e:
            log.exception("the endpoint front failed a weight update")
            return self.error_response(FrontError(500, "InternalFailure", f"{type(e).__name__}: {e}"))
        return _json({"EndpointArn": f"arn:aws:sagemaker:{LOCAL_REGION}:{LOCAL_ACCOUNT}:endpoint/"
                                     f"{self.endpoint_name}"})

    async def _async_invocations(self, request: Request, name: str) -> Response:
        """``POST /endpoints/{name}/async-invocations``: InvokeEndpointAsync, on an endpoint with an
        AsyncInferenceConfig only."""
        if name != self.endpoint_name:
            return self.error_response(validation_error(
                f"Endpoint {name} of account {LOCAL_ACCOUNT} not found. (This front serves {self.endpoint_name}.)"))
        if self.async_invocations is None:
            return self.error_response(validation_error(
                f"Endpoint {name} is not an asynchronous endpoint (it has no AsyncInferenceConfig); use "
                "InvokeEndpoint."))
        try:
            reply = await self.async_invocations.submit(request.headers, request.body)
        except FrontError as e:
            return self.error_response(e)
        except Exception as e:
            log.exception("the endpoint front failed an asynchronous invocation")
            return self.error_response(FrontError(500, "InternalFailure", f"{type(e).__name__}: {e}"))
        return Response(reply.status, reply.body, dict(reply.headers))

    async def _answer(self, request: Request, *, runtime_api: bool) -> Response:
        try:
            reply = await self.router.invoke(Call(request.body, forwarded_headers(request.headers, lowered=True)))
        except FrontError as e:
            return self.error_response(e)
        except Exception as e:
            log.exception("the endpoint front failed an invocation")
            return self.error_response(FrontError(500, "InternalFailure", f"{type(e).__name__}: {e}"))
        status = reply.status
        ok = 200 <= status < 300
        if ok and self.enforce_limits and len(reply.body) > MAX_BODY_BYTES:
            return self.error_response(FrontError(
                424, "ModelError", f"the model's response has {len(reply.body):,} bytes; the limit is "
                f"{MAX_BODY_BYTES:,} (6 MB)", OriginalStatusCode=status))
        headers = dict(reply.headers)
        if runtime_api:
            if not ok:
                return self.error_response(model_error(reply, self.endpoint_name))
            headers[VARIANT_HEADER] = reply.variant or self.variant_name
        return Response(status, reply.body, headers)

    @staticmethod
    def error_response(error: FrontError) -> Response:
        return Response(error.status, error_payload(error),
                        {"Content-Type": "application/json", ERROR_TYPE_HEADER: error.code})


def _not_allowed(allowed: str) -> Response:
    response = plain(405, "405: Method Not Allowed")
    return Response(405, response.body, {**response.headers, "Allow": allowed})


def _json(answer: Any) -> Response:
    return Response(200, json.dumps(answer).encode("utf-8"), {"Content-Type": "application/json; charset=utf-8"})
