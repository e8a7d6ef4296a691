"""BatchNorm buffers are made consistent only where they are read (`GradSync.sync_buffers`,
before evaluation and checkpoints): after a few training steps under comms=ddp, fused and
hierarchical, one sync leaves every rank with rank 0's running statistics, and evaluation
gives the logits of comms=ddp (and of torch's DDP with its per-forward buffer broadcast)."""

import pytest
import torch
from dist_harness import run_ranks
from test_sync import loss_of, rank_batch, tiny_net

WORLD = 4
STEPS = 4
SYNCS = {
    "ddp": {"name": "ddp"},
    "fused": {"name": "fused", "segments": 2},
    "hierarchical": {"name": "hierarchical", "segments": 2, "ranks_per_node": 2},
}


def _train(rank, world_size, make):
    """STEPS SGD steps on this rank's batches; the wrapped module and the sync come from
    `make(model)`. Returns the buffers before and after the sync, and eval logits."""
    model = tiny_net(seed=rank)
    wrapped, sync = make(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    wrapped.train()
    for step in range(STEPS):
        optimizer.zero_grad(set_to_none=False)
        loss_of(wrapped, rank_batch(rank, micro=step)).backward()
        if sync is not None:
            sync.finish()
        optimizer.step()
    before = [b.clone() for b in model.buffers()]
    if sync is not None:
        sync.sync_buffers(model)
    model.eval()
    with torch.no_grad():
        logits = model(rank_batch(0, micro=99)[0])  # the same eval batch on every rank
    if sync is not None:
        sync.close()
    return {"before": before, "after": [b.clone() for b in model.buffers()], "logits": logits}


def _scenario(rank, world_size):
    from torch.nn.parallel import DistributedDataParallel

    from comms.registry import SYNCS as REGISTRY

    def ours(overrides):
        def make(model):
            settings = {"fusion_threshold_mb": 0.002, **overrides}
            config = REGISTRY.get(settings["name"]).schema(**settings)
            sync = REGISTRY.build(settings["name"], config=config, world_size=world_size,
                                  device=torch.device("cpu"))
            return sync.wrap(model), sync
        return make

    out = {name: _train(rank, world_size, ours(overrides)) for name, overrides in SYNCS.items()}
    # torch's own default: buffers broadcast from rank 0 before every forward.
    out["torch_ddp"] = _train(rank, world_size, lambda model: (DistributedDataParallel(model),
                                                               None))
    return out


@pytest.fixture(scope="module")
def results():
    return run_ranks(_scenario, world_size=WORLD)


@pytest.mark.parametrize("name", list(SYNCS))
def test_one_sync_gives_every_rank_rank0s_statistics(results, name):
    zero = results[0][name]["after"]
    assert len(zero) == 6  # 2 BatchNorms x (mean, var, num_batches_tracked)
    for result in results:
        for got, want in zip(result[name]["after"], zero, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        # rank 0's own statistics are what the sync hands out
        for got, want in zip(results[0][name]["before"], zero, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    # No broadcast during training: before the sync, the ranks' statistics differed.
    assert not torch.equal(results[1][name]["before"][0], results[0][name]["before"][0])


@pytest.mark.parametrize("name", ["ddp", "fused", "hierarchical"])
def test_eval_matches_ddp_on_every_rank(results, name):
    for reference in ("ddp", "torch_ddp"):
        want = results[0][reference]
        for result in results:
            torch.testing.assert_close(result[name]["logits"], want["logits"],
                                       rtol=1e-5, atol=1e-5)
        for got, ref in zip(results[0][name]["after"], want["after"], strict=True):
            torch.testing.assert_close(got.double(), ref.double(), rtol=1e-5, atol=1e-6)
