"""Compile an ONNX model locally the way SageMaker Neo does for a CPU target, with Apache TVM.

Neo compiles for an instance family (``ml_c5``) to a TVM target (``llvm -mcpu=skylake-avx512``) and writes
a directory the serving runtime loads. This writes the Relax layout that ``apache-tvm`` 0.26+ produces
(``compiled.so`` holding the VM executable and its weights) with Neo's metadata file ``compiled.meta``;
``smbyoc.serving.neo`` serves it. Needs ``apache-tvm`` and ``onnx`` (``pip install 'smbyoc[neo]' onnx``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from smbyoc.errors import ConfigError, SmbyocError
from smbyoc.machine import host_machine

logger = logging.getLogger(__name__)

LIBRARY = "compiled.so"
META = "compiled.meta"

_SKYLAKE = {"kind": "llvm", "mcpu": "skylake-avx512"}
_ICELAKE = {"kind": "llvm", "mcpu": "icelake-server"}
_GRAVITON2 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "neoverse-n1"}
#: Neo's CPU target devices and the TVM targets they stand for (``llvm``: this machine's generic CPU).
TARGETS: dict[str, dict[str, str]] = {
    "ml_c4": {"kind": "llvm", "mcpu": "haswell"}, "ml_m4": {"kind": "llvm", "mcpu": "haswell"},
    "ml_c5": _SKYLAKE, "ml_m5": _SKYLAKE, "ml_r5": _SKYLAKE,
    "ml_c6i": _ICELAKE, "ml_m6i": _ICELAKE, "ml_r6i": _ICELAKE,
    "ml_c6g": _GRAVITON2, "ml_m6g": _GRAVITON2, "ml_r6g": _GRAVITON2,
    "llvm": {"kind": "llvm"},
}


def _tvm_target(name: str) -> dict[str, str]:
    try:
        return dict(TARGETS[name])
    except KeyError:
        raise ConfigError(f"unknown target {name!r}; one of {', '.join(sorted(TARGETS))}", key="--target") from None


def _tensor_specs(values: Any, onnx: Any, skip: set[str]) -> list[dict[str, Any]]:
    specs = []
    for value in values:
        if value.name in skip:
            continue
        tensor = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        specs.append({"name": value.name, "dtype": dtype, "shape": shape})
    return specs


def compile_onnx(
    onnx_file: Path, output_dir: Path, target: str = "ml_c5", input_shapes: dict[str, list[int]] | None = None
) -> Path:
    """Compile ``onnx_file`` for ``target`` into ``output_dir`` (``compiled.so`` + ``compiled.meta``); each file
    is written under a temporary name and renamed, so a failed compile leaves no half-written model."""
    tvm_target = _tvm_target(target)
    if not onnx_file.is_file():
        raise ConfigError("no such ONNX file", source=str(onnx_file))
    cross = tvm_target.get("mtriple", "").startswith("aarch64") and host_machine() != "aarch64"
    compiler = shutil.which("aarch64-linux-gnu-gcc") if cross else None
    if cross and compiler is None:
        raise SmbyocError(f"target {target} is aarch64: compiling it on this x86_64 machine needs the "
                          "aarch64-linux-gnu-gcc cross linker (apt-get install gcc-aarch64-linux-gnu "
                          "libc6-dev-arm64-cross)")
    try:
        import onnx
        import tvm
        from tvm import relax
        from tvm.relax.frontend.onnx import from_onnx
    except ImportError as e:
        raise SmbyocError(f"neo-compile needs apache-tvm and onnx ({e}); pip install 'smbyoc[neo]' onnx") from e
    started = time.monotonic()
    model = onnx.load(str(onnx_file))
    initializers = {t.name for t in model.graph.initializer}
    inputs = _tensor_specs(model.graph.input, onnx, initializers)
    outputs = _tensor_specs(model.graph.output, onnx, set())
    for name, shape in (input_shapes or {}).items():
        spec = next((s for s in inputs if s["name"] == name), None)
        if spec is None:
            raise ConfigError(f"no model input named {name!r} (inputs: {', '.join(s['name'] for s in inputs)})",
                              key="--input-shape")
        spec["shape"] = list(shape)
    shape_dict = {s["name"]: s["shape"] for s in inputs} if input_shapes else None
    try:
        mod = from_onnx(model, shape_dict=shape_dict, keep_params_in_input=False)
        with tvm.target.Target(tvm_target):
            mod = relax.get_pipeline("zero")(mod)
        executable = relax.build(mod, target=tvm.target.Target(tvm_target))
    except Exception as e:  # TVM raises many types (TVMError, ValueError, ...): one line naming the file
        raise SmbyocError(f"{onnx_file}: TVM {tvm.__version__} cannot compile it for {target}: "
                          f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}") from e
    meta = {
        "Model": {"Inputs": inputs, "Outputs": [{"name": s["name"], "dtype": s["dtype"]} for s in outputs]},
        "Requirements": {"TargetDevice": target.upper(), "TargetDeviceType": "cpu"},
        "Compilation": {
            "Compiler": "apache-tvm", "Version": tvm.__version__, "Layout": "relax", "Target": tvm_target,
            "CreatedTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "Source": onnx_file.name,
        },
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".neo-compile-") as tmp:
        library = Path(tmp) / LIBRARY
        try:
            if compiler:
                from tvm.support import cc  # tvm.contrib.cc before TVM 0.26

                executable.export_library(str(library), fcompile=cc.cross_compiler(compiler))
            else:
                executable.export_library(str(library))
        except Exception as e:  # the linker's complaint (RuntimeError with its output): its telling line
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            detail = next((line for line in lines if "error" in line.lower() and "Compilation error" not in line),
                          lines[0] if lines else type(e).__name__)
            raise SmbyocError(f"{onnx_file}: linking the {target} library failed: {detail}") from e
        (Path(tmp) / META).write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(library, output_dir / LIBRARY)
        os.replace(Path(tmp) / META, output_dir / META)
    logger.info("compiled %s for %s (%s) into %s in %.1f s", onnx_file, target, tvm_target, output_dir,
                time.monotonic() - started)
    return output_dir
