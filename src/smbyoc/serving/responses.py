"""Answers shared by the Flask app and the fast path: JSON bodies, error responses, ``/ping``, invocation.

Only werkzeug here, not Flask: the fast path (and so a worker's readiness) must not wait for Flask's
import, which ``serve`` defers until after the model is loaded (docs/serving.md).
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from smbyoc.serving.env import ServingEnv
from smbyoc.serving.error_body import JSON_TYPE as _JSON_TYPE
from smbyoc.serving.error_body import error_body
from smbyoc.serving.errors import ModelError, clip
from smbyoc.serving.model_holder import DEFAULT_MODEL, ModelHolder

logger = logging.getLogger(__name__)

JSON_TYPE = _JSON_TYPE  # re-exported: the app and the fast path take it from here
PING_OK = b'{"status": "Healthy"}'
REASONS = {status.value: f"{status.value} {status.phrase}" for status in HTTPStatus}


def json_response(payload: dict[str, Any], status: int) -> Response:
    return Response(json.dumps(payload), status=status, mimetype=JSON_TYPE)


def error_json(status: int, message: str) -> Response:
    """An error answer with the one JSON error body (:func:`smbyoc.serving.error_body.error_body`)."""
    return Response(error_body(status, message), status=status, mimetype=JSON_TYPE)


def error_response(error: HTTPException) -> Response:
    code = error.code or 500
    response = error_json(code, error.description or "")
    if code == 405 and hasattr(error, "valid_methods") and error.valid_methods:
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response


def status_code(exc: Exception) -> int:
    """A status carried by the exception (sagemaker-inference's ``BaseInferenceToolkitError``), else 500."""
    code = getattr(exc, "status_code", None)
    return code if isinstance(code, int) and 400 <= code <= 599 else 500


def invoke(entry: Any, body: bytes, content_type: str | None, headers: Any) -> Any:
    """Run one invocation through the model's handler; user-code errors become ModelError (JSON, logged)."""
    try:
        return entry.handler.invoke(body, content_type, headers)
    except HTTPException:
        raise
    except Exception as e:
        logger.exception("/invocations: the handler raised")
        raise ModelError(clip(f"{type(e).__name__}: {e}"), code=status_code(e)) from e


class Ping:
    """``GET /ping``: 200 once the model is loaded, else 503 naming the reason (logged once per reason)."""

    def __init__(self, env: ServingEnv, holder: ModelHolder) -> None:
        self.env = env
        self.holder = holder
        self._logged: str | None = None

    def answer(self) -> tuple[int, bytes]:
        if self.env.multi_model:
            return 200, PING_OK
        entry = self.holder.get(DEFAULT_MODEL)
        if entry is not None and entry.ready:
            return 200, PING_OK
        reason = entry.reason if entry is not None else "no model is held"
        if reason != self._logged:  # once per reason, not once per poll
            self._logged = reason
            logger.warning("/ping: 503 not ready: %s", reason.splitlines()[0] if reason else "")
        return 503, error_body(503, reason)
