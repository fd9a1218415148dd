"""Find the user's program and its code, and turn it into a command, as sagemaker-training does.

**Program** (contract.md §2.2): ``SAGEMAKER_PROGRAM`` wins, else the hyperparameter
``sagemaker_program`` (``TrainingEnv.user_entry_point``).

**Code location**: the hyperparameter ``sagemaker_submit_directory`` (``TrainingEnv.module_dir``,
default ``/opt/ml/code``): a local directory, a ``file://`` URI, a local ``.tar.gz``, or an ``s3://``
URI of a ``.tar.gz`` (downloaded with boto3, which must then be installed in the image). As in the
toolkit the code is copied or extracted into ``/opt/ml/code`` only if that directory is empty; when the
location *is* ``/opt/ml/code`` the code runs in place (§2.6).

**Entry point type** (§2.6, in this order): a name ending in ``.sh`` is a command; a ``setup.py`` (or,
our addition, a ``pyproject.toml``) in the code directory makes a Python package, installed with
``python -m pip install .`` and run as ``python -m <module>``; a name ending in ``.py`` is run as
``python <program>``; anything else is an executable command.

**Commands** are executed directly (no ``sh -c``). The toolkit ``chmod 0o777``-s a command before
running it; we also make it executable, but only add the execute bits (never world-writable) and say
so in the log. A missing program exits with ``NOT_FOUND`` (127); a program that cannot be made
executable or executed (a directory, a read-only file system, a ``noexec`` mount) exits with
``NOT_EXECUTABLE`` (126). A command without a ``#!`` line that is not a binary is run with ``/bin/sh``,
as a shell would.

**requirements.txt** next to the code is installed with ``python -m pip install -r`` before running,
unless ``SMBYOC_ALLOW_REQUIREMENTS_INSTALL=false``: then the job fails at once with an error that says
so (network-isolated jobs cannot reach a package index; bake the requirements into the image). With
installs forbidden a Python package is not installed either; it runs from the code directory, which is
first on ``PYTHONPATH``.
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from smbyoc import exit_codes
from smbyoc.archives import is_tar_archive, safe_extract
from smbyoc.errors import UserCodeError

log = logging.getLogger(__name__)

REQUIREMENTS_FILE = "requirements.txt"
BAKE_HINT = (
    "install them in the image instead (COPY requirements.txt /tmp/ and "
    "RUN python -m pip install -r /tmp/requirements.txt in the Dockerfile)"
)
NETWORK_ISOLATION_HINT = (
    "jobs with network isolation (EnableNetworkIsolation) or without internet access cannot install "
    f"packages at start: {BAKE_HINT} and set SMBYOC_ALLOW_REQUIREMENTS_INSTALL=false"
)


class EntryPointType(enum.Enum):
    PYTHON_PACKAGE = "python_package"
    PYTHON_PROGRAM = "python_program"
    COMMAND = "command"


def code_error(message: str, exit_code: int = exit_codes.FAILURE) -> UserCodeError:
    error = UserCodeError(message)
    error.exit_code = exit_code
    return error


def entry_point_type(code_dir: str | Path, program: str) -> EntryPointType:
    """The toolkit's ``_entry_point_type.get`` (plus ``pyproject.toml`` for packages)."""
    root = Path(code_dir)
    if program.endswith(".sh"):
        return EntryPointType.COMMAND
    if (root / "setup.py").is_file() or (root / "pyproject.toml").is_file():
        return EntryPointType.PYTHON_PACKAGE
    if program.endswith(".py"):
        return EntryPointType.PYTHON_PROGRAM
    return EntryPointType.COMMAND


# ------------------------------------------------------------------------------- code location


def _is_empty(directory: Path) -> bool:
    return not directory.exists() or not any(directory.iterdir())


def _download_s3(uri: str, target: Path, region: str | None) -> None:
    try:
        import boto3
    except ImportError:
        raise code_error(
            f"sagemaker_submit_directory is {uri!r}, an s3:// URI, but boto3 is not installed in this image; "
            "install boto3 (pip install boto3) or put the code in the image / a local path") from None
    parsed = urlparse(uri)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    if not bucket or not key:
        raise code_error(f"sagemaker_submit_directory {uri!r} is not an s3://bucket/key URI")
    log.info("downloading %s", uri)
    try:
        boto3.client("s3", region_name=region).download_file(bucket, key, str(target))
    except Exception as e:  # botocore raises many types; one clear line is what matters
        raise code_error(f"cannot download sagemaker_submit_directory {uri!r}: {e}") from e


def prepare_code(source: str, code_dir: str | Path, *, region: str | None = None) -> Path:
    """Copy, extract or download ``source`` into ``code_dir`` if it is empty; returns ``code_dir``."""
    target = Path(code_dir)
    if source.startswith("file://"):
        source = urlparse(source).path
    if source.startswith("s3://"):
        if not _is_empty(target):
            log.info("%s is not empty; using it instead of downloading %s", target, source)
            return target
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="smbyoc-code-") as tmp:
            archive = Path(tmp) / "sourcedir.tar.gz"
            _download_s3(source, archive, region)
            safe_extract(archive, target)
        return target
    location = Path(source)
    if not location.exists():
        raise code_error(f"sagemaker_submit_directory {source!r} does not exist", exit_codes.NOT_FOUND)
    if location.is_dir() and target.exists() and location.resolve() == target.resolve():
        return target
    if not _is_empty(target):
        log.info("%s is not empty; using it instead of %s (as the training toolkit does)", target, source)
        return target
    if location.is_dir():
        log.info("copying %s to %s", location, target)
        shutil.copytree(location, target, symlinks=True, dirs_exist_ok=True)
    elif is_tar_archive(location):
        log.info("extracting %s to %s", location, target)
        safe_extract(location, target)
    else:
        raise code_error(f"sagemaker_submit_directory {source!r} is neither a directory nor a tar archive")
    return target


# --------------------------------------------------------------------------------- the program


@dataclass(frozen=True)
class UserProgram:
    """The entry point, where it lives, and how it runs."""

    name: str
    code_dir: Path
    kind: EntryPointType

    @property
    def path(self) -> Path:
        return self.code_dir / self.name

    @property
    def module(self) -> str:
        return self.name[:-3] if self.name.endswith(".py") else self.name

    @classmethod
    def resolve(cls, name: str | None, code_dir: str | Path) -> UserProgram:
        """Check the program exists (and, for commands, can be executed)."""
        if not name:
            raise code_error(
                "no program to run: set the SAGEMAKER_PROGRAM environment variable or the sagemaker_program "
                "hyperparameter (or SAGEMAKER_TRAINING_MODULE)", exit_codes.NOT_FOUND)
        root = Path(code_dir)
        kind = entry_point_type(root, name)
        program = cls(name, root, kind)
        if kind is EntryPointType.PYTHON_PACKAGE:
            return program
        if not program.path.exists():
            listing = sorted(p.name for p in root.iterdir())[:20] if root.is_dir() else []
            raise code_error(
                f"program {name!r} not found in {root} (contents: {', '.join(listing) or 'empty'})",
                exit_codes.NOT_FOUND)
        if kind is EntryPointType.COMMAND:
            make_executable(program.path)
        elif not program.path.is_file():
            raise code_error(f"program {program.path} is not a file", exit_codes.NOT_EXECUTABLE)
        return program

    def command(self, args: Sequence[str], *, python: str | None = None) -> list[str]:
        """The argv that runs the program (cwd must be ``code_dir``)."""
        py = python or sys.executable
        if self.kind is EntryPointType.PYTHON_PACKAGE:
            return [py, "-m", self.module, *args]
        if self.kind is EntryPointType.PYTHON_PROGRAM:
            return [py, self.name, *args]
        path = str(self.path)
        if not _has_interpreter_line(self.path):
            return ["/bin/sh", path, *args]
        return [path, *args]


def _has_interpreter_line(path: Path) -> bool:
    """Whether the kernel can execute ``path`` itself: a ``#!`` line or an ELF binary."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return True
    return head.startswith(b"#!") or head == b"\x7fELF"


def make_executable(path: Path) -> None:
    """Add the execute bits to a command (the toolkit sets 0o777); NOT_EXECUTABLE if that is impossible."""
    if not path.is_file():
        raise code_error(f"program {path} is not a file and cannot be executed", exit_codes.NOT_EXECUTABLE)
    mode = path.stat().st_mode
    wanted = mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
    if wanted != mode:
        try:
            os.chmod(path, stat.S_IMODE(wanted))
        except OSError as e:
            raise code_error(
                f"program {path} is not executable and cannot be made executable ({e.strerror}); "
                "chmod +x it before packaging, or name it .py or .sh", exit_codes.NOT_EXECUTABLE) from e
        log.warning("%s was not executable; added the execute permission (as the training toolkit does)", path)


# ---------------------------------------------------------------------------------- installing


def install_commands(program: UserProgram, *, allow: bool, python: str | None = None) -> list[list[str]]:
    """The pip commands to run before the program (none when there is nothing to install).

    Raises UserCodeError when a ``requirements.txt`` is present but installs are forbidden.
    """
    py = python or sys.executable
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check"]
    has_requirements = (program.code_dir / REQUIREMENTS_FILE).is_file()
    if not allow:
        if has_requirements:
            raise code_error(
                f"{program.code_dir / REQUIREMENTS_FILE} is present but installing packages at start is forbidden "
                "(SMBYOC_ALLOW_REQUIREMENTS_INSTALL=false; network-isolated jobs cannot reach a package index): "
                f"{BAKE_HINT} and remove requirements.txt from the code")
        if program.kind is EntryPointType.PYTHON_PACKAGE:
            log.info("installs are forbidden; running package %s from %s without installing it",
                     program.module, program.code_dir)
        return []
    if program.kind is EntryPointType.PYTHON_PACKAGE:
        command = [*pip, "."]
        if has_requirements:
            command += ["-r", REQUIREMENTS_FILE]
        return [command]
    if has_requirements:
        return [[*pip, "-r", REQUIREMENTS_FILE]]
    return []


def program_environment(base: Mapping[str, str], extra: Mapping[str, str], code_dir: Path) -> dict[str, str]:
    """``base`` + ``extra`` with the code directory first on ``PYTHONPATH``."""
    env = {**base, **extra}
    parts = [str(code_dir)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(code_dir)]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env
