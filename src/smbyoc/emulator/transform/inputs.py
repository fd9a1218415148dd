"""The input objects of a transform job and how they are shared among instances.

``S3Prefix``: every file under the input directory (or the one file given), keyed by its path relative
to it, in S3 key order (byte order of the UTF-8 key, as ListObjectsV2 returns them). ``ManifestFile``: the
objects the manifest names, in its order (:func:`smbyoc.emulator.manifest.read_manifest`).

With several instances each object goes to one instance, never split: object ``i`` (in that order) to
instance ``i mod N``, so every instance gets a share of whole objects, as SageMaker distributes objects
(its exact assignment is not documented; round-robin over the key order is ours).
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

from smbyoc.emulator.layout import check_no_folder_links
from smbyoc.errors import ConfigError


@dataclass(frozen=True)
class InputObject:
    #: The object's key relative to the input prefix (``a/b.csv``); its output is ``<key>.out``.
    key: str
    path: Path
    size: int

    @property
    def output_key(self) -> str:
        return f"{self.key}.out"


def list_objects(source: Path, data_type: str) -> list[InputObject]:
    """The job's input objects in processing order; one ConfigError when there are none."""
    if data_type == "ManifestFile":
        from smbyoc.emulator.manifest import read_manifest

        found = [(entry.key, entry.path) for entry in read_manifest(source)]
    elif source.is_file():
        found = [(source.name, source)]
    elif source.is_dir():
        every = list(source.rglob("*"))
        check_no_folder_links(every, "--input")
        entries = [p for p in every if not p.is_dir()]
        odd = [p for p in entries if not p.is_file()]
        if odd:  # a broken link, a FIFO or a socket: no object SageMaker could have listed
            raise ConfigError("not a regular file (a broken link, FIFO or socket)", key=f"--input {odd[0]}")
        found = [(p.relative_to(source).as_posix(), p) for p in entries]  # (sorted once the names are checked)
    else:
        raise ConfigError("no such file or directory", key=f"--input {source}")
    if not found:
        raise ConfigError("the input has no objects to transform", key=f"--input {source}")
    for key, path in found:
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:  # (a name that is not UTF-8, read with surrogateescape)
            raise ConfigError("the file name is not UTF-8 text, which an S3 key is",
                              key=f"--input {os.fsencode(path)!r}") from None
    outputs: dict[str, str] = {}
    for key, _ in found:  # two entries (a manifest's "a.csv" and "./a.csv") would write one output
        normal = posixpath.normpath(key)
        if normal in outputs:
            raise ConfigError(f"{key!r} names the same object as {outputs[normal]!r}; each object is transformed "
                              "once", key=f"--input {source}")
        outputs[normal] = key
    if data_type != "ManifestFile" and source.is_dir():
        found.sort(key=lambda item: item[0].encode("utf-8"))
    objects = []
    for key, path in found:
        try:
            size = path.stat().st_size
        except OSError as e:
            raise ConfigError(f"cannot read: {e.strerror}", key=f"--input {path}") from e
        objects.append(InputObject(key, path, size))
    return objects


def assign(objects: list[InputObject], instances: int) -> list[list[InputObject]]:
    """Each instance's objects: object ``i`` to instance ``i mod instances``, order kept."""
    return [objects[i::instances] for i in range(instances)]
