"""Pure parts of serve: env, nginx.conf rendering, gunicorn argv, ports."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from helpers import free_port
from smbyoc.errors import ConfigError, EnvVarError, ServingError
from smbyoc.serving.env import ServingEnv
from smbyoc.serving.gunicorn import gunicorn_argv
from smbyoc.serving.nginx import load_template, render_nginx_conf
from smbyoc.serving.ports import next_safe_port, port_is_free
from smbyoc.serving.supervisor import prepare


def test_env_defaults_and_values(tmp_path: Path) -> None:
    env = ServingEnv.from_env({"SAGEMAKER_BASE_DIR": str(tmp_path)})
    assert (env.port, env.timeout, env.max_body_bytes, env.default_accept) == (8080, 60, 6291456, "application/json")
    assert env.model_dir == tmp_path / "model" and env.submit_dir == tmp_path / "model" / "code"
    assert env.module_name == "inference" and env.use_nginx and env.workers >= 1
    env = ServingEnv.from_env({
        "SAGEMAKER_BIND_TO_PORT": "9000", "SAGEMAKER_MODEL_SERVER_WORKERS": "3", "SAGEMAKER_PROGRAM": "serve_me.py",
        "SAGEMAKER_SUBMIT_DIRECTORY": "file:///code", "SAGEMAKER_USE_NGINX": "false", "SAGEMAKER_MULTI_MODEL": "true",
    }, base_dir=tmp_path)
    assert (env.port, env.workers, env.module_name, env.submit_dir) == (9000, 3, "serve_me", Path("/code"))
    assert not env.use_nginx and env.model_dir == tmp_path / "models"
    assert env.to_dict()["submit_dir"] == "/code"


def test_env_errors_name_the_variable() -> None:
    with pytest.raises(EnvVarError, match="SAGEMAKER_MAX_PAYLOAD_IN_MB"):
        ServingEnv.from_env({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "lots"})
    with pytest.raises(ConfigError, match="SAGEMAKER_SUBMIT_DIRECTORY"):
        ServingEnv.from_env({"SAGEMAKER_SUBMIT_DIRECTORY": "s3://bucket/code.tar.gz"})


def test_nginx_conf_paths_and_limits(tmp_path: Path) -> None:
    env = ServingEnv.from_env({"SAGEMAKER_BIND_TO_PORT": "8123", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "7",
                               "SAGEMAKER_MODEL_SERVER_TIMEOUT": "90", "SMBYOC_SERVE_HOST": "127.0.0.1"})
    conf = render_nginx_conf(env, tmp_path, tmp_path / "g.sock", as_root=False)
    assert "{{" not in conf
    assert "listen 127.0.0.1:8123" in conf
    assert f"client_max_body_size {7 * 1024 * 1024};" in conf
    assert "proxy_read_timeout 90s;" in conf
    assert f"server unix:{tmp_path}/g.sock" in conf
    for directive in ("pid", "client_body_temp_path", "proxy_temp_path", "fastcgi_temp_path", "uwsgi_temp_path",
                      "scgi_temp_path"):
        assert f"{directive} {tmp_path}/" in conf
    assert f"if (-f {tmp_path}/model-ready)" in conf
    assert "\nuser " not in conf and "daemon off;" in conf and "error_log stderr" in conf
    assert "user root root;" in render_nginx_conf(env, tmp_path, tmp_path / "g.sock", as_root=True)


def test_nginx_template_is_the_packaged_one() -> None:
    repo_copy = Path(__file__).resolve().parents[2] / "nginx" / "nginx.conf.template"
    assert repo_copy.read_text() == load_template()


@pytest.mark.parametrize("protocol", ["http", "uwsgi"])
def test_rendered_conf_passes_nginx_t(tmp_path: Path, nginx_on_path: str, protocol: str) -> None:
    env = ServingEnv.from_env({"SAGEMAKER_BIND_TO_PORT": str(free_port()), "SMBYOC_SERVE_HOST": "127.0.0.1",
                               "SMBYOC_SERVE_PROTOCOL": protocol})
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_nginx_conf(env, tmp_path, tmp_path / "g.sock"))
    result = subprocess.run(["nginx", "-e", "stderr", "-p", str(tmp_path), "-t", "-c", str(conf)],
                            check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_nginx_conf_per_protocol(tmp_path: Path) -> None:
    http = render_nginx_conf(ServingEnv(), tmp_path, tmp_path / "g.sock")
    uwsgi = render_nginx_conf(ServingEnv(protocol="uwsgi"), tmp_path, tmp_path / "g.sock")
    assert http.count("proxy_pass http://model_server;") == 2 and "uwsgi_pass" not in http
    assert "keepalive_timeout 60s;" in http and "keepalive 16;" in http
    assert uwsgi.count("uwsgi_pass model_server;") == 2 and "proxy_pass" not in uwsgi
    assert uwsgi.count("uwsgi_param PATH_INFO $document_uri;") == 2 and "keepalive 16;" not in uwsgi
    assert "uwsgi_request_buffering on;" in uwsgi and "uwsgi_buffering off;" in uwsgi


@pytest.mark.parametrize(("environ", "kind", "protocol_args"), [
    ({"SMBYOC_SERVE_PROTOCOL": "uwsgi"}, "sync", ["--protocol", "uwsgi"]),
    ({"SMBYOC_SERVE_PROTOCOL": "uwsgi", "SMBYOC_GUNICORN_WORKER_CLASS": "gthread"}, "gthread", ["--protocol", "uwsgi"]),
    ({"SMBYOC_SERVE_PROTOCOL": "http"}, "smbyoc.serving.worker.UpstreamWorker", []),
])
def test_protocol_choice(tmp_path: Path, environ: dict[str, str], kind: str, protocol_args: list[str]) -> None:
    argv = gunicorn_argv(ServingEnv.from_env(environ), tmp_path, tmp_path / "g.sock")
    assert dict(zip(argv, argv[1:], strict=False))["--worker-class"] == kind
    assert [a for a in argv if a in ("--protocol", "uwsgi")] == protocol_args


@pytest.mark.parametrize(("environ", "needle"), [
    ({"SMBYOC_SERVE_PROTOCOL": "uwsgi", "SAGEMAKER_USE_NGINX": "false"}, "SMBYOC_SERVE_PROTOCOL.*only spoken to nginx"),
    ({"SMBYOC_SERVE_PROTOCOL": "uwsgi", "SMBYOC_GUNICORN_WORKER_CLASS": "upstream"},
     "upstream worker only speaks HTTP"),
])
def test_protocol_combinations_refused(tmp_path: Path, environ: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        prepare(ServingEnv.from_env({**environ, "SMBYOC_SERVE_RUNTIME_DIR": str(tmp_path / "rt")}))
    assert not (tmp_path / "rt").exists()


def test_protocol_values(tmp_path: Path) -> None:
    assert ServingEnv.from_env({}).protocol == "http"
    with pytest.raises(EnvVarError, match="SMBYOC_SERVE_PROTOCOL"):
        ServingEnv.from_env({"SMBYOC_SERVE_PROTOCOL": "fastcgi"})


def test_runtime_dir_is_created_private(tmp_path: Path, nginx_on_path: str) -> None:
    env = ServingEnv.from_env({"SMBYOC_SERVE_RUNTIME_DIR": str(tmp_path / "a" / "rt")})
    plan = prepare(env)
    assert plan.runtime_dir == tmp_path / "a" / "rt" and (plan.runtime_dir.stat().st_mode & 0o777) == 0o700


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777, 0o1777, 0o720])
def test_runtime_dir_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    with pytest.raises(ConfigError, match=rf"SMBYOC_SERVE_RUNTIME_DIR: {shared} is writable by its group or by "
                                          rf"others \(mode {mode:04o}\)"):
        prepare(ServingEnv.from_env({"SMBYOC_SERVE_RUNTIME_DIR": str(shared)}))
    assert list(shared.iterdir()) == []  # nothing written there


def test_runtime_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory to another uid")
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    os.chown(other, 65534, 65534)
    with pytest.raises(ConfigError, match=f"{other} is owned by uid 65534, not by the serving user"):
        prepare(ServingEnv.from_env({"SMBYOC_SERVE_RUNTIME_DIR": str(other)}))


def test_gunicorn_argv(tmp_path: Path) -> None:
    env = ServingEnv.from_env({"SAGEMAKER_MODEL_SERVER_WORKERS": "3", "SAGEMAKER_MODEL_SERVER_TIMEOUT": "33"})
    argv = gunicorn_argv(env, tmp_path, tmp_path / "g.sock", python="py")
    assert argv[:3] == ["py", "-m", "gunicorn"]
    pairs = dict(zip(argv, argv[1:], strict=False))
    assert pairs["--bind"] == f"unix:{tmp_path}/g.sock" and pairs["--workers"] == "3" and pairs["--timeout"] == "33"
    assert pairs["--worker-class"] == "smbyoc.serving.worker.UpstreamWorker" and "--threads" not in argv
    assert "--preload" in argv and argv[-1] == "smbyoc.serving.wsgi:create_wsgi_app()"
    direct = gunicorn_argv(ServingEnv(port=9001, host="127.0.0.1", worker_class="gthread"), tmp_path, None)
    assert "127.0.0.1:9001" in direct and "--threads" in direct


@pytest.mark.parametrize(("setting", "use_nginx", "expected"), [
    ("auto", True, "smbyoc.serving.worker.UpstreamWorker"),
    ("auto", False, "sync"),
    ("sync", True, "sync"),
    ("gthread", True, "gthread"),
    ("upstream", True, "smbyoc.serving.worker.UpstreamWorker"),
])
def test_worker_class_choice(tmp_path: Path, setting: str, use_nginx: bool, expected: str) -> None:
    env = ServingEnv.from_env({"SMBYOC_GUNICORN_WORKER_CLASS": setting, "SAGEMAKER_USE_NGINX": str(use_nginx)})
    argv = gunicorn_argv(env, tmp_path, tmp_path / "g.sock" if use_nginx else None)
    assert dict(zip(argv, argv[1:], strict=False))["--worker-class"] == expected


def test_upstream_worker_without_nginx_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    env = ServingEnv.from_env({"SMBYOC_GUNICORN_WORKER_CLASS": "upstream", "SAGEMAKER_USE_NGINX": "false",
                               "SMBYOC_SERVE_RUNTIME_DIR": str(tmp_path / "rt")})
    with pytest.raises(ConfigError, match="SMBYOC_GUNICORN_WORKER_CLASS.*only serves requests from nginx"):
        prepare(env)
    assert not (tmp_path / "rt").exists()


def test_ports(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert not port_is_free(port)
        try:
            assert next_safe_port((port, port + 1)) == port + 1
        except ServingError:  # port + 1 taken by some other process on this machine: then refused as well
            assert not port_is_free(port + 1)
    assert next_safe_port("20000-20010", after=20004, check=False) == 20005
    assert next_safe_port((20000, 20010), check=False) == 20000
    with pytest.raises(ServingError, match="20000-20001"):
        next_safe_port((20000, 20001), after=20001, check=False)


@pytest.mark.parametrize(("value", "expected"), [(None, "1"), ("auto", "auto"), ("AUTO", "auto"), ("3", "3")])
def test_nginx_worker_processes(tmp_path: Path, value: str | None, expected: str) -> None:
    environ = {} if value is None else {"SMBYOC_NGINX_WORKER_PROCESSES": value}
    env = ServingEnv.from_env(environ)
    if value is None:  # default: a quarter of the CPUs, at least one
        from smbyoc.serving.env import cpu_count

        expected = str(max(1, cpu_count() // 4))
    assert env.nginx_workers == expected
    assert f"worker_processes {expected};" in render_nginx_conf(env, tmp_path, tmp_path / "g.sock")


@pytest.mark.parametrize("value", ["0", "many", "-2"])
def test_nginx_worker_processes_rejects(value: str) -> None:
    with pytest.raises(EnvVarError, match=f"SMBYOC_NGINX_WORKER_PROCESSES: '{value}' is not valid"):
        ServingEnv.from_env({"SMBYOC_NGINX_WORKER_PROCESSES": value})
