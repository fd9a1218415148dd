"""The one JSON body of every error ``serve`` answers: ``{"error": <reason phrase>, "message": ..., "status": <code>}``.

The Flask app, the fast path, ``/ping`` while not ready, the ``upstream`` worker's own refusals and the
answers nginx writes itself (rendered into nginx.conf) all take their bodies from :func:`error_body`, so a
client sees one shape whatever part of the stack answered. A leaf module (json and http only): the ``serve``
supervisor renders nginx.conf with it and must not wait for werkzeug's import.
"""

from __future__ import annotations

import json
from http import HTTPStatus

JSON_TYPE = "application/json"


def reason_phrase(status: int) -> str:
    """The standard phrase for ``status`` (``"Error"`` for a code without one)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def error_body(status: int, message: str) -> bytes:
    """The UTF-8 JSON error body for ``status`` with ``message``."""
    return json.dumps({"error": reason_phrase(status), "message": message, "status": status}).encode()
