"""Remove what a killed emulator left behind, and stop everything on request (``smbyoc stop --all``).

A job or endpoint is orphaned when the process that owns it is gone (see :mod:`smbyoc.emulator.jobs`).
Sweeping it ends its processes (every process carrying its token and the ``train``/``serve`` process
group: SIGTERM, then SIGKILL after :data:`~smbyoc.emulator.owners.SWEEP_GRACE` seconds), removes its
containers and networks (by their owner labels), its temporary tree and the half-written
``.partial`` archives in its output directory (a processing job's: the ``.partial`` copies anywhere below its
output destinations), then its record. Docker resources whose owner is gone are
removed also without a record (labels are enough).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smbyoc.emulator import jobs
from smbyoc.emulator.layout import make_writable
from smbyoc.emulator.owners import end_processes, process_group
from smbyoc.errors import DockerError

log = logging.getLogger(__name__)

#: The temporary names :func:`smbyoc.archives.create_tar_gz` writes before renaming.
PARTIAL_PATTERN = ".*.partial"


def _docker_client() -> Any:
    from smbyoc.docker.client import get_client

    return get_client(timeout=30)


def _remove_tree(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        make_writable(path)
    except OSError as e:  # files written as root inside a container: removed as far as we may
        log.debug("make_writable %s: %s", path, e)
    shutil.rmtree(path, ignore_errors=True)
    return True


def sweep_record(record: jobs.Record, client: Any = None) -> list[str]:
    """End and remove everything ``record`` names (its owner must be gone); what was removed."""
    removed: list[str] = []
    groups = []
    child = record.child()
    if child is not None and child.alive():
        pgid = process_group(child.pid)
        if pgid is not None:
            groups.append(pgid)
    pids = end_processes(str(record.data.get("token", "")), groups)
    if pids:
        removed.append(f"{len(pids)} process(es) ({', '.join(map(str, pids))})")
    if record.mode == "docker":
        if client is None:
            try:
                client = _docker_client()
            except DockerError as e:
                log.warning("%s %s: its containers stay until the Docker Engine answers: %s",
                            record.kind, record.name, e)
                return removed
        removed += _remove_docker(client, record)
    tree = record.data.get("tree")
    if tree and _remove_tree(Path(tree)):
        removed.append(f"tree {tree}")
    output_dir = record.data.get("output_dir")
    if output_dir and Path(output_dir).is_dir():
        for partial in sorted(Path(output_dir).glob(PARTIAL_PATTERN)):
            partial.unlink(missing_ok=True)
            removed.append(f"partial file {partial}")
    for folder in record.data.get("output_dirs") or []:  # a processing job's destinations: at any depth
        if Path(folder).is_dir():
            for partial in sorted(Path(folder).rglob(PARTIAL_PATTERN)):
                partial.unlink(missing_ok=True)
                removed.append(f"partial file {partial}")
    record.path.unlink(missing_ok=True)
    return removed


def _remove_docker(client: Any, record: jobs.Record | None) -> list[str]:
    from smbyoc.emulator.containers import remove_orphans

    try:
        return remove_orphans(client, None if record is None else record.owner)
    except DockerError as e:
        log.warning("could not remove orphaned containers: %s", e)
        return []


def sweep_orphans(client: Any = None, *, docker: bool = False) -> list[str]:
    """Sweep every orphaned record, and the Docker resources whose owner is gone when a client is given,
    ``docker`` is true, or an orphaned record is in docker mode; returns what was removed."""
    removed: list[str] = []
    orphans = [r for r in jobs.records() if r.orphaned]
    if client is None and (docker or any(r.mode == "docker" for r in orphans)):
        try:
            client = _docker_client()
        except DockerError as e:
            log.debug("no Docker sweep: %s", e)
    for record in orphans:
        items = sweep_record(record, client)
        removed.append(f"{record.kind} {record.name}" + (f" ({'; '.join(items)})" if items else ""))
    if client is not None:
        removed += _remove_docker(client, None)
    return removed


def summary(removed: list[str]) -> str:
    """The one line a command prints about a sweep."""
    return f"smbyoc: removed what killed emulators left behind: {', '.join(removed)}"


def stop_all(client: Any = None, *, echo: Callable[[str], None] | None = None) -> tuple[list[str], list[str]]:
    """SIGTERM the owner of every running job and endpoint (each stops as on Ctrl-C) and sweep the orphaned
    ones; returns ``(stopped, removed)``."""
    stopped = []
    for record in jobs.records():
        if record.orphaned:
            continue
        try:
            pid = jobs.stop_owner(record)
        except ProcessLookupError:
            continue
        stopped.append(f"{record.kind} {record.name} (pid {pid})")
        if echo is not None:
            echo(f"Stopping {record.kind} {record.name} (emulator pid {pid}): SIGTERM now, SIGKILL after the "
                 "grace period.")
    return stopped, sweep_orphans(client, docker=True)
