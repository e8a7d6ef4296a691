"""20 fp32 LARS steps of the per-rank trainer (`Trainer.step`, the step `launch/run.py`
runs) with comms=fused and comms=hierarchical give the loss curve of comms=ddp (relative
difference < 1e-4), on 4 real gloo ranks with uneven nodes (3 + 1)."""

from types import SimpleNamespace

import torch
from dist_harness import run_ranks

STEPS = 20
BATCH = 8  # per rank


def _curves(rank, world_size):
    from comms.config import DDPConfig, FusedConfig, HierarchicalConfig
    from trainers.config import TrainerConfig, TrainingConfig
    from trainers.optim import LarsConfig
    from trainers.worker import Trainer

    # What the trainer needs to know of the data; the batches are fed to step() directly.
    data = SimpleNamespace(num_classes=10, in_channels=1, num_train=STEPS * BATCH * world_size,
                           mean=(0.0,), std=(1.0,))
    syncs = {"ddp": DDPConfig(fusion_threshold_mb=0.004),
             "fused": FusedConfig(fusion_threshold_mb=0.004),
             "hierarchical": HierarchicalConfig(fusion_threshold_mb=0.004, ranks_per_node=3)}
    curves = {}
    for name, comms in syncs.items():
        config = TrainingConfig(
            trainer=TrainerConfig(num_workers=world_size, epochs=1,
                                  global_batch_size=BATCH * world_size),
            optim=LarsConfig(lr=2.0, weight_decay=5e-4, warmup_epochs=0), comms=comms)
        trainer = Trainer(config, rank=rank, world_size=world_size,
                          device=torch.device("cpu"), data=data)
        generator = torch.Generator().manual_seed(7 + rank)
        # Two fixed batches per rank, cycled: a loss that must go down.
        batches = [(torch.randn(BATCH, 1, 8, 8, generator=generator),
                    torch.randint(0, 10, (BATCH,), generator=generator)) for _ in range(2)]
        losses = []
        for step in range(STEPS):
            loss = trainer.step(*batches[step % 2])
            summed = trainer.sync.all_reduce_sum(loss.double().reshape(1))
            losses.append(summed.item() / world_size)
        curves[name] = losses
        trainer.close()
    return curves


def test_fused_and_hierarchical_follow_the_ddp_loss_curve():
    results = run_ranks(_curves, world_size=4)
    curves = results[0]
    ddp = torch.tensor(curves["ddp"], dtype=torch.float64)
    assert ddp[-1] < ddp[0]  # it trains
    for name in ("fused", "hierarchical"):
        ours = torch.tensor(curves[name], dtype=torch.float64)
        relative = ((ours - ddp).abs() / ddp.abs()).max().item()
        assert relative < 1e-4, (name, relative, curves[name], curves["ddp"])
