"""The Flask app: ``GET /ping``, ``POST /invocations``, ``GET /execution-parameters`` (contract.md §3, §4);
with ``SAGEMAKER_MULTI_MODEL=true`` ``/ping``, the ``/models`` routes and ``/invocations?model_name=`` (§5).

Errors are werkzeug ``HTTPException`` subclasses turned into JSON by one handler; anything else raised
by user code is a 500 whose body names the exception while the traceback goes to the log only. The hot
requests of a loaded model are answered before this app by :mod:`smbyoc.serving.fast_path`.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge
from werkzeug.wrappers import Response

from smbyoc.serving import codecs
from smbyoc.serving.env import ServingEnv
from smbyoc.serving.errors import BadRequest, ModelError, NotReady
from smbyoc.serving.execution_parameters import ExecutionParametersError, execution_parameters
from smbyoc.serving.handler import HandlerResult
from smbyoc.serving.model_holder import DEFAULT_MODEL, ModelHolder, ModelState
from smbyoc.serving.multi_model import MultiModelServer, register_params, split_model_path
from smbyoc.serving.responses import (
    JSON_TYPE,
    Ping,
    error_json,
    error_response,
    invoke,
    json_response,
)

logger = logging.getLogger(__name__)


def result_response(result: HandlerResult) -> Response:
    response = Response(result.body, status=result.status, content_type=result.content_type)
    for key, value in result.headers.items():
        response.headers[key] = value
    return response


def create_app(env: ServingEnv, holder: ModelHolder, mme: MultiModelServer | None = None) -> Flask:
    """The app for ``env``; on a multi-model endpoint its models are ``mme``'s (default: a new one)."""
    codecs.configure(allow_pickle=env.npy_allow_pickle, max_decoded_mb=env.max_decoded_payload_mb)
    app = Flask("smbyoc.serving")
    app.config["MAX_CONTENT_LENGTH"] = env.max_body_bytes or None  # when gunicorn is reached directly
    if env.multi_model:
        add_multi_model_routes(app, mme or MultiModelServer.from_env(env, holder))

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

    def invocations() -> Response:
        entry = ready_entry()
        body = request.get_data(cache=False)
        return result_response(invoke(entry, body, request.headers.get("Content-Type"), request.headers))

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

    if not env.multi_model:
        app.post("/invocations")(invocations)
        app.get("/execution-parameters")(execution_parameters_route)

    def unexpected(error: Exception) -> Response:
        logger.exception("unexpected error")
        return error_json(500, f"{type(error).__name__}: {error}")

    def too_large(error: RequestEntityTooLarge) -> Response:  # the words of nginx's own 413 page
        return error_json(413, f"request body exceeds {env.max_body_text}")

    app.register_error_handler(RequestEntityTooLarge, too_large)
    app.register_error_handler(HTTPException, error_response)
    app.register_error_handler(Exception, unexpected)
    return app


def add_multi_model_routes(app: Flask, mme: MultiModelServer) -> None:
    """``/models`` (GET list, POST load), ``/models/<name>`` (GET, DELETE), ``POST /models/<name>/invoke``
    and ``POST /invocations?model_name=<name>`` (multi-model-server's form); contract.md §5."""

    def run(name: str) -> Response:
        body = request.get_data(cache=False)
        return result_response(mme.invoke(name, body, request.headers.get("Content-Type"), request.headers))

    @app.route("/models", methods=["GET", "POST"])
    def models() -> Response:
        if request.method == "GET":
            return json_response(mme.models(request.args.get("limit"), request.args.get("next_page_token")), 200)
        name, url = register_params(request.args, request.get_data(cache=False))
        return json_response(mme.register(name, url), 200)

    @app.route("/models/<path:rest>", methods=["GET", "POST", "DELETE"])
    def model(rest: str) -> Response:
        name, action = split_model_path(rest)
        if action == "invoke":
            if request.method != "POST":
                raise MethodNotAllowed(valid_methods=["POST"])
            return run(name)
        if request.method == "GET":
            return json_response(mme.describe(name), 200)
        if request.method == "DELETE":
            return json_response(mme.unregister(name), 200)
        raise MethodNotAllowed(valid_methods=["GET", "DELETE"])

    @app.post("/invocations")
    def invocations() -> Response:
        name = request.args.get("model_name")
        if not name:
            raise BadRequest("model_name is required: a multi-model endpoint serves POST /models/<model_name>/invoke "
                             "(or POST /invocations?model_name=<model_name>)")
        return run(name)
