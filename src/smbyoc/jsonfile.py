"""Reading and writing the JSON files of the SageMaker contract, with one clear error naming the file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from smbyoc.errors import ConfigError

_MISSING = object()


def read_json(path: Path, missing: Any = _MISSING) -> Any:
    """The parsed content of ``path``; ``missing`` when the file does not exist (else ConfigError)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing is _MISSING:
            raise ConfigError("does not exist", source=str(path)) from None
        return missing
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot be read: {e}", source=str(path)) from e
    try:
        return json.loads(text)
    except ValueError as e:
        raise ConfigError(f"is not valid JSON: {e}", source=str(path)) from e
    except RecursionError:
        raise ConfigError("is not usable JSON: it nests deeper than the parser goes", source=str(path)) from None


def read_json_object(path: Path, missing: Any = _MISSING) -> dict[str, Any]:
    """:func:`read_json` for a file whose top level must be a JSON object (ConfigError otherwise)."""
    data = read_json(path, missing)
    if not isinstance(data, dict):
        raise ConfigError(f"expected a JSON object, got {type(data).__name__}", source=str(path))
    return data


def write_json(path: Path, data: object) -> Path:
    """Write ``data`` to ``path`` (indented, key order kept) through a temporary name, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".partial")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
