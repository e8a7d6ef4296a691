"""`comms=fused|hierarchical`: the GradSync object the training loop talks to.

It owns the overlap of communication with backward: a post-accumulate-grad hook on every
parameter counts the gradients still missing per bucket; when the last bucket of a segment
is complete, that segment's allreduce is launched (segments strictly in plan order, so all
ranks issue the same collectives in the same order) while backward goes on. `finish()`
launches whatever is left, waits for everything (on CUDA: makes the compute stream wait,
without blocking the host) and turns sums into averages. Inside `no_sync()` (gradient
accumulation) the hooks do nothing and gradients accumulate in the buffers until the first
backward after it. Buffers (BatchNorm statistics) are made consistent by `sync_buffers`
only, before evaluation and checkpoints (comms/buffers.py says why that is enough).
"""

from __future__ import annotations

import contextlib
import socket
import time

import torch
import torch.distributed as dist
from torch import nn

from comms.allreduce import (
    CommGroups,
    HierarchicalAllreduce,
    RingAllreduce,
    build_groups,
    time_allreduce,
)
from comms.buffers import broadcast_state, sync_buffers
from comms.collectives import Collectives
from comms.config import FusedConfig, HierarchicalConfig
from comms.cost_model import choose_split, fit_line
from comms.fusion import FlatBuffers, FusionPlan, plan_for_params, segments_from_splits
from comms.readiness import MEASURED_STEP, BucketClock
from comms.topology import Topology, topology_from_node_keys, topology_from_ranks_per_node

_WIRE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def local_node_key() -> str:
    """The Ray node id inside a Ray worker, else the host name (plain torchrun/mp tests)."""
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except ImportError:
        pass
    return socket.gethostname()


def discover_topology(*, ranks_per_node: int | None, node_key: str | None = None,
                      comm: Collectives | None = None) -> Topology:
    """`comms.ranks_per_node` if set, else group ranks by the node key every rank reports
    (exchanged as tensors on the sync's device: on nccl, the rank's GPU)."""
    world_size = dist.get_world_size()
    if ranks_per_node is not None:
        return topology_from_ranks_per_node(world_size=world_size, ranks_per_node=ranks_per_node)
    keys = (comm or Collectives()).all_gather_strings(node_key or local_node_key())
    return topology_from_node_keys(keys)


def choose_variant(*, requested: str, topology: Topology, backend: str = "gloo") -> str:
    """The algorithm of comms=hierarchical: `2d`, `reduce_bcast`, or `ring` (the backend's
    own allreduce over the whole group, what comms=fused runs).

    auto on nccl: 2d where nodes are equal and both levels exist; otherwise nccl's own
    ring/tree, which drives every GPU's NIC, where reduce_bcast would send all of a node's
    inter-node bytes through its leader's one NIC (1 of 4-8 on p4d/DGX). auto on gloo:
    reduce_bcast; gloo's reduce-scatter is slow enough that it wins there (BENCHMARKS.md:
    2d took 2.4x fused on one host and 1.2x reduce_bcast across emulated hosts). An explicit
    variant is used as asked."""
    if requested != "auto":
        return requested
    if backend != "nccl":
        return "reduce_bcast"
    two_levels = topology.num_nodes > 1 and topology.world_size > topology.num_nodes
    return "2d" if two_levels and topology.is_uniform else "ring"


class FusedSync:
    """Fused, segmented, overlapped gradient allreduce (flat or hierarchical).

    `ordered` (hierarchical only): issue every stage from the calling thread in one fixed
    order (comms/allreduce.py); None: on nccl, where it is required. Tests force it on gloo."""

    def __init__(self, config: FusedConfig, *, world_size: int, device: torch.device,
                 topology: Topology | None = None, ordered: bool | None = None):
        self.config, self.world_size, self.device = config, world_size, device
        self.comm = Collectives(device)
        self.hierarchical = isinstance(config, HierarchicalConfig)
        self.variant: str | None = None  # the hierarchical variant chosen for the topology
        self.groups: CommGroups | None = None
        self.algorithm = None
        if world_size > 1:
            if not dist.is_initialized():
                raise RuntimeError("comms=fused|hierarchical needs an initialized process group")
            topology = topology or discover_topology(
                ranks_per_node=config.ranks_per_node if self.hierarchical else None,
                comm=self.comm)
            self.algorithm = self._build_algorithm(topology, ordered=ordered)
        self.topology = topology or Topology(nodes=((0,),))
        self.plan: FusionPlan | None = None
        self.buffers: FlatBuffers | None = None
        self._hooks: list = []
        self._accumulating = False
        # Per-step state: gradients missing per bucket, buckets missing per segment.
        self._missing_grads: list[int] = []
        self._missing_buckets: list[int] = []
        self._next_segment = 0
        self._handles: list = []
        self.last_step: dict = {}
        # split=auto: pending until the measured step (readiness.MEASURED_STEP) is done.
        self._auto_split = False
        self._steps_done = 0  # finished steps whose backward ran the hooks
        self._clock: BucketClock | None = None
        self.split_source = "bytes"

    def _build_algorithm(self, topology: Topology, *, ordered: bool | None):
        if not self.hierarchical:
            return RingAllreduce(comm=self.comm)
        variant = self.variant = choose_variant(requested=self.config.variant, topology=topology,
                                                backend=str(dist.get_backend()))
        if variant == "ring":
            return RingAllreduce(comm=self.comm)  # no subgroups needed
        # Once per sync, i.e. once per worker-group start; the same order on every rank.
        self.groups = build_groups(topology, cross=variant == "2d", comm=self.comm)
        return HierarchicalAllreduce(self.groups, variant=variant, ordered=ordered,
                                     chunk_mb=self.config.pipeline_chunk_mb)

    # ---- the loop's interface -------------------------------------------------------
    def wrap(self, model: nn.Module) -> nn.Module:
        """Broadcast rank 0's state, lay the gradients out in flat buckets (param.grad is a
        view), hook every parameter; return the module to run forward/backward on."""
        params = [p for p in model.parameters() if p.requires_grad]
        self.plan = plan_for_params(params, threshold_mb=self.config.fusion_threshold_mb,
                                    num_segments=self.config.segments)
        pad = len(self.topology.nodes[0]) if self.variant == "2d" else 1
        self._pad = pad
        self.buffers = FlatBuffers(self.plan, params=params, pad_multiple=pad)
        self.buffers.install_grad_views()
        self._wire = [flat if self.config.compress == "none"
                      else torch.zeros_like(flat, dtype=_WIRE_DTYPES[self.config.compress])
                      for flat in self.buffers.flat]
        if self.world_size == 1:
            return model
        broadcast_state(model, comm=self.comm)
        self._hooks = [p.register_post_accumulate_grad_hook(self._make_hook(i))
                       for i, p in enumerate(params)]
        self._auto_split = (self.config.split == "auto" and self.config.segments > 1
                            and len(self.plan.buckets) > 1)
        if self._auto_split:
            self._comm_line = self._measure_comm_line()
        self._reset_step()
        return model

    def finish(self) -> None:
        """Wait for every segment; leave each param.grad holding the average over ranks.
        On CUDA the waits make the current (compute) stream wait for the last stage of
        every chunk, so the optimizer's kernels queue behind the communication."""
        if self.world_size == 1 or self._accumulating:
            return
        start = time.perf_counter()
        while self._next_segment < len(self.plan.segments):
            self._launch_next()  # unused parameters: their buckets never completed
        for handle in self._handles:
            handle.wait()
        for flat, wire in zip(self.buffers.flat, self._wire, strict=True):
            if wire is flat:
                flat.div_(self.world_size)
            else:
                flat.copy_(wire)  # compressed: averaged before the cast, see _launch_next
        self._stats["finish_wait_s"] = time.perf_counter() - start
        self.last_step = self._stats
        if self.last_step["first_hook_s"] is not None:  # a finish() without backward
            self._steps_done += 1                          # measures nothing
        clock = self._clock
        self._reset_step()
        if clock is not None and clock.started:
            self._auto_split = False
            self._choose_split(clock)

    def sync_buffers(self, model: nn.Module) -> None:
        """Every rank's buffers := rank 0's (before evaluation and checkpoints)."""
        sync_buffers(model, comm=self.comm, world_size=self.world_size)

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        return self.comm.all_reduce_sum(values, world_size=self.world_size)

    @contextlib.contextmanager
    def no_sync(self):
        """Gradient accumulation: backward passes inside accumulate locally; the first
        backward after it (plus finish) averages the accumulated gradients."""
        previous, self._accumulating = self._accumulating, True
        try:
            yield
        finally:
            self._accumulating = previous

    def describe(self) -> dict:
        info = {"name": self.config.name, "world_size": self.world_size,
                "fusion_threshold_mb": self.config.fusion_threshold_mb,
                "compress": self.config.compress,
                "topology": self.topology.describe()}
        info["algorithm"] = self.algorithm.describe() if self.algorithm else {"algorithm": "none"}
        if self.variant is not None:
            info["variant"] = self.variant
        if self.groups is not None:
            info["groups"] = {"intra": [list(n) for n in self.topology.nodes if len(n) > 1],
                              "leaders": list(self.topology.leaders)}
        if self.plan is not None:
            info["plan"] = {**self.plan.describe(), "split": self.split_source}
        return info

    def set_segments(self, splits: list[int]) -> None:
        """Regroup the buckets (split points from the cost model); between steps only."""
        assert not self._handles, "set_segments during a step"
        segments = segments_from_splits(num_buckets=len(self.plan.buckets), splits=splits)
        self.plan = FusionPlan(buckets=self.plan.buckets, segments=segments)
        self.buffers.plan = self.plan
        self._reset_step()

    def _measure_comm_line(self) -> tuple[float, float]:
        """Seconds = c0 + c1 * bytes for this sync's own allreduce on this group, from a
        few sizes up to the largest bucket (a second or less at start-up)."""
        largest = max(b.numel for b in self.plan.buckets)
        numels = sorted({-(-max(1, largest // k) // self._pad) * self._pad for k in (64, 8, 1)})
        dtype = self._wire[0].dtype
        times = time_allreduce(self.algorithm, numels=numels, repeats=2, dtype=dtype,
                               device=self.buffers.flat[0].device)
        sizes = [n * self._wire[0].element_size() for n in numels]
        return fit_line(sizes_bytes=sizes, times_s=times)

    def _choose_split(self, clock: BucketClock) -> None:
        """Rank 0 picks the split minimising the end of communication for the step just
        measured; every rank adopts it (the launch order must be identical)."""
        values = [-1] * self.config.segments  # [count, split points..., -1 padding]
        if dist.get_rank() == 0:
            c0, c1 = self._comm_line
            chosen, _ = choose_split(
                ready_s=clock.ready_s(),
                bucket_bytes=[w.numel() * w.element_size() for w in self._wire],
                comm_s=lambda nbytes: c0 + c1 * nbytes, num_segments=self.config.segments)
            values[:1 + len(chosen)] = [len(chosen), *chosen]
        # On the sync's device: nccl has no CPU tensors.
        splits = torch.tensor(values, dtype=torch.int64, device=self.comm.device)
        self.comm.broadcast(splits, src=0)
        count, *points = splits.tolist()
        self.set_segments(points[:count])
        self.split_source = "cost_model"

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if self.algorithm is not None:
            self.algorithm.close()
            self.algorithm = None

    # ---- overlap machinery ------------------------------------------------------------
    def _reset_step(self) -> None:
        self._missing_grads = [len(b.tensors) for b in self.plan.buckets]
        self._missing_buckets = [len(s) for s in self.plan.segments]
        self._segment_of = {b: s for s, seg in enumerate(self.plan.segments) for b in seg}
        self._next_segment = 0
        self._handles = []
        self._hooks_left = sum(self._missing_grads)
        # Timings of the step in progress; `last_step` keeps the finished one (tests and
        # the benchmark read when each segment went out relative to backward).
        self._stats = {"launch_s": [], "grads_left_at_launch": [], "first_hook_s": None,
                       "last_hook_s": None, "bucket_ready_s": {}}
        measure = self._auto_split and self._steps_done == MEASURED_STEP - 1
        self._clock = (BucketClock(len(self.plan.buckets), device=self.comm.device)
                       if measure else None)

    def _make_hook(self, index: int):
        def hook(param: torch.Tensor) -> None:
            if self._accumulating:
                return
            self.buffers.adopt(index)
            now = time.perf_counter()
            if self._clock is not None:
                self._clock.hook()
            self._stats["first_hook_s"] = self._stats["first_hook_s"] or now
            self._stats["last_hook_s"] = now
            self._hooks_left -= 1
            bucket = self.buffers.bucket_of[index]
            self._missing_grads[bucket] -= 1
            if self._missing_grads[bucket] == 0:
                self._stats["bucket_ready_s"][bucket] = now
                if self._clock is not None:
                    self._clock.bucket_ready(bucket)
                self._missing_buckets[self._segment_of[bucket]] -= 1
            # Launch in plan order only: every rank must issue the same sequence.
            while (self._next_segment < len(self.plan.segments)
                   and self._missing_buckets[self._next_segment] == 0):
                self._launch_next()
        return hook

    def _launch_next(self) -> None:
        segment = self.plan.segments[self._next_segment]
        tensors = []
        for bucket in segment:
            flat, wire = self.buffers.flat[bucket], self._wire[bucket]
            if wire is not flat:
                # Average before the cast: a sum of P fp16 values can overflow where their
                # mean cannot.
                flat.div_(self.world_size)
                wire.copy_(flat)
            tensors.append(wire)
        self._handles.append(self.algorithm.launch(tensors))
        self._stats["launch_s"].append(time.perf_counter())
        self._stats["grads_left_at_launch"].append(self._hooks_left)
        self._next_segment += 1
