"""Training: from an image table to a registered, versioned, exported classifier.

``plan`` decides (rows, recipe, preprocessing), ``trainer`` runs the loop, ``transfer`` sets up
starting weights and frozen layers, ``optim`` builds optimizers and schedules, ``checkpoint``
and ``runlog`` record the run, ``logistic`` fits a classical head on a model's features.
"""

from sqlvision.train.config import TrainConfig
from sqlvision.train.trainer import Trainer, TrainResult, run_summary

__all__ = ["TrainConfig", "TrainResult", "Trainer", "run_summary"]
