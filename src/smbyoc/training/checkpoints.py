"""Checkpoints that survive a stop: the checkpoint directory, the latest checkpoint, atomic saves.

SageMaker copies ``CheckpointConfig.S3Uri`` into ``CheckpointConfig.LocalPath`` (default
``/opt/ml/checkpoints``) when the job starts and syncs new files back while it runs (contract.md §1.8).
A stop sends SIGTERM and, 120 s later, SIGKILL (§1.7) — so a checkpoint must never be half-written:
:func:`save_checkpoint` writes to a hidden temporary file in the same directory, fsyncs it and renames it
into place, so readers see the old checkpoint or the new one, never a torn file::

    from smbyoc.training.checkpoints import checkpoint_dir, latest_checkpoint, save_checkpoint

    ckpt_dir = checkpoint_dir(env)                      # /opt/ml/checkpoints, created
    start = latest_checkpoint(ckpt_dir, "epoch-*.pt")   # None on the first run
    save_checkpoint(ckpt_dir / f"epoch-{epoch}.pt", lambda f: torch.save(state, f))
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Protocol

from smbyoc.paths import Paths

TEMP_PREFIX = ".smbyoc-"
TEMP_SUFFIX = ".partial"


class _HasPaths(Protocol):
    @property
    def paths(self) -> Paths: ...


def checkpoint_dir(source: _HasPaths | Paths | str | Path | None = None) -> Path:
    """The checkpoint directory, created if needed.

    ``source`` is a :class:`~smbyoc.training.env.TrainingEnv` (anything with ``.paths``), a
    :class:`~smbyoc.paths.Paths`, an explicit directory (e.g. a non-default ``CheckpointConfig.LocalPath``),
    or None for ``Paths.from_env().checkpoints_dir`` (``$SAGEMAKER_BASE_DIR/checkpoints``).
    """
    if source is None:
        directory = Paths.from_env().checkpoints_dir
    elif isinstance(source, Paths):
        directory = source.checkpoints_dir
    elif isinstance(source, (str, Path)):
        directory = Path(source)
    else:
        directory = source.paths.checkpoints_dir
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _natural_key(name: str) -> tuple[Any, ...]:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def _is_temporary(path: Path) -> bool:
    return path.name.startswith(TEMP_PREFIX) and path.name.endswith(TEMP_SUFFIX)


def latest_checkpoint(directory: str | Path, pattern: str = "*") -> Path | None:
    """The newest entry of ``directory`` matching ``pattern``, or None.

    "Newest" is the latest modification time; ties (coarse clocks) go to the name that sorts last in
    natural order (``ckpt-10`` after ``ckpt-9``). Temporary files of :func:`save_checkpoint` and hidden
    files are ignored. A missing directory gives None.
    """
    root = Path(directory)
    if not root.is_dir():
        return None
    candidates = [p for p in root.glob(pattern) if not p.name.startswith(".") and not _is_temporary(p)]
    if not candidates:
        return None

    def key(p: Path) -> tuple[int, tuple[Any, ...]]:
        try:
            mtime = p.stat().st_mtime_ns
        except FileNotFoundError:  # removed meanwhile
            mtime = -1
        return (mtime, _natural_key(p.name))

    return max(candidates, key=key)


def save_checkpoint(path: str | Path, writer: Callable[[IO[bytes]], object]) -> Path:
    """Write a checkpoint atomically: ``writer(f)`` fills a temporary file that is then renamed to ``path``.

    ``writer`` receives a binary file opened for writing (``torch.save(state, f)``,
    ``f.write(data)``, ``pickle.dump(obj, f)``). If it raises — or the process is killed — the previous
    checkpoint at ``path`` stays intact and the temporary file is removed (on an exception).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return target


def _fsync_dir(directory: Path) -> None:
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dir_fd)
    except OSError:  # pragma: no cover - some file systems refuse
        pass
    finally:
        os.close(dir_fd)
