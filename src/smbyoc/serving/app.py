"""The Flask app: ``GET /ping``, ``POST /invocations``, ``GET /execution-parameters`` (contract.md §3, §4).

Errors are werkzeug ``HTTPException`` subclasses turned into JSON by one handler; anything else raised
by user code is a 500 whose body names the exception while the traceback goes to the log only. The hot
requests of a loaded model are answered before this app by :mod:`smbyoc.serving.fast_path`.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.wrappers import Response

from smbyoc.serving import codecs
from smbyoc.serving.env import ServingEnv
from smbyoc.serving.errors import ModelError, NotReady
from smbyoc.serving.execution_parameters import ExecutionParametersError, execution_parameters
from smbyoc.serving.model_holder import DEFAULT_MODEL, ModelHolder, ModelState
from smbyoc.serving.responses import (
    JSON_TYPE,
    Ping,
    error_json,
    error_response,
    invoke,
    json_response,
)

logger = logging.getLogger(__name__)


def create_app(env: ServingEnv, holder: ModelHolder) -> Flask:
    codecs.configure(allow_pickle=env.npy_allow_pickle, max_decoded_mb=env.max_decoded_payload_mb)
    app = Flask("smbyoc.serving")
    app.config["MAX_CONTENT_LENGTH"] = env.max_body_bytes or None  # when gunicorn is reached directly

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

    pinger = Ping(env, holder)

    @app.get("/ping")
    def ping() -> Response:
        status, body = pinger.answer()
        return Response(body, status=status, mimetype=JSON_TYPE)

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
        try:
            answer = execution_parameters(env, handler_values)
        except ExecutionParametersError as e:
            logger.error("/execution-parameters: execution_parameters_fn answered %r: %s", handler_values, e)
            raise ModelError(f"execution_parameters_fn: {e}") from e
        return json_response(answer, 200)

    def unexpected(error: Exception) -> Response:
        logger.exception("unexpected error")
        return error_json(500, f"{type(error).__name__}: {error}")

    def too_large(error: RequestEntityTooLarge) -> Response:  # the words of nginx's own 413 page
        return error_json(413, f"request body exceeds {env.max_body_text}")

    app.register_error_handler(RequestEntityTooLarge, too_large)
    app.register_error_handler(HTTPException, error_response)
    app.register_error_handler(Exception, unexpected)
    return app
