"""Host tools the tests need, and what a test does when one is missing (a plain module: importable from any
test as ``from host_tools import require_host_tool``, which a conftest is not)."""

from __future__ import annotations

import os
import shutil

import pytest

#: Host tools the tests run, and how a machine gets them. scripts/test installs them
#: (scripts/setup-host-packages); a developer running pytest directly may not have them.
HOST_TOOLS = {
    "nginx": "scripts/setup-host-packages (apt-get install nginx)",
    "docker-registry": "scripts/setup-host-packages (apt-get install docker-registry)",
    "htpasswd": "scripts/setup-host-packages (apt-get install apache2-utils)",
    "/usr/bin/python3": "apt-get install python3 (Debian's own Python, the one inside smbyoc's images)",
    "aarch64-linux-gnu-gcc": ("scripts/setup-qemu (apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross: "
                              "neo-compile's ARM targets)"),
}


def require_host_tool(name: str) -> str:
    """The tool's path (a command name or an absolute path). Missing: a failure under CI (which must install
    it), a skip elsewhere; both name the fix."""
    path = name if name.startswith("/") and os.access(name, os.X_OK) else shutil.which(name)
    if path is not None:
        return path
    message = f"{name} is not installed on this host; install it with {HOST_TOOLS[name]}"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and {message}", pytrace=False)
    pytest.skip(message)
