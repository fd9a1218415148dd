"""``CheckpointConfig`` emulation: a local directory stands for ``S3Uri``.

As SageMaker does (contract.md §1.8): at start the directory's files are copied into every host's
``/opt/ml/checkpoints``; while the job runs, new and changed local files are copied back (every
``interval`` seconds, and once more at the end); a local checkpoint that is deleted is deleted from the
directory too; files added to the directory after the start are not copied in. Copies go through a
temporary name and a rename, so the directory never holds a half-written checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

Signature = tuple[int, int]  # (size, mtime_ns)


def _files(root: Path) -> dict[str, Path]:
    if not root.is_dir():
        return {}
    return {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


def _copy_atomic(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = destination.with_name(f".{destination.name}.smbyoc-partial")
    shutil.copy2(source, tmp)
    os.replace(tmp, destination)


def download(remote: Path, local: Path) -> int:
    """Copy every checkpoint of ``remote`` into ``local``; returns the number of files."""
    files = _files(remote)
    for key, path in files.items():
        _copy_atomic(path, local / key)
    return len(files)


@dataclass
class CheckpointSync:
    """Mirrors the hosts' checkpoint directories into ``remote`` while a job runs."""

    remote: Path
    locals: Sequence[tuple[str, Path]]
    interval: float = 1.0
    _seen: dict[tuple[str, str], Signature] = field(default_factory=dict, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def start_job(self) -> int:
        """Copy the remote checkpoints into every host (job start or spot restart); returns files per host."""
        self.remote.mkdir(parents=True, exist_ok=True)
        count = 0
        with self._lock:
            self._seen.clear()
            for host, local in self.locals:
                count = download(self.remote, local)
                for key, path in _files(local).items():
                    st = path.stat()
                    self._seen[(host, key)] = (st.st_size, st.st_mtime_ns)
        if count:
            log.info("checkpoints: %d file(s) copied from %s into /opt/ml/checkpoints", count, self.remote)
        return count

    def sync(self) -> int:
        """One pass: upload new/changed files, delete remote copies of files deleted locally."""
        changed = 0
        with self._lock:
            for host, local in self.locals:
                current = _files(local)
                for key, path in current.items():
                    try:
                        st = path.stat()
                    except FileNotFoundError:
                        continue
                    signature = (st.st_size, st.st_mtime_ns)
                    if self._seen.get((host, key)) == signature:
                        continue
                    try:
                        _copy_atomic(path, self.remote / key)
                    except FileNotFoundError:  # renamed away while copying: the next pass sees it
                        continue
                    self._seen[(host, key)] = signature
                    changed += 1
                for (seen_host, key) in [k for k in self._seen if k[0] == host and k[1] not in current]:
                    del self._seen[(seen_host, key)]
                    with contextlib.suppress(FileNotFoundError):
                        (self.remote / key).unlink()
                    changed += 1
        return changed

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="checkpoint-sync", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sync()
            except OSError as e:
                log.warning("checkpoint sync: %s", e)

    def finish(self) -> None:
        """Stop the background pass and do a last one."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        try:
            self.sync()
        except OSError as e:
            log.warning("checkpoint sync: %s", e)
