"""``smbyoc ps``: the emulated training jobs and endpoints on this machine, running and orphaned."""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any

import click

from smbyoc.cli import library_errors


def docker_resources() -> list[dict[str, Any]] | None:
    """smbyoc's containers and networks with their owner's state; None when no Docker Engine answers."""
    from smbyoc.docker.client import get_client
    from smbyoc.emulator.containers import JOB_LABEL, owned_resources
    from smbyoc.errors import DockerError

    try:
        found = owned_resources(get_client(timeout=30))
    except DockerError:
        return None
    rows = []
    for kind, obj, owner in found:
        labels = (obj.labels if kind == "container" else obj.attrs.get("Labels")) or {}
        state = "unknown" if owner is None else ("running" if owner.alive() else "orphaned")
        rows.append({"Kind": kind, "Name": obj.name, "Job": labels.get(JOB_LABEL), "State": state,
                     "OwnerPid": None if owner is None else owner.pid})
    return rows


def _when(started: object) -> str:
    if not isinstance(started, (int, float)):
        return "-"
    return _dt.datetime.fromtimestamp(started).strftime("%Y-%m-%d %H:%M:%S")


@click.command("ps")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: TrainingJobs, Endpoints, TransformJobs, DockerResources.")
@click.option("--docker/--no-docker", default=True,
              help="Also list smbyoc's containers and networks (when a Docker Engine answers).")
@library_errors
def ps(as_json: bool, docker: bool) -> None:
    """List the emulated training jobs and endpoints, running or orphaned (their `smbyoc` process was
    killed). The next `local-*` command or `smbyoc stop --all` removes what orphans left.

    \b
    Examples:
      smbyoc ps
      smbyoc ps --json
      smbyoc ps --no-docker          # records only; do not ask the Docker Engine
    """
    from smbyoc.emulator import jobs

    records = jobs.records()
    resources = docker_resources() if docker else None
    if as_json:
        click.echo(json.dumps({
            "TrainingJobs": [r.describe() for r in records if r.kind == jobs.TRAINING],
            "Endpoints": [r.describe() for r in records if r.kind == jobs.ENDPOINT],
            "TransformJobs": [r.describe() for r in records if r.kind == jobs.TRANSFORM],
            "ProcessingJobs": [r.describe() for r in records if r.kind == jobs.PROCESSING],
            "DockerResources": resources,
        }, indent=2))
        return
    rows = [("KIND", "NAME", "MODE", "STATE", "OWNER", "STARTED", "WHERE")]
    for r in records:
        rows.append((r.kind, r.name, r.mode, r.state, str(r.owner.pid), _when(r.data.get("started")),
                     str(r.data.get("url") or r.data.get("tree") or "")))
    for res in resources or []:
        rows.append((res["Kind"], res["Name"], "docker", res["State"], str(res["OwnerPid"] or "-"), "-",
                     f"job {res['Job']}"))
    if len(rows) == 1:
        click.echo("No emulated jobs or endpoints.", err=True)
        return
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    if any(r.orphaned for r in records) or any(res["State"] == "orphaned" for res in resources or []):
        click.echo("Orphaned: their smbyoc process is gone; `smbyoc stop --all` (or any `smbyoc local-*`) "
                   "removes them.", err=True)


COMMANDS = [ps]
