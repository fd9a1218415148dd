"""The install story, as users get it: a wheel and an sdist are built from this checkout, and each role's
extras are installed from the *wheel* (not the source tree) into a clean virtual environment and used.

Roles (README "Install"):
  * the in-image train runtime     `smbyoc`                 smbyoc-train / train run a job
  * the in-image serve runtime     `smbyoc[serve,onnx]`     smbyoc-serve answers /ping and /invocations
  * the bundled example, process   `smbyoc[example]`        local-train, local-serve, invoke
  * the host CLI, docker mode      `smbyoc[docker]`         build an image, local-serve it, invoke (docker)
and the `train` name collision with sagemaker-training.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
from serve_support import expected, write_linear_onnx  # noqa: E402

from helpers import free_port, wait_for_file  # noqa: E402
from smbyoc.emulator.runtime_client import wait_until_healthy  # noqa: E402

pytestmark = [pytest.mark.install, pytest.mark.slow]

#: Files whose absence from the wheel breaks a role (package data, not Python modules).
PACKAGE_DATA = [
    "smbyoc/py.typed",
    "smbyoc/templates/nginx.conf.template",
    "smbyoc/templates/docker/Dockerfile.train",
    "smbyoc/templates/docker/Dockerfile.serve",
    "smbyoc/templates/docker/Dockerfile.neuron",
    "smbyoc/templates/docker/images/entrypoint",
    "smbyoc/templates/docker/images/cpu/variant.json",
    "smbyoc/templates/docker/images/cpu/requirements-serve.txt",
    "smbyoc/examples/default/train.py",
    "smbyoc/examples/default/inference.py",
    "smbyoc/examples/default/hyperparameters.schema.json",
    "smbyoc/examples/default/data/train/train.csv",
]
#: torch as this machine keeps it on disk; an unpinned torch pulls gigabytes of CUDA wheels.
TORCH = os.environ.get("SMBYOC_TEST_TORCH", "torch==2.13.0")


@dataclass(frozen=True)
class Dist:
    wheel: Path
    sdist: Path


def run(argv: list[str], timeout: float = 600, **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{' '.join(map(str, argv))}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    out = tmp_path_factory.mktemp("dist")
    src = tmp_path_factory.mktemp("src") / "smbyoc"
    # Build from a copy of the tracked files, as a clean clone would be (no .venv, no build/ left-overs).
    files = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT).stdout
    for name in filter(None, files.split("\0")):
        path = ROOT / name
        if path.is_symlink() or path.is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink():
                os.symlink(os.readlink(path), src / name)
            else:
                shutil.copy2(path, src / name)
    run([sys.executable, "-m", "build", "--outdir", str(out), str(src)])
    (wheel,) = out.glob("smbyoc-*.whl")
    (sdist,) = out.glob("smbyoc-*.tar.gz")
    return Dist(wheel, sdist)


def venv(path: Path, *requirements: str) -> Path:
    """A clean virtual environment with ``requirements`` installed; its bin directory."""
    run([sys.executable, "-m", "venv", str(path)])
    if requirements:
        run([str(path / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
             *requirements], timeout=1200)
    return path / "bin"


def clean_env(bin_dir: Path, **extra: str) -> dict[str, str]:
    """The caller's environment with the test's venv taken off PATH and this venv put first."""
    ours = str(Path(sys.executable).parent)
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != ours]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SM_", "SAGEMAKER_", "PYTHON", "VIRTUAL_ENV"))}
    return {**env, "PATH": os.pathsep.join([str(bin_dir), *path]), **extra}


def test_wheel_and_sdist_ship_the_package_data(dist: Dist) -> None:
    with zipfile.ZipFile(dist.wheel) as whl:
        names = set(whl.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = whl.read(entry_points).decode()
    missing = [name for name in PACKAGE_DATA if name not in names]
    assert not missing, f"the wheel lacks {missing}"
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    for script in ("smbyoc", "train", "serve", "smbyoc-train", "smbyoc-serve"):
        assert f"\n{script} = " in f"\n{scripts}"
    with tarfile.open(dist.sdist) as sdist:
        sdist_names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    missing = [n for n in ["pyproject.toml", "README.md", "LICENSE", *(f"src/{p}" for p in PACKAGE_DATA)]
               if n not in sdist_names]
    assert not missing, f"the sdist lacks {missing}"


def _training_tree(base: Path, program: str) -> Path:
    config = base / "input" / "config"
    config.mkdir(parents=True)
    code = base / "code"
    code.mkdir()
    (code / "fit.py").write_text(program)
    (config / "hyperparameters.json").write_text(json.dumps(
        {"sagemaker_program": "fit.py", "sagemaker_submit_directory": str(code), "epochs": "2"}))
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]}))
    (config / "inputdataconfig.json").write_text("{}")
    return base


FIT = """
import argparse, os, pathlib
p = argparse.ArgumentParser(); p.add_argument("--epochs", type=int)
args = p.parse_args()
pathlib.Path(os.environ["SM_MODEL_DIR"], "model.txt").write_text(f"epochs={args.epochs}")
"""


def test_train_runtime_needs_no_extras_and_owns_smbyoc_train(dist: Dist, tmp_path: Path) -> None:
    bin_dir = venv(tmp_path / "venv", str(dist.wheel))
    assert "smbyoc.training.main" in (bin_dir / "train").read_text()
    for program in ("smbyoc-train", "train"):
        base = _training_tree(tmp_path / program, FIT)
        run([str(bin_dir / program)], env=clean_env(bin_dir, SAGEMAKER_BASE_DIR=str(base)))
        assert (base / "model" / "model.txt").read_text() == "epochs=2"
        assert (base / "output" / "success").exists()

    # sagemaker-training installed afterwards takes the `train` name; smbyoc-train stays smbyoc's.
    run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "sagemaker-training"], timeout=1200)
    assert "smbyoc" not in (bin_dir / "train").read_text()
    assert "smbyoc.training.main" in (bin_dir / "smbyoc-train").read_text()
    base = _training_tree(tmp_path / "after", FIT)
    run([str(bin_dir / "smbyoc-train")], env=clean_env(bin_dir, SAGEMAKER_BASE_DIR=str(base)))
    assert (base / "model" / "model.txt").read_text() == "epochs=2"

    # local-train --mode process runs smbyoc's runtime whatever `train` is, and says so.
    code = tmp_path / "src"
    code.mkdir()
    (code / "fit.py").write_text(FIT)
    result = run([str(bin_dir / "smbyoc"), "local-train", "--mode", "process", "-e", "fit.py", "-s", str(code),
                  "-H", "epochs=3", "--output-dir", str(tmp_path / "out"), "--job-name", "collide"],
                 env=clean_env(bin_dir), cwd=tmp_path)
    assert "-m smbyoc.training (smbyoc " in result.stdout + result.stderr
    with tarfile.open(tmp_path / "out" / "collide" / "output" / "model.tar.gz") as tar:
        member = tar.extractfile("model.txt")
        assert member is not None and member.read() == b"epochs=3"
    # the explicit --train-command is named with its package too
    # (SM_STUDIO_LOCAL_MODE: sagemaker-training would wait for `algo-1` to resolve, which it does not here)
    result = run([str(bin_dir / "smbyoc"), "local-train", "--mode", "process", "--train-command", "train",
                  "-e", "fit.py", "-s", str(code), "--output-dir", str(tmp_path / "out2"), "--job-name", "theirs",
                  "--env", "SM_STUDIO_LOCAL_MODE=true"],
                 env=clean_env(bin_dir), cwd=tmp_path, timeout=300)
    assert "sagemaker-training" in result.stdout + result.stderr


def _wait_and_predict(proc: subprocess.Popen[str], url: str) -> None:
    wait_until_healthy(url, 120, alive=lambda: None if proc.poll() is None else f"serve exited ({proc.returncode})")
    import urllib.request

    request = urllib.request.Request(url + "/invocations", data=b"[[1.0, 2.0, 3.0]]",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        (row,) = json.loads(response.read())
        assert row == pytest.approx(expected([[1.0, 2.0, 3.0]])[0].tolist())


def test_serve_runtime_from_serve_and_onnx_extras(dist: Dist, tmp_path: Path) -> None:
    bin_dir = venv(tmp_path / "venv", f"{dist.wheel}[serve,onnx]")
    base = tmp_path / "ml"
    write_linear_onnx(base / "model" / "model.onnx")
    port = free_port()
    args = [] if shutil.which("nginx") else ["--no-nginx"]
    proc = subprocess.Popen(
        [str(bin_dir / "smbyoc-serve"), *args],
        env=clean_env(bin_dir, SAGEMAKER_BASE_DIR=str(base), SAGEMAKER_BIND_TO_PORT=str(port),
                      SMBYOC_SERVE_HOST="127.0.0.1", SAGEMAKER_MODEL_SERVER_WORKERS="1"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        _wait_and_predict(proc, f"http://127.0.0.1:{port}")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out


def test_bundled_example_in_process_mode_from_the_example_extra(dist: Dist, tmp_path: Path) -> None:
    bin_dir = venv(tmp_path / "venv", f"{dist.wheel}[example]", TORCH)
    env = clean_env(bin_dir, SMBYOC_CACHE_DIR=str(tmp_path / "cache"))
    run([str(bin_dir / "smbyoc"), "local-train", "--mode", "process", "--output-dir", str(tmp_path / "out"),
         "--job-name", "example"], env=env, cwd=tmp_path)
    model = tmp_path / "out" / "example" / "output" / "model.tar.gz"
    assert model.is_file()
    port = free_port()
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [str(bin_dir / "smbyoc"), "local-serve", "--mode", "process", "--model-data", str(model),
         "--port", str(port), "--ready-file", str(ready)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )
    try:
        assert wait_for_file(ready, proc, 180), proc.communicate(timeout=30)
        row = "55.11,2.6644,314.36,1691.4,10.082,395.14,47.60,77.70"
        result = run([str(bin_dir / "smbyoc"), "invoke", "--url", ready.read_text().strip(),
                      "--content-type", "text/csv", "--accept", "text/csv", row], env=env)
        assert len(result.stdout.strip().split(",")) == 5  # label + 4 class probabilities
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0


@pytest.mark.docker
def test_host_cli_in_docker_mode_from_the_docker_extra(dist: Dist, tmp_path: Path, docker_client: object,
                                                        docker_cleanup: list[str]) -> None:
    """`pip install "smbyoc[docker]"`: build a serve image from the *installed* package, serve a model with
    it through the Docker Engine, invoke it."""
    bin_dir = venv(tmp_path / "venv", f"{dist.wheel}[docker]")
    env = clean_env(bin_dir, SMBYOC_CACHE_DIR=str(Path.home() / ".cache" / "smbyoc"))
    tag = "smbyoc-test/installed-serve:latest"
    docker_cleanup.append(tag)
    run([str(bin_dir / "smbyoc"), "build", "--kind", "serve", "--tag", tag, "--base-image", "smbyoc/base:bookworm",
         "--quiet"], env=env, timeout=1200)
    model = tmp_path / "model"
    write_linear_onnx(model / "model.onnx")
    port = free_port()
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [str(bin_dir / "smbyoc"), "local-serve", "--image", tag, "--model-data", str(model), "--port", str(port),
         "--ready-file", str(ready)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert wait_for_file(ready, proc, 180), proc.communicate(timeout=60)
        result = run([str(bin_dir / "smbyoc"), "invoke", "--url", ready.read_text().strip(), "[[1.0, 2.0, 3.0]]"],
                     env=env)
        (row,) = json.loads(result.stdout)
        assert row == pytest.approx(expected([[1.0, 2.0, 3.0]])[0].tolist())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=90)
    assert proc.returncode == 0
