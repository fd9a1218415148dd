"""Reading the JSON files of the SageMaker contract, with one clear error naming the file."""

from __future__ import annotations

import json
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
