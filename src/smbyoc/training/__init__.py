"""The in-image ``train`` runtime: environment, entry point, failure file, signals, pipes.

Only the standard library is needed here, so every training image can carry it.
"""

from smbyoc.training.env import Channel, InstanceGroup, TrainingEnv

__all__ = ["Channel", "InstanceGroup", "TrainingEnv"]
