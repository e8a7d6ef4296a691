"""`comms=fused|hierarchical`: the GradSync object the training loop talks to.

It owns the overlap of communication with backward: a post-accumulate-grad hook on every
parameter counts the gradients still missing per bucket; when the last bucket of a segment
is complete, that segment's allreduce is launched (segments strictly in plan order, so all
ranks issue the same collectives in the same order) while backward goes on. `finish()`
launches whatever is left, waits for everything and turns sums into averages. Inside
`no_sync()` (gradient accumulation) the hooks do nothing and gradients accumulate in the
buffers until the first backward after it.
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
from comms.collectives import all_reduce_sum
from comms.config import FusedConfig, HierarchicalConfig
from comms.cost_model import choose_split, fit_line
from comms.fusion import FlatBuffers, FusionPlan, plan_for_params, segments_from_splits
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


def discover_topology(*, ranks_per_node: int | None, node_key: str | None = None) -> Topology:
    """`comms.ranks_per_node` if set, else group ranks by the node key every rank reports."""
    world_size = dist.get_world_size()
    if ranks_per_node is not None:
        return topology_from_ranks_per_node(world_size=world_size, ranks_per_node=ranks_per_node)
    keys: list = [None] * world_size
    dist.all_gather_object(keys, node_key or local_node_key())
    return topology_from_node_keys(keys)


def choose_variant(*, requested: str, topology: Topology, backend: str = "gloo") -> str:
    """auto: 2d on nccl with equal nodes and two levels. gloo's reduce-scatter is slow
    enough that reduce_bcast wins there (BENCHMARKS.md: 2d took 2.4x fused on one host
    and 1.2x reduce_bcast across emulated hosts)."""
    if requested != "auto":
        return requested
    two_levels = topology.num_nodes > 1 and topology.world_size > topology.num_nodes
    if backend == "nccl" and two_levels and topology.is_uniform:
        return "2d"
    return "reduce_bcast"


@torch.no_grad()
def broadcast_state(model: nn.Module, *, src: int = 0) -> None:
    """Make every rank start from rank `src`'s parameters and buffers (as DDP does)."""
    tensors = [t for t in (*model.parameters(), *model.buffers())]
    works = [dist.broadcast(t.data, src=src, async_op=True) for t in tensors]
    for work in works:
        work.wait()


class _BufferBroadcast(nn.Module):
    """Wraps the model: in training, broadcasts rank 0's buffers (BatchNorm statistics)
    before each forward, as DDP's broadcast_buffers does, so evaluation sees the same
    running statistics as under comms=ddp."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        if self.training and dist.is_initialized() and dist.get_world_size() > 1:
            broadcast_buffers(self.module)
        return self.module(*args, **kwargs)


@torch.no_grad()
def broadcast_buffers(module: nn.Module) -> None:
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for buffer in module.buffers():
        by_dtype.setdefault(buffer.dtype, []).append(buffer)
    for buffers in by_dtype.values():
        # One collective per dtype instead of one per buffer.
        flat = torch.cat([b.reshape(-1) for b in buffers])
        dist.broadcast(flat, src=0)
        for buffer, part in zip(buffers, flat.split([b.numel() for b in buffers]), strict=True):
            buffer.copy_(part.view_as(buffer))


class FusedSync:
    """Fused, segmented, overlapped gradient allreduce (flat or hierarchical)."""

    def __init__(self, config: FusedConfig, *, world_size: int, device: torch.device,
                 topology: Topology | None = None):
        self.config, self.world_size, self.device = config, world_size, device
        self.hierarchical = isinstance(config, HierarchicalConfig)
        self.variant: str | None = None  # the hierarchical variant chosen for the topology
        self.groups: CommGroups | None = None
        self.algorithm = None
        if world_size > 1:
            if not dist.is_initialized():
                raise RuntimeError("comms=fused|hierarchical needs an initialized process group")
            topology = topology or discover_topology(
                ranks_per_node=config.ranks_per_node if self.hierarchical else None)
            self.algorithm = self._build_algorithm(topology)
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
        self._auto_split = False
        self.split_source = "bytes"

    def _build_algorithm(self, topology: Topology):
        if not self.hierarchical:
            return RingAllreduce()
        variant = self.variant = choose_variant(requested=self.config.variant, topology=topology,
                                                backend=str(dist.get_backend()))
        self.groups = build_groups(topology, cross=variant == "2d")
        return HierarchicalAllreduce(self.groups, variant=variant,
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
        broadcast_state(model)
        self._hooks = [p.register_post_accumulate_grad_hook(self._make_hook(i))
                       for i, p in enumerate(params)]
        self._auto_split = (self.config.split == "auto" and self.config.segments > 1
                            and len(self.plan.buckets) > 1)
        if self._auto_split:
            self._comm_line = self._measure_comm_line()
        self._reset_step()
        return _BufferBroadcast(model)

    def finish(self) -> None:
        """Wait for every segment; leave each param.grad holding the average over ranks."""
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
        self._reset_step()
        # Once, after the first step whose backward ran the hooks (that step is the
        # measurement; a finish() without backward measures nothing).
        if self._auto_split and self.last_step["first_hook_s"] is not None:
            self._auto_split = False
            self._choose_split_from_step(self.last_step)

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(values, world_size=self.world_size)

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

    def _choose_split_from_step(self, step: dict) -> None:
        """Rank 0 picks the split minimising the end of communication for the step just
        measured; every rank adopts it (the launch order must be identical)."""
        splits = torch.full((self.config.segments,), -1, dtype=torch.int64)
        if dist.get_rank() == 0:
            stamps, begin = step["bucket_ready_s"], step["first_hook_s"]
            ready = [(stamps.get(i, step["last_hook_s"]) - begin)
                     for i in range(len(self.plan.buckets))]
            c0, c1 = self._comm_line
            chosen, end = choose_split(
                ready_s=ready, bucket_bytes=[w.numel() * w.element_size() for w in self._wire],
                comm_s=lambda nbytes: c0 + c1 * nbytes, num_segments=self.config.segments)
            splits[0] = len(chosen)
            splits[1:1 + len(chosen)] = torch.tensor(chosen, dtype=torch.int64)
        dist.broadcast(splits, src=0)
        count = int(splits[0])
        self.set_segments([int(s) for s in splits[1:1 + count]])
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

    def _make_hook(self, index: int):
        def hook(param: torch.Tensor) -> None:
            if self._accumulating:
                return
            self.buffers.adopt(index)
            now = time.perf_counter()
            self._stats["first_hook_s"] = self._stats["first_hook_s"] or now
            self._stats["last_hook_s"] = now
            self._hooks_left -= 1
            bucket = self.buffers.bucket_of[index]
            self._missing_grads[bucket] -= 1
            if self._missing_grads[bucket] == 0:
                self._stats["bucket_ready_s"][bucket] = now
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
