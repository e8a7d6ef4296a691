"""Gradient accumulation (`trainer.micro_batch_size`): k micro-batches of b give the same
optimizer step as one pass over k*b, for ddp, fused and hierarchical, on 3 real gloo
ranks. BatchNorm runs in eval mode (running statistics), so a pass's result does not
depend on how the batch is cut; uneven cuts (3 + 3 + 2) are weighted by their share."""

from types import SimpleNamespace

import torch
from dist_harness import run_ranks

BATCH = 8  # per rank
STEPS = 3


def _params_after_steps(rank, world_size):
    from comms.config import DDPConfig, FusedConfig, HierarchicalConfig
    from trainers.config import TrainerConfig, TrainingConfig
    from trainers.optim import LarsConfig
    from trainers.worker import Trainer

    data = SimpleNamespace(name="test", num_classes=10, in_channels=1, mean=(0.0,), std=(1.0,),
                           num_train=100 * BATCH * world_size)
    syncs = {"ddp": DDPConfig(fusion_threshold_mb=0.004),
             "fused": FusedConfig(fusion_threshold_mb=0.004),
             "hierarchical": HierarchicalConfig(fusion_threshold_mb=0.004, ranks_per_node=2)}
    generator = torch.Generator().manual_seed(11 + rank)
    batches = [(torch.randn(BATCH, 1, 8, 8, generator=generator),
                torch.randint(0, 10, (BATCH,), generator=generator)) for _ in range(STEPS)]
    out = {}
    for name, comms in syncs.items():
        for micro in (None, 2, 3):
            config = TrainingConfig(
                trainer=TrainerConfig(num_workers=world_size, epochs=1, micro_batch_size=micro,
                                      global_batch_size=BATCH * world_size),
                optim=LarsConfig(lr=1.0, warmup_epochs=0), comms=comms)
            trainer = Trainer(config, rank=rank, world_size=world_size,
                              device=torch.device("cpu"), data=data)
            trainer.train_model.eval()  # BN from running statistics: cut-independent
            losses = [trainer.step(*batch).item() for batch in batches]
            out[(name, micro)] = ([p.detach().clone() for p in trainer.model.parameters()],
                                  losses)
            trainer.close()
    return out


def test_micro_batches_give_the_step_of_the_whole_batch():
    results = run_ranks(_params_after_steps, world_size=3)
    for rank_result in results:
        for name in ("ddp", "fused", "hierarchical"):
            whole, whole_losses = rank_result[(name, None)]
            moved = max((p - q).abs().max().item() for p, q in
                        zip(whole, rank_result[("ddp", None)][0], strict=True))
            assert moved < 1e-4, (name, moved)  # the syncs agree with each other
            for micro in (2, 3):
                params, losses = rank_result[(name, micro)]
                for p, q in zip(params, whole, strict=True):
                    torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(torch.tensor(losses), torch.tensor(whole_losses),
                                           rtol=1e-5, atol=1e-6)
    # The steps really moved the weights (a test that cannot fail otherwise).
    first = results[0][("ddp", None)][0]
    torch.manual_seed(0)
    from trainers.models import build_model

    initial = list(build_model(name="small_resnet", num_classes=10, in_channels=1).parameters())
    assert max((p - q).abs().max().item() for p, q in zip(first, initial, strict=True)) > 1e-3
