"""Allreduce transports over torch.distributed: process groups from a Topology, and the
`flat` and `hierarchical` algorithms that sum a list of flat buffers asynchronously.

- `ring`: one all_reduce per buffer on the whole group (gloo/nccl pick their own ring or
  tree); the ops run on the backend's threads/streams, so launching returns at once.
- `hierarchical` (reduce/bcast): reduce to the node leader, allreduce among leaders,
  broadcast inside the node; only leaders cross the node boundary.
- `hierarchical` (2d, uniform nodes only): reduce-scatter inside the node, allreduce of each
  1/G shard among the ranks with the same local index on every node, allgather inside the
  node; every rank carries 1/G of the inter-node bytes.
The hierarchical stages depend on each other, so they form a pipeline over chunks of at
most `chunk_mb`: the first stage is issued by the caller, each later stage by its own
thread once the chunk's previous stage is done. Every stage has a process group of its own
(the first and last intra-node stages use two groups over the same ranks), so each group
sees its collectives in chunk order on every rank whatever the timing, and chunks of later
launches flow in behind earlier ones without waiting for them to finish. Every rank
launches buffers in the same order (the caller's job), which keeps the collectives matched.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
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
    # A second group over the intra-node ranks for the last stage (broadcast/allgather), so
    # that the first and last stages never share a group's collective order.
    intra_out: dist.ProcessGroup | None = None

    @property
    def leader(self) -> int:
        return self.topology.leader_of(self.rank)


def build_groups(topology: Topology, *, cross: bool = False) -> CommGroups:
    """Create the subgroups; every rank must call this with the same topology, since
    `new_group` is collective over the default group and must be entered in one order."""
    rank = dist.get_rank()
    assert topology.world_size == dist.get_world_size(), (topology, dist.get_world_size())
    mine: dict[str, dist.ProcessGroup | None] = {"intra": None, "leaders": None, "cross": None,
                                                  "intra_out": None}
    for key in ("intra", "intra_out"):
        for node in topology.nodes:
            group = dist.new_group(list(node))
            if rank in node and len(node) > 1:
                mine[key] = group
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
    """Completion of one launched list of buffers: backend works, or futures that resolve
    to the work of each chunk's last stage."""

    def __init__(self, *, works: Sequence = (), futures: Sequence[Future] = ()):
        self.works, self.futures = list(works), list(futures)

    def wait(self) -> None:
        for work in self.works:
            work.wait()
        for future in self.futures:
            work = future.result()
            if work is not None:
                work.wait()


class RingAllreduce:
    """One all_reduce per buffer over the whole group (`comms=fused`); the backend runs
    its own ring (gloo) or ring/tree (nccl)."""

    name = "ring"

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

    def __init__(self, groups: CommGroups, *, variant: str = "reduce_bcast",
                 chunk_mb: float = 4.0):
        # The schema (comms/config.py) checked the variant and chunk; the topology is
        # known only now.
        assert variant in HIERARCHICAL_VARIANTS and chunk_mb > 0, (variant, chunk_mb)
        if variant == "2d" and not groups.topology.is_uniform:
            raise ValueError("comms.variant=2d needs the same number of ranks on every node; "
                             f"got nodes {groups.topology.describe()['nodes']}")
        self.groups, self.variant, self.chunk_mb = groups, variant, chunk_mb
        # 2d chunks must split evenly over the ranks of a node.
        self._multiple = len(groups.topology.nodes[0]) if variant == "2d" else 1
        self._shards: dict[tuple[int, int], torch.Tensor] = {}
        stages = self._stages_2d() if variant == "2d" else self._stages_reduce_bcast()
        device = torch.cuda.current_device() if torch.cuda.is_available() else None
        self.pipeline = StagePipeline(stages, device=device)

    def launch(self, tensors: Sequence[torch.Tensor]) -> Handle:
        chunks = [c for t in tensors for c in split_chunks(
            t, max_bytes=self.chunk_mb * 2**20, multiple=self._multiple)]
        return Handle(futures=[self.pipeline.submit(c) for c in chunks])

    def _stages_reduce_bcast(self) -> list[Callable]:
        g = self.groups
        reduce = (lambda t: dist.reduce(t, dst=g.leader, group=g.intra, async_op=True)) \
            if g.intra else None
        across = (lambda t: dist.all_reduce(t, group=g.leaders, async_op=True)) \
            if g.leaders else None
        bcast = (lambda t: dist.broadcast(t, src=g.leader, group=g.intra_out, async_op=True)) \
            if g.intra else None
        return [stage for stage in (reduce, across, bcast) if stage is not None]

    def _shard(self, t: torch.Tensor) -> torch.Tensor:
        # A persistent scratch shard per chunk: the reduce-scatter output must not alias
        # its input.
        size = len(self.groups.topology.nodes[0])
        key = (t.data_ptr(), t.numel())
        shard = self._shards.get(key)
        if shard is None:
            assert t.numel() % size == 0, "2d chunks are a multiple of ranks per node"
            shard = self._shards[key] = t.new_empty(t.numel() // size)
        return shard

    def _stages_2d(self) -> list[Callable]:
        g = self.groups
        if g.intra is None:  # one rank per node: the 2-D variant is a flat allreduce
            return [lambda t: dist.all_reduce(t, group=g.cross, async_op=True)]
        stages = [lambda t: dist.reduce_scatter_single(self._shard(t), t, group=g.intra,
                                                       async_op=True)]
        if g.cross is not None:
            stages.append(lambda t: dist.all_reduce(self._shard(t), group=g.cross, async_op=True))
        stages.append(lambda t: dist.all_gather_single(t, self._shard(t), group=g.intra_out,
                                                            async_op=True))
        return stages

    def describe(self) -> dict:
        return {"algorithm": self.name, "variant": self.variant, "chunk_mb": self.chunk_mb}

    def close(self) -> None:
        self.pipeline.close()


def split_chunks(tensor: torch.Tensor, *, max_bytes: float, multiple: int = 1) -> list:
    """Views of a flat tensor, each at most max_bytes (at least `multiple` elements) and a
    multiple of `multiple` elements; a tensor that fits is returned whole."""
    per_chunk = max(multiple, int(max_bytes // tensor.element_size()) // multiple * multiple)
    if tensor.numel() <= per_chunk:
        return [tensor]
    return list(tensor.split(per_chunk))


class StagePipeline:
    """Runs dependent collective stages over a stream of chunks. Stage 0 is issued by the
    caller at submit; stage k > 0 by thread k, in submit order, once the chunk's stage k-1
    work is done. A failed stage fails that chunk's future and every later chunk's (a
    broken group cannot serve the rest)."""

    _STOP = object()

    def __init__(self, stages: Sequence[Callable], *, device: int | None = None):
        self.stages, self.device = list(stages), device
        self._queues = [queue.SimpleQueue() for _ in self.stages[1:]]
        self._threads = [threading.Thread(target=self._run, args=(k,), daemon=True,
                                          name=f"raylars-comms-stage{k}")
                         for k in range(1, len(self.stages))]
        for thread in self._threads:
            thread.start()

    def submit(self, tensor: torch.Tensor) -> Future:
        done: Future = Future()
        try:
            work = self.stages[0](tensor)
        except BaseException as error:  # noqa: BLE001 - handed to whoever waits
            done.set_exception(error)
            return done
        if self._queues:
            self._queues[0].put((tensor, work, done))
        else:
            done.set_result(work)
        return done

    def _run(self, index: int) -> None:
        if self.device is not None:
            torch.cuda.set_device(self.device)
        inbox = self._queues[index - 1]
        outbox = self._queues[index] if index < len(self._queues) else None
        failure: BaseException | None = None
        while (item := inbox.get()) is not self._STOP:
            tensor, work, done = item
            try:
                if failure is not None:
                    raise failure
                if work is not None:
                    work.wait()
                work = self.stages[index](tensor)
            except BaseException as error:  # noqa: BLE001 - handed to whoever waits
                failure = error
                done.set_exception(error)
                continue
            if outbox is not None:
                outbox.put((tensor, work, done))
            else:
                done.set_result(work)
        if outbox is not None:
            outbox.put(self._STOP)

    def close(self) -> None:
        if self._queues:
            self._queues[0].put(self._STOP)
        for thread in self._threads:
            thread.join()


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
