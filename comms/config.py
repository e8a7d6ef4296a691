"""Config schemas of gradient communication, one per option of `comms=`.

`ddp` has the keys DDP reads; `fused` adds our segmented overlap; `hierarchical` adds the
topology and its stage pipeline. A key that the chosen option does not read is not in its
schema, so setting it fails at composition with the key's name instead of being ignored.
Each schema checks its values when built (`__post_init__`).
"""

from __future__ import annotations

from dataclasses import dataclass

from common.validation import require

VARIANT_NAMES = ("auto", "reduce_bcast", "2d")
SPLIT_NAMES = ("auto", "bytes")
COMPRESS_NAMES = ("none", "fp16", "bf16")


@dataclass
class CommsConfig:
    """What every sync reads. `name` is the option (`comms=`); comms/registry.py maps it
    to this schema's subclass and its builder."""

    name: str = "ddp"
    # Gradient fusion: bucket size in MB (for ddp: DistributedDataParallel's bucket_cap_mb).
    fusion_threshold_mb: float = 25.0
    # Wire compression of gradients: cast to fp16/bf16 for the allreduce, back to fp32 after.
    compress: str = "none"
    # torch.distributed backend (null: nccl on GPU, gloo on CPU).
    backend: str | None = None

    def __post_init__(self) -> None:
        require(self.fusion_threshold_mb > 0,
                f"comms.fusion_threshold_mb must be > 0, got {self.fusion_threshold_mb}")
        require(self.compress in COMPRESS_NAMES,
                f"comms.compress must be one of {', '.join(COMPRESS_NAMES)}, got {self.compress!r}")
        require(self.backend in (None, "gloo", "nccl"),
                f"comms.backend must be gloo, nccl or null, got {self.backend!r}")


@dataclass
class DDPConfig(CommsConfig):
    """`comms=ddp`: torch DistributedDataParallel (overlaps per bucket, no hierarchy)."""

    name: str = "ddp"


@dataclass
class FusedConfig(CommsConfig):
    """`comms=fused`: our fused buckets, allreduced per segment as backward fills them."""

    name: str = "fused"
    # Fused segments whose allreduce overlaps backward.
    segments: int = 2
    # Where the segments split: auto (after the second step, the cost model picks the split
    # from that step's measured bucket-ready times, CUDA events on GPU, and the allreduce
    # time line measured at wrap; the first step is warm-up), bytes (equal bytes per
    # segment).
    split: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.segments >= 1, f"comms.segments must be >= 1, got {self.segments}")
        require(self.split in SPLIT_NAMES,
                f"comms.split must be one of {', '.join(SPLIT_NAMES)}, got {self.split!r}")


@dataclass
class HierarchicalConfig(FusedConfig):
    """`comms=hierarchical`: reduce inside each node, allreduce among node leaders,
    broadcast; the stages pipeline over chunks."""

    name: str = "hierarchical"
    # Ranks per node (null: from the Ray node ids).
    ranks_per_node: int | None = None
    # reduce_bcast (reduce to the node leader, leaders allreduce, broadcast), 2d
    # (reduce-scatter, per-shard allreduce across nodes, allgather; equal ranks per node),
    # auto (on nccl: 2d when nodes are equal and both levels exist, else nccl's own
    # allreduce over the whole group, as comms=fused; on gloo: reduce_bcast).
    variant: str = "auto"
    # The stages pipeline over chunks of at most this many MB, so the intra-node reduce and
    # broadcast of one chunk overlap the inter-node allreduce of others (BENCHMARKS.md, 2
    # emulated hosts at 1 Gbit/s: 0.73-0.78x flat before, 0.69x with 4 MB chunks; the
    # leaders' transfer alone is 0.66x). Many nodes make each chunk pay the leaders' ring
    # latency: launch/plan.py picks a size for a large cluster.
    pipeline_chunk_mb: float = 4.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.ranks_per_node is None or self.ranks_per_node >= 1,
                f"comms.ranks_per_node must be >= 1 or null, got {self.ranks_per_node}")
        require(self.variant in VARIANT_NAMES,
                f"comms.variant must be one of {', '.join(VARIANT_NAMES)}, got {self.variant!r}")
        require(self.pipeline_chunk_mb > 0,
                f"comms.pipeline_chunk_mb must be > 0, got {self.pipeline_chunk_mb}")
