"""What became of one asynchronous request: the object to write (output or failure, §6.3) and the notification
that reports it (§6.4). Pure functions of the stored :class:`~.queue.Record` and the container's answer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from smbyoc.emulator.async_inference import notifications as notes
from smbyoc.emulator.async_inference.queue import Record
from smbyoc.emulator.async_inference.storage import Location, as_uri, from_text
from smbyoc.emulator.front import Reply

#: How much of a container's error body a ``failureReason`` quotes.
REASON_BODY_LIMIT = 1024
TEXT = "text/plain"


@dataclass(frozen=True)
class Outcome:
    """``ok``: a 2xx answer, ``data`` goes to the output location; otherwise ``data`` goes to the failure
    location and ``reason`` is the notification's ``failureReason``. ``response`` is the container's body, when
    there was one (what ``IncludeInferenceResponseIn`` may include): ``data`` itself."""

    ok: bool
    location: Location
    data: bytes
    content_type: str | None = None
    reason: str | None = None
    response: bytes | None = None
    expired: bool = False

    def info(self) -> dict[str, Any]:
        """Everything but the bytes, as JSON values (what the queue keeps beside a result waiting for S3)."""
        return {"ok": self.ok, "location": str(self.location), "content_type": self.content_type,
                "reason": self.reason, "has_response": self.response is not None, "expired": self.expired}

    @classmethod
    def from_info(cls, described: Mapping[str, Any], data: bytes) -> Outcome:
        """The outcome :meth:`info` and ``data`` stand for."""
        return cls(bool(described["ok"]), from_text(str(described["location"])), data, described.get("content_type"),
                   described.get("reason"), data if described.get("has_response") else None,
                   bool(described.get("expired")))


def failure(record: Record, reason: str, *, expired: bool = False) -> Outcome:
    """A failure the platform reports itself: the failure object is ``reason`` as text."""
    return Outcome(False, from_text(record.failure_path), reason.encode("utf-8"), TEXT, reason, expired=expired)


def from_reply(record: Record, reply: Reply) -> Outcome:
    """A container's answer: 2xx → its body at the output location; otherwise its body, as it is, at the
    failure location, and InvokeEndpoint's ModelError wording as the reason."""
    if reply.ok:
        return Outcome(True, from_text(record.output_path), reply.body, reply.content_type, response=reply.body)
    from smbyoc.emulator.runtime_client import model_error_message

    text = reply.body.decode("utf-8", "replace")
    if len(text) > REASON_BODY_LIMIT:
        text = text[:REASON_BODY_LIMIT] + "..."
    reason = "ClientError: " + model_error_message(reply.status, text, reply.container or "primary")
    return Outcome(False, from_text(record.failure_path), reply.body, reply.content_type, reason,
                   response=reply.body)


def expired(record: Record, now: float) -> Outcome:
    return failure(record, f"RequestExpired: the request waited {now - record.accepted_at:.0f} s in the queue, "
                           f"longer than its RequestTTLSeconds ({record.ttl_seconds})", expired=True)


def interrupted(record: Record, attempts: int) -> Outcome:
    return failure(record, f"InternalFailure: the endpoint stopped {attempts} times while this request was in "
                           "flight; it is not retried again")


def timed_out(record: Record) -> Outcome:
    return failure(record, "ModelError: Your invocation timed out while waiting for a response from primary "
                           f"(InvocationTimeoutSeconds {record.timeout_seconds}). Review the endpoint's log.")


def message(record: Record, outcome: Outcome, *, endpoint_name: str, region: str, now: float,
            include_response: bool) -> dict[str, Any]:
    """The ``InferenceResult`` notification for ``outcome`` (§6.4; the failure members are **[UNCONFIRMED]**)."""
    request = notes.request_parameters(
        content_type=record.content_type, accept=record.accept, endpoint_name=endpoint_name,
        input_location=None if record.input_path is None else as_uri(from_text(record.input_path)))
    response: dict[str, str] = {}
    if outcome.content_type is not None and outcome.response is not None:
        response["contentType"] = outcome.content_type
    response["outputLocation" if outcome.ok else "failureLocation"] = as_uri(outcome.location)
    if include_response and outcome.response is not None:
        response.update(notes.included_response(outcome.response))
    return notes.result_message(region=region, event_seconds=now, received_seconds=record.accepted_at,
                                status="Completed" if outcome.ok else "Failed", request=request, response=response,
                                inference_id=record.inference_id, failure_reason=outcome.reason)
