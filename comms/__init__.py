"""Gradient communication: builds the GradSync object the training loop talks to."""

from __future__ import annotations

import torch

from comms.config import CommsConfig


def build_grad_sync(config: CommsConfig, *, world_size: int, device: torch.device):
    if config.name == "ddp":
        from comms.ddp import DDPSync

        return DDPSync(config, world_size=world_size, device=device)
    raise ValueError(f"comms.name: unknown gradient sync {config.name!r}")
