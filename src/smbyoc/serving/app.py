"""The Flask app: ``GET /ping``, ``POST /invocations``, ``GET /execution-parameters`` (contract.md §3, §4).

Errors are werkzeug ``HTTPException`` subclasses turned into JSON by one handler; anything else raised
by user code is a 500 whose body names the exception while the traceback goes to the log only.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from flask import Flask, Response, request
from werkzeug.datastructures import EnvironHeaders
from werkzeug.exceptions import HTTPException, InternalServerError

from smbyoc.serving import codecs
from smbyoc.serving.env import ServingEnv
from smbyoc.serving.errors import ModelError, NotReady
from smbyoc.serving.model_holder import DEFAULT_MODEL, ModelHolder, ModelState

logger = logging.getLogger(__name__)

JSON_TYPE = "application/json"
_PING_OK = b'{"status": "Healthy"}'


def _json_response(payload: dict[str, Any], status: int) -> Response:
    return Response(json.dumps(payload), status=status, mimetype=JSON_TYPE)


def error_response(error: HTTPException) -> Response:
    code = error.code or 500
    response = _json_response({"error": error.name, "message": error.description, "status": code}, code)
    if code == 405 and hasattr(error, "valid_methods") and error.valid_methods:
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response


def _status_code(exc: Exception) -> int:
    """A status carried by the exception (sagemaker-inference's ``BaseInferenceToolkitError``), else 500."""
    code = getattr(exc, "status_code", None)
    return code if isinstance(code, int) and 400 <= code <= 599 else 500


def execution_parameters(env: ServingEnv, handler_values: dict[str, Any]) -> dict[str, Any]:
    """contract.md §4: environment values (set by CreateTransformJob) win over the handler's, then defaults."""
    values: dict[str, Any] = {
        "MaxConcurrentTransforms": env.workers,
        "BatchStrategy": "MULTI_RECORD",
        "MaxPayloadInMB": env.max_payload_mb,
    }
    values.update({k: v for k, v in handler_values.items() if v is not None})
    if env.max_concurrent_transforms is not None:
        values["MaxConcurrentTransforms"] = env.max_concurrent_transforms
    if env.batch_strategy is not None:
        values["BatchStrategy"] = env.batch_strategy
    return values


def invoke(entry: Any, body: bytes, content_type: str | None, headers: Any) -> Any:
    """Run one invocation through the model's handler; user-code errors become ModelError (JSON, logged)."""
    try:
        return entry.handler.invoke(body, content_type, headers)
    except HTTPException:
        raise
    except Exception as e:
        logger.exception("/invocations: the handler raised")
        raise ModelError(f"{type(e).__name__}: {e}", code=_status_code(e)) from e


def create_app(env: ServingEnv, holder: ModelHolder) -> Flask:
    codecs.allow_pickle(env.npy_allow_pickle)
    app = Flask("smbyoc.serving")
    app.config["MAX_CONTENT_LENGTH"] = env.max_payload_bytes  # when gunicorn is reached directly

    def ready_entry() -> Any:
        entry = holder.get(DEFAULT_MODEL)
        if entry is None:
            raise NotReady("no model is held")
        if entry.state is ModelState.LOADING:
            # a request that reaches a worker still loading waits for it rather than failing
            entry.done.wait(env.timeout)
        if not entry.ready:
            raise NotReady(entry.reason)
        return entry

    logged: dict[str, str] = {}

    @app.get("/ping")
    def ping() -> Response:
        if env.multi_model:
            return Response(_PING_OK, status=200, mimetype=JSON_TYPE)
        entry = holder.get(DEFAULT_MODEL)
        if entry is not None and entry.ready:
            return Response(_PING_OK, status=200, mimetype=JSON_TYPE)
        reason = entry.reason if entry is not None else "no model is held"
        if reason != logged.get("reason"):  # once per reason, not once per poll
            logged["reason"] = reason
            logger.warning("/ping: 503 not ready: %s", reason.splitlines()[0] if reason else "")
        return _json_response({"status": "Unhealthy", "error": "Service Unavailable", "message": reason}, 503)

    @app.post("/invocations")
    def invocations() -> Response:
        entry = ready_entry()
        body = request.get_data(cache=False)
        result = invoke(entry, body, request.headers.get("Content-Type"), request.headers)
        response = Response(result.body, status=result.status, content_type=result.content_type)
        for key, value in result.headers.items():
            response.headers[key] = value
        return response

    @app.get("/execution-parameters")
    def execution_parameters_route() -> Response:
        entry = ready_entry()
        try:
            handler_values = entry.handler.execution_parameters()
        except Exception as e:
            logger.exception("/execution-parameters: execution_parameters_fn raised")
            raise ModelError(f"execution_parameters_fn: {type(e).__name__}: {e}") from e
        return _json_response(execution_parameters(env, handler_values), 200)

    def unexpected(error: Exception) -> Response:
        logger.exception("unexpected error")
        return _json_response({"error": "Internal Server Error", "message": f"{type(error).__name__}: {error}",
                               "status": 500}, 500)

    app.register_error_handler(HTTPException, error_response)
    app.register_error_handler(Exception, unexpected)
    return app


_REASONS = {status.value: f"{status.value} {status.phrase}" for status in HTTPStatus}


def fast_path(env: ServingEnv, holder: ModelHolder, app: Flask) -> Any:
    """A WSGI callable that answers the hot requests — ``POST /invocations`` and ``GET /ping`` of a loaded
    model — without Flask's request machinery, and hands everything else (other routes, errors, a model
    still loading, bodies without a length) to the Flask ``app``. The answers are the same; it saves
    about a third of a worker's time per request (docs/serving.md, bench/README.md)."""
    limit = env.max_payload_bytes
    multi_model = env.multi_model

    def wsgi(environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO")
        entry = None if multi_model else holder.get(DEFAULT_MODEL)
        if entry is None or not entry.ready:
            return app(environ, start_response)
        method = environ.get("REQUEST_METHOD")
        if path == "/ping" and method == "GET":
            start_response("200 OK", [("Content-Type", JSON_TYPE), ("Content-Length", str(len(_PING_OK)))])
            return [_PING_OK]
        if path != "/invocations" or method != "POST":
            return app(environ, start_response)
        length_text = environ.get("CONTENT_LENGTH")
        if not length_text or not length_text.isdigit() or int(length_text) > limit:
            return app(environ, start_response)
        length = int(length_text)
        body = environ["wsgi.input"].read(length) if length else b""
        try:
            result = invoke(entry, body, environ.get("CONTENT_TYPE"), EnvironHeaders(environ))
        except HTTPException as e:
            return error_response(e)(environ, start_response)
        except Exception as e:  # pragma: no cover - invoke() turns user errors into ModelError
            logger.exception("unexpected error")
            return error_response(InternalServerError(f"{type(e).__name__}: {e}"))(environ, start_response)
        headers = [("Content-Type", result.content_type), ("Content-Length", str(len(result.body)))]
        headers.extend(result.headers.items())
        start_response(_REASONS.get(result.status) or f"{result.status} Status", headers)
        return [result.body]

    return wsgi
