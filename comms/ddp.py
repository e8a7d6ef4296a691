"""`comms=ddp`: torch DistributedDataParallel behind the loop's GradSync interface.

DDP already fuses gradients into buckets (`comms.fusion_threshold_mb` -> bucket_cap_mb)
and overlaps each bucket's allreduce with the rest of backward; `comms.compress` maps to
its fp16/bf16 compression hooks. It has no hierarchy and no cost model: those are
`comms=fused|hierarchical`.
"""

from __future__ import annotations

import contextlib

import torch
from torch.nn.parallel import DistributedDataParallel

from comms.collectives import all_reduce_sum
from comms.config import DDPConfig


class DDPSync:
    """DDP as a `comms.protocol.GradSync`."""

    def __init__(self, config: DDPConfig, *, world_size: int, device: torch.device):
        self.config = config
        self.world_size = world_size
        self.device = device
        self._ddp: DistributedDataParallel | None = None

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """Return the module to run forward/backward on (gradients averaged in backward)."""
        if self.world_size == 1:
            return model
        ddp = DistributedDataParallel(
            model,
            device_ids=[self.device] if self.device.type == "cuda" else None,
            bucket_cap_mb=self.config.fusion_threshold_mb,
            # Gradients live inside the fused buckets: no copy in or out per step.
            gradient_as_bucket_view=True,
        )
        if self.config.compress != "none":
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

            hook = {"fp16": default_hooks.fp16_compress_hook,
                    "bf16": default_hooks.bf16_compress_hook}[self.config.compress]
            ddp.register_comm_hook(state=None, hook=hook)
        self._ddp = ddp
        return ddp

    def finish(self) -> None:
        """Nothing left to wait for: DDP finished the allreduce inside backward."""

    def describe(self) -> dict:
        """JSON-friendly description for the run's metrics and summary (`comms`)."""
        return {"name": "ddp", "world_size": self.world_size,
                "fusion_threshold_mb": self.config.fusion_threshold_mb,
                "compress": self.config.compress, "algorithm": {"algorithm": "ddp"}}

    def no_sync(self):
        """DDP's own no_sync: backward accumulates locally, the next one communicates."""
        return self._ddp.no_sync() if self._ddp is not None else contextlib.nullcontext()

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(values, world_size=self.world_size)

    def close(self) -> None:
        # DDP's reducer and its hooks go with the module; drop our reference to it.
        self._ddp = None
