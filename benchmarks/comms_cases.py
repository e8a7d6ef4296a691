"""What benchmarks/comms_bench.py times inside each rank: the communication-only cases,
the sync inside a near-free backward, and the full training step, each a dict of
name -> callable for `interleaved`, which reports the slowest rank's median."""

from __future__ import annotations

import statistics
import time

import torch
import torch.distributed as dist
from torch import nn


def slowest(seconds: float) -> float:
    value = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value.item()


def interleaved(cases: dict, *, repeats: int) -> dict:
    """Median ms of each case, cases run in turn within each repeat after one warm-up."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for round_index in range(repeats + 1):
        for name, fn in cases.items():
            dist.barrier()
            start = time.perf_counter()
            fn()
            elapsed = slowest(time.perf_counter() - start)
            if round_index:
                samples[name].append(elapsed)
    return {name: statistics.median(values) * 1e3 for name, values in samples.items()}


class GradShapes(nn.Module):
    """Parameters with a model's shapes; backward gives each one a filled gradient."""

    def __init__(self, shapes: list[torch.Size]):
        super().__init__()
        self.weights = nn.ParameterList([nn.Parameter(torch.zeros(s)) for s in shapes])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(w.sum() for w in self.weights) * x


def comms_config(name: str, args, *, topology):
    """The benchmark's flags as the sync's schema; `hierarchical` gets the (emulated)
    topology as contiguous blocks of ranks."""
    from comms.config import FusedConfig, HierarchicalConfig

    if name == "fused":
        return FusedConfig(fusion_threshold_mb=args.threshold_mb, segments=args.segments)
    per_node = len(topology.nodes[0])
    assert topology.nodes == tuple(tuple(range(start, start + per_node))
                                   for start in range(0, topology.world_size, per_node)), topology
    return HierarchicalConfig(fusion_threshold_mb=args.threshold_mb, segments=args.segments,
                              variant=args.variant, pipeline_chunk_mb=args.chunk_mb,
                              ranks_per_node=per_node)


def build_sync(name: str, args, *, topology, params_module: nn.Module):
    from comms.registry import build_grad_sync

    sync = build_grad_sync(comms_config(name, args, topology=topology),
                           world_size=dist.get_world_size(), device=torch.device("cpu"))
    return sync, sync.wrap(params_module)


def comm_cases(args, shapes, topology) -> tuple[dict, dict]:
    generator = torch.Generator().manual_seed(dist.get_rank())
    grads = [torch.randn(s, generator=generator) for s in shapes]
    floor = torch.randn(sum(g.numel() for g in grads), generator=generator)
    syncs = {}
    for name in ("fused", "hierarchical"):
        module = GradShapes(shapes)
        syncs[name] = build_sync(name, args, topology=topology, params_module=module)
        for p, g in zip(module.parameters(), grads, strict=True):
            p.grad.copy_(g)

    def per_tensor():
        for work in [dist.all_reduce(g, async_op=True) for g in grads]:
            work.wait()

    cases = {"per_tensor_ms": per_tensor,
             "fused_ms": syncs["fused"][0].finish,
             "hierarchical_ms": syncs["hierarchical"][0].finish,
             "flat_floor_ms": lambda: dist.all_reduce(floor)}
    return cases, syncs


def overlap_cases(args, shapes, topology) -> dict:
    from torch.nn.parallel import DistributedDataParallel

    x = torch.ones(())
    plain = GradShapes(shapes)
    ddp = DistributedDataParallel(GradShapes(shapes), bucket_cap_mb=args.threshold_mb,
                                  gradient_as_bucket_view=True)
    ours = {name: build_sync(name, args, topology=topology, params_module=GradShapes(shapes))
            for name in ("fused", "hierarchical")}

    def run(module, sync=None):
        def step():
            module(x).backward()
            if sync is not None:
                sync.finish()
        return step

    return {"backward_alone_ms": run(plain), "ddp_backward_ms": run(ddp),
            "fused_backward_ms": run(ours["fused"][1], ours["fused"][0]),
            "hierarchical_backward_ms": run(ours["hierarchical"][1], ours["hierarchical"][0])}


def step_cases(args, topology) -> dict:
    """One full training step of the per-rank trainer (`Trainer.step`, what launch/run.py
    runs) with each sync, on a fixed synthetic batch."""
    from types import SimpleNamespace

    from comms.config import DDPConfig
    from trainers.config import ModelConfig, TrainerConfig, TrainingConfig
    from trainers.worker import Trainer

    world_size = dist.get_world_size()
    generator = torch.Generator().manual_seed(dist.get_rank())
    images = torch.randn(args.step_batch, 3, args.step_image_size, args.step_image_size,
                         generator=generator)
    labels = torch.randint(0, 1000, (args.step_batch,), generator=generator)
    data = SimpleNamespace(num_classes=1000, in_channels=3, mean=(0.0,) * 3, std=(1.0,) * 3,
                           num_train=args.step_batch * world_size * 100)

    def make(kind):
        comms = (DDPConfig(fusion_threshold_mb=args.threshold_mb) if kind == "ddp"
                 else comms_config(kind, args, topology=topology))
        config = TrainingConfig(
            trainer=TrainerConfig(num_workers=world_size, epochs=1,
                                  global_batch_size=args.step_batch * world_size),
            model=ModelConfig(name=args.model), comms=comms)
        trainer = Trainer(config, rank=dist.get_rank(), world_size=world_size,
                          device=torch.device("cpu"), data=data)
        return lambda: trainer.step(images, labels)

    return {"step_ddp_ms": make("ddp"), "step_ours_ms": make("fused"),
            "step_hierarchical_ms": make("hierarchical")}
