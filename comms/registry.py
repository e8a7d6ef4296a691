"""The gradient syncs by name (`comms=`): each name's schema and builder.

`job/config.py` checks a composed `comms` section against this table (the name and the
schema must agree), and `build_grad_sync` builds from it, so both read one list.
"""

from __future__ import annotations

import torch

from common.registry import Registry
from comms.config import CommsConfig, DDPConfig, FusedConfig, HierarchicalConfig
from comms.protocol import GradSync

SYNCS = Registry("gradient sync", key="comms.name")


@SYNCS("ddp", schema=DDPConfig)
def _ddp(config: DDPConfig, *, world_size: int, device: torch.device) -> GradSync:
    from comms.ddp import DDPSync

    return DDPSync(config, world_size=world_size, device=device)


@SYNCS("fused", schema=FusedConfig)
@SYNCS("hierarchical", schema=HierarchicalConfig)
def _fused(config: FusedConfig, *, world_size: int, device: torch.device) -> GradSync:
    from comms.sync import FusedSync

    return FusedSync(config, world_size=world_size, device=device)


def build_grad_sync(config: CommsConfig, *, world_size: int, device: torch.device) -> GradSync:
    return SYNCS.build(config.name, config=config, world_size=world_size, device=device)
