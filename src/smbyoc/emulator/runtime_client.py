"""A client for an emulated endpoint that behaves like SageMaker's ``InvokeEndpoint``.

SageMaker limits request and response bodies to 6 MB (6,291,456 bytes) and the container's answer to
60 s; a non-2xx answer from the container reaches the caller as ``ModelError`` (HTTP 424) carrying the
``OriginalStatusCode`` and ``OriginalMessage`` (contract.md §3.3), worded as SageMaker words it
(:func:`model_error_message`). Uses ``http.client`` directly so no
proxy setting can divert requests meant for 127.0.0.1.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from smbyoc.errors import SmbyocError

#: BOTO ``BodyBlob.max``: both the InvokeEndpoint request and the response body.
MAX_BODY_BYTES = 6 * 1024 * 1024
#: The container must answer /invocations within 60 s.
INVOCATION_TIMEOUT = 60.0
#: Set by a multi-container endpoint's front on every answer: the container that gave it (smbyoc's own header).
CONTAINER_HOSTNAME_HEADER = "x-smbyoc-container-hostname"
#: /ping must answer within 2 s.
PING_TIMEOUT = 2.0


class InvokeError(SmbyocError):
    """An invocation SageMaker would have refused or failed; ``error_code`` is SageMaker's name."""

    def __init__(self, error_code: str, message: str, *, status: int = 400, original_status: int | None = None,
                 original_message: str | None = None) -> None:
        super().__init__(f"{error_code}: {message}")
        self.error_code = error_code
        self.status = status
        self.original_status = original_status
        self.original_message = original_message


@dataclass(frozen=True)
class InvocationResponse:
    status: int
    body: bytes
    content_type: str | None
    custom_attributes: str | None
    headers: Mapping[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def _split(url: str) -> tuple[str, int, str]:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "http" or not parsed.hostname:
        raise SmbyocError(f"--url {url!r}: expected http://HOST:PORT")
    return parsed.hostname, parsed.port or 80, parsed.path.rstrip("/")


def request(url: str, method: str, path: str, body: bytes | Iterable[bytes] | None = None,
            headers: Mapping[str, str] | None = None, timeout: float = INVOCATION_TIMEOUT) -> InvocationResponse:
    """One request; an iterable ``body`` with no Content-Length header is sent with chunked encoding."""
    host, port, prefix = _split(url)
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    start = time.monotonic()
    try:
        connection.request(method, prefix + path, body=body, headers=dict(headers or {}))
        answer = connection.getresponse()
        data = answer.read()
        return InvocationResponse(
            status=answer.status, body=data, content_type=answer.getheader("Content-Type"),
            custom_attributes=answer.getheader("X-Amzn-SageMaker-Custom-Attributes"),
            headers={k: v for k, v in answer.getheaders()}, seconds=time.monotonic() - start,
        )
    finally:
        connection.close()


def ping(url: str, timeout: float = PING_TIMEOUT) -> tuple[int, bytes]:
    """``GET /ping`` with SageMaker's 2-s limit: (status, body), status 0 when nothing answered in time."""
    try:
        response = request(url, "GET", "/ping", timeout=timeout)
    except (OSError, http.client.HTTPException):
        return 0, b""
    return response.status, response.body


def invoke(
    url: str,
    body: bytes,
    *,
    content_type: str | None = None,
    accept: str | None = None,
    custom_attributes: str | None = None,
    target_model: str | None = None,
    inference_id: str | None = None,
    target_container_hostname: str | None = None,
    enforce_limits: bool = True,
    timeout: float = INVOCATION_TIMEOUT,
    chunked: bool = False,
) -> InvocationResponse:
    """``POST /invocations`` the way InvokeEndpoint does; raises InvokeError where SageMaker would fail.

    ``chunked``: send the body with chunked transfer encoding (batch transform's ``MaxPayloadInMB=0``)."""
    if enforce_limits and len(body) > MAX_BODY_BYTES:
        raise InvokeError("ValidationError", f"request body has {len(body):,} bytes; the limit is "
                          f"{MAX_BODY_BYTES:,} (6 MB)")
    if custom_attributes is not None and (len(custom_attributes) > 1024 or not custom_attributes.isascii()):
        raise InvokeError("ValidationError", "X-Amzn-SageMaker-Custom-Attributes must be at most 1024 "
                          "visible US-ASCII characters")
    headers = {} if chunked else {"Content-Length": str(len(body))}
    for name, value in (("Content-Type", content_type), ("Accept", accept),
                        ("X-Amzn-SageMaker-Custom-Attributes", custom_attributes),
                        ("X-Amzn-SageMaker-Target-Model", target_model),
                        ("X-Amzn-SageMaker-Inference-Id", inference_id),
                        ("X-Amzn-SageMaker-Target-Container-Hostname", target_container_hostname)):
        if value is not None:
            headers[name] = value
    try:
        response = request(url, "POST", "/invocations", iter([body]) if chunked else body, headers, timeout=timeout)
    except TimeoutError as e:
        raise InvokeError("ModelError", f"the model did not answer within {timeout:g} s", status=424,
                          original_status=None) from e
    except (OSError, http.client.HTTPException) as e:
        raise InvokeError("ServiceUnavailable", f"no endpoint answers at {url}: {e}", status=503) from e
    if enforce_limits and len(response.body) > MAX_BODY_BYTES:
        raise InvokeError("ModelError", f"the model's response has {len(response.body):,} bytes; the limit is "
                          f"{MAX_BODY_BYTES:,} (6 MB)", status=424, original_status=response.status)
    platform_error = platform_error_of(response)
    if platform_error is not None:
        raise platform_error
    if not 200 <= response.status < 300:
        message = response.body.decode("utf-8", "replace")
        container = next((v for k, v in response.headers.items() if k.lower() == CONTAINER_HOSTNAME_HEADER), None)
        raise InvokeError("ModelError", model_error_message(response.status, message, container or "primary"),
                          status=424,
                          original_status=response.status, original_message=message)
    return response


def platform_error_of(response: InvocationResponse) -> InvokeError | None:
    """The error an endpoint front answered itself (``X-Amzn-ErrorType`` and a JSON ``message``,
    :mod:`smbyoc.emulator.front`), as an :class:`InvokeError`; None for a container's own answer."""
    code = next((v for k, v in response.headers.items() if k.lower() == "x-amzn-errortype"), None)
    if code is None:
        return None
    try:
        payload = json.loads(response.body)
    except ValueError:
        payload = {}
    if not isinstance(payload, dict):
        payload = {}
    message = str(payload.get("message") or payload.get("Message") or response.body.decode("utf-8", "replace"))
    original = payload.get("OriginalStatusCode")
    return InvokeError(code.split(":")[0], message, status=response.status,
                       original_status=original if isinstance(original, int) else None,
                       original_message=payload.get("OriginalMessage"))


def model_error_message(status: int, message: str, container: str = "primary") -> str:
    """SageMaker's ``ModelError`` message for a container's non-2xx answer.

    ``Received client error (4xx) ...`` / ``Received server error (5xx) from primary with message "..."``
    as InvokeEndpoint words it (``primary``: the endpoint's container); SageMaker then points to the
    endpoint's CloudWatch log group, here the endpoint's log (``local-serve``'s output).
    """
    kind = "server" if status >= 500 else "client"
    return (f"Received {kind} error ({status}) from {container} with message \"{message}\". "
            "See the endpoint's log for more information.")


def wait_until_healthy(
    url: str,
    timeout: float,
    *,
    interval: float = 0.25,
    alive: Callable[[], str | None] | None = None,
) -> float:
    """Poll ``/ping`` (2 s per request, every ``interval`` ≤ 0.25 s) until 200; the seconds it took.

    ``alive()`` returns None while the server runs, or why it stopped; then polling ends at once.
    """
    from smbyoc.errors import ServingError

    start = time.monotonic()
    last: tuple[int, bytes] = (0, b"")
    while True:
        attempt = time.monotonic()
        last = ping(url)
        if last[0] == 200:
            return time.monotonic() - start
        why = alive() if alive is not None else None
        if why is not None:
            raise ServingError(why)
        if time.monotonic() - start > timeout:
            detail = f"{last[0]} {last[1].decode('utf-8', 'replace')[:300]}".strip() if last[0] else "no answer"
            raise ServingError(f"/ping at {url} did not answer 200 within the startup health check timeout of "
                               f"{timeout:g} s (last: {detail})")
        time.sleep(max(0.0, interval - (time.monotonic() - attempt)))
