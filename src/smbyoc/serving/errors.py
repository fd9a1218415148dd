"""HTTP errors of the serving app: werkzeug ``HTTPException`` subclasses rendered by one JSON handler.

The body names the problem (``{"error": <phrase>, "message": <text>}``); tracebacks only go to the log.
"""

from __future__ import annotations

from werkzeug.exceptions import HTTPException


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


class PayloadTooLarge(ServingHTTPError):
    code = 413


class UnsupportedMediaType(ServingHTTPError):
    code = 415


class ModelError(ServingHTTPError):
    """The user's code (or the default handler) raised while serving a request."""

    code = 500


class NotReady(ServingHTTPError):
    code = 503
