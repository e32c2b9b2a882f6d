"""Optimizer and learning-rate schedule factories, apart from the loop (as timm keeps them)."""

from __future__ import annotations

from typing import Any

from sqlvision.train.config import TrainConfig

ADAMW_LR = 3e-3
SGD_LR = 0.05
FINE_TUNE_SCALE = 0.3  # peak learning rate when starting from trained weights, relative


def peak_lr(config: TrainConfig, fine_tuning: bool) -> float:
    """``--lr``, else the optimizer's default, lowered when the network starts trained."""
    if config.lr:
        return config.lr
    base = SGD_LR if config.optimizer == "sgd" else ADAMW_LR
    return base * (FINE_TUNE_SCALE if fine_tuning else 1.0)


def param_groups(model: Any, lr: float, backbone_scale: float) -> list[dict[str, Any]]:
    """Trainable parameters as optimizer groups: the classifier at ``lr``, the rest at
    ``lr * backbone_scale`` (lower rates for pretrained layers keep what they learnt)."""
    head = {id(p) for p in model.get_classifier().parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    if backbone_scale == 1.0:
        return [{"params": trainable, "lr": lr}]
    groups = [{"params": [p for p in trainable if id(p) in head], "lr": lr},
              {"params": [p for p in trainable if id(p) not in head], "lr": lr * backbone_scale}]
    return [g for g in groups if g["params"]]


def build_optimizer(config: TrainConfig, groups: list[dict[str, Any]]) -> Any:
    """AdamW or SGD (Nesterov) over ``groups``, with the configured weight decay."""
    import torch

    if config.optimizer == "sgd":
        wd = 5e-4 if config.weight_decay is None else config.weight_decay
        return torch.optim.SGD(groups, momentum=config.momentum, weight_decay=wd, nesterov=True)
    wd = 0.01 if config.weight_decay is None else config.weight_decay
    return torch.optim.AdamW(groups, weight_decay=wd)


MIN_ONECYCLE_STEPS = 8  # 25% warm-up: at least two steps up, the rest down


def build_schedule(config: TrainConfig, optimizer: Any, total_steps: int) -> Any:
    """The ``--schedule`` over ``total_steps`` optimizer steps (each group peaks at its own lr).

    One-cycle needs a warm-up and a decay phase of at least one step each: a run shorter than
    :data:`MIN_ONECYCLE_STEPS` steps (a few images, large batches) decays by cosine instead."""
    import torch

    total = max(1, total_steps)
    peaks = [g["lr"] for g in optimizer.param_groups]
    if config.schedule == "onecycle" and total >= MIN_ONECYCLE_STEPS:
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=total,
                                                   pct_start=0.25)
    if config.schedule in ("cosine", "onecycle"):
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, total // 3), gamma=0.1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
