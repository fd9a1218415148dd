"""The cuda variant's table: it builds on the local Debian base with CUDA from NVIDIA's wheels, its requirement
pins pick CUDA builds, and its environment (``env``) reaches its Dockerfile and no other variant's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from smbyoc.errors import ConfigError
from smbyoc.images import context
from smbyoc.images.variants import load_variant

REPO = Path(__file__).resolve().parents[2]


def _requirement(kind: str, name: str) -> Requirement:
    text = load_variant("cuda").requirements_file(kind).read_text(encoding="utf-8")
    reqs = [Requirement(line) for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return next(r for r in reqs if r.name == name)


def test_cuda_builds_on_the_bookworm_base_like_cpu() -> None:
    cuda, cpu = load_variant("cuda"), load_variant("cpu")
    assert (cuda.python_version, cuda.glibc, cuda.platform) == (cpu.python_version, cpu.glibc, cpu.platform)
    assert cuda.local_base_image == "smbyoc/base:bookworm"
    assert all(cuda.base_image(k) == "python:3.11-slim-bookworm" for k in cuda.kinds)


def test_torch_pin_refuses_the_local_cpu_build() -> None:
    # PEP 440: `==2.13.0` also matches `2.13.0+cpu` (the local label is ignored), which pip prefers as the newer.
    torch = _requirement("train", "torch")
    assert torch.specifier.contains(Version("2.13.0"))
    assert not torch.specifier.contains(Version("2.13.0+cpu"))
    assert "2.13.0+cpu" in Requirement("torch==2.13.0").specifier.filter(["2.13.0+cpu"])


def test_onnxruntime_gpu_brings_the_cuda_and_cudnn_wheels() -> None:
    ort = _requirement("serve", "onnxruntime-gpu")
    assert {"cuda", "cudnn"} <= ort.extras
    assert not ort.specifier.contains(Version("1.20.1"))  # extras and preload_dlls() came with 1.21


def test_env_reaches_the_cuda_dockerfiles_only() -> None:
    cuda = load_variant("cuda")
    assert cuda.env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert cuda.env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    venv_site = f"/opt/smbyoc/venv/lib/python{cuda.python_version}/site-packages/nvidia/"
    assert all(p.startswith(venv_site) for p in cuda.env["LD_LIBRARY_PATH"].split(":"))
    for kind in cuda.kinds:
        text = context.dockerfile_text(context.ContextSpec(cuda, kind))
        assert text.startswith((REPO / cuda.dockerfiles[kind]).read_text(encoding="utf-8").rstrip("\n"))
        assert 'NVIDIA_VISIBLE_DEVICES="all"' in text and 'NVIDIA_DRIVER_CAPABILITIES="compute,utility"' in text
    for name in ("cpu", "arm64", "neuron"):
        variant = load_variant(name)
        assert not variant.env
        for kind in variant.kinds:
            assert context.dockerfile_text(context.ContextSpec(variant, kind)) == \
                variant.dockerfile(kind).read_text(encoding="utf-8")


def test_env_comes_before_the_user_code_layer_and_survives_emit(tmp_path: Path) -> None:
    cuda = load_variant("cuda")
    text = context.dockerfile_text(context.ContextSpec(cuda, "serve", code_dir=tmp_path))
    assert text.index("\nENV NVIDIA_VISIBLE_DEVICES=") < text.rindex("\nCOPY code/ /opt/ml/code/")
    emitted = context.emitted_dockerfile(context.ContextSpec(cuda, "serve"), {"BASE_IMAGE": "smbyoc/base:bookworm"},
                                         {}, "t:cuda")
    assert "ARG BASE_IMAGE=smbyoc/base:bookworm" in emitted and "ENV NVIDIA_VISIBLE_DEVICES=" in emitted


def test_env_instruction_quotes_values() -> None:
    assert context.env_instruction({}) == ""
    assert context.env_instruction({"A": 'x "$y" \\z'}) == 'ENV A="x \\"\\$y\\" \\\\z"\n'


@pytest.mark.parametrize(("env", "message"), [
    (["NVIDIA_VISIBLE_DEVICES=all"], "must be an object"),
    ({"NVIDIA_VISIBLE_DEVICES": 1}, "must be an object"),
    ({"1BAD": "x"}, "'1BAD' is not an environment variable name"),
    ({"A": "x\ny"}, "the value of A has a control character"),
])
def test_bad_env_table_is_one_line_naming_the_key(tmp_path: Path, env: object, message: str) -> None:
    data = json.loads((REPO / "images" / "cuda" / "variant.json").read_text(encoding="utf-8"))
    data["env"] = env
    directory = tmp_path / "images" / "cuda"
    directory.mkdir(parents=True)
    (directory / "variant.json").write_text(json.dumps(data), encoding="utf-8")
    for kind in ("train", "serve"):
        (directory / f"requirements-{kind}.txt").write_text("numpy\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as info:
        load_variant("cuda", root=tmp_path)
    assert "variant.json" in str(info.value) and "env" in str(info.value)
