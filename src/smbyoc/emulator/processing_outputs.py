"""Processing outputs: each host's ``LocalPath`` folders copied to their ``S3Uri`` stand-ins.

``EndOfJob`` outputs are copied once, when every container has ended (whatever the job's status, as the SDK's
local mode does). ``Continuous`` outputs are also copied while the job runs: every ``interval`` seconds the
host folders are scanned and a file is copied once it is *settled* (size and modification time unchanged
since the previous scan) and differs from what was copied last; the final pass copies the rest. SageMaker
documents no trigger (contract-endpoints.md §7.2, UNCONFIRMED); this periodic sync of settled files is the
emulator's choice. An ``s3://`` destination is a staging folder uploaded when the job ends.

Symbolic links are never followed (DG). Every hosts' files land in the same destination (the same S3 prefix
on SageMaker): the same relative path from two hosts is the last copy. Each file is written under a temporary
name and renamed, so a destination never holds a half-written file.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

Signature = tuple[int, int]  # (size, mtime_ns)
#: Seconds between two scans of the Continuous outputs.
DEFAULT_INTERVAL = 1.0


def output_files(root: Path) -> dict[str, Path]:
    """Relative POSIX path → file of every regular file below ``root`` (symbolic links skipped, not followed)."""
    found: dict[str, Path] = {}
    if not root.is_dir():
        return found
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for name in filenames:
            path = base / name
            if path.is_symlink() or not path.is_file():
                continue
            found[path.relative_to(root).as_posix()] = path
        dirnames[:] = [d for d in dirnames if not (base / d).is_symlink()]
    return dict(sorted(found.items()))


def _signature(path: Path) -> Signature | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def copy_atomically(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = destination.with_name(f".{destination.name}.{os.getpid()}.partial")
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, destination)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass
class OutputCopier:
    """Copies ``(host folder, destination)`` pairs; remembers what it copied so a file is copied once per change."""

    pairs: Sequence[tuple[Path, Path]]
    _copied: dict[tuple[Path, str], Signature] = field(default_factory=dict, repr=False)
    _seen: dict[tuple[Path, str], Signature] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def sync(self, *, settled_only: bool = False) -> int:
        """Copy what changed (with ``settled_only``: only files unchanged since the previous call); returns how
        many files were copied."""
        copied = 0
        with self._lock:
            for source, destination in self.pairs:
                for relative, path in output_files(source).items():
                    key = (source, relative)
                    signature = _signature(path)
                    if signature is None:
                        continue
                    previous, self._seen[key] = self._seen.get(key), signature
                    if self._copied.get(key) == signature or (settled_only and previous != signature):
                        continue
                    try:
                        copy_atomically(path, destination / relative)
                    except OSError as e:
                        log.warning("could not copy output %s: %s", path, e)
                        continue
                    self._copied[key] = signature
                    copied += 1
        return copied


class ContinuousSync:
    """Runs :meth:`OutputCopier.sync` (settled files only) every ``interval`` seconds in a daemon thread."""

    def __init__(self, copier: OutputCopier, interval: float = DEFAULT_INTERVAL) -> None:
        self.copier = copier
        self.interval = interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="processing-continuous", daemon=True)

    def __enter__(self) -> ContinuousSync:
        if self.copier.pairs:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            count = self.copier.sync(settled_only=True)
            if count:
                log.debug("continuous outputs: %d file(s) copied", count)
