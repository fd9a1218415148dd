"""``AsyncInferenceConfig`` as the emulator runs it (contract-endpoints.md §6.1): the output and failure
locations (an ``s3://`` prefix, or a local directory standing for one), the concurrency per instance, the
notification topics.

The configuration normally comes validated from :mod:`smbyoc.emulator.endpoint_config` (local paths made absolute,
S3 URIs kept); the checks here only keep a hand-built one from failing later, each one :class:`ConfigError` naming
the member.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smbyoc.emulator.async_inference import notifications as notes
from smbyoc.emulator.async_inference.storage import Location
from smbyoc.errors import ConfigError
from smbyoc.s3.uri import S3Uri, scheme_of

SECTION = "AsyncInferenceConfig"
#: ``ClientConfig.MaxConcurrentInvocationsPerInstance`` when absent ("If no value is provided, SageMaker chooses an
#: optimal value", BOTO-SM): the emulator's choice, which the endpoint assembly may override.
DEFAULT_MAX_CONCURRENCY = 4
MAX_CONCURRENCY_RANGE = (1, 1000)


@dataclass(frozen=True)
class AsyncSettings:
    #: ``S3OutputPath``: an S3 prefix or a local directory.
    output: Location
    #: ``S3FailurePath``; the output location when the config has none (**[UNCONFIRMED]**).
    failure: Location
    max_concurrency: int
    success_topic: notes.Topic | None
    error_topic: notes.Topic | None
    include_in_success: bool
    include_in_error: bool

    @classmethod
    def from_config(cls, config: Mapping[str, Any], state_dir: Path, *,
                    default_max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
                    topics: Mapping[str, str] | None = None) -> AsyncSettings:
        output = config.get("OutputConfig")
        if not isinstance(output, Mapping):
            raise ConfigError("required field is missing", key=f"{SECTION}.OutputConfig")
        output_at = result_location(output.get("S3OutputPath"), f"{SECTION}.OutputConfig.S3OutputPath")
        failure = output.get("S3FailurePath")
        failure_at = output_at if failure is None else result_location(failure,
                                                                       f"{SECTION}.OutputConfig.S3FailurePath")
        concurrency = (config.get("ClientConfig") or {}).get("MaxConcurrentInvocationsPerInstance",
                                                             default_max_concurrency)
        low, high = MAX_CONCURRENCY_RANGE
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not low <= concurrency <= high:
            raise ConfigError(f"{concurrency!r}: expected an integer from {low} to {high}",
                              key=f"{SECTION}.ClientConfig.MaxConcurrentInvocationsPerInstance")
        notification = output.get("NotificationConfig") or {}
        key = f"{SECTION}.OutputConfig.NotificationConfig"
        found = {member: notes.topic_for(notification[member], f"{key}.{member}", state_dir, topics)
                 for member in ("SuccessTopic", "ErrorTopic") if notification.get(member)}
        included = notification.get("IncludeInferenceResponseIn") or ()
        return cls(output_at, failure_at, concurrency, found.get("SuccessTopic"), found.get("ErrorTopic"),
                   notes.SUCCESS_TOPIC in included, notes.ERROR_TOPIC in included)


def result_location(value: Any, key: str) -> Location:
    """The S3 prefix (``s3://bucket[/prefix]``) or the absolute local directory (a path or a ``file://`` URI)
    ``value`` names."""
    if not isinstance(value, str) or not value:
        raise ConfigError("expected an s3://bucket/prefix URI or a local directory (an absolute path or a file:// "
                          "URI)", key=key)
    scheme = scheme_of(value)
    if scheme == "s3":
        return S3Uri.parse(value, what=key)
    if scheme == "https":
        raise ConfigError(f"{value!r}: S3 URIs are not supported yet in the https:// form; give s3://bucket/prefix",
                          key=key)
    if scheme == "file":
        value = urllib.parse.unquote(urllib.parse.urlsplit(value).path)
    elif scheme is not None:
        raise ConfigError(f"{value!r}: expected s3://bucket/prefix, an absolute path or a file:// URI", key=key)
    path = Path(value)
    if not path.is_absolute():
        raise ConfigError(f"{value!r} is relative; give an absolute path", key=key)
    return path
