"""Parsing helpers and option definitions shared by the CLI commands."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from smbyoc.emulator.local_training import ChannelSetting
from smbyoc.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])

if TYPE_CHECKING:
    _TextParam = click.ParamType[str]
else:  # click < 8.2: ParamType is not generic
    _TextParam = click.ParamType


class LocationType(_TextParam):
    """A local path, a ``file://`` URI or an ``s3://`` URI, kept as text (a ``Path`` would fold ``s3://`` into
    ``s3:/``); a bad S3 URI or an unknown scheme is refused at once, with one line."""

    name = "location"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from smbyoc.s3.staging import check_location

        text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
        try:
            check_location(text)
        except ConfigError as e:
            self.fail(str(e), param, ctx)
        return text


#: ``type=`` of the options that take a path or an S3 URI.
LOCATION = LocationType()


def endpoint_url_option(command: F) -> F:
    """``--endpoint-url``: the S3 API that ``s3://`` locations are read from and written to."""
    return click.option(
        "--endpoint-url", metavar="URL",
        help="S3 API for s3:// locations: an S3-compatible store (MinIO, Ceph, moto). Default: boto3's "
             "(AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, else Amazon S3). docs/s3.md.",
    )(command)


#: Libraries that log routine INFO lines (where credentials were found, which endpoint is used).
AWS_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")


def quiet_aws_logs() -> None:
    """Keep boto3's routine INFO lines out of a command's output (an error stays one line); ``-vv`` (DEBUG)
    shows them. Called by the commands that take s3:// locations, which are entry points."""
    import logging

    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in AWS_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


def progress_line(line: str) -> None:
    """Where S3 transfers report: one line on stderr (stdout stays for results and --json)."""
    click.echo(line, err=True)


def parse_locations(values: Iterable[str], option: str) -> list[tuple[str, str]]:
    """``NAME=LOCATION`` items (channels): each location a path, a ``file://`` or an ``s3://`` URI, checked."""
    from smbyoc.s3.staging import check_location

    pairs = parse_pairs(values, option)
    for name, location in pairs:
        check_location(location, what=f"{option} {name}")
    return pairs


def channel_data_type(settings: Iterable[ChannelSetting], channel: str, default: str = "S3Prefix") -> str:
    """The ``S3DataType`` that ``--s3-data-type`` settings give ``channel`` (its own wins; of several, the last)."""
    job_value, own = default, None
    for setting in settings:
        if setting.field != "data_type":
            continue
        if setting.channel is None:
            job_value = setting.value
        elif setting.channel == channel:
            own = setting.value
    return own if own is not None else job_value


def parse_pairs(values: Iterable[str], option: str) -> list[tuple[str, str]]:
    """``KEY=VALUE`` items of a repeatable option; one clear error for an item without ``=``."""
    pairs: list[tuple[str, str]] = []
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise ConfigError("expected KEY=VALUE", key=f"{option} {value!r}")
        pairs.append((key, rest))
    return pairs


def parse_channel_settings(values: Iterable[str], field: str) -> list[ChannelSetting]:
    """``VALUE`` (the job's) or ``NAME=VALUE`` (one channel's) items of a per-channel option."""
    settings: list[ChannelSetting] = []
    for value in values:
        name, sep, choice = value.partition("=")
        settings.append(ChannelSetting(field, choice, name) if sep else ChannelSetting(field, value))
    return settings
