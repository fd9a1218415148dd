"""``smbyoc capture``: read what endpoint data capture wrote (``smbyoc capture summary DIR``)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import click

from smbyoc.cli import library_errors
from smbyoc.errors import ConfigError

#: Malformed lines listed one by one on stderr; the rest are counted.
MAX_LISTED = 20


@click.group("capture")
def capture() -> None:
    """Read endpoint data capture files (the tree Model Monitor reads: <endpoint>/<variant>/yyyy/mm/dd/hh).

    \b
    Example:
      smbyoc capture summary ./capture
    """


def _counts(counter: dict[str, int]) -> str:
    from smbyoc.logs import terminal_safe

    return ", ".join(f"{terminal_safe(name)} {n}" for name, n in sorted(counter.items(), key=lambda kv: -kv[1])) \
        or "-"


def _sizes(stats: dict[str, float] | None) -> str:
    if stats is None:
        return "-"
    return " ".join(f"{name} {int(stats[name])}" for name in ("min", "p50", "p90", "p99", "max"))


def _render(summary: dict[str, Any]) -> None:
    from smbyoc.logs import terminal_safe

    click.echo(f"{terminal_safe(summary['root'])}: {summary['records']} records in {summary['files']} files, "
               f"{len(summary['variants'])} endpoint variants")
    for v in summary["variants"]:
        click.echo(f"{terminal_safe(v['endpoint'])} / {terminal_safe(v['variant'])}: {v['records']} records in "
                   f"{v['files']} files")
        span = "" if v["span_seconds"] is None else f" ({int(v['span_seconds'])} s)"
        click.echo(f"  events            {v['first_event']} .. {v['last_event']}{span}")
        click.echo(f"  request types     {_counts(v['request_content_types'])}")
        click.echo(f"  response types    {_counts(v['response_content_types'])}")
        click.echo(f"  request encoding  {_counts(v['request_encodings'])}")
        click.echo(f"  response encoding {_counts(v['response_encodings'])}")
        click.echo(f"  request bytes     {_sizes(v['request_bytes'])}")
        click.echo(f"  response bytes    {_sizes(v['response_bytes'])}")
        click.echo(f"  inferenceId       in {v['with_inference_id']} of {v['records']} records; customAttributes in "
                   f"{v['with_custom_attributes']}")
    if summary["variants"]:
        click.echo(f"latency: {summary['variants'][0]['latency_note']}")


@capture.command("summary")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--csv", "csv_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write one CSV row per record (request/response data as text for CSV/JSON, else base64).")
@library_errors
def summary(directory: Path, as_json: bool, csv_file: Path | None) -> None:
    """Summarize a capture tree per endpoint and variant: records, content types, encodings, payload sizes,
    first and last event. DIRECTORY is the capture destination (what DestinationS3Uri stood for), or an
    endpoint or variant directory in it. A malformed line is reported as FILE:LINE and skipped; the exit
    status is non-zero only when no record could be read.

    \b
    Examples:
      smbyoc capture summary ./capture
      smbyoc capture summary ./capture --json
      smbyoc capture summary ./capture --csv records.csv     # for a notebook: pandas.read_csv
    """
    from smbyoc.emulator.capture import CSV_COLUMNS, CaptureSummary, csv_row, scan_capture_tree
    from smbyoc.logs import terminal_safe

    tree = scan_capture_tree(directory)
    result = CaptureSummary(tree)
    temporary = None
    if csv_file is not None:
        if not csv_file.parent.is_dir():
            raise ConfigError("its directory does not exist", source=str(csv_file))
        temporary = csv_file.parent / f".{csv_file.name}.{os.getpid()}.tmp"
    try:
        handle = temporary.open("w", newline="", encoding="utf-8") if temporary else None
        try:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS) if handle else None
            if writer:
                writer.writeheader()
            for record in tree.records():
                result.add(record)
                if writer:
                    writer.writerow(csv_row(record))
        finally:
            if handle:
                handle.close()
        for bad in tree.malformed[:MAX_LISTED]:
            click.echo(terminal_safe(str(bad)), err=True)
        if len(tree.malformed) > MAX_LISTED:
            click.echo(f"... and {len(tree.malformed) - MAX_LISTED} more malformed lines", err=True)
        if not result.records:
            raise ConfigError(f"no readable capture records ({len(tree.files)} capture files, "
                              f"{len(tree.malformed)} malformed lines, {len(tree.unfinished)} unfinished .partial "
                              f"files)", source=str(directory))
        if temporary and csv_file:
            os.replace(temporary, csv_file)
            temporary = None
    finally:
        if temporary:
            temporary.unlink(missing_ok=True)
    data = result.to_dict()
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        _render(data)
    notes = []
    if tree.malformed:
        notes.append(f"{len(tree.malformed)} malformed lines skipped")
    if tree.unfinished:
        notes.append(f"{len(tree.unfinished)} unfinished .partial files (a writer still open, or killed) not read")
    if tree.ignored:
        notes.append(f"{len(tree.ignored)} files outside the capture layout ignored")
    if csv_file:
        notes.append(f"wrote {result.records} rows to {csv_file}")
    for note in notes:
        click.echo(note, err=True)


COMMANDS = [capture]
