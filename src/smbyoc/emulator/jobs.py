"""Running emulated training jobs, so that ``smbyoc stop JOB`` can stop one as StopTrainingJob does.

Each running ``local-train`` writes ``<state dir>/jobs/<job-name>.json`` with its process id and removes
it when the job ends. ``stop`` sends that process SIGTERM, which the emulator handles exactly like Ctrl-C:
SIGTERM to the training program or containers, SIGKILL after the grace period, status ``Stopped``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from smbyoc.environment_variables import SMBYOC_STATE_DIR
from smbyoc.errors import ConfigError


def state_dir() -> Path:
    """``SMBYOC_STATE_DIR``, else ``$XDG_RUNTIME_DIR/smbyoc``, else ``$XDG_STATE_HOME/smbyoc``
    (``~/.local/state/smbyoc``)."""
    configured = SMBYOC_STATE_DIR.get()
    if configured:
        return Path(configured)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "smbyoc"
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "smbyoc"


def _record(job_name: str) -> Path:
    return state_dir() / "jobs" / f"{job_name}.json"


@contextlib.contextmanager
def registered(job_name: str, mode: str) -> Iterator[Path]:
    """Record this process as running ``job_name`` for the duration of the block."""
    path = _record(job_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    tmp.write_text(json.dumps({"job_name": job_name, "pid": os.getpid(), "mode": mode, "started": time.time()}))
    os.replace(tmp, path)
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_jobs() -> dict[str, int]:
    """Job name → process id of every running emulated job (stale records are removed)."""
    jobs: dict[str, int] = {}
    folder = state_dir() / "jobs"
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
            pid = int(data["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _alive(pid):
            jobs[str(data.get("job_name", path.stem))] = pid
        else:
            path.unlink(missing_ok=True)
    return jobs


def stop_job(job_name: str) -> int:
    """Ask the emulator running ``job_name`` to stop it; returns that process id."""
    jobs = running_jobs()
    if job_name not in jobs:
        known = ", ".join(sorted(jobs)) or "none"
        raise ConfigError(f"no running job of that name (running: {known})", key=f"job {job_name!r}")
    pid = jobs[job_name]
    os.kill(pid, signal.SIGTERM)
    return pid
