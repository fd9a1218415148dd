"""This machine's architecture, named as wheel tags, ELF headers and ``uname -m`` on Linux name it."""

from __future__ import annotations

import platform

#: Other spellings of the same machines (Windows/macOS ``platform.machine()``).
_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


def host_machine() -> str:
    """``x86_64`` or ``aarch64`` (or whatever else ``platform.machine()`` says, lower-cased)."""
    machine = platform.machine().lower()
    return _ALIASES.get(machine, machine)
