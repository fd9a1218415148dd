"""The ``/opt/ml`` layout, rooted at ``SAGEMAKER_BASE_DIR`` (default ``/opt/ml``).

contract.md §1.2 lists the paths and their sources. Nothing here touches the file system.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from smbyoc.environment_variables import SAGEMAKER_BASE_DIR
from smbyoc.errors import ConfigError

#: Channel names allowed by CreateTrainingJob (BOTO ``ChannelName``: ``[A-Za-z0-9\.\-_]+``, ≤64).
CHANNEL_NAME_RE = re.compile(r"^[A-Za-z0-9.\-_]{1,64}$")


@dataclass(frozen=True)
class Paths:
    """Every SageMaker path under one base directory."""

    base_dir: Path

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, base_dir: str | Path | None = None) -> Paths:
        return cls(Path(base_dir) if base_dir is not None else Path(SAGEMAKER_BASE_DIR.get(environ)))

    # input -------------------------------------------------------------------------------------
    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def input_config_dir(self) -> Path:
        return self.input_dir / "config"

    @property
    def input_data_dir(self) -> Path:
        return self.input_dir / "data"

    @property
    def hyperparameters_file(self) -> Path:
        return self.input_config_dir / "hyperparameters.json"

    @property
    def resource_config_file(self) -> Path:
        return self.input_config_dir / "resourceconfig.json"

    @property
    def input_data_config_file(self) -> Path:
        return self.input_config_dir / "inputdataconfig.json"

    def channel_dir(self, channel: str) -> Path:
        """``input/data/<channel>``: File and FastFile channels."""
        check_channel_name(channel)
        return self.input_data_dir / channel

    def pipe_path(self, channel: str, epoch: int) -> Path:
        """``input/data/<channel>_<epoch>``: the Pipe-mode FIFO for one epoch."""
        check_channel_name(channel)
        return self.input_data_dir / f"{channel}_{epoch}"

    # model, output, code ---------------------------------------------------------------------
    @property
    def model_dir(self) -> Path:
        return self.base_dir / "model"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def output_data_dir(self) -> Path:
        return self.output_dir / "data"

    @property
    def output_intermediate_dir(self) -> Path:
        return self.output_dir / "intermediate"

    @property
    def failure_file(self) -> Path:
        return self.output_dir / "failure"

    @property
    def success_file(self) -> Path:
        return self.output_dir / "success"

    @property
    def checkpoints_dir(self) -> Path:
        return self.base_dir / "checkpoints"

    @property
    def code_dir(self) -> Path:
        return self.base_dir / "code"

    # serving ---------------------------------------------------------------------------------
    @property
    def model_code_dir(self) -> Path:
        """``model/code``: where serving looks for the handler module by default."""
        return self.model_dir / "code"

    @property
    def multi_model_dir(self) -> Path:
        """``models``: where multi-model endpoints find their models."""
        return self.base_dir / "models"


def check_channel_name(name: str) -> str:
    if not CHANNEL_NAME_RE.match(name):
        raise ConfigError(
            "channel names are 1-64 characters of letters, digits, '.', '-' and '_'", key=f"channel {name!r}"
        )
    if name in (".", ".."):  # SageMaker's pattern lets them through; as a folder name they leave input/data/
        raise ConfigError("'.' and '..' name no folder below input/data/", key=f"channel {name!r}")
    return name


def check_creatable_dir(path: Path, key: str) -> None:
    """Refuse (ConfigError naming ``key``) a directory ``path`` that exists as something else, or that cannot be
    created or written where it would be: checked before a job runs, so that its outputs are not lost at the end.
    A probe directory is made in ``path`` or its nearest existing ancestor and removed at once; nothing else is
    created."""
    current = path
    while not current.exists() and not current.is_symlink() and current.parent != current:
        current = current.parent
    if not current.is_dir():
        raise ConfigError(f"{current} is not a directory", key=key)
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".smbyoc-probe-", dir=current))
    except OSError as e:
        raise ConfigError(f"cannot create directories in {current}: {e.strerror or e}", key=key) from e
