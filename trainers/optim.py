"""Builds the optimizer (`optim=lars|sgd`) over the same parameter groups, so the
baseline and LARS differ only in the update rule."""

from __future__ import annotations

import torch

from trainers.config import OptimConfig
from trainers.lars import LARS, lars_param_groups


def build_optimizer(config: OptimConfig, *, model: torch.nn.Module,
                    upcast: bool = True) -> torch.optim.Optimizer:
    """`upcast=False`: LARS updates in the parameters' dtype (the fp16_pure ablation)."""
    groups = lars_param_groups(
        model, weight_decay=config.weight_decay, exclude_bn_bias=config.exclude_bn_bias
    )
    if config.name == "lars":
        return LARS(
            groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
            trust_coefficient=config.trust_coefficient, eps=config.eps, upcast=upcast,
        )
    # torch SGD keeps unknown group keys (lars_exclude, name) and ignores them; the
    # excluded group already carries weight_decay=0.
    return torch.optim.SGD(
        groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
        foreach=True,
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
