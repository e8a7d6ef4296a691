"""Allreduce transports over torch.distributed: process groups from a Topology, and the
`flat` and `hierarchical` algorithms that sum a list of flat buffers asynchronously.

- `flat`: one all_reduce per buffer on the whole group (gloo/nccl pick their own ring or
  tree); the ops run on the backend's threads/streams, so launching returns at once.
- `hierarchical` (reduce/bcast): reduce to the node leader, allreduce among leaders,
  broadcast inside the node; only leaders cross the node boundary.
- `hierarchical` (2d, uniform nodes only): reduce-scatter inside the node, allreduce of each
  1/G shard among the ranks with the same local index on every node, allgather inside the
  node; every rank carries 1/G of the inter-node bytes.
The hierarchical stages depend on each other, so they run on one background thread per
algorithm (the caller only enqueues); buffers are processed stage by stage so the stages of
different buffers pipeline. Every rank launches buffers in the same order (the caller's
job), which keeps the collectives matched.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.distributed as dist

from comms.topology import Topology

HIERARCHICAL_VARIANTS = ("reduce_bcast", "2d")


@dataclass
class CommGroups:
    """This rank's process groups for a Topology (None where the group would be one rank)."""

    topology: Topology
    rank: int
    intra: dist.ProcessGroup | None
    leaders: dist.ProcessGroup | None
    cross: dist.ProcessGroup | None

    @property
    def leader(self) -> int:
        return self.topology.leader_of(self.rank)

    @property
    def local_rank(self) -> int:
        return self.topology.node_of(self.rank).index(self.rank)


def build_groups(topology: Topology, *, cross: bool = False) -> CommGroups:
    """Create the subgroups; every rank must call this with the same topology, since
    `new_group` is collective over the default group and must be entered in one order."""
    rank = dist.get_rank()
    assert topology.world_size == dist.get_world_size(), (topology, dist.get_world_size())
    mine: dict[str, dist.ProcessGroup | None] = {"intra": None, "leaders": None, "cross": None}
    for node in topology.nodes:
        group = dist.new_group(list(node))
        if rank in node and len(node) > 1:
            mine["intra"] = group
    group = dist.new_group(list(topology.leaders))
    if rank in topology.leaders and topology.num_nodes > 1:
        mine["leaders"] = group
    if cross and topology.num_nodes > 1:
        for ranks in topology.cross_groups():
            group = dist.new_group(list(ranks))
            if rank in ranks:
                mine["cross"] = group
    return CommGroups(topology=topology, rank=rank, **mine)


class Handle:
    """Completion of one launched list of buffers (wraps backend works or a future)."""

    def __init__(self, *, works: Sequence = (), future: Future | None = None):
        self.works, self.future = list(works), future

    def wait(self) -> None:
        for work in self.works:
            work.wait()
        if self.future is not None:
            self.future.result()


class FlatAllreduce:
    name = "flat"

    def __init__(self, *, group: dist.ProcessGroup | None = None):
        self.group = group

    def launch(self, tensors: Sequence[torch.Tensor]) -> Handle:
        return Handle(works=[dist.all_reduce(t, group=self.group, async_op=True) for t in tensors])

    def describe(self) -> dict:
        return {"algorithm": self.name}

    def close(self) -> None:
        pass


class HierarchicalAllreduce:
    name = "hierarchical"

    def __init__(self, groups: CommGroups, *, variant: str = "reduce_bcast"):
        if variant not in HIERARCHICAL_VARIANTS:
            raise ValueError(f"comms.variant must be one of {', '.join(HIERARCHICAL_VARIANTS)}, "
                             f"got {variant!r}")
        if variant == "2d" and not groups.topology.is_uniform:
            raise ValueError("comms.variant=2d needs the same number of ranks on every node; "
                             f"got nodes {groups.topology.describe()['nodes']}")
        self.groups, self.variant = groups, variant
        device = torch.cuda.current_device() if torch.cuda.is_available() else None
        # One thread: stages of a buffer wait on each other, and a single queue keeps the
        # launch order identical on every rank.
        self.executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="raylars-comms",
            initializer=(lambda: torch.cuda.set_device(device)) if device is not None else None)
        self._shards: dict[int, torch.Tensor] = {}

    def launch(self, tensors: Sequence[torch.Tensor]) -> Handle:
        stages = self._stages_2d() if self.variant == "2d" else self._stages_reduce_bcast()
        return Handle(future=self.executor.submit(run_staged, stages, list(tensors)))

    def _stages_reduce_bcast(self) -> list[Callable]:
        g = self.groups
        reduce = (lambda t: dist.reduce(t, dst=g.leader, group=g.intra, async_op=True)) \
            if g.intra else None
        across = (lambda t: dist.all_reduce(t, group=g.leaders, async_op=True)) \
            if g.leaders else None
        bcast = (lambda t: dist.broadcast(t, src=g.leader, group=g.intra, async_op=True)) \
            if g.intra else None
        return [stage for stage in (reduce, across, bcast) if stage is not None]

    def _shard(self, t: torch.Tensor) -> torch.Tensor:
        # A persistent scratch shard per buffer: the reduce-scatter output must not alias
        # its input.
        size = len(self.groups.topology.nodes[0])
        shard = self._shards.get(t.data_ptr())
        if shard is None or shard.numel() != t.numel() // size:
            assert t.numel() % size == 0, "2d buffers are padded to a multiple of ranks per node"
            shard = self._shards[t.data_ptr()] = t.new_empty(t.numel() // size)
        return shard

    def _stages_2d(self) -> list[Callable]:
        g = self.groups
        if g.intra is None:  # one rank per node: the 2-D variant is a flat allreduce
            return [lambda t: dist.all_reduce(t, group=g.cross, async_op=True)]
        stages = [lambda t: dist.reduce_scatter_single(self._shard(t), t, group=g.intra,
                                                       async_op=True)]
        if g.cross is not None:
            stages.append(lambda t: dist.all_reduce(self._shard(t), group=g.cross, async_op=True))
        stages.append(lambda t: dist.all_gather_single(t, self._shard(t), group=g.intra,
                                                            async_op=True))
        return stages

    def describe(self) -> dict:
        return {"algorithm": self.name, "variant": self.variant}

    def close(self) -> None:
        self.executor.shutdown(wait=True)


def run_staged(stages: Sequence[Callable], tensors: Sequence[torch.Tensor]) -> None:
    """Run each stage on every tensor, a tensor's next stage after its previous one is done;
    later tensors' earlier stages are already in flight meanwhile (a pipeline)."""
    pending: list = [None] * len(tensors)
    for stage in stages:
        for index, tensor in enumerate(tensors):
            if pending[index] is not None:
                pending[index].wait()
            pending[index] = stage(tensor)
    for work in pending:
        if work is not None:
            work.wait()


def time_allreduce(algorithm, *, numels: Sequence[int], repeats: int, dtype=torch.float32,
                   device: torch.device | None = None) -> list[float]:
    """Median seconds to allreduce one buffer of each size with `algorithm` (calibration)."""
    results = []
    for numel in numels:
        buffer = torch.ones(numel, dtype=dtype, device=device)
        samples = []
        for _ in range(repeats + 1):  # the first one warms up the connections
            dist.barrier()
            start = time.perf_counter()
            algorithm.launch([buffer]).wait()
            if buffer.is_cuda:
                torch.cuda.synchronize()
            samples.append(time.perf_counter() - start)
        results.append(sorted(samples[1:])[len(samples[1:]) // 2])
    return results
