"""Training: from an image table to a registered, versioned, exported classifier."""

from sqlvision.train.config import TrainConfig
from sqlvision.train.trainer import Trainer, TrainResult, run_summary

__all__ = ["TrainConfig", "TrainResult", "Trainer", "run_summary"]
