"""Starting and supervising nginx + gunicorn, and helpers to start ``serve`` and wait until it is ready.

The supervisor starts both as argv lists (no shell), each in its own session so a terminal's Ctrl-C
reaches only the supervisor, which forwards it. On SIGTERM/SIGINT: nginx gets SIGQUIT (graceful) and
gunicorn SIGTERM (graceful, :data:`~smbyoc.serving.gunicorn.GRACEFUL_TIMEOUT`); whatever is still
running after :data:`STOP_TIMEOUT` seconds is killed. If either child exits on its own, the other is
stopped the same way and the supervisor returns non-zero.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from smbyoc.environment_variables import SMBYOC_OWNER_TOKEN
from smbyoc.errors import ConfigError, ServingError
from smbyoc.exit_codes import from_returncode
from smbyoc.serving.env import MME_REGISTRY_DIR, ServingEnv
from smbyoc.serving.gunicorn import gunicorn_argv, worker_class
from smbyoc.serving.nginx import nginx_argv, render_nginx_conf

logger = logging.getLogger(__name__)

#: SageMaker sends SIGKILL 30 s after SIGTERM; everything is down before that.
STOP_TIMEOUT = 28.0
SOCKET_NAME = "gunicorn.sock"


@dataclass(frozen=True)
class ServePlan:
    """What ``serve`` will start: argv lists and the files written for them."""

    env: ServingEnv
    runtime_dir: Path
    gunicorn: list[str]
    nginx: list[str] | None
    nginx_conf: Path | None
    owns_runtime_dir: bool


def check_private_dir(path: Path) -> None:
    """Refuse a runtime directory that someone other than this user could write to.

    The gunicorn socket lives there, and the ``upstream`` worker trusts whatever reaches that socket to
    be nginx (docs/serving.md); the readiness file nginx answers ``/ping`` from lives there too. A
    directory another user owns, or that its group or everyone may write, would let them connect to the
    socket or swap it for their own.
    """
    info = path.stat()
    key = "environment variable SMBYOC_SERVE_RUNTIME_DIR"
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{path} is not a directory", key=key)
    if info.st_uid != os.geteuid():
        raise ConfigError(f"{path} is owned by uid {info.st_uid}, not by the serving user (uid {os.geteuid()}); "
                          "use a private directory (mode 0700) of this user", key=key)
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(f"{path} is writable by its group or by others (mode {stat.S_IMODE(info.st_mode):04o}); "
                          "use a private directory (mode 0700) of this user", key=key)


def prepare_registry(runtime_dir: Path) -> Path:
    """The multi-model registry directory (mode 0700) in ``runtime_dir``, emptied: a new ``serve`` starts
    with no model loaded, as a new SageMaker container does, also when the runtime directory is reused."""
    registry = runtime_dir / MME_REGISTRY_DIR
    if registry.is_symlink() or registry.is_file():
        registry.unlink()
    shutil.rmtree(registry, ignore_errors=True)
    registry.mkdir(mode=0o700)
    return registry


def prepare(env: ServingEnv, *, nginx_bin: str = "nginx") -> ServePlan:
    """Create the runtime directory (mode 0700; a given one must already be private), the multi-model
    registry in it (on a multi-model endpoint) and write nginx.conf (when nginx is used)."""
    worker_class(env)  # a bad combination fails here, before anything is created
    if env.runtime_dir is not None:
        runtime_dir, owned = env.runtime_dir, False
        runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        check_private_dir(runtime_dir)
    else:
        runtime_dir, owned = Path(tempfile.mkdtemp(prefix="smbyoc-serve-")), True
    if env.multi_model:
        prepare_registry(runtime_dir)
    if not env.use_nginx:
        return ServePlan(env, runtime_dir, gunicorn_argv(env, runtime_dir, None), None, None, owned)
    if shutil.which(nginx_bin) is None:
        raise ServingError(f"nginx not found on PATH ({nginx_bin!r}); install nginx or run `serve --no-nginx`")
    socket_path = runtime_dir / SOCKET_NAME
    conf = runtime_dir / "nginx.conf"
    conf.write_text(render_nginx_conf(env, runtime_dir, socket_path), encoding="utf-8")
    return ServePlan(
        env, runtime_dir, gunicorn_argv(env, runtime_dir, socket_path), nginx_argv(conf, runtime_dir, nginx_bin,
                                                                             SMBYOC_OWNER_TOKEN.get()),
        conf, owned,
    )


class Supervisor:
    """Runs a :class:`ServePlan` until a signal or until one child exits."""

    def __init__(self, plan: ServePlan, environ: Mapping[str, str] | None = None) -> None:
        self.plan = plan
        self.environ = dict(os.environ if environ is None else environ)
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self._wake = threading.Event()
        self._signal: int | None = None

    def start(self) -> None:
        self.environ["SMBYOC_SERVE_RUNTIME_DIR"] = str(self.plan.runtime_dir)
        self.environ["SAGEMAKER_USE_NGINX"] = "true" if self.plan.nginx is not None else "false"
        self.children["gunicorn"] = subprocess.Popen(self.plan.gunicorn, env=self.environ, start_new_session=True)
        if self.plan.nginx is not None:
            self._wait_for_socket(self.plan.runtime_dir / SOCKET_NAME)
            self.children["nginx"] = subprocess.Popen(self.plan.nginx, env=self.environ, start_new_session=True)
        logger.info("started %s", ", ".join(f"{n} (pid {p.pid})" for n, p in self.children.items()))

    def _wait_for_socket(self, path: Path, timeout: float = 120.0) -> None:
        """Start nginx only once gunicorn listens, so nginx never logs failed upstream connects."""
        deadline = time.monotonic() + timeout
        gunicorn = self.children["gunicorn"]
        while not path.exists() and gunicorn.poll() is None and self._signal is None:
            if time.monotonic() > deadline:
                logger.warning("gunicorn has not created %s after %.0f s; starting nginx anyway", path, timeout)
                return
            time.sleep(0.005)

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        self._signal = signum
        self._wake.set()

    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGCHLD:
            self._wake.set()
        else:
            self.request_stop(signum)

    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(signum, self._on_signal)

    def wait(self) -> int:
        """Block until a stop request or a child's exit; stop everything; return the exit status."""
        died: tuple[str, int] | None = None
        while self._signal is None and died is None:
            self._wake.wait(1.0)
            self._wake.clear()
            for name, proc in self.children.items():
                code = proc.poll()
                if code is not None:
                    died = (name, code)
                    break
        if died is not None:
            name, code = died
            logger.error("%s exited with status %s; stopping the other process", name, code)
        else:
            logger.info("received signal %s; stopping gracefully", self._signal)
        self.stop()
        self.cleanup()
        if died is not None:
            return from_returncode(died[1]) or 1
        codes = [p.returncode for p in self.children.values()]
        return 0 if all(c in (0, -signal.SIGTERM, -signal.SIGQUIT) for c in codes) else 1

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        graceful = {"nginx": signal.SIGQUIT, "gunicorn": signal.SIGTERM}
        for name, proc in self.children.items():
            if proc.poll() is None:
                _send(proc, graceful.get(name, signal.SIGTERM))
        deadline = time.monotonic() + timeout
        for proc in self.children.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
        for name, proc in self.children.items():
            if proc.poll() is None:
                logger.warning("%s did not stop within %.0f s; killing it", name, timeout)
            # the whole session: gunicorn workers too, even when their master is already gone
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def cleanup(self) -> None:
        if self.plan.owns_runtime_dir:
            shutil.rmtree(self.plan.runtime_dir, ignore_errors=True)


def _send(proc: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signum)


def run(env: ServingEnv) -> int:
    """Start nginx (unless disabled) and gunicorn for ``env`` and supervise them; the exit status."""
    plan = prepare(env)
    supervisor = Supervisor(plan)
    supervisor.install_signal_handlers()
    try:
        supervisor.start()
    except OSError as e:
        supervisor.stop(timeout=5)
        supervisor.cleanup()
        raise ServingError(f"could not start {e.filename or 'a server process'}: {e.strerror or e}") from e
    return supervisor.wait()
