"""Rendering ``nginx.conf`` from the packaged template (a pure function; ``nginx/`` links to it)."""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path

from smbyoc.environment_variables import SMBYOC_OWNER_TOKEN
from smbyoc.serving.env import MME_LOAD_TIMEOUT, ServingEnv
from smbyoc.serving.error_body import error_body

TEMPLATE = "nginx.conf.template"
#: Created in the runtime directory by the first worker whose model is ready; nginx answers /ping from it.
READY_FILE = "model-ready"
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
#: How a location hands a request to gunicorn, per SMBYOC_SERVE_PROTOCOL. The uwsgi parameters are
#: Debian's /etc/nginx/uwsgi_params, written out so the conf does not depend on where nginx keeps them.
_PASS = {
    "http": (
        "proxy_pass http://model_server;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_set_header Host $http_host;",
        "proxy_intercept_errors off;",
    ),
    "uwsgi": (
        "uwsgi_pass model_server;",
        "uwsgi_param QUERY_STRING $query_string;",
        "uwsgi_param REQUEST_METHOD $request_method;",
        "uwsgi_param CONTENT_TYPE $content_type;",
        "uwsgi_param CONTENT_LENGTH $content_length;",
        "uwsgi_param REQUEST_URI $request_uri;",
        "uwsgi_param PATH_INFO $document_uri;",
        "uwsgi_param DOCUMENT_ROOT $document_root;",
        "uwsgi_param SERVER_PROTOCOL $server_protocol;",
        "uwsgi_param REQUEST_SCHEME $scheme;",
        "uwsgi_param HTTPS $https if_not_empty;",
        "uwsgi_param REMOTE_ADDR $remote_addr;",
        "uwsgi_param REMOTE_PORT $remote_port;",
        "uwsgi_param SERVER_PORT $server_port;",
        "uwsgi_param SERVER_NAME $server_name;",
        "uwsgi_param HTTP_HOST $host;",
    ),
}


def load_template() -> str:
    return resources.files("smbyoc").joinpath("templates").joinpath(TEMPLATE).read_text(encoding="utf-8")


def nginx_quoted(body: bytes) -> str:
    """``body`` (ASCII JSON) escaped for a single-quoted nginx string; ``$`` would start a variable."""
    text = body.decode("ascii")
    if "$" in text:
        raise ValueError(f"nginx template: '$' cannot be written in a literal answer: {text[:100]}")
    return text.replace("\\", "\\\\").replace("'", "\\'")


def nginx_error_bodies(env: ServingEnv) -> dict[str, str]:
    """The bodies of the errors nginx answers itself, from the same function as every other error body."""
    routes = ("GET /ping, GET and POST /models, GET and DELETE /models/<name>, POST /models/<name>/invoke"
              if env.multi_model else "GET /ping, POST /invocations, GET /execution-parameters")
    bodies = {  # template name: (the status sent, the message)
        "body_400": (400, "the request is not well-formed HTTP/1.1 (its request line, a header or its chunked body)"),
        # nginx's own 494 (a request line or header over large_client_header_buffers), sent as 400
        "body_494": (400, "the request line or a header field is too large (at most 8 KB each)"),
        "body_404": (404, f"no such route; routes are {routes}"),
        "body_413": (413, f"request body exceeds {env.max_body_text}"),
        # nginx's 502 (the upstream closed without a complete answer) is sent as this 503
        "body_503": (503, "the model server answered nothing complete: the worker handling this request exited (or "
                          "no worker is accepting connections), or its response failed midway (the serve log says "
                          "which); retry the request"),
        "body_504": (504, f"the model server did not answer within {env.timeout_text}"),
    }
    return {name: nginx_quoted(error_body(status, message)) for name, (status, message) in bodies.items()}


def multi_model_locations(env: ServingEnv) -> str:
    """On a multi-model endpoint, ``POST /models`` loads a model within the request, and SageMaker lets a
    load take :data:`~smbyoc.serving.env.MME_LOAD_TIMEOUT` seconds: nginx waits that long there."""
    if not env.multi_model:
        return "# (multi-model endpoints only: POST /models with a longer timeout)\n"
    timeout = max(env.timeout, MME_LOAD_TIMEOUT)
    return "\n        ".join((
        "# multi-model endpoints: POST /models loads a model in the request, for up to "
        f"{MME_LOAD_TIMEOUT} s as SageMaker allows",
        "location = /models {",
        f"    proxy_read_timeout {timeout}s;",
        f"    uwsgi_read_timeout {timeout}s;",
        "    " + "\n            ".join(_PASS[env.protocol]),
        "}",
    )) + "\n"


def listen_address(host: str, port: int) -> str:
    if host in ("", "0.0.0.0", "*"):
        return str(port)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def render_nginx_conf(
    env: ServingEnv,
    runtime_dir: Path,
    socket_path: Path,
    *,
    as_root: bool | None = None,
    template: str | None = None,
    access_log: bool = True,
) -> str:
    """``nginx.conf`` for ``env``; every path nginx writes is under ``runtime_dir``.

    As root, workers run as root too (``user root;``) so they can reach the gunicorn socket in the
    private runtime directory; as any other uid the ``user`` directive is left out.
    """
    root = os.geteuid() == 0 if as_root is None else as_root
    values = {
        "user_directive": "user root root;" if root else "# not root: no user directive",
        "worker_processes": env.nginx_workers,
        "runtime_dir": str(runtime_dir),
        "socket": str(socket_path),
        "ready_file": str(runtime_dir / READY_FILE),
        "error_log_level": "warn",
        "access_log": "/dev/stdout combined buffer=64k flush=1s" if access_log else "off",
        # nginx keeps upstream connections open only over HTTP/1.1 (for gthread; the others close each one)
        "upstream_keepalive": (f"keepalive {max(16, env.workers * env.threads * 4)};\n        keepalive_timeout 60s;"
                               if env.protocol == "http" else "# uwsgi: one connection per request"),
        "pass_to_model_server": "\n            ".join(_PASS[env.protocol]),
        "listen": listen_address(env.host, env.port),
        "max_body_bytes": str(env.max_body_bytes),  # 0: nginx checks no size (chunked bodies of any size)
        "timeout": str(env.timeout),
        "multi_model_locations": multi_model_locations(env),
        **nginx_error_bodies(env),
    }
    text = template if template is not None else load_template()

    def substitute(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise ValueError(f"nginx template: unknown placeholder {key!r}")
        return values[key]

    return _PLACEHOLDER.sub(substitute, text)


def nginx_argv(conf_path: Path, runtime_dir: Path, nginx_bin: str = "nginx", owner_token: str | None = None
               ) -> list[str]:
    """argv starting nginx in the foreground with ``conf_path``; ``-e stderr`` avoids the compiled-in log.

    ``owner_token``: the emulator's ``SMBYOC_OWNER_TOKEN``, also given on the command line (as a harmless ``env``
    directive): nginx writes its process title over its environment, so the token is found there only, and a
    sweep after a killed ``serve`` would otherwise miss nginx (it starts a session of its own)."""
    argv = [nginx_bin, "-e", "stderr", "-p", str(runtime_dir), "-c", str(conf_path)]
    if owner_token:
        argv += ["-g", f"env {SMBYOC_OWNER_TOKEN.name}={owner_token};"]
    return argv
