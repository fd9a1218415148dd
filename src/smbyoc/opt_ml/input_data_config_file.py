"""``/opt/ml/input/config/inputdataconfig.json``: the job's channels and how each is delivered.

The platform writes one entry per channel (contract.md §1.3)::

    {"train": {"ContentType": "text/csv", "TrainingInputMode": "File",
               "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}}

``ContentType`` only when the request set one, ``CompressionType`` only when it is not ``None``. Reading:
a missing file means a job without channels; absent keys take SageMaker's defaults (``File``,
``FullyReplicated``, ``None``); a value outside the allowed ones, or a channel name CreateTrainingJob
would refuse, is a :class:`~smbyoc.errors.ConfigError` naming the file and the channel.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smbyoc.errors import ConfigError
from smbyoc.jsonfile import read_json_object, write_json
from smbyoc.opt_ml import NOT_GIVEN
from smbyoc.paths import Paths, check_channel_name

INPUT_MODES: tuple[str, ...] = ("File", "FastFile", "Pipe")
S3_DISTRIBUTION_TYPES: tuple[str, ...] = ("FullyReplicated", "ShardedByS3Key")
RECORD_WRAPPER_TYPES: tuple[str, ...] = ("None", "RecordIO")
COMPRESSION_TYPES: tuple[str, ...] = ("None", "Gzip")


@dataclass(frozen=True)
class Channel:
    """One entry of ``inputdataconfig.json``.

    ``path`` is where the channel's data lies; ``config`` is the entry as read (its own :meth:`to_json`
    when not given).
    """

    name: str
    input_mode: str
    content_type: str | None
    s3_distribution_type: str
    record_wrapper_type: str
    compression_type: str | None
    path: Path
    config: Mapping[str, Any] = field(default=NOT_GIVEN)

    def __post_init__(self) -> None:
        if self.config is NOT_GIVEN:
            object.__setattr__(self, "config", self.to_json())

    def pipe_path(self, epoch: int) -> Path:
        """``<channel>_<epoch>``: the Pipe-mode FIFO for one epoch."""
        return self.path.parent / f"{self.name}_{epoch}"

    def to_json(self) -> dict[str, str]:
        """The channel's entry, keys in the platform's order."""
        entry: dict[str, str] = {}
        if self.content_type is not None:
            entry["ContentType"] = self.content_type
        entry["TrainingInputMode"] = self.input_mode
        entry["S3DistributionType"] = self.s3_distribution_type
        entry["RecordWrapperType"] = self.record_wrapper_type
        if self.compression_type is not None:
            entry["CompressionType"] = self.compression_type
        return entry

    @classmethod
    def from_json(cls, name: str, entry: object, paths: Paths, source: str | None = None) -> Channel:
        """Check one entry (ConfigError naming ``source`` and the channel) and type it."""
        try:
            check_channel_name(name)
        except ConfigError as e:
            raise ConfigError(e.message, source=source) from None
        if not isinstance(entry, dict):
            raise ConfigError("expected an object", source=source, key=name)

        def get(key: str, allowed: tuple[str, ...] | None, default: str | None) -> str | None:
            value = entry.get(key, default)
            if value is None:
                return None
            if not isinstance(value, str) or (allowed is not None and value not in allowed):
                expected = "one of " + ", ".join(allowed) if allowed else "a string"
                raise ConfigError(f"{key} is {json.dumps(value)}; expected {expected}", source=source, key=name)
            return value

        return cls(
            name=name,
            input_mode=get("TrainingInputMode", INPUT_MODES, "File") or "File",
            content_type=get("ContentType", None, None),
            s3_distribution_type=get("S3DistributionType", S3_DISTRIBUTION_TYPES, "FullyReplicated")
            or "FullyReplicated",
            record_wrapper_type=get("RecordWrapperType", RECORD_WRAPPER_TYPES, "None") or "None",
            compression_type=get("CompressionType", COMPRESSION_TYPES, None),
            path=paths.channel_dir(name),
            config=entry,
        )


def read(paths: Paths) -> dict[str, Channel]:
    """The job's channels by name, in the file's order (``{}`` without the file)."""
    path = paths.input_data_config_file
    source = str(path)
    document = read_json_object(path, missing={})
    return {name: Channel.from_json(name, entry, paths, source) for name, entry in document.items()}


def write(paths: Paths, channels: Iterable[Channel]) -> Path:
    """Write the entries of ``channels`` as the platform does (each one's :meth:`~Channel.to_json`)."""
    return write_json(paths.input_data_config_file, {channel.name: channel.to_json() for channel in channels})
