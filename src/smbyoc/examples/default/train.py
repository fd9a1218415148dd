"""smbyoc's default example: train a small PyTorch MLP on tabular CSV data, SageMaker script-mode style.

Everything comes through the SageMaker training contract, so this file runs unchanged in any SageMaker
training container that has PyTorch (and ``onnx`` for the ONNX export); it does not import smbyoc:

* data: every CSV file (with a header row) in ``SM_CHANNEL_TRAIN`` and, optionally,
  ``SM_CHANNEL_VALIDATION``; without them ``<base>/input/data/{train,validation}``, where ``<base>`` is
  ``SAGEMAKER_BASE_DIR`` (default ``/opt/ml``). Without a validation channel a seeded share of the train
  rows is held out;
* hyperparameters: ``--name value`` arguments (what the training toolkit passes), over ``SM_HPS``, over
  ``<base>/input/config/hyperparameters.json``, over the defaults in ``hyperparameters.schema.json``;
* checkpoints: ``SM_CHECKPOINT_DIR``, else ``<base>/checkpoints`` (CheckpointConfig's default LocalPath).
  A run resumes from the newest checkpoint there; SIGTERM (StopTrainingJob, spot interruption) ends the
  current epoch, saves a checkpoint and the model so far, and exits 0;
* several hosts: started by torchrun (``WORLD_SIZE`` > 1, e.g. smbyoc's ``SMBYOC_LAUNCHER=torchrun``),
  the model is wrapped in ``DistributedDataParallel`` over the ``gloo`` backend; every rank takes its
  share of each batch (so the averaged gradient is the one-host gradient) and only rank 0 writes
  checkpoints and the model;
* outputs: ``model.pt`` (TorchScript), ``model.onnx`` and ``model.json`` in ``SM_MODEL_DIR`` (else
  ``<base>/model``); ``metrics.json`` in ``SM_OUTPUT_DATA_DIR`` (else ``<base>/output/data``).

One metrics line per epoch, for SageMaker metric definitions such as ``val_accuracy=([0-9.]+)``::

    epoch=3 train_loss=0.4102 train_accuracy=0.8811 val_loss=0.4400 val_accuracy=0.9300
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import re
import shutil
import signal
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch import nn

LOG = logging.getLogger("train")
SCHEMA_FILE = Path(__file__).resolve().parent / "hyperparameters.schema.json"
CHECKPOINT_RE = re.compile(r"^checkpoint-epoch-(\d+)\.pt$")
KEEP_CHECKPOINTS = 2
ONNX_OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"


class ExampleError(Exception):
    """A bad input (data, hyperparameter, checkpoint): reported as one line, exit status 1."""


# --- where things are (the SageMaker training contract) ---------------------------------------------


@dataclass(frozen=True)
class Locations:
    train_dir: Path
    validation_dir: Path | None
    model_dir: Path
    output_data_dir: Path
    checkpoint_dir: Path
    hyperparameters_file: Path

    @classmethod
    def from_env(cls, environ: dict[str, str]) -> Locations:
        base = Path(environ.get("SAGEMAKER_BASE_DIR") or "/opt/ml")
        validation = environ.get("SM_CHANNEL_VALIDATION")
        default_validation = base / "input" / "data" / "validation"
        if validation:
            if not Path(validation).is_dir():
                raise ExampleError(f"SM_CHANNEL_VALIDATION={validation!r}: directory not found")
            validation_dir: Path | None = Path(validation)
        else:
            validation_dir = default_validation if default_validation.is_dir() else None
        return cls(
            train_dir=Path(environ.get("SM_CHANNEL_TRAIN") or base / "input" / "data" / "train"),
            validation_dir=validation_dir,
            model_dir=Path(environ.get("SM_MODEL_DIR") or base / "model"),
            output_data_dir=Path(environ.get("SM_OUTPUT_DATA_DIR") or base / "output" / "data"),
            checkpoint_dir=Path(environ.get("SM_CHECKPOINT_DIR") or base / "checkpoints"),
            hyperparameters_file=base / "input" / "config" / "hyperparameters.json",
        )


# --- hyperparameters ---------------------------------------------------------------------------------


def load_schema(path: Path = SCHEMA_FILE) -> dict[str, dict[str, Any]]:
    schema: dict[str, dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
    return schema


def _coerce(name: str, spec: dict[str, Any], value: object) -> int | float | str:
    kind = spec["type"]
    try:
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            result: int | float | str = int(str(value)) if not isinstance(value, float) else int(value)
        elif kind == "float":
            if isinstance(value, bool):
                raise ValueError
            result = float(str(value))
            if not math.isfinite(result):
                raise ValueError
        else:
            result = str(value)
    except ValueError:
        raise ExampleError(f"hyperparameter {name!r}: expected {kind}, got {value!r}") from None
    if not isinstance(result, str):
        low, high = spec.get("minimum"), spec.get("maximum")
        if (low is not None and result < low) or (high is not None and result > high):
            raise ExampleError(f"hyperparameter {name!r}: {result!r} is outside [{low}, {high}]")
    return result


def _decode(raw: str) -> object:
    """The training toolkit's rule: JSON-decode a hyperparameter string, keep it raw if that fails."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def resolve_hyperparameters(
    argv: list[str], environ: dict[str, str], hyperparameters_file: Path, schema: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    given: dict[str, tuple[str, object]] = {}  # canonical name -> (where it came from, value)
    if environ.get("SM_HPS"):
        try:
            hps = json.loads(environ["SM_HPS"])
        except ValueError as e:
            raise ExampleError(f"SM_HPS is not valid JSON: {e}") from None
        if not isinstance(hps, dict):
            raise ExampleError("SM_HPS is not a JSON object")
        given.update({str(k): ("SM_HPS", v) for k, v in hps.items()})
    elif hyperparameters_file.is_file():
        try:
            raw = json.loads(hyperparameters_file.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ExampleError(f"{hyperparameters_file}: not valid JSON: {e}") from None
        if not isinstance(raw, dict):
            raise ExampleError(f"{hyperparameters_file}: not a JSON object")
        given.update({str(k): (str(hyperparameters_file), _decode(str(v))) for k, v in raw.items()})
    given = {k: v for k, v in given.items() if not k.startswith(("sagemaker_", "_tuning_objective_metric"))}

    parser = argparse.ArgumentParser(description="Train the smbyoc default example.", allow_abbrev=False)
    for name in schema:
        parser.add_argument(f"--{name}", f"--{name.replace('-', '_')}", dest=name, default=None)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        raise ExampleError(f"unknown argument {unknown[0]!r} (known: {', '.join('--' + n for n in schema)})")
    given.update({k: ("argument", v) for k, v in vars(args).items() if v is not None})

    result = {name: spec["default"] for name, spec in schema.items()}
    for key, (_, value) in given.items():
        name = key.replace("_", "-")
        if name not in schema:
            raise ExampleError(f"unknown hyperparameter {key!r} (known: {', '.join(schema)})")
        result[name] = _coerce(name, schema[name], value)
    return result


# --- data ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    feature_names: tuple[str, ...]
    features: list[list[float]]
    labels: list[str]


def read_channel(directory: Path, label_column: str, channel: str) -> Table:
    if not directory.is_dir():
        raise ExampleError(f"{channel} channel: directory {directory} not found")
    files = sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ExampleError(f"{channel} channel: no files in {directory}")
    header: list[str] | None = None
    features: list[list[float]] = []
    labels: list[str] = []
    for path in files:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = csv.reader(handle)
            file_header = [h.strip() for h in next(rows, [])]
            if label_column not in file_header:
                raise ExampleError(f"{path}: header {file_header} has no label column {label_column!r}")
            if header is not None and file_header != header:
                raise ExampleError(f"{path}: header {file_header} differs from {files[0]}'s {header}")
            header = file_header
            label_at = header.index(label_column)
            for line, row in enumerate(rows, start=2):
                if not row:
                    continue
                if len(row) != len(header):
                    raise ExampleError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}")
                try:
                    values = [float(v) for i, v in enumerate(row) if i != label_at]
                except ValueError:
                    raise ExampleError(f"{path}:{line}: non-numeric feature value in {row}") from None
                if not all(math.isfinite(v) for v in values):
                    raise ExampleError(f"{path}:{line}: feature value is not finite in {row}")
                features.append(values)
                labels.append(row[label_at].strip())
    assert header is not None
    if not features:
        raise ExampleError(f"{channel} channel: no data rows in {directory}")
    names = tuple(h for h in header if h != label_column)
    return Table(names, features, labels)


# --- model ----------------------------------------------------------------------------------------------


class Classifier(nn.Module):
    """Standardise raw features, then a two-hidden-layer MLP; returns logits."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, n_features: int, hidden: int, n_classes: int, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())
        self.net = nn.Sequential(
            nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net((x - self.mean) / self.std)
        return out


class Probabilities(nn.Module):
    """What is exported: raw float32 features in, class probabilities out."""

    def __init__(self, classifier: Classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.classifier(x), dim=1)


def evaluate(model: Classifier, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y).item()
        accuracy = (logits.argmax(dim=1) == y).float().mean().item()
    return loss, accuracy


# --- files --------------------------------------------------------------------------------------------


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write through ``write(tmp)`` to a hidden temporary file beside ``path``, then rename it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: object) -> None:
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"

    def write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    _atomic(path, write)


def checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """Checkpoint files in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := CHECKPOINT_RE.match(p.name))]
    return sorted(found)


def save_checkpoint(directory: Path, state: dict[str, Any]) -> Path:
    path = directory / f"checkpoint-epoch-{state['epoch']:04d}.pt"
    _atomic(path, lambda tmp: torch.save(state, tmp))
    for _, old in checkpoints(directory)[:-KEEP_CHECKPOINTS]:
        old.unlink(missing_ok=True)
    return path


def load_latest_checkpoint(directory: Path) -> dict[str, Any] | None:
    for epoch, path in reversed(checkpoints(directory)):
        try:
            state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated or foreign file: fall back to the one before
            LOG.warning("ignoring unreadable checkpoint %s: %s", path, e)
            continue
        if state.get("epoch") != epoch:
            LOG.warning("ignoring checkpoint %s: it records epoch %s", path, state.get("epoch"))
            continue
        return state
    return None


def export_model(model: Classifier, n_features: int, model_dir: Path) -> None:
    wrapper = Probabilities(model).eval()
    example = torch.zeros(2, n_features, dtype=torch.float32)
    with warnings.catch_warnings():
        # TorchScript and the TorchScript-based ONNX exporter are deprecated upstream but are what
        # SageMaker's PyTorch serving and onnxruntime load without extra packages; keep the log clean.
        warnings.simplefilter("ignore")
        with torch.no_grad():
            traced = torch.jit.trace(wrapper, example)  # type: ignore[no-untyped-call]
        _atomic(model_dir / "model.pt", lambda tmp: torch.jit.save(traced, str(tmp)))

        def onnx_export(tmp: Path) -> None:
            kwargs: dict[str, Any] = {
                "input_names": [INPUT_NAME],
                "output_names": [OUTPUT_NAME],
                "dynamic_axes": {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                "opset_version": ONNX_OPSET,
            }
            try:
                torch.onnx.export(wrapper, (example,), str(tmp), dynamo=False, **kwargs)
            except TypeError:  # PyTorch before 2.5 has no ``dynamo`` argument; its exporter is the legacy one
                torch.onnx.export(wrapper, (example,), str(tmp), **kwargs)
            except ModuleNotFoundError as e:
                raise ExampleError(f"ONNX export needs the {e.name!r} package (pip install {e.name})") from None

        _atomic(model_dir / "model.onnx", onnx_export)


# --- training -------------------------------------------------------------------------------------------


class StopFlag:
    """Set by SIGTERM/SIGINT; the loop finishes the current epoch, saves, and exits 0."""

    def __init__(self) -> None:
        self.signal: str | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signal.Signals(signum).name


def split_holdout(table: Table, fraction: float, seed: int) -> tuple[Table, Table]:
    order = torch.randperm(len(table.labels), generator=torch.Generator().manual_seed(seed)).tolist()
    n_holdout = max(1, round(len(order) * fraction))
    if n_holdout >= len(order):
        raise ExampleError(f"train channel: {len(order)} rows are too few to hold out a validation share")

    def pick(rows: list[int]) -> Table:
        return Table(table.feature_names, [table.features[i] for i in rows], [table.labels[i] for i in rows])

    return pick(sorted(order[n_holdout:])), pick(sorted(order[:n_holdout]))


def to_tensors(table: Table, class_names: list[str], channel: str) -> tuple[torch.Tensor, torch.Tensor]:
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted(set(table.labels) - index.keys())
    if unknown:
        raise ExampleError(f"{channel} channel: labels {unknown} do not occur in the train channel")
    x = torch.tensor(table.features, dtype=torch.float32)
    y = torch.tensor([index[label] for label in table.labels], dtype=torch.long)
    return x, y


def distributed_rank() -> tuple[int, int]:
    """``(rank, world_size)``; joins the torchrun process group (gloo, env://) when there are several."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    LOG.info("distributed training: rank %d of %d (gloo)", dist.get_rank(), world)
    return dist.get_rank(), world


def train(hp: dict[str, Any], where: Locations, stop: StopFlag) -> dict[str, Any]:
    train_table = read_channel(where.train_dir, hp["label-column"], "train")
    if where.validation_dir is not None:
        validation_table = read_channel(where.validation_dir, hp["label-column"], "validation")
        if validation_table.feature_names != train_table.feature_names:
            raise ExampleError(
                f"validation channel: feature columns {list(validation_table.feature_names)} differ from the "
                f"train channel's {list(train_table.feature_names)}"
            )
    else:
        LOG.info("no validation channel: holding out %.0f%% of the train rows", 100 * hp["validation-fraction"])
        train_table, validation_table = split_holdout(train_table, hp["validation-fraction"], hp["seed"])
    class_names = sorted(set(train_table.labels))
    if len(class_names) < 2:
        raise ExampleError(f"train channel: column {hp['label-column']!r} has fewer than two classes")
    feature_names = list(train_table.feature_names)
    x_train, y_train = to_tensors(train_table, class_names, "train")
    x_val, y_val = to_tensors(validation_table, class_names, "validation")
    LOG.info(
        "data: %d train rows, %d validation rows, %d features, classes %s",
        len(y_train),
        len(y_val),
        len(feature_names),
        class_names,
    )

    rank, world = distributed_rank()
    torch.manual_seed(hp["seed"])
    mean, std = x_train.mean(dim=0), x_train.std(dim=0).clamp_min(1e-6)
    model = Classifier(len(feature_names), hp["hidden-units"], len(class_names), mean, std)
    optimizer = torch.optim.Adam(model.parameters(), lr=hp["learning-rate"], weight_decay=hp["weight-decay"])
    history: list[dict[str, float]] = []
    start = 0

    state = load_latest_checkpoint(where.checkpoint_dir)
    if state is not None:
        expected = {"feature_names": feature_names, "class_names": class_names, "hidden_units": hp["hidden-units"]}
        for key, value in expected.items():
            if state.get(key) != value:
                raise ExampleError(
                    f"checkpoint in {where.checkpoint_dir} has {key}={state.get(key)!r}, this run has {value!r}: "
                    "use the same data and hidden-units, or an empty checkpoint directory"
                )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # these two may change between runs
            group["lr"], group["weight_decay"] = hp["learning-rate"], hp["weight-decay"]
        history, start = list(state["history"]), int(state["epoch"])
        LOG.info("resumed from epoch %d (checkpoint in %s)", start, where.checkpoint_dir)
        if start >= hp["epochs"]:
            LOG.warning("the checkpoint already has %d epochs (epochs=%d): nothing to train", start, hp["epochs"])

    # Every rank starts from the same weights (same seed; DDP also broadcasts rank 0's at wrap time).
    step_model: nn.Module = model
    if world > 1:
        step_model = nn.parallel.DistributedDataParallel(model)

    def checkpoint(epoch: int) -> None:
        if rank != 0:
            return
        saved = save_checkpoint(
            where.checkpoint_dir,
            {
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "history": history,
                "feature_names": feature_names,
                "class_names": class_names,
                "hidden_units": hp["hidden-units"],
            },
        )
        LOG.info("saved checkpoint %s", saved)

    n_rows, batch_size = len(y_train), hp["batch-size"]
    epoch = start
    for epoch in range(start + 1, hp["epochs"] + 1):
        # The shuffle depends only on (seed, epoch), so a resumed run repeats an uninterrupted one exactly.
        order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(hp["seed"] * 1_000_003 + epoch))
        model.train()
        for first in range(0, n_rows, batch_size):
            rows = order[first : first + batch_size]
            if world > 1:
                # This rank's share of the batch; DDP averages the gradients over the ranks. Ranks whose
                # share is empty (a last batch smaller than the world) repeat row 0 with zero weight.
                mine = rows[rank::world]
                weight = 1.0 if len(mine) else 0.0
                mine = mine if len(mine) else rows[:1]
                scale = weight * len(mine) * world / len(rows)
            else:
                mine, scale = rows, 1.0
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(step_model(x_train[mine]), y_train[mine]) * scale
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        train_loss, train_accuracy = evaluate(model, x_train, y_train)
        val_loss, val_accuracy = evaluate(model, x_val, y_val)
        metrics = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_accuracy": train_accuracy,
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
        }
        history.append(metrics)
        LOG.info(" ".join(f"{k}={v}" if k == "epoch" else f"{k}={v:.4f}" for k, v in metrics.items()))
        if stop.signal or epoch % hp["checkpoint-every"] == 0 or epoch == hp["epochs"]:
            checkpoint(epoch)
        if stop.signal:
            LOG.warning(
                "%s received: stopped after epoch %d of %d; run again with the same checkpoint directory to resume",
                stop.signal,
                epoch,
                hp["epochs"],
            )
            break

    epochs_completed = max(epoch, start)
    final = history[-1] if history else {}
    if rank != 0:  # one copy of the model: rank 0 writes it (no name clashes between hosts)
        return final
    export_model(model, len(feature_names), where.model_dir)
    write_json(
        where.model_dir / "model.json",
        {
            "format_version": 1,
            "framework": "pytorch",
            "task": "multiclass-classification",
            "feature_names": feature_names,
            "class_names": class_names,
            "label_column": hp["label-column"],
            "input": {"name": INPUT_NAME, "shape": [None, len(feature_names)], "dtype": "float32"},
            "output": {"name": OUTPUT_NAME, "shape": [None, len(class_names)], "dtype": "float32"},
            "artifacts": {"torchscript": "model.pt", "onnx": "model.onnx"},
            "hyperparameters": hp,
            "epochs_completed": epochs_completed,
            "completed": epochs_completed >= hp["epochs"],
            "metrics": final,
        },
    )
    write_json(where.output_data_dir / "metrics.json", {"final": final, "history": history})
    package_inference_code(where.model_dir)
    LOG.info("wrote model.pt, model.onnx, model.json and code/inference.py to %s", where.model_dir)
    return final


def write_failure(output_dir: Path, message: str) -> None:
    """SageMaker's FailureReason; like the training toolkit, never overwrite an existing one."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with (output_dir / "failure").open("x", encoding="utf-8") as handle:
            handle.write(message + "\n")
    except OSError:
        pass


def package_inference_code(model_dir: Path) -> None:
    """Ship the handler inside the model (``code/inference.py``), as SageMaker's script-mode models do,
    so that ``model.tar.gz`` serves on its own."""
    handler = Path(__file__).resolve().parent / "inference.py"
    if handler.is_file():
        target = model_dir / "code" / "inference.py"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(handler, target)


def main(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    environ = dict(os.environ) if environ is None else environ
    level = environ.get("SM_LOG_LEVEL", "20")
    logging.basicConfig(
        stream=sys.stdout,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=int(level) if level.isdigit() else logging.INFO,
    )
    stop = StopFlag()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    output_dir = Path(environ.get("SM_OUTPUT_DIR") or Path(environ.get("SAGEMAKER_BASE_DIR") or "/opt/ml") / "output")
    try:
        where = Locations.from_env(environ)
        hp = resolve_hyperparameters(
            sys.argv[1:] if argv is None else argv, environ, where.hyperparameters_file, load_schema()
        )
        LOG.info("hyperparameters: %s", json.dumps(hp, sort_keys=True))
        # The model is tiny: thread synchronisation costs more than it gains (3x slower on a busy 2-core
        # host), and one thread makes the results bit-identical whatever the instance type.
        torch.set_num_threads(1)
        final = train(hp, where, stop)
    except ExampleError as e:
        LOG.error("%s", e)
        write_failure(output_dir, str(e))
        return 1
    LOG.info(
        "training %s: %s",
        "stopped" if stop.signal else "complete",
        " ".join(f"{k}={v:.4f}" for k, v in final.items() if k != "epoch"),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
