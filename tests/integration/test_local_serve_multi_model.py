"""`smbyoc local-serve --mode process --multi-model DIR`: the emulator loads each TargetModel into smbyoc's real
serve runtime (nginx + gunicorn, 2 workers) on first use, unloads the least recently used one when the container
answers 507, and reports load failures and bad TargetModels as SageMaker does; `smbyoc invoke --target-model`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import free_port
from mme_support import expected, write_handler_model

pytestmark = pytest.mark.integration

SMBYOC = [sys.executable, "-m", "smbyoc.cli"]
MODELS = {"alpha.tar.gz": ("alpha", 2.0, 0.0), "team/beta.tar.gz": ("beta", 1.0, 100.0),
          "gamma.tar.gz": ("gamma", -1.0, 1.0)}


def start_endpoint(tmp: Path) -> tuple[str, subprocess.Popen[str], Path]:
    prefix = tmp / "models"
    for target, (tag, scale, offset) in MODELS.items():
        write_handler_model(prefix / target, tag, scale, offset)
    write_handler_model(prefix / "broken.tar.gz", "broken", fail=True)
    port = free_port()
    ready = tmp / "ready"
    # SMBYOC_MME_MAX_MODELS=2: the container answers 507 for a third model, as one out of memory does.
    with (tmp / "serve.log").open("w") as log:
        proc = subprocess.Popen(
            [*SMBYOC, "local-serve", "--mode", "process", "--multi-model", str(prefix), "--port", str(port),
             "--ready-file", str(ready), "--env", "SMBYOC_MME_MAX_MODELS=2",
             "--env", "SAGEMAKER_MODEL_SERVER_WORKERS=2"],
            stdout=log, stderr=subprocess.STDOUT, text=True, env={**os.environ}, cwd=tmp,
        )
    deadline = time.monotonic() + 120
    while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if not ready.exists():
        proc.kill()
        proc.wait()
        pytest.fail("local-serve --multi-model did not become ready:\n" + (tmp / "serve.log").read_text())
    return f"http://127.0.0.1:{port}", proc, tmp


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory, nginx_on_path: str) -> Iterator[tuple[str, Path]]:
    url, proc, tmp = start_endpoint(tmp_path_factory.mktemp("mme"))
    yield url, tmp
    stop(proc)


def invoke(url: str, target: str | None, body: str) -> subprocess.CompletedProcess[str]:
    args = [*SMBYOC, "invoke", "--url", url, body]
    if target is not None:
        args += ["--target-model", target]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def test_each_model_runs_its_own_code(endpoint: tuple[str, Path]) -> None:
    url, _ = endpoint
    for target, (tag, scale, offset) in MODELS.items():
        for _ in range(4):  # enough requests for both workers to serve each model
            result = invoke(url, target, "[1, 2, 3]")
            assert result.returncode == 0, result.stderr
            assert json.loads(result.stdout) == expected(tag, scale, offset, [1, 2, 3])


def test_a_507_unloads_the_least_recently_used_model(tmp_path: Path, nginx_on_path: str) -> None:
    url, proc, tmp = start_endpoint(tmp_path)
    try:
        for target in ["alpha.tar.gz", "team/beta.tar.gz", "alpha.tar.gz", "gamma.tar.gz", "team/beta.tar.gz"]:
            tag, scale, offset = MODELS[target]
            result = invoke(url, target, "[5]")
            assert result.returncode == 0, result.stderr
            assert json.loads(result.stdout) == expected(tag, scale, offset, [5])
    finally:
        stop(proc)
    log = (tmp / "serve.log").read_text()
    unloaded = [line.split("unloaded model ", 1)[1].split(" ", 1)[0] for line in log.splitlines()
                if "unloaded model " in line]
    # gamma found beta least recently used (alpha was used again), beta then found alpha
    assert unloaded == ["team/beta.tar.gz", "alpha.tar.gz"], log[-3000:]
    assert log.count("POST /models HTTP/1.1\" 507") == 2, log[-3000:]


def test_load_failure_is_model_error_and_not_registered(endpoint: tuple[str, Path]) -> None:
    url, _ = endpoint
    for _ in range(2):  # not registered: the second call tries (and fails) to load it again
        result = invoke(url, "broken.tar.gz", "[1]")
        assert result.returncode != 0
        assert "ModelError" in result.stderr and "this model is broken" in result.stderr
        assert "OriginalStatusCode: 500" in result.stderr


@pytest.mark.parametrize(("target", "words"), [
    (None, "TargetModel is required"),
    ("../models/alpha.tar.gz", "without '.', '..' or empty components"),
    ("missing.tar.gz", "no model artifact"),
])
def test_bad_target_models_are_validation_errors(endpoint: tuple[str, Path], target: str | None, words: str) -> None:
    url, _ = endpoint
    result = invoke(url, target, "[1]")
    assert result.returncode != 0
    assert "ValidationError" in result.stderr and words in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
