"""The errors the API answers, with the codes of botocore's sagemaker service model."""

from __future__ import annotations

from smbyoc.errors import SmbyocError

#: Error codes (BOTO-SM ``ResourceNotFound``, ``ResourceInUse``, ``ResourceLimitExceeded``; ``ValidationException``
#: is the service's generic client error, the one botocore's waiters expect for a name that does not exist).
VALIDATION = "ValidationException"
NOT_FOUND = "ResourceNotFound"
IN_USE = "ResourceInUse"
LIMIT_EXCEEDED = "ResourceLimitExceeded"
UNKNOWN_OPERATION = "UnknownOperationException"
SERIALIZATION = "SerializationException"
UNRECOGNIZED_CLIENT = "UnrecognizedClientException"
MISSING_TOKEN = "MissingAuthenticationTokenException"  # noqa: S105 - an error code


class ApiError(SmbyocError):
    """One error answer: ``code`` (``__type`` on the wire), the message, the HTTP status (400 unless said)."""

    def __init__(self, code: str, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def validation(message: str) -> ApiError:
    return ApiError(VALIDATION, message)


def not_found(message: str) -> ApiError:
    return ApiError(NOT_FOUND, message)


def in_use(message: str) -> ApiError:
    return ApiError(IN_USE, message)
