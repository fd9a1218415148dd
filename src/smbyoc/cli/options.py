"""Parsing helpers shared by the CLI commands."""

from __future__ import annotations

from collections.abc import Iterable

from smbyoc.emulator.local_training import ChannelSetting
from smbyoc.errors import ConfigError


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
