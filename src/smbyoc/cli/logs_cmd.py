"""``smbyoc logs NAME``: print (and follow) the log of a job or endpoint, run by a ``local-*`` command or by
``smbyoc api`` (:mod:`smbyoc.emulator.job_logs`)."""

from __future__ import annotations

from pathlib import Path

import click

from smbyoc.cli import library_errors
from smbyoc.emulator import job_logs

KINDS = (job_logs.TRAINING, job_logs.PROCESSING, job_logs.TRANSFORM, job_logs.ENDPOINT)


@click.command("logs")
@click.argument("name")
@click.option("-f", "--follow", is_flag=True,
              help="Keep printing new lines until the job ends (its record says so), or Ctrl-C.")
@click.option("-n", "--tail", type=click.IntRange(min=0), metavar="N", help="Only the last N lines (then new ones).")
@click.option("--kind", type=click.Choice(KINDS), help="The kind, when jobs or endpoints of several kinds share NAME.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="The `smbyoc api` state directory to look in (default: <smbyoc state dir>/api).")
@library_errors
def logs(name: str, follow: bool, tail: int | None, kind: str | None, state_dir: Path | None) -> None:
    """Print the log of a training, processing or transform job or an endpoint: its hosts' lines, as
    `[algo-1] text`. Looks at the jobs of `smbyoc local-train`, `local-transform` and `local-process`
    (<smbyoc state dir>/logs) and at the jobs and endpoints of `smbyoc api` (<state dir>/logs).

    \b
    Examples:
      smbyoc logs my-job-2026-11-21-10-00-00-000
      smbyoc logs my-job --tail 20 --follow
      smbyoc logs my-endpoint --kind endpoint --state-dir ./api-state
    """
    from smbyoc.api.store import default_state_dir
    from smbyoc.emulator.jobs import state_dir as local_state_dir

    found = job_logs.find_logs(name, api_dir=state_dir or default_state_dir(), local_dir=local_state_dir(),
                               kind=kind)
    try:
        lines, offset = job_logs.tail_lines(found.path, tail)
    except OSError as e:
        raise click.ClickException(f"{found.path}: cannot read: {e.strerror or e}") from e
    for line in lines:
        click.echo(line)
    if follow:
        try:
            job_logs.follow(found, offset, click.echo)
        except KeyboardInterrupt:
            raise SystemExit(130) from None


COMMANDS = [logs]
