"""What SageMaker does with an invocation of a multi-container endpoint (contract.md §6): the two
:class:`~smbyoc.emulator.front.Router` s the endpoint front runs.

* :class:`SerialRouter` (``InferenceExecutionConfig.Mode = Serial``, an inference pipeline): the client's
  request goes to the first container; each container's response body and ``Content-Type`` become the next
  container's request body and ``Content-Type``; the last container's answer (its ``Content-Type`` and custom
  attributes) is the endpoint's. Every other header the front forwards (``Accept``,
  ``X-Amzn-SageMaker-Custom-Attributes``, ``X-Amzn-SageMaker-Inference-Id``...) reaches every container as the
  client sent it. How SageMaker propagates ``Content-Type`` and ``Accept`` is **[UNCONFIRMED]** (contract.md
  §6); this is a choice, documented in docs/multi-container.md. A non-2xx answer ends the chain: it is the
  endpoint's answer, as a container's own answer is in a single-container endpoint.
* :class:`DirectRouter` (``Mode = Direct``): the one container named by
  ``X-Amzn-SageMaker-Target-Container-Hostname`` answers.

The three validation errors of direct invocation (DG ``multi-container-direct.md``): the header names no
container of the endpoint; the header is missing on a Direct endpoint; the header is given on an endpoint that is
not Direct. SageMaker's exact wording is **[UNCONFIRMED]**: ours names the header and the endpoint's containers.

Every answer carries :data:`CONTAINER_HEADER`, the hostname of the container that produced it (the last one of
a pipeline, the one that failed, the one targeted). It is smbyoc's header, not SageMaker's: SageMaker names the
container in its ``ModelError`` message (``Received server error (500) from <hostname> with message ...``,
wording **[UNCONFIRMED]**), which a client can reproduce from it.

Per hop the routers allocate nothing but the answer: the target URLs are built once, the front's session (its
:class:`~smbyoc.emulator.upstream.UpstreamPool`) keeps the connections to the containers alive, and the one header
mapping of a request is updated in place from hop to hop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from smbyoc.emulator.front import INVOCATION_TIMEOUT, Call, Reply, post, validation_error

log = logging.getLogger(__name__)

TARGET_HOSTNAME_HEADER = "X-Amzn-SageMaker-Target-Container-Hostname"
#: smbyoc's own response header: the hostname of the container whose answer this is.
CONTAINER_HEADER = "X-Smbyoc-Container-Hostname"
SERIAL = "Serial"
DIRECT = "Direct"
EXECUTION_MODES = (SERIAL, DIRECT)


@dataclass(frozen=True)
class Target:
    """One container of the endpoint: its hostname and its ``/invocations`` URL."""

    hostname: str
    url: str

    @classmethod
    def at(cls, hostname: str, base_url: str) -> Target:
        return cls(hostname, base_url.rstrip("/") + "/invocations")


def _answer(reply: Reply, hostname: str) -> Reply:
    if not reply.ok:
        log.warning("container %s answered %d: %s", hostname, reply.status,
                    reply.body[:300].decode("utf-8", "replace"))
    return Reply(reply.status, reply.body, {**reply.headers, CONTAINER_HEADER: hostname}, container=hostname)


class _Router:
    def __init__(self, targets: Sequence[Target], *, timeout: float = INVOCATION_TIMEOUT) -> None:
        if not targets:
            raise ValueError("a multi-container endpoint needs containers")
        self.targets = tuple(targets)
        self.timeout = timeout
        self.names = ", ".join(t.hostname for t in self.targets)
        self._session: Any = None

    async def open(self, session: Any) -> None:
        self._session = session

    async def close(self) -> None:
        self._session = None


class SerialRouter(_Router):
    """An inference pipeline: container 1's answer is container 2's request, and so on (module docstring).

    The 60 s invocation limit holds for the whole chain: each container gets what is left of it."""

    async def invoke(self, call: Call) -> Reply:
        if call.header(TARGET_HOSTNAME_HEADER) is not None:
            raise validation_error(
                f"TargetContainerHostname ({TARGET_HOSTNAME_HEADER}) is only for an endpoint configured for "
                "direct invocation; this endpoint's InferenceExecutionConfig mode is Serial")
        deadline = time.monotonic() + self.timeout
        headers = dict(call.headers)
        body = call.body
        last = len(self.targets) - 1
        for position, target in enumerate(self.targets):
            # what is left of the chain's 60 s; none left: post answers the ModelError of a timeout
            reply = await post(self._session, target.url, body, headers, timeout=deadline - time.monotonic(),
                               what=f"container {target.hostname}")
            if position == last or not reply.ok:
                return _answer(reply, target.hostname)
            body = reply.body
            content_type = reply.content_type
            if content_type is None:
                headers.pop("Content-Type", None)
            else:
                headers["Content-Type"] = content_type
        raise AssertionError("unreachable")  # pragma: no cover


class DirectRouter(_Router):
    """Direct invocation: the container named by ``X-Amzn-SageMaker-Target-Container-Hostname`` answers."""

    def __init__(self, targets: Sequence[Target], *, timeout: float = INVOCATION_TIMEOUT) -> None:
        super().__init__(targets, timeout=timeout)
        self.by_hostname = {t.hostname: t for t in self.targets}

    async def invoke(self, call: Call) -> Reply:
        hostname = call.header(TARGET_HOSTNAME_HEADER)
        if hostname is None:
            raise validation_error(
                f"TargetContainerHostname ({TARGET_HOSTNAME_HEADER}) is required: this endpoint is configured for "
                f"direct invocation (its containers: {self.names})")
        target = self.by_hostname.get(hostname)
        if target is None:
            raise validation_error(
                f"TargetContainerHostname {hostname!r} does not exist in the endpoint (its containers: "
                f"{self.names})")
        reply = await post(self._session, target.url, call.body, call.headers, timeout=self.timeout,
                           what=f"container {target.hostname}")
        return _answer(reply, target.hostname)


def make_router(execution_mode: str, targets: Sequence[Target], *,
                timeout: float = INVOCATION_TIMEOUT) -> SerialRouter | DirectRouter:
    """The router of an endpoint whose ``InferenceExecutionConfig.Mode`` is ``execution_mode``."""
    if execution_mode == SERIAL:
        return SerialRouter(targets, timeout=timeout)
    if execution_mode == DIRECT:
        return DirectRouter(targets, timeout=timeout)
    raise ValueError(f"unknown InferenceExecutionConfig mode {execution_mode!r} (expected "
                     f"{' or '.join(EXECUTION_MODES)})")
