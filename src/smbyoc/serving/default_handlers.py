"""Default models used when there is no ``model_fn``: ONNX, TorchScript, and Neo/DLR compiled models.

Runtimes are imported only when their model is found, so an ONNX image never imports torch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from smbyoc.errors import UserCodeError
from smbyoc.serving import gpu
from smbyoc.serving.errors import InputError, clip

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.pt"

_ONNX_DTYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
    "tensor(string)": np.object_,
}


class DefaultModel(Protocol):
    def predict(self, data: Any) -> Any: ...


class OnnxModel:
    """An onnxruntime session created once; ``predict`` feeds arrays by input order or by name."""

    def __init__(self, path: Path, threads: int) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise UserCodeError(f"{path}: serving an ONNX model needs onnxruntime (pip install onnxruntime)") from e
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        providers = gpu.onnx_providers(ort.get_available_providers())  # CPU, with one warning, when no GPU
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        self.inputs = [(i.name, _ONNX_DTYPES.get(i.type, np.float32)) for i in self.session.get_inputs()]
        self.ranks = {i.name: len(i.shape) if isinstance(i.shape, list) else None for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _array(self, name: str, dtype: Any, value: Any) -> Any:
        if isinstance(value, np.ndarray) and value.dtype.kind == "c" and np.dtype(dtype).kind != "c":
            raise InputError(f"input {name!r}: complex values for a {np.dtype(dtype).name} input")
        try:
            with np.errstate(over="raise", invalid="raise"):  # a finite value beyond the dtype's range: refused
                array = np.asarray(value, dtype=dtype)
        except FloatingPointError as e:
            raise InputError(f"input {name!r}: a value is out of {np.dtype(dtype).name}'s range ({e})") from e
        except (TypeError, ValueError, OverflowError) as e:  # OverflowError: an integer too large for a float
            raise InputError(
                clip(f"input {name!r}: cannot convert the request data to {np.dtype(dtype).name}: {e}")
            ) from e
        rank = self.ranks.get(name)
        if rank is not None and array.ndim == rank - 1:  # one record without the batch dimension
            array = array[np.newaxis, ...]
        return array

    def predict(self, data: Any) -> Any:
        if isinstance(data, np.ndarray) and data.dtype == object and data.ndim == 0 and isinstance(data.item(), dict):
            data = data.item()  # a JSON object: inputs by name
        if isinstance(data, dict):
            missing = [name for name, _ in self.inputs if name not in data]
            if missing:
                raise InputError(f"missing model inputs: {', '.join(missing)}")
            feed: dict[str, Any] = {name: self._array(name, dtype, data[name]) for name, dtype in self.inputs}
        elif len(self.inputs) == 1:
            name, dtype = self.inputs[0]
            feed = {name: self._array(name, dtype, data)}
        else:
            raise InputError(
                f"the model has {len(self.inputs)} inputs ({', '.join(n for n, _ in self.inputs)}); "
                "send an object or npz keyed by input name"
            )
        try:
            outputs = self.session.run(None, feed)
        except Exception as e:
            if type(e).__name__ in ("InvalidArgument", "Fail") and "input" in str(e).lower():
                raise InputError(f"the request does not fit the model: {e}") from e
            raise
        if len(outputs) == 1:
            return outputs[0]
        return dict(zip(self.output_names, outputs, strict=True))


class TorchScriptModel:
    """A TorchScript module loaded with ``torch.jit.load``; numpy in, numpy out."""

    def __init__(self, path: Path, threads: int) -> None:
        try:
            import torch
        except ImportError as e:
            raise UserCodeError(f"{path}: serving a TorchScript model needs torch (pip install torch)") from e
        torch.set_num_threads(threads)
        self._torch = torch
        self.module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
        self.module.eval()

    def predict(self, data: Any) -> Any:
        torch = self._torch
        with torch.inference_mode():
            if isinstance(data, dict):
                result = self.module(**{k: torch.as_tensor(np.asarray(v)) for k, v in data.items()})
            else:
                array = np.asarray(data)
                if array.dtype == np.float64:
                    array = array.astype(np.float32)
                result = self.module(torch.as_tensor(array))
        if isinstance(result, (tuple, list)):
            return [r.numpy() for r in result]
        if isinstance(result, dict):
            return {k: v.numpy() for k, v in result.items()}
        return result.numpy()


def find_default_model(model_dir: Path) -> str | None:
    """Which default handler applies to ``model_dir``: ``onnx``, ``torchscript``, ``dlr`` or None."""
    if (model_dir / ONNX_FILE).is_file():
        return "onnx"
    if (model_dir / TORCHSCRIPT_FILE).is_file():
        return "torchscript"
    from smbyoc.serving.neo import is_neo_dir  # lazily: neo needs numpy only when a model is one

    if is_neo_dir(model_dir):
        return "dlr"
    return None


def load_default_model(model_dir: Path, threads: int) -> DefaultModel:
    """Load the default model found in ``model_dir``; UserCodeError when there is none or it cannot load."""
    kind = find_default_model(model_dir)
    logger.info("loading default %s model from %s (%d threads)", kind, model_dir, threads)
    if kind == "onnx":
        return OnnxModel(model_dir / ONNX_FILE, threads)
    if kind == "torchscript":
        return TorchScriptModel(model_dir / TORCHSCRIPT_FILE, threads)
    if kind == "dlr":
        from smbyoc.serving.neo import NeoModel

        return NeoModel(model_dir, threads)
    raise UserCodeError(
        f"no model_fn and no default model in {model_dir}: expected {ONNX_FILE}, {TORCHSCRIPT_FILE} "
        "or a Neo/DLR compiled model directory"
    )
