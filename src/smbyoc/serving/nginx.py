"""Rendering ``nginx.conf`` from the packaged template (a pure function; ``nginx/`` links to it)."""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path

from smbyoc.serving.env import ServingEnv

TEMPLATE = "nginx.conf.template"
#: Created in the runtime directory by the first worker whose model is ready; nginx answers /ping from it.
READY_FILE = "model-ready"
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def load_template() -> str:
    return resources.files("smbyoc").joinpath("templates").joinpath(TEMPLATE).read_text(encoding="utf-8")


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
        "upstream_keepalive": str(max(16, env.workers * env.threads * 4)),
        "listen": listen_address(env.host, env.port),
        "max_body_bytes": str(env.max_payload_bytes),
        "max_payload_mb": str(env.max_payload_mb),
        "timeout": str(env.timeout),
    }
    text = template if template is not None else load_template()

    def substitute(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise ValueError(f"nginx template: unknown placeholder {key!r}")
        return values[key]

    return _PLACEHOLDER.sub(substitute, text)


def nginx_argv(conf_path: Path, runtime_dir: Path, nginx_bin: str = "nginx") -> list[str]:
    """argv starting nginx in the foreground with ``conf_path``; ``-e stderr`` avoids the compiled-in log."""
    return [nginx_bin, "-e", "stderr", "-p", str(runtime_dir), "-c", str(conf_path)]
