"""A sequence of SageMaker API calls (``CreateModel`` ... ``CreateEndpoint``), in the order they must be sent."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

#: Operations that can be sent more than once in one sequence (their requests print as a list).
REPEATABLE = ("CreateModel",)


@dataclass(frozen=True)
class ApiRequests:
    """``(operation, request)`` pairs, in the order SageMaker needs them."""

    calls: tuple[tuple[str, Mapping[str, Any]], ...]

    def __iter__(self) -> Iterator[tuple[str, Mapping[str, Any]]]:
        return iter(self.calls)

    def get(self, operation: str) -> Mapping[str, Any] | None:
        """The (last) request of ``operation``, or None."""
        found = [request for name, request in self.calls if name == operation]
        return found[-1] if found else None

    def to_document(self) -> dict[str, Any]:
        """What ``--print-request`` prints: operation → request (``CreateModel`` → a list of requests), in order.
        ``jq .CreateTrainingJob`` gives a file for ``aws sagemaker create-training-job --cli-input-json``."""
        document: dict[str, Any] = {}
        for operation, request in self.calls:
            if operation in REPEATABLE:
                document.setdefault(operation, []).append(dict(request))
            else:
                document[operation] = dict(request)
        return document
