"""The one interface between the per-rank trainer and gradient communication.

The trainer wraps its model once, runs forward/backward on what `wrap` returned, calls
`finish` before the optimizer step, `sync_buffers` on every rank before evaluating and
before writing a checkpoint, and `close` when it ends (failures included). Every
sync (`ddp`, `fused`, `hierarchical`) implements all of it; nothing probes with hasattr.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class GradSync(Protocol):
    def wrap(self, model: nn.Module) -> nn.Module:
        """Make every rank start from rank 0's state; return the module to train, whose
        backward averages the gradients over the ranks (completed by `finish`)."""
        ...

    def finish(self) -> None:
        """Wait for this step's gradient communication; each param.grad is then the
        average over ranks. Does nothing inside `no_sync`."""
        ...

    def no_sync(self) -> AbstractContextManager:
        """Gradient accumulation: backward passes inside accumulate locally, with no
        communication; the first backward after it communicates the accumulated sum."""
        ...

    def sync_buffers(self, model: nn.Module) -> None:
        """Make every rank's buffers (BatchNorm running statistics) rank 0's, in one
        collective per dtype. Training lets them drift apart (they are written, never read,
        in training mode); call it on every rank (it is collective) before evaluation and
        before a checkpoint is written."""
        ...

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a small metrics tensor over all ranks, in place (returned for chaining); it
        must be on the sync's device (on nccl: the rank's GPU)."""
        ...

    def describe(self) -> dict:
        """JSON-friendly description for the run's metrics and summary (`comms`)."""
        ...

    def close(self) -> None:
        """Release hooks and stage threads (process groups go with the worker); safe to call twice."""
        ...
