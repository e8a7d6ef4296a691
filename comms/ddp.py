"""`comms=ddp`: torch DistributedDataParallel behind the loop's GradSync interface.

DDP already fuses gradients into buckets (`comms.fusion_threshold_mb` -> bucket_cap_mb)
and overlaps each bucket's allreduce with the rest of backward; `comms.compress` maps to
its fp16/bf16 compression hooks. It has no hierarchy and no cost model: those are
`comms=fused|hierarchical`.

Buffers: DDP's own per-forward buffer broadcast is turned off and `sync_buffers` does the
same coalesced broadcast as the fused syncs, before evaluation and checkpoints. Rank 0's
statistics, and so the checkpoint, are unchanged by this (see comms/buffers.py); every rank
now evaluates with rank 0's statistics (with the per-forward broadcast, rank r > 0 held
rank 0's plus its own last update), and all three syncs behave alike.
"""

from __future__ import annotations

import contextlib
import inspect

import torch
from torch.nn.parallel import DistributedDataParallel

from comms.buffers import sync_buffers
from comms.collectives import Collectives
from comms.config import DDPConfig

# torch >= 2.13 renamed broadcast_buffers (and its False no longer skips the init sync).
_NO_FORWARD_SYNC = ({"forward_sync_buffers": False}
                    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                    else {"broadcast_buffers": False})


class DDPSync:
    """DDP as a `comms.protocol.GradSync`."""

    def __init__(self, config: DDPConfig, *, world_size: int, device: torch.device):
        self.config = config
        self.world_size = world_size
        self.device = device
        self.comm = Collectives(device)
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
            **_NO_FORWARD_SYNC,
        )
        if "broadcast_buffers" in _NO_FORWARD_SYNC:
            # Older torch's broadcast_buffers=False also skips the buffers at init: start
            # from rank 0's buffers either way.
            self.sync_buffers(model)
        if self.config.compress != "none":
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

            hook = {"fp16": default_hooks.fp16_compress_hook,
                    "bf16": default_hooks.bf16_compress_hook}[self.config.compress]
            ddp.register_comm_hook(state=None, hook=hook)
        self._ddp = ddp
        return ddp

    def finish(self) -> None:
        """Nothing left to wait for: DDP finished the allreduce inside backward."""

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Every rank's buffers := rank 0's (before evaluation and checkpoints)."""
        sync_buffers(model, comm=self.comm, world_size=self.world_size)

    def describe(self) -> dict:
        """JSON-friendly description for the run's metrics and summary (`comms`)."""
        return {"name": "ddp", "world_size": self.world_size,
                "fusion_threshold_mb": self.config.fusion_threshold_mb,
                "compress": self.config.compress, "algorithm": {"algorithm": "ddp"}}

    def no_sync(self):
        """DDP's own no_sync: backward accumulates locally, the next one communicates."""
        return self._ddp.no_sync() if self._ddp is not None else contextlib.nullcontext()

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        return self.comm.all_reduce_sum(values, world_size=self.world_size)

    def close(self) -> None:
        # DDP's reducer and its hooks go with the module; drop our reference to it.
        self._ddp = None
