"""Everything decided before the first step: rows, classes, parent, recipe, preprocessing."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sqlvision.db.base import Backend
from sqlvision.errors import SqlvisionError
from sqlvision.models import architectures, pretrained
from sqlvision.preprocess import PreprocessSpec
from sqlvision.tables import ImageTable
from sqlvision.train import recipes
from sqlvision.train.config import TrainConfig
from sqlvision.train.data import Selection, select_rows
from sqlvision.train.rows import data_fingerprint, sniff_images, split_rows
from sqlvision.train.transfer import Parent, load_parent


@dataclass
class TrainPlan:
    """A run's inputs, fixed before training starts (``config`` has every open field filled)."""

    config: TrainConfig
    recipe: recipes.Recipe
    selection: Selection
    train_pos: list[int]
    val_pos: list[int]
    classes: list[str]
    targets: np.ndarray
    class_counts: Counter[str]
    spec: PreprocessSpec
    parent: Parent | None
    fingerprint: str
    notes: list[str] = field(default_factory=list)

    @property
    def arch(self) -> str:
        assert self.config.arch is not None
        return self.config.arch

    def keys(self, positions: list[int]) -> list[Any]:
        return [self.selection.ids[i] for i in positions]


def make_plan(backend: Backend, table: ImageTable, config: TrainConfig,
              where: str | None = None) -> TrainPlan:
    """Select and split the rows, load the parent, choose the recipe and the spec."""
    config = config.validate()
    sel = select_rows(backend, table, where)
    if not sel.ids:
        condition = f" matching {where!r}" if where else ""
        raise SqlvisionError(f"no labeled rows in {table.name}{condition} "
                             f"({sel.unlabeled} unlabeled)", "check the table, --where and labels")
    train_pos, val_pos = split_rows(sel, config)
    if not train_pos:
        raise SqlvisionError(f"no training rows in {table.name} (all are validation or test)",
                             "add rows with split 'train' or NULL")
    parent = load_parent(backend, config.from_model, config.arch) if config.from_model else None
    counts = Counter(sel.labels[i] for i in train_pos)
    classes = sorted(counts)
    if len(classes) < 2:
        raise SqlvisionError(f"only one class ({classes[0]!r}) in the training rows",
                             "a classifier needs at least two labels")
    if parent and parent.classes and set(classes) <= set(parent.classes):
        classes = list(parent.classes)  # keep the parent's head and class order
    index = {c: i for i, c in enumerate(classes)}
    val_pos = [i for i in val_pos if sel.labels[i] in index]
    targets = np.asarray([index.get(lab, -1) for lab in sel.labels], np.int64)
    if parent and config.arch and config.arch != parent.architecture:
        raise SqlvisionError(f"--arch {config.arch} differs from {parent.ref}'s "
                             f"{parent.architecture}", "drop --arch to keep the parent's")
    sample = sniff_images(backend, table, [sel.ids[i] for i in train_pos])
    choice = recipes.choose(config, sample, parent_arch=parent.architecture if parent else None,
                            parent_pretrained=bool(parent and parent.pretrained))
    config = choice.config
    if not config.epochs and not config.probe:
        raise SqlvisionError("--epochs 0 would register an untrained model",
                             "give --epochs 1 or more (or --probe: a classifier fitted on the "
                             "pretrained features alone)")
    notes = [choice.message()]
    architectures.check_architecture(config.arch or "")
    spec = _spec(config, sample, parent, notes)
    return TrainPlan(config, choice.recipe, sel, train_pos, val_pos, classes, targets, counts, spec,
                     parent, data_fingerprint(sel, train_pos, val_pos), notes)


def _spec(config: TrainConfig, sample: recipes.ImageSample, parent: Parent | None,
          notes: list[str]) -> PreprocessSpec:
    """The preprocessing: the parent's (size and resize may change), else from the images and,
    for pretrained weights, the statistics and interpolation those weights were trained with."""
    if parent and parent.spec:
        base = parent.spec
        mode = base.mode if config.grayscale is None else ("L" if config.grayscale else "RGB")
        if mode != base.mode:
            raise SqlvisionError(
                f"{parent.ref} takes {base.mode} images but this run asks for {mode}",
                "drop --grayscale/--rgb: the first layer's channels are fixed by the parent")
        height, width = config.image_size or (base.height, base.width)
        return dataclasses.replace(base, height=height, width=width,
                                   resize=config.resize or base.resize,
                                   mean=tuple(config.mean or base.mean),
                                   std=tuple(config.std or base.std),
                                   resampler=config.resampler or base.resampler)
    mode = sample.mode if config.grayscale is None else ("L" if config.grayscale else "RGB")
    assert config.image_size is not None
    height, width = config.image_size
    if not config.pretrained:
        return PreprocessSpec.for_images(height, width, mode, resize=config.resize,
                                         mean=config.mean, std=config.std,
                                         resampler=config.resampler)
    if mode == "L" and config.grayscale is None:
        mode = "RGB"
        notes.append("grayscale images are converted to RGB for the pretrained backbone "
                     "(preprocessing mode RGB)")
    weights_cfg = pretrained.pretrained_config(config.arch or "")
    channels = 1 if mode == "L" else 3
    mean = config.mean or _per_channel(weights_cfg.get("mean"), channels)
    std = config.std or _per_channel(weights_cfg.get("std"), channels)
    interpolation = weights_cfg.get("interpolation", "bilinear")
    spec = PreprocessSpec.for_images(height, width, mode, resize=config.resize, mean=mean, std=std,
                                     resampler=config.resampler)
    if interpolation in ("bilinear", "bicubic"):
        spec = dataclasses.replace(spec, interpolation=interpolation)
    return spec


def _per_channel(values: Any, channels: int) -> tuple[float, ...] | None:
    """timm's RGB statistics for ``channels`` channels (their mean for grayscale input)."""
    if not values:
        return None
    values = tuple(float(v) for v in values)
    return values if channels == len(values) else (sum(values) / len(values),)
