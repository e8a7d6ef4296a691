"""Small collectives every sync shares (metrics sums), in one place."""

from __future__ import annotations

import torch
import torch.distributed as dist


def all_reduce_sum(values: torch.Tensor, *, world_size: int) -> torch.Tensor:
    """Sum `values` over all ranks in place (a no-op on one rank); returned for chaining."""
    if world_size > 1 and dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values
