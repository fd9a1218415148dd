"""Issue 13 (CUDA) against a real engine: ``smbyoc build --variant cuda`` builds both images on the local Debian
base with CUDA from NVIDIA's PyPI wheels (no nvidia/cuda base image, no GPU here), and inside them:

* train: torch is the CUDA build (``torch.version.cuda`` set) and ``torch.cuda.is_available()`` answers False
  without crashing; the default example trains in it;
* serve: onnxruntime lists ``CUDAExecutionProvider`` and every library its CUDA provider needs resolves (only the
  driver's ``libcuda.so.1``, mounted from the host on a GPU machine, may be missing); the default model answers
  /ping and predictions on CPU, with one warning line saying why;
* the NVIDIA variables GPU hosts expect are set, and the images hold no wheel or pip cache.

Building them takes several GB and minutes from a cold cache: marked ``heavy`` (``--run-heavy``)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import free_port
from smbyoc.emulator.endpoint import DockerEndpoint, EndpointSpec
from smbyoc.emulator.runtime_client import invoke, ping
from smbyoc.examples import default_example

pytestmark = [pytest.mark.docker, pytest.mark.heavy, pytest.mark.slow]

SMBYOC = [sys.executable, "-m", "smbyoc.cli"]
FALLBACK = "CUDAExecutionProvider is installed but no GPU is usable"
SITE = "/opt/smbyoc/venv/lib/python3.11/site-packages"


@pytest.fixture(scope="module")
def cuda_images(docker_client: Any) -> Iterator[dict[str, str]]:
    """``{"train": tag, "serve": tag}``: the cuda images, built through ``smbyoc build`` (cached when unchanged)."""
    import docker.errors

    try:
        docker_client.images.get("smbyoc/base:bookworm")
    except docker.errors.ImageNotFound:
        pytest.fail("smbyoc/base:bookworm is missing: run scripts/build-base-image")
    tags = {}
    for kind in ("train", "serve"):
        tag = f"smbyoc/{kind}:cuda"
        proc = subprocess.run([*SMBYOC, "build", "--kind", kind, "--variant", "cuda", "--tag", tag],
                              capture_output=True, text=True, timeout=3600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "base image: smbyoc/base:bookworm" in proc.stdout + proc.stderr
        tags[kind] = tag
    yield tags


def run(client: Any, image: str, script: str) -> str:
    out = client.containers.run(image, ["python", "-c", script], remove=True, stderr=True, network_mode="none")
    return str(out.decode())


@pytest.mark.parametrize("kind", ["train", "serve"])
def test_labels_and_gpu_environment(docker_client: Any, cuda_images: dict[str, str], kind: str) -> None:
    config = docker_client.images.get(cuda_images[kind]).attrs["Config"]
    assert config["Labels"]["org.smbyoc.variant"] == "cuda" and config["Labels"]["org.smbyoc.kind"] == kind
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    assert all(p.startswith(f"{SITE}/nvidia/") for p in env["LD_LIBRARY_PATH"].split(":"))


@pytest.mark.parametrize("kind", ["train", "serve"])
def test_no_wheels_or_pip_cache_left_in_the_image(docker_client: Any, cuda_images: dict[str, str],
                                                  kind: str) -> None:
    # (the base's own /usr/share/python-wheels, ensurepip's pip and setuptools, are not ours)
    find = "find /tmp /opt /root /var/tmp -xdev \\( -name '*.whl' -o -path '*/.cache/pip/*' \\) -print"
    found = docker_client.containers.run(cuda_images[kind], ["sh", "-c", find], remove=True, stderr=True,
                                         network_mode="none").decode()
    assert found.strip() == "", found[:2000]
    history = docker_client.api.history(cuda_images[kind])
    wheel_layers = [h for h in history if "wheelhouse" in (h.get("CreatedBy") or "") and h.get("Size", 0) > 0]
    assert not wheel_layers, [h["CreatedBy"][:80] for h in wheel_layers]


def test_train_image_has_the_cuda_build_of_torch(docker_client: Any, cuda_images: dict[str, str]) -> None:
    out = run(docker_client, cuda_images["train"],
              "import json, torch; print(json.dumps([torch.__version__, torch.version.cuda,"
              " torch.cuda.is_available(), torch.cuda.device_count()]))")
    version, cuda, available, count = json.loads(out.strip().splitlines()[-1])
    assert version.startswith("2.13.0") and "+cpu" not in version  # the wheel says 2.13.0+cu130 inside
    assert re.fullmatch(r"\d+\.\d+", cuda), cuda
    assert available is False and count == 0


def test_serve_image_cuda_provider_and_its_libraries_resolve(docker_client: Any, cuda_images: dict[str, str]) -> None:
    out = run(docker_client, cuda_images["serve"],
              "import onnxruntime as ort; print(ort.get_available_providers())")
    assert "CUDAExecutionProvider" in out
    provider = f"{SITE}/onnxruntime/capi/libonnxruntime_providers_cuda.so"
    ldd = docker_client.containers.run(cuda_images["serve"], ["ldd", provider], remove=True, stderr=True,
                                       network_mode="none").decode()
    missing = [line.split()[0] for line in ldd.splitlines() if "not found" in line]
    assert missing == ["libcuda.so.1"], ldd  # the driver: mounted from the host on a GPU machine, nowhere else
    for lib in ("libcudart.so", "libcublas.so", "libcublasLt.so", "libcurand.so"):
        assert any(line.strip().startswith(lib) and f"=> {SITE}/nvidia/" in line for line in ldd.splitlines()), \
            (lib, ldd)
    # what the provider and cuDNN open at run time (dlopen by soname), and onnxruntime's own preloading
    script = ("import ctypes, onnxruntime as ort\n"
              "for lib in ('libcudnn.so.9', 'libcudnn_graph.so.9', 'libcudnn_ops.so.9', 'libcudnn_cnn.so.9',"
              " 'libcufft.so.12', 'libnvrtc.so.13', 'libnvJitLink.so.13'):\n"
              "    ctypes.CDLL(lib)\n"
              "ort.preload_dlls(cuda=True, cudnn=True, msvc=False)\n"
              "maps = open('/proc/self/maps').read()\n"
              "print(sorted({p.split('/')[-1] for p in maps.split() if '/nvidia/' in p}))")
    loaded = run(docker_client, cuda_images["serve"], script)
    for lib in ("libcudnn.so.9", "libcufft.so.12", "libcudart.so.13", "libcublas.so.13"):
        assert lib in loaded, loaded


@pytest.fixture(scope="module")
def cuda_trained_model(cuda_images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default example trained in the cuda train image (on CPU: no GPU here)."""
    out = tmp_path_factory.mktemp("cuda-default")
    example = default_example()
    proc = subprocess.run(
        [*SMBYOC, "local-train", "--image", cuda_images["train"], "-e", "train.py", "-s", str(example.source_dir),
         *[a for name, path in example.channels.items() for a in ("-c", f"{name}={path}")],
         "--job-name", "cuda-default", "-o", str(out), "--instance-type", "ml.m5.large", "--json"],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads(proc.stdout[proc.stdout.index("{\n"):])["TrainingJobStatus"] == "Completed"
    return out / "cuda-default" / "output" / "model.tar.gz"


def _bare_onnx_model(trained: Path, dest: Path) -> Path:
    """Only model.onnx of ``trained`` (no code/inference.py): served by smbyoc's default ONNX handler."""
    with tarfile.open(trained) as tar:
        onnx = tar.extractfile("model.onnx")
        assert onnx is not None
        data = onnx.read()
    out = dest / "model.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        info = tarfile.TarInfo("model.onnx")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out


@pytest.mark.parametrize("model", ["example", "bare-onnx"])
def test_cuda_serve_image_falls_back_to_cpu_with_one_warning(
        docker_client: Any, cuda_images: dict[str, str], cuda_trained_model: Path, tmp_path: Path,
        model: str) -> None:
    # example: the default example's model_fn (inference.py in the model); bare-onnx: smbyoc's default handler
    data = cuda_trained_model if model == "example" else _bare_onnx_model(cuda_trained_model, tmp_path)
    spec = EndpointSpec(model_data=data, port=free_port(), startup_health_timeout=180)
    endpoint = DockerEndpoint(spec, docker_client, cuda_images["serve"], sink=None)
    with endpoint:
        assert ping(endpoint.url)[0] == 200
        path = next(default_example().channels["validation"].glob("*.csv"))
        header, row = path.read_text().splitlines()[:2]
        label = header.split(",").index("label")
        features = [v for i, v in enumerate(row.split(",")) if i != label]
        response = invoke(endpoint.url, ",".join(features).encode(), content_type="text/csv",
                          accept="application/json")
        assert response.status == 200, response.body[:500]
        answer = json.loads(response.body)
        if model == "example":
            assert "label" in answer["predictions"][0]
        else:
            assert len(answer[0]) == len(default_example_classes(cuda_trained_model))
        logs = docker_client.containers.get(endpoint.container.id).logs().decode(errors="replace")
    warnings = [line for line in logs.splitlines() if FALLBACK in line]
    assert len(warnings) == 1, logs[-3000:]
    assert "no NVIDIA GPU device" in warnings[0]
    assert "libcuda.so.1" not in logs and "TensorrtExecutionProvider" not in logs, logs[-3000:]  # never tried


def default_example_classes(trained: Path) -> list[str]:
    with tarfile.open(trained) as tar:
        meta = tar.extractfile("model.json")
        assert meta is not None
        return list(json.loads(meta.read())["class_names"])
