"""Starting points and which layers learn: ``--from`` parents, pretrained backbones, layer groups
for ``--train-layers``, and frozen layers kept frozen (batch-norm statistics included)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from sqlvision.db.base import Backend
from sqlvision.errors import SqlvisionError
from sqlvision.models import architectures, registry
from sqlvision.models.bundle import weights_from_bytes
from sqlvision.models.pretrained import classifier_prefix
from sqlvision.preprocess import PreprocessSpec


@dataclass
class Parent:
    """A model to start from: its architecture, spec, classes and PyTorch weights."""

    ref: str
    architecture: str
    spec: PreprocessSpec | None
    classes: list[str] | None
    state: dict[str, Any]
    pretrained: bool = False  # its backbone holds pretrained (ImageNet) weights


def load_parent(backend: Backend, source: str, arch: str | None) -> Parent:
    """``--from``: a registered model (``name`` or ``name:version``) or a checkpoint file."""
    if os.path.isfile(source):
        import torch

        try:
            blob = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise SqlvisionError(f"cannot read checkpoint {source}: {str(exc).splitlines()[0]}",
                                 "give a checkpoint sqlvision wrote, or a PyTorch state dict") from exc
        if isinstance(blob, dict) and "model" in blob and "arch" in blob:
            config = blob.get("config") or {}
            return Parent(source, blob["arch"], PreprocessSpec.from_dict(blob["spec"]),
                          list(blob["classes"]), blob["model"], bool(config.get("pretrained")))
        if isinstance(blob, dict) and blob and all(hasattr(v, "shape") for v in blob.values()):
            if arch is None:
                raise SqlvisionError(f"{source} is a plain state dict", "name its --arch")
            return Parent(source, arch, None, None, blob)
        raise SqlvisionError(f"{source} is not a checkpoint", "give a .pt file written by sqlvision")
    bundle, weights = registry.load_trainable(backend, source)
    pretrained = bool(bundle.config.get("pretrained") or bundle.lineage.get("weights_source"))
    return Parent(bundle.ref, bundle.architecture, bundle.spec, bundle.classes,
                  weights_from_bytes(weights), pretrained)


def apply_parent(model: Any, parent: Parent, classes: list[str]) -> str:
    """Load the parent's weights; its head too when the classes are the same. Returns a note."""
    state = dict(parent.state)
    head_names = {n for n, _ in model.get_classifier().named_parameters()}
    same_classes = parent.classes == classes
    if not same_classes:
        prefix = classifier_prefix(model)
        state = {k: v for k, v in state.items() if not (prefix and k.startswith(prefix))}
    missing, unexpected = model.load_state_dict(state, strict=False)
    real_missing = [k for k in missing if not any(k.endswith(h) for h in head_names)]
    if real_missing or unexpected:
        raise SqlvisionError(
            f"weights of {parent.ref} do not fit {parent.architecture} here "
            f"(missing {real_missing[:3]}, unexpected {list(unexpected)[:3]})",
            "use the same --arch and color mode as the parent model")
    return "all layers" if same_classes else "all but the classifier (new classes)"


def layer_groups(model: Any) -> list[list[Any]]:
    """The model's parameters in groups from input to output, the classifier last.

    timm models: timm's own coarse groups (stem, each stage, head), as its layer-decay
    optimizers use them. Built-in CNNs: each convolution and batch norm, then the classifier.
    """
    import torch.nn as nn

    head = list(model.get_classifier().parameters())
    head_ids = {id(p) for p in head}
    if hasattr(model, "group_matcher"):
        from timm.models import group_parameters

        named = dict(model.named_parameters())
        grouped = group_parameters(model, model.group_matcher(coarse=True))
        groups = [[named[n] for n in names if id(named[n]) not in head_ids]
                  for names in grouped.values()]
    else:
        modules = model.features if hasattr(model, "features") else model.children()
        groups = [list(m.parameters()) for m in modules if isinstance(m, nn.Conv2d | nn.BatchNorm2d)]
    return [g for g in groups if g] + [head]


def freeze_layers(model: Any, spec: str) -> int:
    """``head``: train only the classifier; ``last:N``: the last N layer groups (the classifier
    counts as one); ``all``. Frozen batch norms keep their statistics (see :func:`train_mode`).
    Returns the number of trainable parameters."""
    groups = layer_groups(model)
    if spec == "all":
        keep = groups
    else:
        n = 1 if spec == "head" else int(spec.split(":")[1])
        if n > len(groups):
            raise SqlvisionError(f"--train-layers {spec}: {model.__class__.__name__} has "
                                 f"{len(groups)} layer groups", f"use last:{len(groups)} or all")
        keep = groups[-n:]
    trainable = {id(p) for group in keep for p in group}
    for p in model.parameters():
        p.requires_grad = id(p) in trainable
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train_mode(model: Any, *, frozen_norm: bool = False) -> None:
    """``model.train()``, except batch norms that stay in eval mode: those whose parameters are
    frozen (a frozen backbone keeps its pretrained statistics) and, with ``frozen_norm``, all of
    them (fine-tuning a pretrained network on a few thousand images: batch statistics of small,
    augmented batches would pull the layers away from what they learnt)."""
    import torch.nn as nn

    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if frozen_norm or (params and not any(p.requires_grad for p in params)):
                module.eval()


def build_network(arch: str, classes: int, channels: int, *, dropout: float,
                  pretrained_weights: bool, pretrained_file: str | None) -> tuple[Any, str | None]:
    """The network for a run and, when pretrained weights were loaded, where they came from."""
    from sqlvision.models import pretrained

    model = architectures.create(arch, classes, channels, drop_rate=dropout)
    if not pretrained_weights:
        return model, None
    if arch in architectures.builtin_architectures():
        raise SqlvisionError(f"{arch} has no published pretrained weights",
                             f"use a timm architecture such as {', '.join(pretrained.PACKAGED)}, "
                             "or --from a model")
    source = pretrained.load_pretrained(model, arch, pretrained_file)
    return model, source.describe()
