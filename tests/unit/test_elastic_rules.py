"""The world-size-independent optimisation rules (trainers/batching.py), elastic config,
and checkpoint files; no processes."""

import warnings

import numpy as np
import pytest
import torch

from job.config import compose
from trainers.batching import (
    loss_weight,
    nominal_steps_per_epoch,
    rank_batch_sizes,
    steps_per_epoch,
)
from trainers.checkpoint import load_state, write_state
from tune.config import compose_sweep


@pytest.mark.parametrize("global_batch,world", [(64, 1), (64, 2), (64, 3), (64, 5), (7, 7)])
def test_rank_batches_sum_to_the_global_batch(global_batch, world):
    sizes = rank_batch_sizes(global_batch_size=global_batch, world_size=world)
    assert len(sizes) == world and sum(sizes) == global_batch
    assert max(sizes) - min(sizes) <= 1


def test_too_many_workers_for_the_batch_is_a_value_error():
    with pytest.raises(ValueError, match="cannot be split over 5 workers"):
        rank_batch_sizes(global_batch_size=4, world_size=5)


@pytest.mark.parametrize("world", [2, 3, 5])
def test_weighted_rank_losses_give_the_global_mean_gradient(world):
    """What the gradient sync computes (the average over ranks of each rank's gradient of
    its weighted mean loss) equals the gradient of the mean loss over the whole global
    batch, also where the batch does not divide; float64 reference on a linear model."""
    rng = np.random.default_rng(0)
    global_batch, features = 64, 5
    x = rng.normal(size=(global_batch, features))
    y = rng.normal(size=global_batch)
    w = rng.normal(size=features)
    # Reference: d/dw of mean((x w - y)^2) over the global batch, in plain numpy.
    reference = 2 * x.T @ (x @ w - y) / global_batch
    weight = torch.tensor(w, requires_grad=True)
    synced = torch.zeros(features, dtype=torch.float64)
    start = 0
    for rank, size in enumerate(rank_batch_sizes(global_batch_size=global_batch, world_size=world)):
        xs, ys = torch.tensor(x[start:start + size]), torch.tensor(y[start:start + size])
        start += size
        loss = ((xs @ weight - ys) ** 2).mean()
        loss = loss * loss_weight(global_batch_size=global_batch, world_size=world, rank=rank)
        (grad,) = torch.autograd.grad(loss, weight)
        synced += grad
    np.testing.assert_allclose((synced / world).numpy(), reference, rtol=1e-12)


def test_loss_weight_is_exactly_one_where_the_batch_divides():
    assert {loss_weight(global_batch_size=64, world_size=4, rank=r) for r in range(4)} == {1.0}


def test_epoch_length_follows_the_largest_rank_batch():
    # 1437 digits: 2 and 4 workers both fit the world-independent 22 steps; 3 workers
    # (batches 22, 21, 21 over shards of 479) fit 21.
    assert nominal_steps_per_epoch(num_train=1437, global_batch_size=64, max_steps=None) == 22
    assert [steps_per_epoch(num_train=1437, world_size=w, global_batch_size=64, max_steps=None)
            for w in (1, 2, 3, 4)] == [22, 22, 21, 22]
    assert steps_per_epoch(num_train=1437, world_size=2, global_batch_size=64, max_steps=5) == 5


def test_elastic_range_maps_to_ray_scaling():
    config = compose(["trainer.min_workers=2", "trainer.max_workers=4",
                      "trainer.resize_interval_s=5"])
    assert config.trainer.elastic and config.trainer.worker_range == (2, 4)
    fixed = compose(["trainer.min_workers=3", "trainer.max_workers=3"])
    assert not fixed.trainer.elastic and fixed.trainer.worker_range == 3
    assert compose([]).trainer.worker_range == 2


@pytest.mark.parametrize("overrides,key", [
    (["trainer.min_workers=3", "trainer.max_workers=2"], "trainer.min_workers"),
    (["trainer.max_workers=4"], "trainer.min_workers"),
    (["trainer.min_workers=0", "trainer.max_workers=2"], "trainer.min_workers"),
    (["trainer.min_workers=1", "trainer.max_workers=2", "trainer.resize_interval_s=-1"],
     "trainer.resize_interval_s"),
    (["trainer.min_workers=1", "trainer.max_workers=200"], "trainer.global_batch_size"),
    (["debug.fail_in_checkpoint_epoch=0"], "debug.fail_in_checkpoint_epoch"),
])
def test_bad_elastic_settings_name_their_key(overrides, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        compose(overrides)


def test_a_sweep_rejects_an_elastic_range():
    with pytest.raises(ValueError, match="trainer.min_workers"):
        compose_sweep(["trainer.min_workers=1", "trainer.max_workers=2"])


def test_ignored_elastic_settings_warn():
    with pytest.warns(UserWarning, match="trainer.num_workers is ignored"):
        compose(["trainer.num_workers=3", "trainer.min_workers=1", "trainer.max_workers=2"])
    with pytest.warns(UserWarning, match="trainer.resize_interval_s is ignored"):
        compose(["trainer.resize_interval_s=5"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compose(["trainer.min_workers=1", "trainer.max_workers=2"])


def test_checkpoint_write_is_whole_and_loads_weights_only(tmp_path):
    path = tmp_path / "state.pt"
    write_state({"w": torch.arange(4.0), "step": 7}, path=path)
    write_state({"w": torch.ones(4), "step": 8}, path=path)  # replaces, never mixes
    loaded = load_state(path)
    assert loaded["step"] == 8 and torch.equal(loaded["w"], torch.ones(4))
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no partial file left


def test_a_truncated_checkpoint_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "state.pt"
    write_state({"w": torch.randn(1000)}, path=path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # what a crash during a copy leaves
    with pytest.raises(ValueError, match=f"checkpoint {path} is damaged or incomplete"):
        load_state(path)


def test_resume_from_a_damaged_checkpoint_fails_before_ray(tmp_path):
    (tmp_path / "state.pt").write_bytes(b"PK\x03\x04 half a zip")
    with pytest.raises(ValueError, match="damaged or incomplete"):
        compose([f"trainer.resume_from={tmp_path}"])
