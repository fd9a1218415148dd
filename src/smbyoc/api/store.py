"""The API server's state on disk: one JSON file per resource, ``<state dir>/<kind>/<name>.json``.

Each file holds what DescribeX answers (timestamps as epoch seconds, as the JSON protocol sends them) plus the
request that created the resource. Files are written through a temporary name, then renamed
(:func:`smbyoc.jsonfile.write_json`), so a killed server leaves whole files only. Names are stored as given:
SageMaker's name patterns allow only ``[a-zA-Z0-9-]``, so a name is a safe file name once validated.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from smbyoc.errors import ConfigError
from smbyoc.jsonfile import read_json_object, write_json

log = logging.getLogger(__name__)

TRAINING_JOBS = "training-jobs"
MODELS = "models"
ENDPOINT_CONFIGS = "endpoint-configs"
ENDPOINTS = "endpoints"
PROCESSING_JOBS = "processing-jobs"
TRANSFORM_JOBS = "transform-jobs"
KINDS = (TRAINING_JOBS, MODELS, ENDPOINT_CONFIGS, ENDPOINTS, PROCESSING_JOBS, TRANSFORM_JOBS)


def default_state_dir() -> Path:
    """``<smbyoc's state dir>/api`` (:func:`smbyoc.emulator.jobs.state_dir`: ``SMBYOC_STATE_DIR``, else
    ``$XDG_RUNTIME_DIR/smbyoc``, else ``~/.local/state/smbyoc``)."""
    from smbyoc.emulator.jobs import state_dir

    return state_dir() / "api"


class Store:
    """Resources of each kind, kept in memory and on disk; safe to use from several threads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = threading.RLock()
        self._items: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in KINDS}

    def load(self) -> None:
        """Read every stored resource (a file that cannot be read is logged and skipped)."""
        try:
            if not self.root.is_dir():  # made private; a folder the user names keeps its own mode
                self.root.mkdir(parents=True, mode=0o700)
            for kind in KINDS:
                (self.root / kind).mkdir(exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot be used as the state directory: {e.strerror or e}",
                              key=f"--state-dir {self.root}") from e
        with self.lock:
            for kind in KINDS:
                folder = self.root / kind
                for path in sorted(folder.glob("*.json")):
                    try:
                        self._items[kind][path.stem] = read_json_object(path)
                    except Exception as e:
                        log.warning("skipped %s: %s", path, e)

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            return self._items[kind].get(name)

    def find(self, kind: str, name: str, *, case_insensitive: bool = False) -> str | None:
        """The stored name equal to ``name`` (ignoring case when ``case_insensitive``), or None."""
        with self.lock:
            if name in self._items[kind]:
                return name
            if case_insensitive:
                for stored in self._items[kind]:
                    if stored.lower() == name.lower():
                        return stored
            return None

    def all(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return list(self._items[kind].values())

    def put(self, kind: str, name: str, item: dict[str, Any]) -> None:
        with self.lock:
            self._items[kind][name] = item
            write_json(self.root / kind / f"{name}.json", item)

    def update(self, kind: str, name: str, **fields: Any) -> dict[str, Any] | None:
        """Set ``fields`` of a stored resource (None when it is gone meanwhile)."""
        with self.lock:
            item = self._items[kind].get(name)
            if item is None:
                return None
            item.update(fields)
            write_json(self.root / kind / f"{name}.json", item)
            return item

    def delete(self, kind: str, name: str) -> None:
        with self.lock:
            self._items[kind].pop(name, None)
            (self.root / kind / f"{name}.json").unlink(missing_ok=True)
