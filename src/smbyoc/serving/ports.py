"""Ports: ``SAGEMAKER_SAFE_PORT_RANGE`` (contract.md §6) and a free-port check."""

from __future__ import annotations

import ipaddress
import socket

from smbyoc.errors import ServingError


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when ``host:port`` can be bound now (TCP)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def is_loopback(host: str) -> bool:
    """Whether a server listening on ``host`` is reachable from this machine only (``localhost``, 127.0.0.0/8,
    ``::1``); ``0.0.0.0``, ``::``, ``""`` and other addresses are not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` the kernel considers free now (for the emulator's private container ports)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def next_safe_port(
    port_range: tuple[int, int] | str, after: int | None = None, *, host: str = "127.0.0.1", check: bool = True
) -> int:
    """The first port of ``port_range`` (inclusive ``LOW-HIGH``) greater than ``after`` that is free.

    Raises :class:`ServingError` when the range has none left.
    """
    if isinstance(port_range, str):
        from smbyoc.environment_variables import parse_port_range

        parsed = parse_port_range(port_range)
        assert parsed is not None
        port_range = parsed
    low, high = port_range
    start = low if after is None else max(low, after + 1)
    for port in range(start, high + 1):
        if not check or port_is_free(port, host):
            return port
    raise ServingError(f"no free port left in SAGEMAKER_SAFE_PORT_RANGE {low}-{high} after {after}")
