"""SNS stand-ins for ``NotificationConfig.SuccessTopic`` / ``ErrorTopic`` and the messages they carry
(contract-endpoints.md §6.4).

A topic is one of:

* an SNS topic ARN (``arn:aws:sns:<region>:<account>:<name>``, what an endpoint configuration validated against
  botocore holds): its messages are appended to ``<state_dir>/notifications/<name>.jsonl`` unless the
  ``topics`` mapping given to the endpoint sends that ARN somewhere else (either form below);
* a local file (an absolute path or a ``file://`` URI): one message per line (JSON Lines), each line written by
  one ``write`` on an ``O_APPEND`` descriptor, so lines never interleave;
* ``cmd:<command line>``: the command line is split as a shell would (``shlex.split``, no shell runs) and run
  once per message, with the message and a newline on its standard input; it must exit 0 within 30 s.

A notification that cannot be delivered is logged and counted, never a failure of the request: SageMaker's SNS
publishing is separate from the result object too.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import shlex
import threading
import urllib.parse
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from smbyoc.errors import ConfigError

log = logging.getLogger(__name__)

SUCCESS_TOPIC, ERROR_TOPIC = "SUCCESS_NOTIFICATION_TOPIC", "ERROR_NOTIFICATION_TOPIC"
#: "The inference response is included only if the response size is less than or equal to 128 KB" (BOTO-SM);
#: KB read as 1024 bytes.
MAX_INCLUDED_RESPONSE = 128 * 1024
COMMAND_PREFIX = "cmd:"
COMMAND_TIMEOUT = 30.0
SNS_ARN = re.compile(r"arn:aws[a-z\-]*:sns:[a-z0-9\-]*:[0-9]{12}:([a-zA-Z0-9_.-]+)")
EVENT_HEAD = {"eventVersion": "1.0", "eventSource": "aws:sagemaker"}
TEST_MESSAGE: Mapping[str, str] = {**EVENT_HEAD, "eventName": "TestNotification"}


class Topic:
    """Where one topic's messages go."""

    describe: str

    async def publish(self, message: Mapping[str, Any]) -> None:
        raise NotImplementedError


class FileTopic(Topic):
    """Appends one JSON line per message to ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.describe = str(path)
        self._lock = threading.Lock()

    def _append(self, line: bytes) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                written = os.write(fd, line)
                if written != len(line):
                    raise OSError(f"short write ({written} of {len(line)} bytes)")
                os.fsync(fd)
            finally:
                os.close(fd)

    async def publish(self, message: Mapping[str, Any]) -> None:
        line = json.dumps(message, separators=(",", ":")).encode("utf-8") + b"\n"
        await asyncio.to_thread(self._append, line)


class CommandTopic(Topic):
    """Runs ``argv`` once per message, the message on its standard input."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.describe = COMMAND_PREFIX + shlex.join(argv)

    async def publish(self, message: Mapping[str, Any]) -> None:
        data = json.dumps(message, separators=(",", ":")).encode("utf-8") + b"\n"
        process = await asyncio.create_subprocess_exec(*self.argv, stdin=asyncio.subprocess.PIPE,
                                                       stdout=asyncio.subprocess.DEVNULL,
                                                       stderr=asyncio.subprocess.PIPE)
        try:
            _, stderr = await asyncio.wait_for(process.communicate(data), COMMAND_TIMEOUT)
        except asyncio.TimeoutError as e:
            process.kill()
            await process.wait()
            raise OSError(f"{self.describe} did not exit within {COMMAND_TIMEOUT:.0f} s") from e
        except BaseException:
            if process.returncode is None:
                process.kill()
                await process.wait()
            raise
        if process.returncode != 0:
            tail = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            raise OSError(f"{self.describe} exited with status {process.returncode}: {tail[0]}")


def topic_for(text: str, key: str, state_dir: Path, overrides: Mapping[str, str] | None = None) -> Topic:
    """The :class:`Topic` ``text`` (the value of config member ``key``) stands for (module docstring)."""
    if overrides and text in overrides:
        return topic_for(overrides[text], key, state_dir)
    if text.startswith(COMMAND_PREFIX):
        try:
            argv = shlex.split(text[len(COMMAND_PREFIX):])
        except ValueError as e:
            raise ConfigError(f"{text!r}: the command line cannot be split: {e}", key=key) from e
        if not argv:
            raise ConfigError(f"{text!r}: the command is empty", key=key) from None
        return CommandTopic(argv)
    arn = SNS_ARN.fullmatch(text)
    if arn is not None:
        return FileTopic(state_dir / "notifications" / f"{arn.group(1)}.jsonl")
    if text.startswith("arn:"):
        raise ConfigError(f"{text!r} is not an SNS topic ARN", key=key)
    if text.lower().startswith("file://"):
        parts = urllib.parse.urlsplit(text)
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ConfigError(f"{text!r}: a file:// URI needs an absolute path (file:///path)", key=key)
        return FileTopic(Path(urllib.parse.unquote(parts.path)))
    path = Path(text).expanduser()
    if not path.is_absolute():
        raise ConfigError(f"{text!r}: give an SNS topic ARN, an absolute file path, a file:// URI or "
                          f"{COMMAND_PREFIX}<command>", key=key)
    if path.is_dir():
        raise ConfigError(f"{text!r} is a directory; a notification topic is a file", key=key)
    return FileTopic(path)


# ------------------------------------------------------------------------------------------ the messages
def event_time(seconds: float) -> str:
    """``2022-01-25T22:46:00.608Z``: UTC, milliseconds (§6.4)."""
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def request_parameters(*, content_type: str | None, accept: str | None, endpoint_name: str,
                       input_location: str | None) -> dict[str, str]:
    """``requestParameters``: the members the request had (``contentType``/``accept`` only when sent;
    ``inputLocation`` only for an InputLocation request, an inline Body has none)."""
    parameters: dict[str, str] = {}
    if accept is not None:
        parameters["accept"] = accept
    if content_type is not None:
        parameters["contentType"] = content_type
    parameters["endpointName"] = endpoint_name
    if input_location is not None:
        parameters["inputLocation"] = input_location
    return parameters


def included_response(body: bytes) -> dict[str, str]:
    """The response members a notification carries under ``IncludeInferenceResponseIn`` (**[UNCONFIRMED]**):
    ``responseBody`` (text; base64 with ``responseBodyEncoding: BASE64`` when the body is not UTF-8); nothing
    when the body is over 128 KB."""
    if len(body) > MAX_INCLUDED_RESPONSE:
        return {}
    try:
        return {"responseBody": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {"responseBody": base64.b64encode(body).decode("ascii"), "responseBodyEncoding": "BASE64"}


def result_message(*, region: str, event_seconds: float, received_seconds: float, status: str,
                   request: Mapping[str, str], response: Mapping[str, str], inference_id: str,
                   failure_reason: str | None = None) -> dict[str, Any]:
    """An ``InferenceResult`` message in §6.4's member order; ``failureReason`` follows ``invocationStatus`` on
    failures."""
    message: dict[str, Any] = {"awsRegion": region, "eventTime": event_time(event_seconds),
                               "receivedTime": event_time(received_seconds), "invocationStatus": status}
    if failure_reason is not None:
        message["failureReason"] = failure_reason
    message["requestParameters"] = dict(request)
    message["responseParameters"] = dict(response)
    message["inferenceId"] = inference_id
    message.update(EVENT_HEAD)
    message["eventName"] = "InferenceResult"
    return message
