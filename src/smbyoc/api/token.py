"""The API server's access token (``smbyoc api --token``; required when it listens beyond loopback).

A client proves it holds the token the one way an unmodified boto3 client can: the token is its **access key
id**. botocore signs every request with SigV4 and puts the key id in the ``Authorization`` header
(``AWS4-HMAC-SHA256 Credential=<key id>/<date>/<region>/sagemaker/aws4_request, ...``); the server compares that
key id with the token. The signature itself is not verified (the secret key is not shared with the server), so
the token is a bearer secret: keep it as one, and use TLS in front of the server beyond a trusted network.

The token is generated once (40 hexadecimal digits), stored in ``<state dir>/token`` with mode 0600 and printed
once, when it is made.
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
from pathlib import Path

from smbyoc.api.errors import MISSING_TOKEN, UNRECOGNIZED_CLIENT, ApiError
from smbyoc.errors import ConfigError

TOKEN_FILE = "token"  # noqa: S105 - a file name
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")


def load_or_create(state_dir: Path) -> tuple[str, bool]:
    """The stored token, or a new one written with mode 0600; ``(token, created)``."""
    path = state_dir / TOKEN_FILE
    try:
        token = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        token = ""
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot be read: {e}", source=str(path)) from e
    if token:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(f"is readable by others (mode {mode:o}); chmod 600 it", source=str(path))
        return token, False
    state_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(token + "\n")
    return token, True


def access_key_id(authorization: str | None) -> str | None:
    """The access key id a SigV4 ``Authorization`` header names (None: no such header or no credential)."""
    if not authorization:
        return None
    found = _CREDENTIAL.search(authorization)
    return found.group(1) if found else None


def check(token: str | None, authorization: str | None) -> None:
    """Nothing when ``token`` is None or the request's access key id is the token; else the service's refusal."""
    if token is None:
        return
    key = access_key_id(authorization)
    if key is None:
        raise ApiError(MISSING_TOKEN, "Missing Authentication Token", status=403)
    if not hmac.compare_digest(key.encode(), token.encode()):
        raise ApiError(UNRECOGNIZED_CLIENT, "The security token included in the request is invalid.")
