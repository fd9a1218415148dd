"""The gunicorn command line of ``serve`` (a pure function)."""

from __future__ import annotations

import sys
from pathlib import Path

from smbyoc.errors import ConfigError
from smbyoc.serving.env import ServingEnv

WSGI_APP = "smbyoc.serving.wsgi:create_wsgi_app()"
CONFIG = "python:smbyoc.serving.wsgi"
#: gunicorn's graceful stop; stays under SageMaker's 30 s between SIGTERM and SIGKILL.
GRACEFUL_TIMEOUT = 25
#: Longer than nginx's upstream keepalive_timeout (60 s), so nginx closes idle connections first.
KEEP_ALIVE = 75

#: gunicorn's ``--worker-class`` for each value of SMBYOC_GUNICORN_WORKER_CLASS.
WORKER_CLASSES = {"upstream": "smbyoc.serving.worker.UpstreamWorker", "sync": "sync", "gthread": "gthread"}

_LEVELS = {10: "debug", 20: "info", 30: "warning", 40: "error", 50: "critical"}


def gunicorn_log_level(level: int) -> str:
    for threshold in sorted(_LEVELS, reverse=True):
        if level >= threshold:
            return _LEVELS[threshold]
    return "debug"


def worker_class(env: ServingEnv) -> str:
    """The worker class ``serve`` runs: ``auto`` is ``upstream`` behind nginx over HTTP, and gunicorn's
    ``sync`` without nginx or over uwsgi (``upstream`` only ever talks HTTP to nginx; docs/serving.md)."""
    if env.protocol == "uwsgi" and not env.use_nginx:
        raise ConfigError("the uwsgi protocol is only spoken to nginx; use http without nginx",
                          key="environment variable SMBYOC_SERVE_PROTOCOL")
    if env.worker_class == "auto":
        return "upstream" if env.use_nginx and env.protocol == "http" else "sync"
    if env.worker_class == "upstream" and not env.use_nginx:
        raise ConfigError(
            "the upstream worker only serves requests from nginx; use sync or gthread without nginx",
            key="environment variable SMBYOC_GUNICORN_WORKER_CLASS",
        )
    if env.worker_class == "upstream" and env.protocol != "http":
        raise ConfigError(
            f"the upstream worker only speaks HTTP, not {env.protocol}; use sync or gthread with it",
            key="environment variable SMBYOC_GUNICORN_WORKER_CLASS",
        )
    return env.worker_class


def bind_address(env: ServingEnv, socket_path: Path | None) -> str:
    if socket_path is not None:
        return f"unix:{socket_path}"
    host = env.host
    return f"[{host}]:{env.port}" if ":" in host else f"{host}:{env.port}"


def gunicorn_argv(
    env: ServingEnv, runtime_dir: Path, socket_path: Path | None, *, python: str | None = None
) -> list[str]:
    """argv for gunicorn: unix socket behind nginx, or the port itself when ``socket_path`` is None."""
    kind = worker_class(env)
    argv = [
        python or sys.executable, "-m", "gunicorn",
        "--config", CONFIG,
        "--bind", bind_address(env, socket_path),
        "--workers", str(env.workers),
        "--worker-class", WORKER_CLASSES[kind],
        "--timeout", str(env.timeout),
        "--graceful-timeout", str(GRACEFUL_TIMEOUT),
        "--keep-alive", str(KEEP_ALIVE),
        "--worker-tmp-dir", str(runtime_dir),
        "--log-level", gunicorn_log_level(env.log_level),
        "--error-logfile", "-",
        "--preload",
        "--backlog", "1024",
        "--no-control-socket",
    ]
    if kind == "gthread":
        argv += ["--threads", str(env.threads)]
    if env.protocol == "uwsgi":
        argv += ["--protocol", "uwsgi"]
    if socket_path is None:
        argv += ["--access-logfile", "-", "--limit-request-line", "8190"]
    argv.append(WSGI_APP)
    return argv
