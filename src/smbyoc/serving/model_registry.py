"""The registry of a multi-model endpoint (:mod:`smbyoc.serving.multi_model`): which models are loaded in one
``serve``, shared by all its gunicorn workers.

It is a directory in ``serve``'s private runtime directory (:data:`~smbyoc.serving.env.MME_REGISTRY_DIR`): one
small JSON file per model (``<sha256 of the name>.json``: ``modelName``, ``modelUrl``, the resolved directory
and a token unique to this registration), put in place with ``link()`` — atomic, and refused when the name
exists — only after the loading worker's load succeeded. A ``.loading`` marker (``O_CREAT|O_EXCL``, holding the
loader's pid) makes a concurrent ``POST /models`` of the same name a 409; a marker whose process is gone is
stale and removed. Every change appends one byte to ``generation``; a worker compares that file's size with the
one it last read (one ``stat`` per request, exact, unlike a directory mtime of coarse-clock resolution) and only
then re-reads the registry: models no longer registered, or registered anew (another token), are dropped, and a
registered model the worker does not hold is loaded on its first invoke there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from smbyoc.serving.errors import Conflict

logger = logging.getLogger(__name__)

_GENERATION = "generation"


@dataclass(frozen=True)
class Registration:
    """One registered model: ``modelName``/``modelUrl`` as answered, the directory loaded, and a token
    unique to this registration (a model registered again gets a new one, and every worker reloads it)."""

    name: str
    url: str
    path: str
    token: str

    def describe(self) -> dict[str, str]:
        return {"modelName": self.name, "modelUrl": self.url}


def _key(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Registry:
    """The models registered in one ``serve`` (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._generation = str(directory / _GENERATION)

    def generation(self) -> int:
        """How many changes the registry has seen (one ``stat``)."""
        try:
            return os.stat(self._generation).st_size
        except FileNotFoundError:
            return 0

    def _bump(self) -> None:
        fd = os.open(self._generation, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, b".")
        finally:
            os.close(fd)

    def read(self) -> dict[str, Registration]:
        found: dict[str, Registration] = {}
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if not entry.name.endswith(".json"):
                    continue
                try:
                    data = json.loads(Path(entry.path).read_bytes())
                    found[data["modelName"]] = Registration(data["modelName"], data["modelUrl"], data["path"],
                                                            data["token"])
                except FileNotFoundError:
                    continue  # unregistered meanwhile
                except (OSError, ValueError, KeyError, TypeError) as e:
                    logger.warning("ignoring the unreadable registry file %s: %s", entry.path, e)
        return found

    @contextlib.contextmanager
    def loading(self, name: str) -> Iterator[None]:
        """Hold ``name``'s ``.loading`` marker for the block; 409 when a live process holds it already."""
        marker = self.directory / f"{_key(name)}.loading"
        mine = f"{os.getpid()} {uuid.uuid4().hex}"
        for _ in range(2):
            # the marker appears with its owner written (linked from a full temporary file): a process that finds
            # it never reads it empty and takes a live loader for a dead one
            fd, temp = tempfile.mkstemp(prefix=".tmp-", dir=self.directory)
            try:
                os.write(fd, mine.encode())
                os.close(fd)
                os.link(temp, marker)
            except FileExistsError:
                try:
                    owner = int(marker.read_text().split()[0])
                except (OSError, ValueError, IndexError):
                    owner = 0
                if owner and _pid_alive(owner):
                    raise Conflict(f"model {name!r} is being loaded") from None
                with contextlib.suppress(FileNotFoundError):
                    marker.unlink()  # its loader died (a worker killed mid-load): stale
                continue
            finally:
                os.unlink(temp)
            break
        else:
            raise Conflict(f"model {name!r} is being loaded")
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                if marker.read_text() == mine:  # (ours still: a marker judged stale and taken over is not)
                    marker.unlink()

    def add(self, registration: Registration) -> bool:
        """Register; False when the name is registered already. The file appears whole or not at all."""
        data = json.dumps({"modelName": registration.name, "modelUrl": registration.url,
                           "path": registration.path, "token": registration.token, "pid": os.getpid(),
                           "time": time.time()}).encode()
        fd, temp = tempfile.mkstemp(prefix=".tmp-", dir=self.directory)
        try:
            os.write(fd, data)
            os.close(fd)
            try:
                os.link(temp, self.directory / f"{_key(registration.name)}.json")
            except FileExistsError:
                return False
        finally:
            os.unlink(temp)
        self._bump()
        return True

    def remove(self, name: str) -> bool:
        """Unregister; False when ``name`` was not registered."""
        try:
            os.unlink(self.directory / f"{_key(name)}.json")
        except FileNotFoundError:
            return False
        self._bump()
        return True
