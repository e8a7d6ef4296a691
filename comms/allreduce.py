"""Allreduce transports over torch.distributed: process groups from a Topology, and the
`ring` and `hierarchical` algorithms that sum a list of flat buffers asynchronously.
Every collective goes through comms/collectives.py (device checks, recording).

- `ring`: one all_reduce per buffer on the whole group (gloo/nccl pick their own ring or
  tree); the ops run on the backend's threads/streams, so launching returns at once.
- `hierarchical` (reduce/bcast): reduce to the node leader, allreduce among leaders,
  broadcast inside the node; only leaders cross the node boundary.
- `hierarchical` (2d, uniform nodes only): reduce-scatter inside the node, allreduce of each
  1/G shard among the ranks with the same local index on every node, allgather inside the
  node; every rank carries 1/G of the inter-node bytes.
The hierarchical stages depend on each other, so they form a pipeline over chunks of at
most `chunk_mb` (comms/pipeline.py). Every stage has a process group of its own (the first
and last intra-node stages use two groups over the same ranks): on nccl a communicator runs
its collectives one after another on one stream, so with a single intra group chunk c+1's
reduce would queue behind chunk c's broadcast, which waits for the leaders; two groups let
the stages of different chunks overlap.

Why the collectives match on every rank (no hang):
1. Every rank launches the same buffers in the same order (the sync's job: segments in
   plan order), and splits them into the same chunks.
2. Each group serves one stage, and every mode issues a stage's chunks in launch order, so
   each group sees the same sequence of collectives on all its members.
3. nccl asks for more when communicators share GPUs (NVIDIA/nccl#195, #1174): the same
   submission order *across* communicators on every rank, or kernels of different
   communicators can wait on each other in a cycle. So on nccl the pipeline is `ordered`:
   one thread (the caller: the autograd hook or `finish`) issues, for each launch, for each
   chunk, each stage, in that fixed order; each rank issues the subsequence of stages it
   takes part in, so any two collectives that two ranks share are issued in the same order
   by both. The dependencies between stages are stream dependencies (`work.wait()` under
   the stage's stream), so issuing everything up front never blocks the host.
4. On gloo a wait blocks the host, so each later stage has a thread of its own (threaded
   mode); gloo runs every group on its own connections, and (2) is all it needs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from comms.collectives import Collectives
from comms.pipeline import Handle, StagePipeline
from comms.topology import Topology

__all__ = ["CommGroups", "Handle", "HierarchicalAllreduce", "RingAllreduce", "build_groups",
           "split_chunks", "time_allreduce", "HIERARCHICAL_VARIANTS"]

HIERARCHICAL_VARIANTS = ("reduce_bcast", "2d")


@dataclass
class CommGroups:
    """This rank's process groups for a Topology (None where the group would be one rank)."""

    topology: Topology
    rank: int
    intra: dist.ProcessGroup | None
    leaders: dist.ProcessGroup | None
    cross: dist.ProcessGroup | None
    # A second group over the intra-node ranks for the last stage (broadcast/allgather), so
    # that the first and last stages never share a group's collective order.
    intra_out: dist.ProcessGroup | None = None
    comm: Collectives = field(default_factory=Collectives)

    @property
    def leader(self) -> int:
        return self.topology.leader_of(self.rank)


def build_groups(topology: Topology, *, cross: bool = False,
                 comm: Collectives | None = None) -> CommGroups:
    """Create the subgroups; every rank must call this with the same topology, since
    `new_group` is collective over the default group and must be entered in one order:
    intra (node by node), intra_out (node by node), leaders, then cross (local index by
    local index). Call it once per worker-group start (FusedSync does, at construction)."""
    comm = comm or Collectives()
    rank = dist.get_rank()
    assert topology.world_size == dist.get_world_size(), (topology, dist.get_world_size())
    mine: dict[str, dist.ProcessGroup | None] = {"intra": None, "leaders": None, "cross": None,
                                                  "intra_out": None}
    for key in ("intra", "intra_out"):
        for node in topology.nodes:
            group = comm.new_group(list(node))
            if rank in node and len(node) > 1:
                mine[key] = group
    group = comm.new_group(list(topology.leaders))
    if rank in topology.leaders and topology.num_nodes > 1:
        mine["leaders"] = group
    if cross and topology.num_nodes > 1:
        for ranks in topology.cross_groups():
            group = comm.new_group(list(ranks))
            if rank in ranks:
                mine["cross"] = group
    return CommGroups(topology=topology, rank=rank, comm=comm, **mine)


class RingAllreduce:
    """One all_reduce per buffer over the whole group (`comms=fused`); the backend runs
    its own ring (gloo) or ring/tree (nccl). One group, issued from one thread: ordered."""

    name = "ring"

    def __init__(self, *, group: dist.ProcessGroup | None = None,
                 comm: Collectives | None = None):
        self.group, self.comm = group, comm or Collectives()

    def launch(self, tensors: Sequence[torch.Tensor]) -> Handle:
        # On nccl the collective's stream waits on the caller's stream (the gradients).
        return Handle(works=[self.comm.all_reduce(t, group=self.group, async_op=True)
                             for t in tensors])

    def describe(self) -> dict:
        return {"algorithm": self.name}

    def close(self) -> None:
        pass


class HierarchicalAllreduce:
    name = "hierarchical"

    def __init__(self, groups: CommGroups, *, variant: str = "reduce_bcast",
                 chunk_mb: float = 4.0, ordered: bool | None = None):
        # The schema (comms/config.py) checked the variant and chunk; the topology is
        # known only now.
        assert variant in HIERARCHICAL_VARIANTS and chunk_mb > 0, (variant, chunk_mb)
        if variant == "2d" and not groups.topology.is_uniform:
            raise ValueError("comms.variant=2d needs the same number of ranks on every node; "
                             f"got nodes {groups.topology.describe()['nodes']}")
        self.groups, self.variant, self.chunk_mb = groups, variant, chunk_mb
        self.comm = groups.comm
        # nccl needs one issue order across communicators (see the module docstring).
        self.ordered = dist.get_backend() == "nccl" if ordered is None else ordered
        # 2d chunks must split evenly over the ranks of a node.
        self._multiple = len(groups.topology.nodes[0]) if variant == "2d" else 1
        self._shards: dict[tuple[int, int], torch.Tensor] = {}
        stages = self._stages_2d() if variant == "2d" else self._stages_reduce_bcast()
        self.pipeline = StagePipeline(stages, device=self.comm.device, ordered=self.ordered)

    def launch(self, tensors: Sequence[torch.Tensor]) -> Handle:
        chunks = [c for t in tensors for c in split_chunks(
            t, max_bytes=self.chunk_mb * 2**20, multiple=self._multiple)]
        if self.variant == "2d" and self.groups.intra is not None:
            for chunk in chunks:  # allocated here, on the caller's stream, and kept
                self._shard(chunk)
        return self.pipeline.submit(chunks)

    def _stages_reduce_bcast(self) -> list[Callable]:
        g, comm = self.groups, self.comm
        reduce = (lambda t: comm.reduce(t, dst=g.leader, group=g.intra, async_op=True)) \
            if g.intra else None
        across = (lambda t: comm.all_reduce(t, group=g.leaders, async_op=True)) \
            if g.leaders else None
        bcast = (lambda t: comm.broadcast(t, src=g.leader, group=g.intra_out, async_op=True)) \
            if g.intra else None
        return [stage for stage in (reduce, across, bcast) if stage is not None]

    def _shard(self, t: torch.Tensor) -> torch.Tensor:
        # A persistent scratch shard per chunk: the reduce-scatter output must not alias
        # its input, and a persistent tensor needs no record_stream on the side streams.
        size = len(self.groups.topology.nodes[0])
        key = (t.data_ptr(), t.numel())
        shard = self._shards.get(key)
        if shard is None:
            assert t.numel() % size == 0, "2d chunks are a multiple of ranks per node"
            shard = self._shards[key] = t.new_empty(t.numel() // size)
        return shard

    def _stages_2d(self) -> list[Callable]:
        g, comm = self.groups, self.comm
        if g.intra is None:  # one rank per node: the 2-D variant is a flat allreduce
            return [lambda t: comm.all_reduce(t, group=g.cross, async_op=True)]
        stages = [lambda t: comm.reduce_scatter(self._shard(t), t, group=g.intra,
                                                async_op=True)]
        if g.cross is not None:
            stages.append(lambda t: comm.all_reduce(self._shard(t), group=g.cross,
                                                    async_op=True))
        stages.append(lambda t: comm.all_gather(t, self._shard(t), group=g.intra_out,
                                                async_op=True))
        return stages

    def describe(self) -> dict:
        return {"algorithm": self.name, "variant": self.variant, "chunk_mb": self.chunk_mb,
                "ordered": self.ordered}

    def close(self) -> None:
        self.pipeline.close()


def split_chunks(tensor: torch.Tensor, *, max_bytes: float, multiple: int = 1) -> list:
    """Views of a flat tensor, each at most max_bytes (at least `multiple` elements) and a
    multiple of `multiple` elements; a tensor that fits is returned whole."""
    per_chunk = max(multiple, int(max_bytes // tensor.element_size()) // multiple * multiple)
    if tensor.numel() <= per_chunk:
        return [tensor]
    return list(tensor.split(per_chunk))


def time_allreduce(algorithm, *, numels: Sequence[int], repeats: int, dtype=torch.float32,
                   device: torch.device | None = None) -> list[float]:
    """Median seconds to allreduce one buffer of each size with `algorithm` (calibration)."""
    comm = getattr(algorithm, "comm", None) or Collectives(device)
    device = device if device is not None else comm.device
    results = []
    for numel in numels:
        buffer = torch.ones(numel, dtype=dtype, device=device)
        samples = []
        for _ in range(repeats + 1):  # the first one warms up the connections
            comm.barrier()
            start = time.perf_counter()
            algorithm.launch([buffer]).wait()
            if buffer.is_cuda:
                torch.cuda.synchronize(buffer.device)
            samples.append(time.perf_counter() - start)
        results.append(sorted(samples[1:])[len(samples[1:]) // 2])
    return results
