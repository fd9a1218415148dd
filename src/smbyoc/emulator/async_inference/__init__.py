"""Asynchronous inference for emulated endpoints (contract-endpoints.md §6; docs/async-inference.md).

An endpoint whose configuration has an ``AsyncInferenceConfig`` answers ``InvokeEndpointAsync``
(``POST /endpoints/{name}/async-invocations``) and refuses ``InvokeEndpoint``. The parts:

* :mod:`.request`: the request headers, their limits, the result locations;
* :mod:`.settings`: ``AsyncInferenceConfig`` as the emulator runs it;
* :mod:`.queue`: the persistent FIFO queue (one directory per endpoint, fsync before the 202);
* :mod:`.storage`: payloads read and results written at local paths or S3 locations (worker threads only);
* :mod:`.outcome`: what became of a request (output or failure object) and its notification;
* :mod:`.notifications`: SNS stand-ins (JSON Lines files, commands) and the message schema;
* :mod:`.endpoint`: :class:`AsyncEndpoint`, the front's ``AsyncInvocations`` handler that runs it all.
"""

from __future__ import annotations

from smbyoc.emulator.async_inference.endpoint import (
    MAX_ATTEMPTS,
    AsyncEndpoint,
    AsyncStats,
    current_invocation_timeout,
)
from smbyoc.emulator.async_inference.request import refusal
from smbyoc.emulator.async_inference.settings import DEFAULT_MAX_CONCURRENCY

__all__ = ["DEFAULT_MAX_CONCURRENCY", "MAX_ATTEMPTS", "AsyncEndpoint", "AsyncStats", "current_invocation_timeout",
           "refusal"]
