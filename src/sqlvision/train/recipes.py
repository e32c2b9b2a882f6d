"""Training recipes: what ``train`` does when the user leaves a choice open.

Three recipes, picked from the images and the weights this machine has:

- ``small-images``: images up to 64 px (Fashion-MNIST, MNIST, defect patches): the built-in
  ``sv_cnn`` at the images' own size, squashed, light augmentation, 10 epochs.
- ``fine-tune``: larger images (photos) with pretrained weights at hand (packaged ImageNet
  weights, ``--pretrained``, or a pretrained ``--from`` model): ``tf_efficientnet_lite0`` at its
  native 224 px, center-cropped, photo augmentation; first the new classifier is fitted by
  logistic regression on the frozen network's features, then the last four layer groups train
  with it for 6 epochs of 32, pretrained layers at 0.3x the classifier's learning rate, batch
  norms at their pretrained statistics.
- ``from-scratch``: photos without pretrained weights: ``sv_cnn`` at 64 px, squashed, photo
  augmentation, 10 epochs.

Every field the user sets (``--arch``, ``--epochs``, ``--image-size``, ...) wins over the
recipe's; the chosen recipe and why are printed at the start of the run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sqlvision.models import architectures, pretrained
from sqlvision.train.config import TrainConfig

SMALL_IMAGE = 64  # images at most this large (longer side) train at their own size
PHOTO_ARCH = "tf_efficientnet_lite0"


@dataclass(frozen=True)
class Recipe:
    """Defaults for the fields a run leaves open."""

    name: str
    arch: str
    image_size: int | None  # None: the images' own size (small images); else the square side
    resize: str
    augment: str
    epochs: int
    train_layers: str
    head_epochs: int = 0  # epochs of the classifier alone before ``train_layers`` train
    probe: bool = False  # start the classifier from a logistic regression on frozen features
    pretrained: bool = False
    backbone_lr_scale: float = 1.0  # learning rate of pretrained layers relative to the head's
    frozen_norm: bool = False  # batch norms keep their pretrained statistics (eval mode) throughout
    batch_size: int = 64

    def describe(self) -> str:
        """One line, used in the docs, ``--help`` and the run's first message."""
        size = "the images' own size" if self.image_size is None else f"{self.image_size} px"
        weights = "ImageNet weights, " if self.pretrained else ""
        first = ("classifier fitted on the frozen features" if self.probe else
                 f"classifier alone for {self.head_epochs} epoch" if self.head_epochs else "")
        stages = f"{first}, then {self.train_layers}" if first else f"{self.train_layers} layers"
        return (f"{self.name}: {self.arch} at {size} ({self.resize}), {weights}{self.augment} "
                f"augmentation, {self.epochs} epochs of {self.batch_size}, {stages}")


SMALL_IMAGES = Recipe("small-images", architectures.DEFAULT_ARCH, None, "squash", "light", 10, "all")
FINE_TUNE = Recipe("fine-tune", PHOTO_ARCH, 224, "crop", "standard", 6, "last:4", probe=True,
                   pretrained=True, backbone_lr_scale=0.3, frozen_norm=True, batch_size=32)
FROM_SCRATCH = Recipe("from-scratch", architectures.DEFAULT_ARCH, 64, "squash", "standard", 10, "all")
RECIPES = (SMALL_IMAGES, FINE_TUNE, FROM_SCRATCH)


@dataclass(frozen=True)
class ImageSample:
    """What a sample of the training images looks like."""

    height: int
    width: int
    mode: str  # "L" only when every sampled image is grayscale

    @property
    def small(self) -> bool:
        return max(self.height, self.width) <= SMALL_IMAGE


@dataclass(frozen=True)
class Choice:
    """The recipe a run follows, why, and the configuration with every open field filled."""

    recipe: Recipe
    reason: str
    config: TrainConfig

    def message(self) -> str:
        """The recipe as this run follows it (the user's settings applied), and why."""
        c = self.config
        size = "x".join(map(str, c.image_size)) if c.image_size else "the parent's size"
        first = ("classifier fitted on the frozen features, then " if c.probe else
                 f"classifier alone for {c.head_epochs} epochs, then " if c.head_epochs else "")
        weights = ", pretrained weights" if c.pretrained else ""
        return (f"recipe {self.recipe.name} ({self.reason}): {c.arch} at {size}{weights}, "
                f"{c.augment} augmentation, {c.epochs} epochs, {first}{c.train_layers} layers")


def choose(config: TrainConfig, sample: ImageSample, *, parent_arch: str | None = None,
           parent_pretrained: bool = False) -> Choice:
    """The recipe for ``config`` on images like ``sample`` (``parent_*``: the ``--from`` model,
    whose preprocessing the run keeps: then size and resize are not filled in)."""
    arch = config.arch or parent_arch
    if config.pretrained is False and not parent_pretrained:
        recipe, reason = _without_weights(sample, "--no-pretrained")
    elif parent_arch is not None:
        if parent_pretrained and not sample.small:
            recipe, reason = FINE_TUNE, f"photos, starting from a pretrained {parent_arch}"
        else:
            recipe, reason = _without_weights(sample, f"starting from a {parent_arch} model")
    elif config.pretrained or config.pretrained_file:
        recipe, reason = FINE_TUNE, "--pretrained" if config.pretrained else "--pretrained-file"
    elif sample.small:
        recipe, reason = SMALL_IMAGES, f"images of {sample.width}x{sample.height} px"
    else:
        candidate = arch or PHOTO_ARCH
        sources = pretrained.available_sources(candidate) if _is_timm(candidate) else []
        if sources:
            recipe = FINE_TUNE
            reason = (f"photos of about {sample.width}x{sample.height} px, and ImageNet weights "
                      f"for {candidate} from {sources[0].describe()}")
        else:
            recipe, reason = _without_weights(sample, f"no pretrained weights for {candidate} "
                                                      "on this machine")
    return Choice(recipe, reason, fill(config, recipe, sample, arch, sized=parent_arch is None))


def _without_weights(sample: ImageSample, why: str) -> tuple[Recipe, str]:
    if sample.small:
        return SMALL_IMAGES, f"images of {sample.width}x{sample.height} px, {why}"
    return FROM_SCRATCH, f"photos of about {sample.width}x{sample.height} px, {why}"


def _is_timm(arch: str) -> bool:
    return arch not in architectures.builtin_architectures()


def fill(config: TrainConfig, recipe: Recipe, sample: ImageSample, arch: str | None, *,
         sized: bool = True) -> TrainConfig:
    """``config`` with each open field taken from ``recipe``; given fields are kept (and with
    ``sized`` false, image size and resize stay open: they come from a parent's spec)."""
    size: tuple[int, int] = ((sample.height, sample.width) if recipe.image_size is None
                             else (recipe.image_size, recipe.image_size))
    chosen_arch = arch or recipe.arch
    if recipe.pretrained and recipe.image_size is not None and config.image_size is None:
        size = native_size(chosen_arch) or size
    defaults: dict[str, Any] = {
        "arch": chosen_arch, "epochs": recipe.epochs, "augment": recipe.augment,
        "train_layers": recipe.train_layers, "head_epochs": recipe.head_epochs,
        "probe": recipe.probe, "batch_size": recipe.batch_size,
        "pretrained": recipe.pretrained,
        **({"image_size": size, "resize": recipe.resize} if sized else {}),
    }
    filled = {k: v for k, v in defaults.items() if getattr(config, k) is None}
    if config.pretrained is True and config.arch is None and arch is None:
        filled["arch"] = recipe.arch
    return dataclasses.replace(config, **filled).validate()


def native_size(arch: str) -> tuple[int, int] | None:
    """The input size ``arch``'s pretrained weights were trained at (timm's config)."""
    cfg = pretrained.pretrained_config(arch)
    size = cfg.get("input_size")
    return (int(size[1]), int(size[2])) if size else None
