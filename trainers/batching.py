"""Batch arithmetic that keeps the optimisation the same whatever the world size: how the
global batch is split over the ranks, how many steps an epoch has, and how each rank
weights its loss.

Ray Train restarts an elastic worker group with a new world size; the run must go on as
if nothing happened: the same `trainer.global_batch_size` per optimizer step, and an LR
schedule that follows the global step (samples seen / global batch), not the epochs of
any one world size.

The rule where the global batch does not divide by the world size: the ranks take
batches that differ by at most one sample (`rank_batch_sizes`), and each rank scales its
mean loss by `batch * world / global_batch`. The gradient sync averages over the ranks,
so the synced gradient is exactly the mean over the global batch, as if it had divided.
Where it divides the factor is 1.0 and nothing changes. (BatchNorm statistics stay
per rank, as in any data-parallel run.)
"""

from __future__ import annotations

from ingest.order import epoch_steps, split_sizes


def rank_batch_sizes(*, global_batch_size: int, world_size: int) -> list[int]:
    """Per-rank batch sizes summing to the global batch; the first ranks take one more."""
    if world_size < 1 or global_batch_size < world_size:
        raise ValueError(f"global batch {global_batch_size} cannot be split over "
                         f"{world_size} workers (at least one sample each)")
    return split_sizes(global_batch_size, world_size)


def loss_weight(*, global_batch_size: int, world_size: int, rank: int) -> float:
    """Factor on rank's mean loss so the world-averaged gradient is the global-batch mean."""
    batch = rank_batch_sizes(global_batch_size=global_batch_size, world_size=world_size)[rank]
    return batch * world_size / global_batch_size


def steps_per_epoch(*, num_train: int, world_size: int, global_batch_size: int,
                    max_steps: int | None) -> int:
    """Full global batches in one epoch at this world size: each rank's equal shard of
    num_train // world_size rows, cut into that rank's batches; the largest batch decides.
    What is left over differs each epoch (shuffled), so no sample is always dropped."""
    largest = max(rank_batch_sizes(global_batch_size=global_batch_size, world_size=world_size))
    steps = (num_train // world_size) // largest
    return min(steps, max_steps) if max_steps else steps


def nominal_steps_per_epoch(*, num_train: int, global_batch_size: int,
                            max_steps: int | None) -> int:
    """Steps per epoch, independent of the world size: one epoch of samples in global
    batches. The step-aligned feeds (ingest/order.py: the pipeline's formats and the
    in-memory sets) run exactly these; the LR schedule follows them too. (Synthetic data,
    split by Ray, runs `steps_per_epoch`, up to global_batch / (global_batch + world) of
    them where the world size does not divide the global batch.)"""
    return epoch_steps(num_rows=num_train, global_batch_size=global_batch_size,
                       max_steps=max_steps)
