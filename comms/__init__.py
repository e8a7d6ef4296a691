"""Gradient communication: builds the GradSync object the training loop talks to.

`comms=ddp` is torch DistributedDataParallel; `comms=fused` (flat) and
`comms=hierarchical` are our fused, segmented, overlapped allreduce (comms/sync.py).
"""

from __future__ import annotations

import torch

from comms.config import CommsConfig


def build_grad_sync(config: CommsConfig, *, world_size: int, device: torch.device):
    if config.name == "ddp":
        from comms.ddp import DDPSync

        return DDPSync(config, world_size=world_size, device=device)
    if config.name in ("fused", "hierarchical"):
        from comms.sync import FusedSync

        return FusedSync(config, world_size=world_size, device=device)
    raise ValueError(f"comms.name: unknown gradient sync {config.name!r}")
