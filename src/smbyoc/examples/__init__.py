"""The bundled default example: what ``smbyoc local-train`` runs when given no program or image.

``default/`` is an ordinary SageMaker script-mode source directory (``train.py``, ``inference.py``,
``hyperparameters.schema.json``) with a small CSV dataset in ``default/data/{train,validation}``; the
emulator mounts ``source_dir`` as the code and each of ``channels`` as an input channel. Importing this
module reads nothing and imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smbyoc.errors import ConfigError

__all__ = ["DefaultExample", "default_example"]

_DEFAULT_DIR = "default"
_SCHEMA_FILE = "hyperparameters.schema.json"


@dataclass(frozen=True)
class DefaultExample:
    """Where the default example lives and how to run it."""

    #: Directory holding ``train.py`` and ``inference.py`` (what becomes ``/opt/ml/code``).
    source_dir: Path
    #: Channel name -> directory of CSV files (``train`` and ``validation``).
    channels: dict[str, Path] = field(default_factory=dict)
    #: Default hyperparameters as SageMaker passes them: names mapped to strings.
    hyperparameters: dict[str, str] = field(default_factory=dict)
    #: The training program, relative to ``source_dir`` (``SAGEMAKER_PROGRAM`` / ``sagemaker_program``).
    entry_point: str = "train.py"
    #: The sagemaker-inference style handler module, relative to ``source_dir``.
    inference_entry_point: str = "inference.py"

    @property
    def schema_file(self) -> Path:
        """``hyperparameters.schema.json``: every hyperparameter with its type, default and limits."""
        return self.source_dir / _SCHEMA_FILE

    def hyperparameter_schema(self) -> dict[str, dict[str, Any]]:
        """The parsed schema file."""
        return _read_schema(self.schema_file)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source_dir": str(self.source_dir),
            "entry_point": self.entry_point,
            "inference_entry_point": self.inference_entry_point,
            "channels": {name: str(path) for name, path in self.channels.items()},
            "hyperparameters": dict(self.hyperparameters),
        }


def _read_schema(path: Path) -> dict[str, dict[str, Any]]:
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read the default example's hyperparameter schema: {e}") from e
    if not isinstance(schema, dict) or not all(isinstance(v, dict) and "default" in v for v in schema.values()):
        raise ConfigError(f"{path}: every entry needs a 'default'")
    return schema


def _to_string(value: object) -> str:
    """A hyperparameter value as the generic Estimator sends it (``str``; booleans as JSON)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def default_example() -> DefaultExample:
    """Describe the bundled default example (reads its schema; creates nothing)."""
    source_dir = Path(__file__).resolve().parent / _DEFAULT_DIR
    data_dir = source_dir / "data"
    schema = _read_schema(source_dir / _SCHEMA_FILE)
    return DefaultExample(
        source_dir=source_dir,
        channels={"train": data_dir / "train", "validation": data_dir / "validation"},
        hyperparameters={name: _to_string(spec["default"]) for name, spec in schema.items()},
    )
