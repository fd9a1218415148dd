"""Which package a ``train`` command belongs to, for the log line that says what runs.

sagemaker-training installs a ``train`` console script too, and whichever package was installed last owns
that name; saying ``train (sagemaker-training 5.1.4's console script)`` ends the guessing.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

_CONSOLE_IMPORT = re.compile(r"^from ([A-Za-z_][\w.]*) import ", re.MULTILINE)
_DIST_FOR_MODULE = {"smbyoc": "smbyoc", "sagemaker_training": "sagemaker-training"}


def _distribution(module: str) -> str:
    top = module.split(".", 1)[0]
    name = _DIST_FOR_MODULE.get(top, top)
    try:
        return f"{name} {metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return name


def describe_program(argv: Sequence[str]) -> str:
    """``"smbyoc 0.1.0"``, ``"sagemaker-training 5.1.4's console script"`` or ``"your program"``."""
    if not argv:
        return "nothing"
    if len(argv) >= 3 and argv[1] == "-m":
        return _distribution(argv[2])
    found = shutil.which(argv[0])
    if found is None:
        return "your program"
    try:
        head = Path(found).read_bytes()[:2048].decode("utf-8", "replace")
    except OSError:
        return "your program"
    match = _CONSOLE_IMPORT.search(head) if head.startswith("#!") and "python" in head.splitlines()[0] else None
    if match is None:
        return "your program"
    return f"{_distribution(match.group(1))}'s console script {found}"
