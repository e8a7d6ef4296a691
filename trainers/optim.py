"""Optimizers by name (`optim=lars|sgd`): each name's schema and builder in one registry,
over the same parameter groups, so the baseline and LARS differ only in the update rule.

Every optimizer schema extends `OptimConfig`, which extends the LR schedule's keys
(`ScheduleConfig`) and the loss's (`LossConfig`): users type them all under `optim.`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from common.registry import Registry
from common.validation import require
from trainers.lars import LARS, lars_param_groups
from trainers.schedule import ScheduleConfig


@dataclass
class LossConfig:
    # Cross-entropy label smoothing.
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        require(0 <= self.label_smoothing < 1,
                f"optim.label_smoothing must be in [0, 1), got {self.label_smoothing}")


@dataclass
class OptimConfig(ScheduleConfig, LossConfig):
    """What every optimizer reads; `name` picks the entry of OPTIMIZERS."""

    name: str = "lars"
    momentum: float = 0.9
    # On weights only when exclude_bn_bias (not on biases or BN gamma/beta).
    weight_decay: float = 5e-4
    # No weight decay and no trust ratio on 1-D tensors (biases, BN gamma/beta).
    exclude_bn_bias: bool = True

    def __post_init__(self) -> None:
        ScheduleConfig.__post_init__(self)
        LossConfig.__post_init__(self)
        require(0 <= self.momentum < 1, f"optim.momentum must be in [0, 1), got {self.momentum}")
        require(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}")


@dataclass
class LarsConfig(OptimConfig):
    name: str = "lars"
    lr: float = 10.0
    # LARS eta and the trust ratio's denominator epsilon.
    trust_coefficient: float = 0.001
    eps: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.trust_coefficient > 0,
                f"optim.trust_coefficient must be > 0, got {self.trust_coefficient}")
        require(self.eps >= 0, f"optim.eps must be >= 0, got {self.eps}")


@dataclass
class SgdConfig(OptimConfig):
    name: str = "sgd"
    lr: float = 0.2


OPTIMIZERS = Registry("optimizer", key="optim.name")


@OPTIMIZERS("lars", schema=LarsConfig)
def _lars(config: LarsConfig, *, groups: list, upcast: bool) -> torch.optim.Optimizer:
    return LARS(groups, lr=config.lr, momentum=config.momentum,
                weight_decay=config.weight_decay, trust_coefficient=config.trust_coefficient,
                eps=config.eps, upcast=upcast)


@OPTIMIZERS("sgd", schema=SgdConfig)
def _sgd(config: SgdConfig, *, groups: list, upcast: bool) -> torch.optim.Optimizer:
    del upcast  # torch SGD updates in the parameters' dtype
    # torch SGD keeps unknown group keys (lars_exclude, name) and ignores them; the
    # excluded group already carries weight_decay=0.
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay, foreach=True)


def build_optimizer(config: OptimConfig, *, model: torch.nn.Module,
                    upcast: bool = True) -> torch.optim.Optimizer:
    """`upcast=False`: LARS updates in the parameters' dtype (the fp16_pure ablation)."""
    groups = lars_param_groups(model, weight_decay=config.weight_decay,
                               exclude_bn_bias=config.exclude_bn_bias)
    return OPTIMIZERS.build(config.name, config=config, groups=groups, upcast=upcast)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
