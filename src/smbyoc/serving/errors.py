"""HTTP errors of the serving app: werkzeug ``HTTPException`` subclasses rendered by one JSON handler.

The body names the problem (``{"error": <phrase>, "message": <text>}``); tracebacks only go to the log.
"""

from __future__ import annotations

from werkzeug.exceptions import HTTPException

#: Longest message sent to a client: error texts can quote the request (a 6 MB string that is not a number).
MAX_MESSAGE = 1000


def clip(message: str, limit: int = MAX_MESSAGE) -> str:
    """``message`` cut to ``limit`` characters, saying how much was left out."""
    if len(message) <= limit:
        return message
    return f"{message[:limit]}... ({len(message) - limit} more characters)"


class InputError(ValueError):
    """The request's data does not fit the model's inputs (answered with 400)."""

    status_code = 400


class ServingHTTPError(HTTPException):
    """Base of the app's own errors; ``description`` is the message sent to the client."""

    code = 500

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(description=message)
        if code is not None:
            self.code = code


class BadRequest(ServingHTTPError):
    code = 400


class NotFound(ServingHTTPError):
    code = 404


class NotAcceptable(ServingHTTPError):
    code = 406


class Conflict(ServingHTTPError):
    code = 409


class PayloadTooLarge(ServingHTTPError):
    code = 413


class UnsupportedMediaType(ServingHTTPError):
    code = 415


class ModelError(ServingHTTPError):
    """The user's code (or the default handler) raised while serving a request."""

    code = 500


class NotReady(ServingHTTPError):
    code = 503


class InsufficientStorage(ServingHTTPError):
    """MMS's answer when a model does not fit (out of memory); SageMaker then unloads models and retries."""

    code = 507
