"""``S3DataType=ManifestFile`` channels: the channel is the list of objects a manifest names.

A SageMaker manifest is a JSON array whose first element is ``{"prefix": "<S3 prefix>"}`` and whose
other elements are keys relative to that prefix (BOTO ``S3DataSource.S3Uri``)::

    [{"prefix": "s3://bucket/data/"}, "part-0.csv", "more/part-1.csv"]

Locally the prefix is a directory: a path, a ``file://`` URI, or relative to the manifest's own folder.
Each named object lands in the channel under its relative key, as SageMaker downloads it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from smbyoc.errors import ConfigError


@dataclass(frozen=True)
class ManifestEntry:
    key: str  # relative key: where the object lands inside the channel
    path: Path  # the local file standing for the object


def _prefix_dir(prefix: str, manifest: Path) -> Path:
    parsed = urlparse(prefix)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme:
        raise ConfigError(f"prefix {prefix!r}: the emulator reads local directories (a path or file:// URI), "
                          f"not {parsed.scheme}://", source=str(manifest))
    path = Path(prefix).expanduser()
    return path if path.is_absolute() else manifest.parent / path


def read_manifest(manifest: Path) -> list[ManifestEntry]:
    """The objects ``manifest`` names, in its order; one ConfigError naming the culprit otherwise."""
    source = str(manifest)
    if not manifest.is_file():
        raise ConfigError("a ManifestFile channel needs a manifest file, not a directory", source=source)
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"not a JSON manifest: {e}", source=source) from e
    if not isinstance(data, list) or not data or not isinstance(data[0], dict) or "prefix" not in data[0]:
        raise ConfigError('expected a JSON array starting with {"prefix": "..."}', source=source)
    prefix = data[0]["prefix"]
    if not isinstance(prefix, str):
        raise ConfigError("prefix must be a string", source=source)
    root = _prefix_dir(prefix, manifest)
    entries: list[ManifestEntry] = []
    for index, key in enumerate(data[1:], start=1):
        if not isinstance(key, str) or not key or key.startswith("/") or ".." in Path(key).parts:
            raise ConfigError(f"entry {index} {key!r}: expected a relative key inside the prefix", source=source)
        path = root / key
        if not path.is_file():
            raise ConfigError(f"entry {index} {key!r}: no such file {path}", source=source)
        entries.append(ManifestEntry(key, path))
    if not entries:
        raise ConfigError("the manifest names no objects", source=source)
    return entries
