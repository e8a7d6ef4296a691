"""Config schema of the gradient-communication component (`comms=`)."""

from __future__ import annotations

from dataclasses import dataclass

from trainers.config import require

COMMS_NAMES = ("ddp",)
COMPRESS_NAMES = ("none", "fp16", "bf16")


@dataclass
class CommsConfig:
    name: str = "ddp"
    # Gradient fusion: bucket size in MB (for ddp: DistributedDataParallel's bucket_cap_mb).
    fusion_threshold_mb: float = 25.0
    # Fused segments whose allreduce overlaps backward (fused/hierarchical only).
    segments: int = 2
    # Ranks per node for hierarchical groups (null: from the Ray node ids).
    ranks_per_node: int | None = None
    # Wire compression of gradients: cast to fp16/bf16 for the allreduce, back to fp32 after.
    compress: str = "none"
    # torch.distributed backend (null: nccl on GPU, gloo on CPU).
    backend: str | None = None

    def validate(self) -> None:
        require(
            self.name in COMMS_NAMES,
            f"comms.name: unknown gradient sync {self.name!r}; known: {', '.join(COMMS_NAMES)}",
        )
        require(
            self.fusion_threshold_mb > 0,
            f"comms.fusion_threshold_mb must be > 0, got {self.fusion_threshold_mb}",
        )
        require(self.segments >= 1, f"comms.segments must be >= 1, got {self.segments}")
        require(
            self.ranks_per_node is None or self.ranks_per_node >= 1,
            f"comms.ranks_per_node must be >= 1 or null, got {self.ranks_per_node}",
        )
        require(
            self.compress in COMPRESS_NAMES,
            f"comms.compress must be one of {', '.join(COMPRESS_NAMES)}, got {self.compress!r}",
        )
        require(
            self.backend in (None, "gloo", "nccl"),
            f"comms.backend must be gloo, nccl or null, got {self.backend!r}",
        )
