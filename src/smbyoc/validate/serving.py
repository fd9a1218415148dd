"""Serving checks: the image run by the emulator's endpoint engine, ``docker run IMAGE serve``.

The endpoint is :class:`~smbyoc.emulator.endpoint.DockerEndpoint`: the model read-only at ``/opt/ml/model``,
the instance type's limits, ``/ping`` polled with SageMaker's rules (2 s per request) within the startup
health check window (240 s by default). Then, on that one container:

* ``serve-ping``: healthy within the window, and three more pings each answered 200 within 2 s;
* ``serve-invocations``: ``POST /invocations`` with the user's sample payload answers 2xx within 60 s
  (:func:`smbyoc.emulator.runtime_client.invoke`, InvokeEndpoint's rules);
* ``serve-payload-limit``: a body of 6 MB + 1 byte (SageMaker never sends one) is refused with 413, or at
  least the server survives it;
* ``serve-sigterm``: SIGTERM, and the container must exit within the endpoint stop timeout (30 s) before
  SageMaker's SIGKILL.

``serve-bind-to-port`` runs a second container with ``SAGEMAKER_BIND_TO_PORT`` when the image carries
``com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true`` (contract.md §6).
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smbyoc.emulator.endpoint import DockerEndpoint, EndpointSpec
from smbyoc.emulator.runtime_client import INVOCATION_TIMEOUT, MAX_BODY_BYTES, PING_TIMEOUT, InvokeError, invoke, ping
from smbyoc.errors import ServingError
from smbyoc.serving.ports import free_port
from smbyoc.validate.checks import SERVING_CHECKS
from smbyoc.validate.context import LogTail, ValidateContext
from smbyoc.validate.image import ACCEPT_BIND_TO_PORT_LABEL
from smbyoc.validate.report import CheckResult, failed, not_applicable, passed

log = logging.getLogger(__name__)

GROUP = "serving"
CHECKS = SERVING_CHECKS
#: SageMaker: SIGTERM, then SIGKILL 30 s later, for endpoint containers.
ENDPOINT_STOP_TIMEOUT = 30.0
#: The startup health check window (ContainerStartupHealthCheckTimeoutInSeconds default, 4 minutes).
STARTUP_HEALTH_TIMEOUT = 240.0
DEFAULT_PORT = 8080
#: The port the bind-to-port check asks for (any port but 8080 would do).
BIND_TO_PORT = 8089
OVERSIZED_BODY = MAX_BODY_BYTES + 1
#: Pings after the first 200, each within SageMaker's 2 s.
EXTRA_PINGS = 3

Record = Callable[[CheckResult], None]


@dataclass(frozen=True)
class ServingInputs:
    model_data: Path | None = None
    payload: bytes | None = None
    #: Where the payload came from, for messages.
    payload_name: str = ""
    content_type: str = "text/csv"
    accept: str | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    description: str = ""


def example_inputs(client: Any, train_image: Callable[[], str]) -> ServingInputs:
    """smbyoc's bundled default example: its trained model and rows of its validation data.

    The model is trained once (in ``train_image()``, asked for only then) and cached."""
    from smbyoc.emulator import default_model
    from smbyoc.examples import default_example

    example = default_example()
    cached = default_model.cache_dir() / "default-model" / default_model.example_digest() / "model.tar.gz"
    model = cached if cached.is_file() else default_model.default_model("docker", client, train_image())
    csv_file = sorted(example.channels["validation"].glob("*.csv"))[0]
    lines = csv_file.read_text(encoding="utf-8").splitlines()
    label = "label"
    header = lines[0].split(",")
    keep = [i for i, name in enumerate(header) if name != label]
    rows = [",".join(row.split(",")[i] for i in keep) for row in [lines[0], *lines[1:4]]]
    return ServingInputs(model_data=model, payload=("\n".join(rows) + "\n").encode(),
                         payload_name=f"{csv_file.name} rows", content_type="text/csv",
                         description="the bundled default example's model")


@dataclass(frozen=True)
class ServingSettings:
    startup_timeout: float = STARTUP_HEALTH_TIMEOUT
    stop_timeout: float = ENDPOINT_STOP_TIMEOUT


class ValidateEndpoint(DockerEndpoint):
    """The emulator's Docker endpoint, cancellable at any moment (:meth:`cancel`), optionally with chosen
    container ports published to chosen host ports on 127.0.0.1 (``ports``; default: 8080 to ``spec.port``)."""

    def __init__(self, spec: EndpointSpec, client: Any, image: str, sink: Callable[[str], None],
                 ports: Mapping[int, int] | None = None) -> None:
        super().__init__(spec, client, image, sink)
        self.port_map = dict(ports or {})
        self.cancelled = threading.Event()

    def container_args(self) -> dict[str, Any]:
        args = super().container_args()
        if self.port_map:
            args["ports"] = {f"{inside}/tcp": ("127.0.0.1", outside) for inside, outside in self.port_map.items()}
        return args

    def _start(self) -> None:
        if self.cancelled.is_set():
            raise ServingError("stopped before it started")
        super()._start()
        if self.cancelled.is_set():  # cancelled while the container was being created
            self.kill()

    def _exit_reason(self) -> str | None:
        if self.cancelled.is_set():
            return "stopped by validate"
        return super()._exit_reason()

    def cancel(self) -> None:
        self.cancelled.set()
        self.kill()


def _spec(ctx: ValidateContext, inputs: ServingInputs, settings: ServingSettings, port: int,
          environment: Mapping[str, str] | None = None) -> EndpointSpec:
    return EndpointSpec(model_data=inputs.model_data, port=port, bind_address="127.0.0.1",
                        environment={**inputs.environment, **(environment or {})},
                        startup_health_timeout=settings.startup_timeout, instance_type=ctx.instance_type,
                        stop_timeout=settings.stop_timeout, name_prefix="smbyoc-validate")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


# ----------------------------------------------------------------------------------------- the checks
def check_pings(url: str, startup: float, settings: ServingSettings) -> CheckResult:
    name = "serve-ping"
    times = []
    for _ in range(EXTRA_PINGS):
        started = time.monotonic()
        status, _ = ping(url, PING_TIMEOUT)
        took = time.monotonic() - started
        if status != 200:
            what = f"answered {status}" if status else f"did not answer within {PING_TIMEOUT:g} s"
            return failed(name, f"healthy after {startup:.1f} s, but then /ping {what} (SageMaker pings every few "
                                "seconds and takes the instance out of service)", group=GROUP, seconds=startup)
        times.append(took)
    return passed(name, f"200 after {startup:.1f} s (window {settings.startup_timeout:g} s); {EXTRA_PINGS} more pings "
                        f"answered in at most {max(times) * 1000:.0f} ms (limit {PING_TIMEOUT:g} s)",
                  group=GROUP, seconds=startup)


def check_invocations(url: str, inputs: ServingInputs, timeout: float) -> CheckResult:
    name = "serve-invocations"
    if inputs.payload is None:
        return not_applicable(name, "no sample payload: give one with --payload FILE (and --content-type)", group=GROUP)
    started = time.monotonic()
    try:
        response = invoke(url, inputs.payload, content_type=inputs.content_type, accept=inputs.accept,
                          timeout=min(INVOCATION_TIMEOUT, timeout))
    except InvokeError as e:
        return failed(name, f"{inputs.payload_name} ({len(inputs.payload):,} bytes, {inputs.content_type}): {e}",
                      group=GROUP, seconds=time.monotonic() - started)
    answer = f"{response.status} {response.content_type or '(no Content-Type)'}, {len(response.body):,} bytes"
    return passed(name, f"{answer} in {response.seconds * 1000:.0f} ms for {inputs.payload_name} "
                        f"({len(inputs.payload):,} bytes, {inputs.content_type})", group=GROUP,
                  seconds=response.seconds)


def post_oversized(url: str, size: int, content_type: str, timeout: float) -> tuple[int | None, str]:
    """POST ``size`` bytes to ``/invocations`` without waiting for the server to read them all.

    Returns (status, "") when an answer came (a server may answer 413 before reading the body), else
    (None, what the server did, worded to follow "the server": "closed the connection without an answer").
    The body is sent as the server takes it; as soon as an answer arrives, sending stops.
    """
    parsed = urllib.parse.urlsplit(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    head = (f"POST /invocations HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {size}\r\nConnection: close\r\n\r\n").encode()
    chunk = b"0\n" * 32768
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        return None, f"could not be reached ({e})"
    with sock:
        sock.setblocking(False)
        pending = memoryview(head)
        sent = 0
        answer = b""
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None, f"gave no answer within {timeout:g} s"
                want_write = [sock] if (pending or sent < size) else []
                readable, writable, _ = select.select([sock], want_write, [], min(left, 1.0))
                if readable:
                    data = sock.recv(65536)
                    if not data:
                        break
                    answer += data
                    if b"\r\n" in answer:
                        break
                    continue
                if writable:
                    if not pending:
                        n = min(len(chunk), size - sent)
                        pending = memoryview(chunk[:n])
                        sent += n
                    try:
                        written = sock.send(pending)
                    except BlockingIOError:
                        continue
                    pending = pending[written:]
        except OSError as e:
            if not answer:
                return None, f"broke the connection ({e.strerror or e})"
        status_line = answer.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split()
        if len(parts) >= 2 and parts[0].startswith("HTTP/") and parts[1].isdigit():
            return int(parts[1]), ""
        if not answer:
            return None, "closed the connection without an answer"
        return None, f"answered something that is not HTTP ({status_line[:60]!r})"


def check_payload_limit(url: str, endpoint: DockerEndpoint, inputs: ServingInputs, timeout: float,
                        log_text: Callable[[], str]) -> CheckResult:
    name = "serve-payload-limit"
    started = time.monotonic()
    status, what = post_oversized(url, OVERSIZED_BODY, inputs.content_type, min(INVOCATION_TIMEOUT, timeout))
    seconds = time.monotonic() - started
    body = f"a {OVERSIZED_BODY:,}-byte body (6 MB + 1)"
    if status == 413:
        return passed(name, f"413 for {body}", group=GROUP, seconds=seconds)
    answered = ping(url, PING_TIMEOUT)[0] == 200
    gone = endpoint._exit_reason()
    alive = answered and gone is None
    got = f"answered {status}" if status is not None else what
    if not alive:
        why = gone or "/ping no longer answers 200"
        return failed(name, f"{body} brought the server down (it {got}; then {why})", group=GROUP, seconds=seconds,
                      log=log_text())
    if status is None and what.startswith("gave no answer"):
        return failed(name, f"the server {what} to {body} (InvokeEndpoint gives up after 60 s)", group=GROUP,
                      seconds=seconds)
    return passed(name, f"the server {got} (not 413) to {body} and kept serving; SageMaker itself refuses bodies "
                        "over 6 MB", group=GROUP, seconds=seconds)


def check_sigterm(endpoint: DockerEndpoint, settings: ServingSettings, log_text: Callable[[], str]) -> CheckResult:
    name = "serve-sigterm"
    gone = endpoint._exit_reason()
    if gone is not None:
        return not_applicable(name, f"not tested: {gone} before SIGTERM", group=GROUP)
    sent = time.monotonic()
    endpoint.terminate()
    deadline = sent + settings.stop_timeout
    while time.monotonic() < deadline:
        gone = endpoint._exit_reason()
        if gone is not None:
            after = time.monotonic() - sent
            return passed(name, f"{gone}, {after:.1f} s after SIGTERM (SIGKILL after {settings.stop_timeout:g} s)",
                          group=GROUP, seconds=after)
        time.sleep(0.1)
    endpoint.kill()
    return failed(name, f"still running {settings.stop_timeout:g} s after SIGTERM, so SageMaker would SIGKILL it: "
                        "PID 1 must handle SIGTERM or forward it (exec-form ENTRYPOINT, exec in shell scripts)",
                  group=GROUP, seconds=settings.stop_timeout, log=log_text())


def wait_on_bound_port(endpoint: ValidateEndpoint, bound_url: str, default_url: str,
                       timeout: float) -> tuple[str, float]:
    """Poll both ports until one answers /ping 200: ("bound" | "default", seconds); ServingError otherwise."""
    started = time.monotonic()
    while True:
        attempt = time.monotonic()
        if ping(bound_url, PING_TIMEOUT)[0] == 200:
            return "bound", time.monotonic() - started
        if ping(default_url, PING_TIMEOUT)[0] == 200:
            return "default", time.monotonic() - started
        gone = endpoint._exit_reason()
        if gone is not None:
            raise ServingError(gone)
        if time.monotonic() - started > timeout:
            raise ServingError(f"nothing answered /ping 200 within {timeout:g} s")
        time.sleep(max(0.0, 0.25 - (time.monotonic() - attempt)))


def check_bind_to_port(ctx: ValidateContext, inputs: ServingInputs, settings: ServingSettings) -> CheckResult:
    name = "serve-bind-to-port"
    if not ctx.facts.claims_bind_to_port:
        return not_applicable(name, f"the image does not carry {ACCEPT_BIND_TO_PORT_LABEL}=true (only images for "
                                    "inference pipelines and multi-container endpoints need it)", group=GROUP)
    bound, default = free_port(), free_port()
    tail = LogTail()
    spec = _spec(ctx, inputs, settings, bound, {"SAGEMAKER_BIND_TO_PORT": str(BIND_TO_PORT)})
    endpoint = ValidateEndpoint(spec, ctx.client, ctx.image, tail, {BIND_TO_PORT: bound, DEFAULT_PORT: default})
    ctx.say(f"serving: second container with SAGEMAKER_BIND_TO_PORT={BIND_TO_PORT}")
    try:
        with ctx.canceller.active(endpoint.cancel):
            endpoint.launch()
            where, seconds = wait_on_bound_port(endpoint, f"http://127.0.0.1:{bound}", f"http://127.0.0.1:{default}",
                                                settings.startup_timeout)
    except ServingError as e:
        return failed(name, f"the image claims {ACCEPT_BIND_TO_PORT_LABEL}=true, but with SAGEMAKER_BIND_TO_PORT="
                            f"{BIND_TO_PORT}: {_first_line(str(e))}", group=GROUP, log=tail.text())
    finally:
        endpoint.kill()
        endpoint.close()
    if where == "default":
        return failed(name, f"the image claims {ACCEPT_BIND_TO_PORT_LABEL}=true, but with SAGEMAKER_BIND_TO_PORT="
                            f"{BIND_TO_PORT} it still listens on {DEFAULT_PORT}", group=GROUP, seconds=seconds,
                      log=tail.text())
    return passed(name, f"/ping answered 200 on port {BIND_TO_PORT} (SAGEMAKER_BIND_TO_PORT) after {seconds:.1f} s",
                  group=GROUP, seconds=seconds)


def run_serving_checks(ctx: ValidateContext, inputs: ServingInputs, settings: ServingSettings, record: Record,
                       skip: frozenset[str] = frozenset()) -> None:
    """Start the endpoint and run the wanted checks on it; ``record`` gets each result as soon as it is known."""
    if not {"serve-ping", "serve-invocations", "serve-payload-limit", "serve-sigterm"} <= skip:
        tail = LogTail()
        endpoint = ValidateEndpoint(_spec(ctx, inputs, settings, free_port()), ctx.client, ctx.image, tail)
        what = f" with {inputs.description}" if inputs.description else ""
        ctx.say(f"serving: docker run {ctx.image} serve{what}")
        with ctx.canceller.active(endpoint.cancel):
            try:
                try:
                    startup = endpoint.start()
                except ServingError as e:
                    # the first wanted check fails with why (serve-ping, unless it was skipped); the others cannot run
                    wanted = [c for c in ("serve-ping", "serve-invocations", "serve-payload-limit", "serve-sigterm",
                                          "serve-bind-to-port") if c not in skip]
                    record(failed(wanted[0], f"{_first_line(str(e))}", group=GROUP, log=tail.text()))
                    for check in wanted[1:]:
                        record(not_applicable(check, "not tested: the endpoint never became healthy", group=GROUP))
                    return
                url = endpoint.url
                steps: tuple[tuple[str, Callable[[], CheckResult]], ...] = (
                    ("serve-ping", lambda: check_pings(url, startup, settings)),
                    ("serve-invocations", lambda: check_invocations(url, inputs, ctx.timeout)),
                    ("serve-payload-limit", lambda: check_payload_limit(url, endpoint, inputs, ctx.timeout, tail.text)),
                    ("serve-sigterm", lambda: check_sigterm(endpoint, settings, tail.text)),
                )
                for name, step in steps:
                    if name not in skip and not ctx.canceller.cancelled.is_set():
                        record(step())
            finally:
                endpoint.close()
    if "serve-bind-to-port" not in skip and not ctx.canceller.cancelled.is_set():
        record(check_bind_to_port(ctx, inputs, settings))
