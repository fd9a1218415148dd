"""Is an NVIDIA GPU usable by this process? Decides whether serving asks onnxruntime for its CUDA provider.

A cuda image runs on CPU instances too (and in ``smbyoc serve`` on a laptop): onnxruntime-gpu then lists
``CUDAExecutionProvider`` as *available* although no GPU is there, and a session asked for it logs errors or
fails to create. :func:`gpu_visibility` looks, cheapest first, at what decides it:

1. ``CUDA_VISIBLE_DEVICES`` / ``NVIDIA_VISIBLE_DEVICES`` set to no device (empty, ``none``, ``void``; ``-1``
   for CUDA): the container runtime or the user hid every GPU;
2. a ``/dev/nvidia<N>`` device node (what the NVIDIA container runtime mounts for each GPU);
3. the driver's user-space library ``libcuda.so.1`` (mounted from the host; the images hold only the CUDA
   runtime libraries, never the driver).

These two variables belong to the CUDA driver and the NVIDIA container runtime, not to smbyoc, so they are
read here as they are (an empty value means "no device", where smbyoc's own variables treat it as unset).
:func:`onnx_providers` turns the answer into the provider list and warns once per process when it falls
back to CPU; the serving master calls :func:`announce_cpu_fallback` before forking its workers, so a container
says it once, not once per worker.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
DRIVER_LIBRARY = "libcuda.so.1"
CUDA_PROVIDER_LIBRARY = "libonnxruntime_providers_cuda.so"
#: Values of the two variables that leave no GPU visible (``-1``: an invalid index ends CUDA's list at once).
_NO_DEVICE = {"CUDA_VISIBLE_DEVICES": ("", "none", "void", "-1"), "NVIDIA_VISIBLE_DEVICES": ("", "none", "void")}
_DEVICE_NODE = re.compile(r"nvidia[0-9]+")


class _Once:
    """A flag set at most once per process (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = False

    def first(self) -> bool:
        """True the first time it is asked (after :meth:`reset`), else False."""
        with self._lock:
            first, self._done = not self._done, True
            return first

    def reset(self) -> None:
        with self._lock:
            self._done = False


_fallback_warned = _Once()


@dataclass(frozen=True)
class GpuVisibility:
    """Whether a GPU is usable; ``reason`` says what decided it, for the log."""

    visible: bool
    reason: str


def _driver_loads() -> bool:
    try:
        ctypes.CDLL(DRIVER_LIBRARY)
    except OSError:
        return False
    return True


def gpu_visibility(environ: Mapping[str, str] | None = None, dev: Path | str = "/dev",
                   driver_loads: Callable[[], bool] = _driver_loads) -> GpuVisibility:
    """Whether an NVIDIA GPU is usable here (see the module docstring for the order of the checks)."""
    env = os.environ if environ is None else environ
    for name, hidden in _NO_DEVICE.items():
        value = env.get(name)
        if value is not None and value.strip().lower() in hidden:
            return GpuVisibility(False, f"{name}={value!r} hides every GPU")
    try:
        nodes = sorted(p.name for p in Path(dev).iterdir() if _DEVICE_NODE.fullmatch(p.name))
    except OSError:
        nodes = []
    if not nodes:
        return GpuVisibility(False, f"no NVIDIA GPU device ({dev}/nvidia0, ...)")
    if not driver_loads():
        return GpuVisibility(False, f"the NVIDIA driver library {DRIVER_LIBRARY} cannot be loaded")
    return GpuVisibility(True, f"{len(nodes)} NVIDIA GPU device(s) and {DRIVER_LIBRARY}")


def onnx_providers(available: Sequence[str], visibility: Callable[[], GpuVisibility] = gpu_visibility) -> list[str]:
    """The onnxruntime providers to ask for, best first: CUDA when it is available and a GPU is usable, then
    CPU. When the CUDA provider is available (onnxruntime-gpu) but no GPU is usable, one warning per process
    says so; onnxruntime without the CUDA provider (cpu images) is not worth a word."""
    providers = [p for p in (CUDA_PROVIDER, CPU_PROVIDER) if p in available]
    if CUDA_PROVIDER not in providers:
        return providers
    seen = visibility()
    if seen.visible:
        logger.info("onnxruntime: using %s (%s)", CUDA_PROVIDER, seen.reason)
        return providers
    _warn_cpu_fallback(seen.reason)
    return [p for p in providers if p != CUDA_PROVIDER]


def onnxruntime_has_cuda_provider() -> bool:
    """Whether the installed onnxruntime ships its CUDA provider (onnxruntime-gpu), found without importing it
    (importing onnxruntime before a fork makes the forked workers abort: smbyoc.serving.wsgi)."""
    try:
        spec = importlib.util.find_spec("onnxruntime")
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    return any((Path(location) / "capi" / CUDA_PROVIDER_LIBRARY).is_file()
               for location in spec.submodule_search_locations)


def announce_cpu_fallback(has_cuda_provider: Callable[[], bool] = onnxruntime_has_cuda_provider,
                          visibility: Callable[[], GpuVisibility] = gpu_visibility) -> bool:
    """In the serving master, before the workers fork: say the one warning of :func:`onnx_providers` now, when
    onnxruntime-gpu is installed and no GPU is usable, so that every worker (forked with the warning already
    said) stays silent. True when it warned."""
    if not has_cuda_provider():
        return False
    seen = visibility()
    if seen.visible:
        return False
    _warn_cpu_fallback(seen.reason)
    return True


def _warn_cpu_fallback(reason: str) -> None:
    if not _fallback_warned.first():
        return
    logger.warning("onnxruntime: %s is installed but no GPU is usable (%s); running models on CPU",
                   CUDA_PROVIDER, reason)


def reset_warning() -> None:
    """Let the next CPU fallback warn again (tests)."""
    _fallback_warned.reset()
