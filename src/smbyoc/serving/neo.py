"""The default handler for SageMaker Neo / TVM compiled model directories.

Two layouts are recognised (``docs/neo.md``):

* **graph** — what SageMaker Neo writes for CPU targets such as ``ml_c5``: a compiled library
  (``compiled.so``), the TVM graph (``compiled_model.json``) and the weights (``compiled.params``), often with
  a metadata file ``compiled.meta`` and a ``manifest``. Run with the ``dlr`` runtime.
* **relax** — what current Apache TVM (``apache-tvm`` 0.26+ on PyPI) writes: one compiled library holding the
  Relax VM executable and its weights (``compiled.so``) and a metadata file ``compiled.meta``. Run with
  ``tvm.runtime`` (``smbyoc neo-compile`` writes this layout).

The metadata file is Neo's JSON (``{"Model": {"Inputs": [{"name", "dtype", "shape"}], "Outputs": [...]},
"Requirements": {...}}``); the input dtype and rank come from it when present. Runtimes are imported only
when such a directory is loaded.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from smbyoc.errors import UserCodeError
from smbyoc.machine import host_machine
from smbyoc.serving.errors import InputError, clip

logger = logging.getLogger(__name__)

LIBRARY_SUFFIX = ".so"
GRAPH_SUFFIX = ".json"
PARAMS_SUFFIX = ".params"
META_SUFFIX = ".meta"
#: Files Neo may put beside the model that are not the model (DLR skips the same JSON names).
AUXILIARY = frozenset({"libdlr.so", "model.json", "hyperparams.json", "version.json", "dlr.json", "manifest.json"})

#: ELF ``e_machine`` values and the ``platform.machine()`` names that run them.
_ELF_MACHINES = {0x3E: "x86_64", 0xB7: "aarch64", 0x03: "i386", 0x28: "arm"}
#: LLVM CPU names whose code uses AVX-512 (SIGILL on a CPU without it).
_AVX512_CPUS = frozenset({
    "skylake-avx512", "cascadelake", "cooperlake", "icelake-server", "icelake-client", "sapphirerapids",
    "tigerlake", "znver4", "znver5",
})


@dataclass(frozen=True)
class NeoArtifact:
    """The files of a compiled model directory (paths are absolute; graph/params/meta may be None)."""

    library: Path
    graph: Path | None = None
    params: Path | None = None
    meta: Path | None = None

    @property
    def layout(self) -> str:
        return "graph" if self.graph is not None and self.params is not None else "relax"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str = "float32"
    shape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class NeoMetadata:
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[str, ...] = ()
    mcpu: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)


def _pick(candidates: list[Path], preferred: str, what: str, model_dir: Path) -> Path | None:
    if not candidates:
        return None
    for path in candidates:
        if path.name == preferred:
            return path
    if len(candidates) > 1:
        names = ", ".join(sorted(p.name for p in candidates))
        raise UserCodeError(f"{model_dir}: several {what} files ({names}); keep one or name it {preferred}")
    return candidates[0]


def find_artifact(model_dir: Path) -> NeoArtifact | None:
    """The compiled model in ``model_dir``: a ``.so`` library with a ``.meta`` file, or with a graph ``.json``
    and ``.params`` (Neo's layout). None when the directory holds no such set; UserCodeError when it is
    ambiguous (two libraries, neither named ``compiled.so``)."""
    if not model_dir.is_dir():
        return None
    files = sorted(p for p in model_dir.iterdir() if p.is_file() and p.name not in AUXILIARY)
    libraries = [p for p in files if p.name.endswith(LIBRARY_SUFFIX)]
    metas = [p for p in files if p.name.endswith(META_SUFFIX)]
    graphs = [p for p in files if p.name.endswith(GRAPH_SUFFIX)]
    params = [p for p in files if p.name.endswith(PARAMS_SUFFIX)]
    if not libraries or not (metas or (graphs and params)):
        return None
    return NeoArtifact(
        library=_pick(libraries, "compiled.so", "compiled library (.so)", model_dir) or libraries[0],
        graph=_pick(graphs, "compiled_model.json", "graph (.json)", model_dir),
        params=_pick(params, "compiled.params", "parameter (.params)", model_dir),
        meta=_pick(metas, "compiled.meta", "metadata (.meta)", model_dir),
    )


def is_neo_dir(model_dir: Path) -> bool:
    """Whether ``model_dir`` holds a compiled model (an ambiguous one counts: loading says why it fails)."""
    try:
        return find_artifact(model_dir) is not None
    except UserCodeError:
        return True


def read_metadata(path: Path | None) -> NeoMetadata:
    """Neo's metadata file; unknown keys are ignored, a malformed file is a UserCodeError naming it."""
    if path is None:
        return NeoMetadata()
    try:
        raw = json.loads(path.read_text())
        model = raw.get("Model", {}) if isinstance(raw, dict) else None
        if not isinstance(model, dict):
            raise ValueError("expected a JSON object with a 'Model' object")
        inputs = tuple(
            TensorSpec(
                name=str(item["name"]),
                dtype=str(np.dtype(item.get("dtype", "float32"))),
                shape=None if item.get("shape") is None else tuple(int(d) for d in item["shape"]),
            )
            for item in model.get("Inputs", [])
        )
        outputs = tuple(str(item.get("name", f"output_{i}")) for i, item in enumerate(model.get("Outputs", [])))
        target = raw.get("Compilation", {}).get("Target", {})
        mcpu = target.get("mcpu") if isinstance(target, dict) else None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise UserCodeError(f"{path}: not a valid Neo metadata file: {e}") from e
    return NeoMetadata(inputs=inputs, outputs=outputs, mcpu=mcpu, raw=raw)


def check_library(path: Path, host: str | None = None) -> None:
    """UserCodeError unless ``path`` is an ELF shared library for this machine's architecture."""
    host = host or host_machine()
    try:
        with path.open("rb") as f:
            header = f.read(20)
    except OSError as e:
        raise UserCodeError(f"{path}: cannot read the compiled library: {e}") from e
    if len(header) < 20 or header[:4] != b"\x7fELF":
        raise UserCodeError(f"{path}: not an ELF shared library (a Neo model compiled for Linux is expected)")
    machine = int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")
    arch = _ELF_MACHINES.get(machine, f"ELF machine {machine:#x}")
    if arch != host:
        raise UserCodeError(
            f"{path}: compiled for {arch}, but this machine is {host}; compile for a {host} target "
            f"(e.g. ml_c5 for x86_64, ml_m6g for aarch64) or serve it on a {arch} image"
        )


def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def check_cpu(meta: NeoMetadata, where: Path, flags: frozenset[str] | None = None) -> None:
    """UserCodeError when the model was compiled for AVX-512 and this CPU has none (it would crash)."""
    if meta.mcpu not in _AVX512_CPUS:
        return
    flags = cpu_flags() if flags is None else flags
    if flags and "avx512f" not in flags:
        raise UserCodeError(
            f"{where}: compiled for -mcpu={meta.mcpu} (AVX-512) but this CPU has no avx512f; "
            "compile for a target this instance supports (e.g. --target llvm)"
        )


class _RelaxRunner:
    """A Relax VM executable loaded with ``tvm.runtime``."""

    def __init__(self, artifact: NeoArtifact, threads: int) -> None:
        try:
            import tvm
            from tvm.runtime.vm import VirtualMachine
        except ImportError as e:
            raise UserCodeError(
                f"{artifact.library.parent} holds a TVM-compiled model but the TVM runtime is not installed "
                "(pip install 'smbyoc[neo]', i.e. apache-tvm>=0.26)"
            ) from e
        config = tvm.get_global_func("runtime.config_threadpool", allow_missing=True)
        if config is not None:
            config(0, threads)  # 0: big cores, as TVM's default affinity
        try:
            library = tvm.runtime.load_module(str(artifact.library))
            self.vm = VirtualMachine(library, tvm.cpu())
            arity = int(self.vm._get_function_arity("main"))
            self.input_names = [str(self.vm._get_function_param_name("main", i)) for i in range(arity)]
        except Exception as e:
            raise UserCodeError(
                clip(f"{artifact.library}: TVM {tvm.__version__} cannot load it as a Relax VM executable "
                     f"({type(e).__name__}: {e}); a graph-executor library needs its .json and .params beside it")
            ) from e
        self._tvm = tvm

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        tvm = self._tvm
        to_tensor = getattr(tvm.runtime, "tensor", None) or tvm.nd.array  # tvm.nd.array before TVM 0.22
        try:
            result = self.vm["main"](*[to_tensor(np.ascontiguousarray(a)) for a in arrays])
        except Exception as e:
            if "shape" in str(e).lower() or "dtype" in str(e).lower() or "mismatch" in str(e).lower():
                raise InputError(clip(f"the request does not fit the model: {str(e).strip().splitlines()[-1]}")) from e
            raise
        return _flatten(result)


def _flatten(result: Any) -> list[np.ndarray]:
    if hasattr(result, "numpy"):
        return [result.numpy()]
    out: list[np.ndarray] = []
    for item in result:
        out.extend(_flatten(item))
    return out


class _DlrRunner:
    """Neo's graph layout run with ``dlr.DLRModel`` (the runtime SageMaker's Neo containers use)."""

    def __init__(self, artifact: NeoArtifact) -> None:
        model_dir = artifact.library.parent
        install = (
            "pip install dlr on a platform with a DLR wheel that bundles libdlr.so, or build DLR from source; "
            "the apache-tvm wheels on PyPI (0.26+) cannot run graph-executor libraries"
        )
        try:
            import dlr
        except ImportError as e:
            raise UserCodeError(f"{model_dir} holds a Neo/DLR compiled model (graph layout) but dlr is not "
                                f"installed ({install})") from e
        try:
            self.model = dlr.DLRModel(str(model_dir), "cpu", 0)
        except Exception as e:  # DLRLibraryNotFound: the PyPI py3-none-any wheels carry no libdlr.so
            raise UserCodeError(
                clip(f"{model_dir}: dlr cannot load the model ({type(e).__name__}: {e}); {install}")
            ) from e
        self.input_names = [str(n) for n in self.model.get_input_names()]

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        outputs = self.model.run(dict(zip(self.input_names, arrays, strict=True)))
        return [np.asarray(o) for o in outputs]


class NeoModel:
    """A compiled model directory served by the default handler: numpy in (by input order or name), numpy out."""

    def __init__(self, model_dir: Path, threads: int) -> None:
        artifact = find_artifact(model_dir)
        if artifact is None:
            raise UserCodeError(f"{model_dir}: no compiled model (.so with .meta, or .so with .json and .params)")
        self.artifact = artifact
        self.meta = read_metadata(artifact.meta)
        check_library(artifact.library)
        check_cpu(self.meta, artifact.meta or artifact.library)
        self.runner: _RelaxRunner | _DlrRunner
        self.runner = _DlrRunner(artifact) if artifact.layout == "graph" else _RelaxRunner(artifact, threads)
        specs = {s.name: s for s in self.meta.inputs}
        self.inputs = [specs.get(name, TensorSpec(name)) for name in self.runner.input_names]
        logger.info("Neo %s model %s: inputs %s", artifact.layout, artifact.library,
                    ", ".join(f"{s.name}:{s.dtype}{list(s.shape) if s.shape else ''}" for s in self.inputs))

    def _array(self, spec: TensorSpec, value: Any) -> np.ndarray:
        try:
            array = np.asarray(value, dtype=spec.dtype)
        except (TypeError, ValueError, OverflowError) as e:
            raise InputError(clip(f"input {spec.name!r}: cannot convert the request data to {spec.dtype}: {e}")) from e
        if spec.shape is not None:
            if array.ndim == len(spec.shape) - 1:  # one record without the batch dimension
                array = array[np.newaxis, ...]
            fixed = [(i, d) for i, d in enumerate(spec.shape) if d >= 0]
            if array.ndim != len(spec.shape) or any(array.shape[i] != d for i, d in fixed):
                want = "x".join("N" if d < 0 else str(d) for d in spec.shape)
                raise InputError(f"input {spec.name!r}: shape {list(array.shape)} does not fit the model's {want}")
        return array

    def predict(self, data: Any) -> Any:
        if isinstance(data, np.ndarray) and data.dtype == object and data.ndim == 0 and isinstance(data.item(), dict):
            data = data.item()  # a JSON object: inputs by name
        if isinstance(data, dict):
            missing = [s.name for s in self.inputs if s.name not in data]
            if missing:
                raise InputError(f"missing model inputs: {', '.join(missing)}")
            arrays = [self._array(s, data[s.name]) for s in self.inputs]
        elif len(self.inputs) == 1:
            arrays = [self._array(self.inputs[0], data)]
        else:
            raise InputError(
                f"the model has {len(self.inputs)} inputs ({', '.join(s.name for s in self.inputs)}); "
                "send an object or npz keyed by input name"
            )
        outputs = self.runner.run(arrays)
        if len(outputs) == 1:
            return outputs[0]
        names = list(self.meta.outputs)
        if len(names) != len(outputs):
            names = [f"output_{i}" for i in range(len(outputs))]
        return dict(zip(names, outputs, strict=True))
