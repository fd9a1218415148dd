"""Host side: emulated SageMaker training jobs and endpoints, run as processes or Docker containers.

From Python (or the API server), a training job is one call::

    from smbyoc.emulator import LocalTrainingJob, run_local_training

    result = run_local_training(LocalTrainingJob(mode="process", entry_point="train.py", source_dir=src))
    print(result.describe()["TrainingJobStatus"])

The names below are imported on first use: importing ``smbyoc.emulator`` imports no backend.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smbyoc.emulator.local_training import ChannelSetting, LocalTrainingJob, run_local_training
    from smbyoc.emulator.result import TrainingJobResult

__all__ = ["ChannelSetting", "LocalTrainingJob", "TrainingJobResult", "run_local_training"]

_HOMES = {
    "ChannelSetting": "smbyoc.emulator.local_training",
    "LocalTrainingJob": "smbyoc.emulator.local_training",
    "run_local_training": "smbyoc.emulator.local_training",
    "TrainingJobResult": "smbyoc.emulator.result",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
