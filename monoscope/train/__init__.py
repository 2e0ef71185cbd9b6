"""SAE training: the recipe's schedules, dead-latent tracking, checkpoints and exact resume."""

from monoscope.train.config import TrainConfig
from monoscope.train.trainer import (
    TrainingDivergedError,
    TrainingInterrupted,
    read_log,
    run,
    train,
)

__all__ = [
    "TrainConfig",
    "TrainingDivergedError",
    "TrainingInterrupted",
    "read_log",
    "run",
    "train",
]
