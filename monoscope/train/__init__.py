"""SAE training: the recipe's schedules, dead-latent tracking, checkpoints and exact resume."""

from monoscope.train.config import TrainConfig
from monoscope.train.trainer import TrainingDivergedError, read_log, run

__all__ = ["TrainConfig", "TrainingDivergedError", "read_log", "run"]
