"""The one exception root of smbyoc and its few subclasses.

Every error a user can cause carries the culprit (file, key, variable, value) so that the boundary
(CLI, ``train``, ``serve``) can print one clear line. Third-party errors (Docker, tarfile, JSON) are
translated into these with ``raise ... from e`` in one place each.
"""

from __future__ import annotations

from collections.abc import Sequence


class SmbyocError(Exception):
    """Root of every error smbyoc raises on purpose."""

    #: Exit status used when this error ends a program (see :mod:`smbyoc.exit_codes`).
    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(SmbyocError):
    """A configuration file, environment variable or option is missing or malformed."""

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None) -> None:
        self.source = source
        self.key = key
        prefix = ""
        if source and key:
            prefix = f"{source}: {key}: "
        elif source:
            prefix = f"{source}: "
        elif key:
            prefix = f"{key}: "
        super().__init__(prefix + message)


class EnvVarError(ConfigError):
    """An environment variable has a value that cannot be used."""

    def __init__(self, name: str, value: str, reason: str) -> None:
        self.name = name
        self.value = value
        self.reason = reason
        super().__init__(f"{value!r} is not valid: {reason}", key=f"environment variable {name}")


class HyperparameterError(ConfigError):
    """One or more hyperparameters do not match their declaration; lists every bad key."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = list(problems)
        joined = "; ".join(f"{key}: {why}" for key, why in self.problems)
        n = len(self.problems)
        super().__init__(f"{n} invalid hyperparameter{'s' if n != 1 else ''}: {joined}")


class UserCodeError(SmbyocError):
    """The user's program or module could not be found, installed, imported or run."""


class ArchiveError(SmbyocError):
    """An archive (model.tar.gz, sourcedir.tar.gz) is unsafe or unreadable."""


class ServingError(SmbyocError):
    """The serving stack could not start or keep running."""


class DockerError(SmbyocError):
    """The Docker Engine refused or failed an operation; carries the engine's message."""


class BuildError(SmbyocError):
    """An image could not be built (missing base image, packages, or platform support)."""


class TransformError(SmbyocError):
    """A batch transform job's data could not be split, filtered, joined or assembled."""


class JobFailedError(SmbyocError):
    """An emulated job ended in ``Failed`` or ``Stopped``; carries the failure reason."""

    def __init__(self, message: str, *, status: str = "Failed", exit_code: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.exit_code = exit_code


class AwsError(SmbyocError):
    """An AWS (or S3-compatible) service refused a call, could not be reached, or no credentials were found.

    Raised only by :mod:`smbyoc.aws.client`, where botocore's errors are translated; carries the service's
    error code when it sent one.
    """

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code
