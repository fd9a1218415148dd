"""GPU detection for serving (smbyoc.serving.gpu) and the CPU fallback of the default ONNX model: onnxruntime's
CUDA provider is asked for only when a GPU is usable; otherwise one warning per process."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from smbyoc.serving import gpu
from smbyoc.serving.gpu import CPU_PROVIDER, CUDA_PROVIDER, GpuVisibility, gpu_visibility, onnx_providers

ORT_GPU = ["TensorrtExecutionProvider", CUDA_PROVIDER, CPU_PROVIDER]  # what onnxruntime-gpu lists


@pytest.fixture(autouse=True)
def _fresh_warning() -> Iterator[None]:
    gpu.reset_warning()
    yield
    gpu.reset_warning()


@pytest.fixture
def dev(tmp_path: Path) -> Path:
    """A /dev with what the NVIDIA container runtime mounts for one GPU."""
    for name in ("nvidia0", "nvidiactl", "nvidia-uvm"):
        (tmp_path / name).touch()
    return tmp_path


def test_a_gpu_is_visible_with_a_device_node_and_the_driver(dev: Path) -> None:
    seen = gpu_visibility({}, dev=dev, driver_loads=lambda: True)
    assert seen.visible and "1 NVIDIA GPU device" in seen.reason


@pytest.mark.parametrize(("name", "value"), [
    ("CUDA_VISIBLE_DEVICES", ""), ("CUDA_VISIBLE_DEVICES", "-1"), ("CUDA_VISIBLE_DEVICES", "none"),
    ("NVIDIA_VISIBLE_DEVICES", ""), ("NVIDIA_VISIBLE_DEVICES", "void"), ("NVIDIA_VISIBLE_DEVICES", "NONE"),
])
def test_variables_that_hide_every_gpu(dev: Path, name: str, value: str) -> None:
    seen = gpu_visibility({name: value}, dev=dev, driver_loads=lambda: True)
    assert not seen.visible and seen.reason.startswith(f"{name}={value!r}")


@pytest.mark.parametrize("env", [{"CUDA_VISIBLE_DEVICES": "0"}, {"NVIDIA_VISIBLE_DEVICES": "all"},
                                 {"CUDA_VISIBLE_DEVICES": "GPU-3f2a"}, {}])
def test_variables_naming_devices_leave_the_decision_to_the_device(dev: Path, env: dict[str, str]) -> None:
    assert gpu_visibility(env, dev=dev, driver_loads=lambda: True).visible


def test_no_device_node_means_no_gpu(tmp_path: Path) -> None:
    (tmp_path / "nvidiactl").touch()  # the control node alone is no GPU
    seen = gpu_visibility({"NVIDIA_VISIBLE_DEVICES": "all"}, dev=tmp_path, driver_loads=lambda: True)
    assert not seen.visible and "no NVIDIA GPU device" in seen.reason
    assert not gpu_visibility({}, dev=tmp_path / "missing", driver_loads=lambda: True).visible


def test_no_driver_library_means_no_gpu(dev: Path) -> None:
    seen = gpu_visibility({}, dev=dev, driver_loads=lambda: False)
    assert not seen.visible and "libcuda.so.1 cannot be loaded" in seen.reason


def test_this_machine_has_no_gpu() -> None:
    if any(p.name.startswith("nvidia") and p.name[6:].isdigit() for p in Path("/dev").iterdir()):
        pytest.skip("this machine has an NVIDIA device")
    seen = gpu_visibility()
    assert not seen.visible and "no NVIDIA GPU device" in seen.reason


def test_the_real_driver_probe_answers_without_raising() -> None:
    assert isinstance(gpu._driver_loads(), bool)


def test_cuda_is_asked_for_when_a_gpu_is_usable(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="smbyoc.serving.gpu"):
        providers = onnx_providers(ORT_GPU, lambda: GpuVisibility(True, "1 NVIDIA GPU device(s)"))
    assert providers == [CUDA_PROVIDER, CPU_PROVIDER]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_cpu_fallback_warns_once_per_process(caplog: pytest.LogCaptureFixture) -> None:
    hidden = GpuVisibility(False, "no NVIDIA GPU device (/dev/nvidia0, ...)")
    with caplog.at_level(logging.INFO, logger="smbyoc.serving.gpu"):
        for _ in range(3):
            assert onnx_providers(ORT_GPU, lambda: hidden) == [CPU_PROVIDER]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "\n" not in message and CUDA_PROVIDER in message and "no NVIDIA GPU device" in message


def test_onnxruntime_without_cuda_is_not_worth_a_word(caplog: pytest.LogCaptureFixture) -> None:
    def never() -> GpuVisibility:
        raise AssertionError("no probe without the CUDA provider")

    with caplog.at_level(logging.DEBUG, logger="smbyoc.serving.gpu"):
        assert onnx_providers(["AzureExecutionProvider", CPU_PROVIDER], never) == [CPU_PROVIDER]
    assert not caplog.records


def test_default_onnx_model_runs_on_cpu_here(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from smbyoc.serving.default_handlers import OnnxModel

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "model.onnx")
    with caplog.at_level(logging.WARNING):
        served = OnnxModel(tmp_path / "model.onnx", threads=1)
    assert served.session.get_providers() == [CPU_PROVIDER]
    assert not [r for r in caplog.records if r.name == "smbyoc.serving.gpu"]  # CPU onnxruntime: no warning
    np.testing.assert_array_equal(served.predict(np.array([[-1.0, 2.0]])), [[0.0, 2.0]])


def test_the_master_says_it_once_so_forked_workers_stay_silent(caplog: pytest.LogCaptureFixture) -> None:
    hidden = GpuVisibility(False, "no NVIDIA GPU device (/dev/nvidia0, ...)")
    with caplog.at_level(logging.INFO, logger="smbyoc.serving.gpu"):
        assert gpu.announce_cpu_fallback(lambda: True, lambda: hidden)
        assert onnx_providers(ORT_GPU, lambda: hidden) == [CPU_PROVIDER]  # what a worker does after the fork
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_the_master_says_nothing_without_onnxruntime_gpu_or_with_a_gpu(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="smbyoc.serving.gpu"):
        assert not gpu.announce_cpu_fallback(lambda: False, lambda: GpuVisibility(False, "x"))
        assert not gpu.announce_cpu_fallback(lambda: True, lambda: GpuVisibility(True, "1 NVIDIA GPU device(s)"))
    assert not caplog.records


def test_cuda_provider_is_found_without_importing_onnxruntime(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    if "onnxruntime" in sys.modules:
        monkeypatch.delitem(sys.modules, "onnxruntime")
    fake = tmp_path / "onnxruntime"
    (fake / "capi").mkdir(parents=True)
    (fake / "__init__.py").write_text("raise RuntimeError('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert not gpu.onnxruntime_has_cuda_provider()  # onnxruntime (CPU): no provider library
    (fake / "capi" / gpu.CUDA_PROVIDER_LIBRARY).touch()
    assert gpu.onnxruntime_has_cuda_provider()  # onnxruntime-gpu
    assert "onnxruntime" not in sys.modules
