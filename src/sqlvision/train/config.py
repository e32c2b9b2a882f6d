"""Training hyperparameters: one place, validated before any data is read (scikit-learn style)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from sqlvision.errors import SqlvisionError
from sqlvision.train.augment import PRESETS

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("onecycle", "cosine", "step", "constant")
HEADS = ("network", "logistic")
TRAIN_LAYERS = re.compile(r"head|all|last:[1-9]\d*")


@dataclass
class TrainConfig:
    """Everything that shapes a training run. ``None`` means "the recipe chooses from the data"
    (see :mod:`sqlvision.train.recipes`); a value given always wins over the recipe."""

    arch: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str = "adamw"
    schedule: str = "onecycle"
    weight_decay: float | None = None
    momentum: float = 0.9
    dropout: float = 0.2
    label_smoothing: float = 0.1
    image_size: tuple[int, int] | None = None
    grayscale: bool | None = None
    resize: str | None = None
    resampler: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    augment: str | None = None
    balance: bool = False
    downsample: float | None = None
    val_fraction: float = 0.1
    seed: int = 0
    checkpoint_every: int = 500
    patience: int | None = None
    pretrained: bool | None = None
    pretrained_file: str | None = None
    train_layers: str | None = None
    head_epochs: int | None = None
    probe: bool | None = None
    from_model: str | None = None
    device: str = "auto"
    workers: int | None = None
    cache_mb: int = 1024
    tensorboard: str | None = None

    def validate(self) -> TrainConfig:
        """Check every value; raises naming the option and the allowed range."""
        def bad(option: str, why: str) -> SqlvisionError:
            return SqlvisionError(f"bad --{option.replace('_', '-')}: {why}", "fix the option")

        if self.epochs is not None and self.epochs < 0:
            raise bad("epochs", "must be 0 or more")
        if self.head_epochs is not None and self.head_epochs < 0:
            raise bad("head_epochs", "must be 0 or more")
        if self.batch_size is not None and self.batch_size < 1:
            raise bad("batch_size", "must be at least 1")
        if self.lr is not None and not 0 < self.lr < 10:
            raise bad("lr", "must be between 0 and 10")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"use one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", f"use one of {', '.join(SCHEDULES)}")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise bad("weight_decay", "must be 0 or more")
        if not 0 <= self.dropout < 1:
            raise bad("dropout", "must be in [0, 1)")
        if not 0 <= self.label_smoothing < 1:
            raise bad("label_smoothing", "must be in [0, 1)")
        if self.augment is not None and self.augment not in PRESETS:
            raise bad("augment", f"use one of {', '.join(PRESETS)}")
        if self.downsample is not None and not 0 < self.downsample <= 1:
            raise bad("downsample", "must be a fraction in (0, 1]")
        if not 0 <= self.val_fraction < 1:
            raise bad("val_fraction", "must be in [0, 1)")
        if self.checkpoint_every < 1:
            raise bad("checkpoint_every", "must be at least 1 step")
        if self.patience is not None and self.patience < 1:
            raise bad("patience", "must be at least 1 epoch")
        if self.train_layers is not None and not TRAIN_LAYERS.fullmatch(self.train_layers):
            raise bad("train_layers", "use head, all or last:N")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise bad("device", "use auto, cpu or cuda")
        if self.image_size is not None and min(self.image_size) < 8:
            raise bad("image_size", "must be at least 8 pixels")
        if self.pretrained_file is not None:
            self.pretrained = True
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (stored with the model and its checkpoints)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Settings saved by :meth:`to_dict` (unknown keys ignored)."""
        names = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                                  for k, v in data.items() if k in names}
        return cls(**kwargs)
