"""The cpu train and serve images, built for real through `smbyoc build`."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.docker

SERVE_SIZE_TARGET_MB = 350


def smbyoc_build(*args: str) -> subprocess.CompletedProcess[str]:
    smbyoc = str(Path(sys.executable).with_name("smbyoc"))
    return subprocess.run([smbyoc, "build", "-q", *args], capture_output=True, text=True, timeout=1200,
                          check=False)


def run(client: Any, image: str, command: list[str], user: str | None = None) -> str:
    out = client.containers.run(image, command, user=user, remove=True, stderr=True, network_mode="none")
    return out.decode()


@pytest.mark.parametrize("kind", ["train", "serve"])
def test_labels_entrypoint_and_no_opt_ml(docker_client: Any, default_images: dict[str, str], kind: str) -> None:
    image = docker_client.images.get(default_images[kind])
    config = image.attrs["Config"]
    labels = config["Labels"]
    assert labels["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"
    # the multi-models label only on request (smbyoc build --multi-model): the user declares MME support
    assert "com.amazonaws.sagemaker.capabilities.multi-models" not in labels
    assert config["Entrypoint"] == ["/opt/smbyoc/bin/entrypoint"]  # exec form, no tini
    assert config["Cmd"] == [kind]
    out = run(docker_client, default_images[kind],
              ["sh", "-c", "test ! -e /opt/ml && command -v train && command -v serve"])
    assert out.split() == ["/opt/smbyoc/app/bin/train", "/opt/smbyoc/app/bin/serve"]


@pytest.mark.parametrize("kind", ["train", "serve"])
def test_entrypoint_runs_smbyocs_programs_whatever_path_says(docker_client: Any, default_images: dict[str, str],
                                                            kind: str) -> None:
    """An image FROM ours may put another `train` first on PATH (sagemaker-training does): `docker run IMAGE
    train` still runs smbyoc's, by absolute path."""
    fake = "mkdir -p /tmp/x && printf '#!/bin/sh\\necho impostor\\n' > /tmp/x/" + kind + " && chmod +x /tmp/x/" + kind
    script = f"{fake} && PATH=/tmp/x:$PATH /opt/smbyoc/bin/entrypoint {kind} --help"
    out = run(docker_client, default_images[kind], ["sh", "-c", script])
    assert f"usage: {kind}" in out and "impostor" not in out, out
    # any other command runs as given (the impostor, named by its path)
    out = run(docker_client, default_images[kind], ["sh", "-c", f"{fake} && /opt/smbyoc/bin/entrypoint /tmp/x/{kind}"])
    assert out.strip() == "impostor"


def test_serve_image_has_onnxruntime_not_torch_and_meets_size(docker_client: Any,
                                                              default_images: dict[str, str]) -> None:
    out = run(docker_client, default_images["serve"], [
        "python", "-c", "import importlib.util as u; print(bool(u.find_spec('onnxruntime')), "
                        "bool(u.find_spec('torch')))"])
    assert out.split() == ["True", "False"]
    size_mb = docker_client.images.get(default_images["serve"]).attrs["Size"] / 1e6
    print(f"serve image: {size_mb:.0f} MB")
    assert size_mb <= SERVE_SIZE_TARGET_MB


def test_images_run_as_an_arbitrary_non_root_uid(docker_client: Any, default_images: dict[str, str]) -> None:
    out = run(docker_client, default_images["train"],
              ["python", "-c", "import os, torch, smbyoc; print(os.getuid(), os.environ['HOME'])"], user="4242:4242")
    assert out.split() == ["4242", "/tmp"]
    out = run(docker_client, default_images["serve"], ["sh", "-c", "nginx -v 2>&1 && id -u"], user="4242:4242")
    assert out.split()[-1] == "4242"
    # `serve` itself under uid 4242 (model mounted, /ping, predictions): test_default_example_docker.py.


def test_user_code_is_baked_into_opt_ml_code_and_rebuild_is_cached(
        docker_client: Any, default_images: dict[str, str], docker_test_prefix: str, docker_cleanup: list[str],
        tmp_path: Any) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text("print('hello from user code')\n")
    tag = f"{docker_test_prefix}-train:code"
    docker_cleanup.append(tag)
    base = docker_client.images.get(default_images["train"]).labels["org.smbyoc.base-image"]
    first = smbyoc_build("--kind", "train", "--tag", tag, "--context", str(code), "--base-image", base)
    assert first.returncode == 0, first.stderr
    started = time.monotonic()
    second = smbyoc_build("--kind", "train", "--tag", tag, "--context", str(code), "--base-image", base)
    seconds = time.monotonic() - started
    assert second.returncode == 0, second.stderr
    print(f"rebuild with nothing changed: {seconds:.1f}s")
    assert first.stdout.split()[1] == second.stdout.split()[1]  # same image id: every layer cached
    out = run(docker_client, tag, ["sh", "-c", "find /opt/ml | sort"])
    assert out.split() == ["/opt/ml", "/opt/ml/code", "/opt/ml/code/train.py"]


# (cuda builds on the local Debian base: tests/docker/test_cuda_image_docker.py)
@pytest.mark.parametrize(("variant", "missing"), [("neuron", "neuron.amazonaws.com")])
def test_unavailable_variants_fail_early_with_one_line(docker_client: Any, variant: str, missing: str) -> None:
    import socket

    if variant == "neuron":
        try:
            socket.getaddrinfo("pip.repos.neuron.amazonaws.com", 443)
            pytest.skip("the Neuron repository resolves here; the build would proceed")
        except OSError:
            pass
    started = time.monotonic()
    result = smbyoc_build("--kind", "serve", "--variant", variant, "--tag", f"smbyoc-test/never:{variant}")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and missing in lines[0], result.stderr
    assert time.monotonic() - started < 30
