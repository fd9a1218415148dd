"""Registry credentials: a user name and a password, from ``--username/--password-stdin`` or ECR's token.

An ECR authorization token is base64 of ``AWS:<password>`` (ECRUG ``registry_auth.md``). It is split on the
*first* ``:`` and nothing is stripped: SDKv2 local mode's ``.strip("AWS:")`` removes characters, not a
prefix, and corrupts passwords that begin or end with ``A``, ``W``, ``S`` or ``:`` (contract-endpoints.md §8.1).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

from smbyoc.errors import AwsError, ConfigError


@dataclass(frozen=True)
class RegistryCredentials:
    """What ``docker login`` would store for one registry; the password never appears in a repr or a log."""

    username: str
    password: str = field(repr=False)

    def auth_config(self) -> dict[str, Any]:
        """The Engine API's ``X-Registry-Auth`` content (the docker SDK's ``auth_config``)."""
        return {"username": self.username, "password": self.password}

    def basic_header(self) -> str:
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode("ascii")
        return f"Basic {token}"


def decode_ecr_token(token: str) -> RegistryCredentials:
    """GetAuthorizationToken's ``authorizationToken`` → user ``AWS`` and its password."""
    try:
        text = base64.b64decode(token, validate=True).decode("utf-8")
    except (binascii.Error, ValueError) as e:
        raise AwsError("ECR GetAuthorizationToken: the authorization token is not base64 text", code="BadToken") from e
    username, sep, password = text.partition(":")
    if not sep or not username or not password:
        raise AwsError("ECR GetAuthorizationToken: the authorization token is not 'user:password'", code="BadToken")
    return RegistryCredentials(username=username, password=password)


def password_from_stdin(text: str) -> str:
    """A password piped to ``--password-stdin``: one trailing newline (``\\n`` or ``\\r\\n``) removed, as
    ``docker login --password-stdin`` does; nothing else."""
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    if not text:
        raise ConfigError("no password on standard input", key="--password-stdin")
    return text


def docker_config_credentials(registry: str) -> RegistryCredentials | None:
    """The user name and password ``docker login`` stored for ``registry`` (``~/.docker/config.json``, or its
    credential helper), as the docker SDK resolves them for the push itself; None when there are none."""
    try:
        from docker import auth

        entry = auth.load_config().resolve_authconfig(registry)
    except Exception:  # no SDK, an unreadable config, a failing credential helper: read anonymously
        return None
    if not isinstance(entry, dict):
        return None
    username = entry.get("username") or entry.get("Username")
    password = entry.get("password") or entry.get("Password")
    if username and password:
        return RegistryCredentials(username=str(username), password=str(password))
    return None
