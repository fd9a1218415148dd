"""The handler contract of sagemaker-inference: the user module and its functions, and the defaults.

The module named by ``SAGEMAKER_PROGRAM`` (default ``inference.py``) is looked up in
``SAGEMAKER_SUBMIT_DIRECTORY`` (default ``<model_dir>/code``), then ``<model_dir>/code``, then on
``sys.path`` (as sagemaker-inference does via ``PYTHONPATH``). It may define ``model_fn``, ``input_fn``,
``predict_fn``, ``output_fn`` or ``transform_fn`` (not both styles), and the hooks ``pre_model_fn``,
``model_warmup_fn`` and (smbyoc) ``execution_parameters_fn``; each may take one extra trailing
``context``. ``batch_records = True`` in the module (or ``SMBYOC_BATCH_RECORDS``) turns on batch
records mode (:mod:`smbyoc.serving.records`). Everything about the functions (which one, whether it takes
``context``) is worked out once at load time, never per request.

On a multi-model endpoint each model's own ``<model dir>/code/<SAGEMAKER_PROGRAM>`` comes first, imported
under a name of its own (:func:`import_model_module`) so that two models' ``inference.py`` never meet in
``sys.modules``; a model without one uses the image's module (``SAGEMAKER_SUBMIT_DIRECTORY``, then
``sys.path``), and one with neither the default model loader.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import itertools
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from smbyoc.errors import UserCodeError
from smbyoc.serving import codecs, records
from smbyoc.serving.context import Context
from smbyoc.serving.default_handlers import load_default_model
from smbyoc.serving.env import ServingEnv, cpu_count
from smbyoc.serving.errors import BadRequest

logger = logging.getLogger(__name__)

HOOKS = (
    "model_fn", "input_fn", "predict_fn", "output_fn", "transform_fn",
    "pre_model_fn", "model_warmup_fn", "execution_parameters_fn",
)


@dataclass(frozen=True)
class Bound:
    """A user function with its context-passing decided once (sagemaker-inference's arity rule)."""

    func: Callable[..., Any]
    takes_context: bool

    @classmethod
    def of(cls, func: Callable[..., Any], nargs: int) -> Bound:
        name = getattr(func, "__name__", repr(func))
        try:
            count = len(inspect.signature(func).parameters)
        except (TypeError, ValueError):
            return cls(func, False)
        if count == nargs:
            return cls(func, False)
        if count == nargs + 1:
            return cls(func, True)
        raise UserCodeError(f"{name} takes {count} arguments but {nargs} (or {nargs + 1} with context) are passed")

    def __call__(self, context: Context, *args: Any) -> Any:
        if self.takes_context:
            return self.func(*args, context)
        return self.func(*args)


@dataclass(frozen=True)
class HandlerResult:
    body: bytes
    content_type: str
    headers: Mapping[str, str]
    status: int = 200


def find_module_file(name: str, directories: list[Path]) -> Path | None:
    for directory in directories:
        for candidate in (directory / f"{name}.py", directory / name / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def import_user_module(env: ServingEnv, directories: list[Path] | None = None) -> ModuleType | None:
    """Import the handler module; None when there is none and ``SAGEMAKER_PROGRAM`` was left default.

    It is looked up in ``directories`` (default ``SAGEMAKER_SUBMIT_DIRECTORY``, then ``<model_dir>/code``),
    then on ``sys.path``. Raises :class:`UserCodeError` for a named module that does not exist ("not found")
    and, distinctly, for a module that exists but fails to import (one line; the traceback is the chained
    exception's, which the log shows and clients never see).
    """
    name = env.module_name
    if directories is None:
        directories = list(dict.fromkeys([env.submit_dir, env.model_dir / "code"]))
    path = find_module_file(name, directories)
    if path is not None:
        directory = str(path.parent if path.name != "__init__.py" else path.parent.parent)
        if directory not in sys.path:
            sys.path.insert(0, directory)
        location = str(path)
    else:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            if env.program != "inference.py":
                searched = ", ".join(str(d) for d in directories)
                raise UserCodeError(
                    f"handler module not found: SAGEMAKER_PROGRAM={env.program!r} is not in {searched} "
                    "nor on sys.path"
                )
            return None
        location = str(spec.origin or name)
    if name in sys.modules:
        return sys.modules[name]
    try:
        return importlib.import_module(name)
    except (Exception, SystemExit) as e:
        raise UserCodeError(f"error importing handler module {location}: {type(e).__name__}: {e}") from e


_MODULE_NUMBERS = itertools.count(1)


def _local_names(directory: Path) -> set[str]:
    """Top-level module names a directory provides (``x.py``, packages ``x/__init__.py``)."""
    try:
        entries = list(directory.iterdir())
    except OSError:
        return set()
    return {p.stem for p in entries if p.suffix == ".py" and p.is_file()} | {
        p.name for p in entries if p.is_dir() and (p / "__init__.py").is_file()}


def import_model_module(env: ServingEnv, model_dir: Path, model_name: str) -> tuple[ModuleType | None, str | None]:
    """A multi-model endpoint's handler module for ``model_dir`` and the unique ``sys.modules`` name it was
    imported under (None for the image's shared module, which keeps its own name).

    The model's own ``code/<SAGEMAKER_PROGRAM>`` is imported under ``_smbyoc_model_<hash>_<n>`` (a new name on
    every load, so a re-registered model runs its new code). While it executes, its ``code/`` directory is
    first on ``sys.path`` and same-named modules already imported are set aside, so ``import utils`` finds the
    model's own ``utils.py``; afterwards the modules it imported from ``code/`` are taken out of
    ``sys.modules`` again (the model keeps them), so the next model's ``utils`` is its own. Without one, the
    image's module (``SAGEMAKER_SUBMIT_DIRECTORY``, then ``sys.path``) or None (default loader).
    """
    path = find_module_file(env.module_name, [model_dir / "code"])
    if path is None:
        return import_user_module(env, [env.submit_dir]), None
    package = path.name == "__init__.py"
    directory = path.parent.parent if package else path.parent
    digest = hashlib.sha256(model_name.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    unique = f"_smbyoc_model_{digest}_{next(_MODULE_NUMBERS)}"
    spec = importlib.util.spec_from_file_location(
        unique, path, submodule_search_locations=[str(path.parent)] if package else None)
    if spec is None or spec.loader is None:  # pragma: no cover - a .py file always has a loader
        raise UserCodeError(f"cannot import handler module {path}")
    module = importlib.util.module_from_spec(spec)
    local = _local_names(directory)
    set_aside = {n: sys.modules.pop(n) for n in list(sys.modules) if n.partition(".")[0] in local}
    sys.modules[unique] = module
    sys.path.insert(0, str(directory))
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:
        sys.modules.pop(unique, None)
        raise UserCodeError(f"error importing handler module {path}: {type(e).__name__}: {e}") from e
    finally:
        if str(directory) in sys.path:
            sys.path.remove(str(directory))
        for name in [n for n in sys.modules if n.partition(".")[0] in local]:
            del sys.modules[name]  # the model's own helpers: it holds them, nobody else finds them
        sys.modules.update(set_aside)
    return module, unique


class Handler:
    """One model: its user functions (or defaults), the loaded model, and the request path."""

    def __init__(self, env: ServingEnv, name: str = "model", model_dir: Path | None = None) -> None:
        self.env = env
        self.name = name
        self.model_dir = model_dir or env.model_dir
        self.model: Any = None
        self.module: ModuleType | None = None
        self._transform: Bound | None = None
        self._input: Bound | None = None
        self._predict: Bound | None = None
        self._output: Bound | None = None
        self._execution_parameters: Bound | None = None
        self.default_output = True
        self.batch_records = env.batch_records
        self.module_key: str | None = None  # a multi-model endpoint's own module: its sys.modules name

    # ------------------------------------------------------------------------------------- loading
    def load(self) -> None:
        """Import the module, check it, run ``pre_model_fn``, ``model_fn`` and ``model_warmup_fn``."""
        if self.env.multi_model:
            module, self.module_key = import_model_module(self.env, self.model_dir, self.name)
        else:
            module = import_user_module(self.env)
        self.module = module
        funcs = {n: getattr(module, n) for n in HOOKS if module is not None and callable(getattr(module, n, None))}
        if "transform_fn" in funcs and {"input_fn", "predict_fn", "output_fn"} & funcs.keys():
            raise UserCodeError(
                f"{module.__name__ if module else ''}: transform_fn cannot be used together with "
                "input_fn, predict_fn or output_fn"
            )
        context = Context(self.name, str(self.model_dir))
        if "pre_model_fn" in funcs:
            Bound.of(funcs["pre_model_fn"], 1)(context, str(self.model_dir))
        if "model_fn" in funcs:
            self.model = Bound.of(funcs["model_fn"], 1)(context, str(self.model_dir))
        else:
            threads = self.env.onnx_threads or max(1, cpu_count() // max(1, self.env.workers))
            self.model = load_default_model(self.model_dir, threads)
        if "model_warmup_fn" in funcs:
            Bound.of(funcs["model_warmup_fn"], 2)(context, str(self.model_dir), self.model)
        if "transform_fn" in funcs:
            self._transform = Bound.of(funcs["transform_fn"], 4)
        if "input_fn" in funcs:
            self._input = Bound.of(funcs["input_fn"], 2)
        if "predict_fn" in funcs:
            self._predict = Bound.of(funcs["predict_fn"], 2)
        if "output_fn" in funcs:
            self._output = Bound.of(funcs["output_fn"], 2)
        if "execution_parameters_fn" in funcs:
            self._execution_parameters = Bound.of(funcs["execution_parameters_fn"], 0)
        self.default_output = self._transform is None and self._output is None
        self.batch_records = self.env.batch_records or bool(getattr(module, "batch_records", False))

    def unload(self) -> None:
        """Drop the model and the functions (and a multi-model endpoint's own module) so they can be freed."""
        if self.module_key is not None:
            sys.modules.pop(self.module_key, None)
            self.module_key = None
        self.model = self.module = None
        self._transform = self._input = self._predict = self._output = self._execution_parameters = None

    def execution_parameters(self) -> dict[str, Any]:
        if self._execution_parameters is None:
            return {}
        result = self._execution_parameters(Context(self.name, str(self.model_dir)))
        return dict(result or {})

    # ------------------------------------------------------------------------------------- requests
    def invoke(self, body: bytes, content_type_header: str | None, headers: Mapping[str, str]) -> HandlerResult:
        """Run one request through transform_fn or input_fn → predict_fn → output_fn; with batch records
        on and a framed Content-Type, the request's records go in as a list and one record per input
        record must come out (:mod:`smbyoc.serving.records`)."""
        content_type, params = codecs.media_type(content_type_header)
        accept = headers.get("Accept")
        if not accept or accept.strip() == codecs.ANY:
            accept = self.env.default_accept
        chosen = codecs.negotiate(accept, self.env.default_accept) if self.default_output else None
        context = Context(self.name, str(self.model_dir), headers)
        request_kind = records.framing(content_type) if self.batch_records else None
        count = 0
        if request_kind is None:
            data: Any = body
            if content_type in codecs.TEXT_TYPES:
                data = codecs.decode_text(body, content_type, params.get("charset"))
            result = self._run(context, data, content_type, accept, chosen, codecs.decode, codecs.encode)
        else:
            items = records.split_body(body, content_type, params.get("charset"), request_kind)
            count = len(items)
            if not count:
                raise BadRequest("the mini-batch holds no records (an empty body)")

            def encode(prediction: Any, kind: str) -> list[bytes]:
                return records.encode_default(prediction, kind, count)

            result = self._run(context, items, content_type, accept, chosen, records.decode_default, encode)
        response_headers = dict(context.get_response_headers())
        status = context.request_processor[0].status_code or 200
        if isinstance(result, tuple) and len(result) == 2:
            payload, response_type = result
        else:
            payload, response_type = result, None
        response_type = response_type or response_headers.pop("Content-Type", None) or _first_type(accept)
        response_headers.pop("Content-Type", None)
        if request_kind is None:
            return HandlerResult(_to_bytes(payload), str(response_type), response_headers, status)
        answer = records.output_records(payload, count, str(response_type), request_kind)
        return HandlerResult(answer, str(response_type), response_headers, status)

    def _run(
        self, context: Context, data: Any, content_type: str, accept: str, chosen: str | None,
        decode: Callable[[Any, str], Any], encode: Callable[[Any, str], Any],
    ) -> Any:
        if self._transform is not None:
            return self._transform(context, self.model, data, content_type, accept)
        decoded = self._input(context, data, content_type) if self._input is not None else decode(data, content_type)
        if self._predict is not None:
            prediction = self._predict(context, decoded, self.model)
        else:
            prediction = self._default_predict(decoded)
        if self._output is not None:
            return self._output(context, prediction, accept)
        assert chosen is not None
        return (encode(prediction, chosen), chosen)

    def _default_predict(self, data: Any) -> Any:
        predict = getattr(self.model, "predict", None)
        if predict is None:
            raise UserCodeError(
                f"no predict_fn in the handler module and the model ({type(self.model).__name__}) "
                "has no predict method"
            )
        return predict(data)


def _first_type(accept: str) -> str:
    for kind, _ in codecs.parse_accept(accept):
        if "*" not in kind:
            return kind
    return codecs.JSON


def _to_bytes(payload: Any) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode("utf-8")
    if isinstance(payload, (bytearray, memoryview)):
        return bytes(payload)
    if isinstance(payload, list) and len(payload) == 1 and isinstance(payload[0], (bytes, str)):
        return _to_bytes(payload[0])  # MMS-style one-element response list
    return codecs.encode_json(payload)
