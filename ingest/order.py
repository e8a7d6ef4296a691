"""Which samples each optimizer step trains, as a function of a global position, so that a
run resumed mid-epoch, at the same or another world size, trains every sample of the
epoch exactly once.

The epoch's sequence. Epoch e's units (a sample, or a Parquet row group) are permuted by
(seed, e) (`unit_order`); laid end to end, their rows form the epoch's sample sequence.
Optimizer step s of the epoch trains sequence positions [s * G, (s + 1) * G) (G, the
global batch), whatever the world size: rank r of w takes its contiguous sub-slice, of the
sizes `rank_batch_sizes` gives (they differ by at most one). So the data position of a
run is a global sample count, `step_in_epoch * G`, not a per-worker iterator state: a
group restarted with another world size cuts the remaining steps its own way and still
trains each remaining sample once. The last `num_rows % G` positions of an epoch (a
different set each epoch, with shuffle) are not trained.

Pure numpy, no Ray: the feeds (ingest/memory.py, the Ray Data pipeline) and the tests
share it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np


@functools.lru_cache(maxsize=4)
def unit_order(*, num_units: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Unit at each position for this epoch (cached: every task of an epoch needs it)."""
    if not shuffle:
        return np.arange(num_units)
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(num_units)


def split_sizes(total: int, parts: int) -> list[int]:
    """`parts` sizes summing to `total`, differing by at most one; the first take more."""
    base, extra = divmod(total, parts)
    return [base + 1 if index < extra else base for index in range(parts)]


@dataclass(frozen=True)
class StepSlices:
    """Rank `rank`'s share of every global batch: positions [s * G + offset, ... + size)."""

    global_batch_size: int
    world_size: int
    rank: int

    def __post_init__(self) -> None:
        if self.global_batch_size < self.world_size:
            raise ValueError(f"global batch {self.global_batch_size} cannot be split over "
                             f"{self.world_size} workers (at least one sample each)")

    @property
    def size(self) -> int:
        return split_sizes(self.global_batch_size, self.world_size)[self.rank]

    @property
    def offset(self) -> int:
        return sum(split_sizes(self.global_batch_size, self.world_size)[:self.rank])

    def positions(self, *, first_step: int, stop_step: int) -> np.ndarray:
        """This rank's sequence positions of steps [first_step, stop_step), step by step."""
        steps = np.arange(first_step, stop_step, dtype=np.int64)
        within = np.arange(self.offset, self.offset + self.size, dtype=np.int64)
        return (steps[:, None] * self.global_batch_size + within[None, :]).reshape(-1)

    def step_of(self, positions: np.ndarray) -> np.ndarray:
        return np.asarray(positions, np.int64) // self.global_batch_size


def locate(positions: np.ndarray, *, order: np.ndarray,
           unit_rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Sequence positions -> (unit, row within the unit) for an epoch's `order`.
    `unit_rows`: rows of each unit (None: one sample per unit)."""
    positions = np.asarray(positions, np.int64)
    if unit_rows is None:
        return order[positions], np.zeros(len(positions), np.int64)
    ends = np.cumsum(np.asarray(unit_rows, np.int64)[order])
    index = np.searchsorted(ends, positions, side="right")
    starts = ends[index] - np.asarray(unit_rows, np.int64)[order[index]]
    return order[index], positions - starts


def epoch_steps(*, num_rows: int, global_batch_size: int, max_steps: int | None) -> int:
    """Optimizer steps of one epoch: its full global batches, whatever the world size
    (capped by trainer.max_steps_per_epoch)."""
    steps = num_rows // global_batch_size
    return min(steps, max_steps) if max_steps else steps


def batches_by_step(batches: Iterable[dict], *, first_step: int,
                    num_steps: int) -> Iterator[dict]:
    """One batch per step in [first_step, num_steps) from a stream of row batches (CPU
    tensors) carrying a `step` column in step order, whatever the stream's batch
    boundaries. A step the stream lacks (every one of its samples undecodable) is an
    error: each rank must run every step, or the others wait in a collective."""
    import torch

    expected, parts = first_step, []

    def emit():
        nonlocal expected, parts
        batch = {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
        expected, parts = expected + 1, []
        return batch

    for batch in batches:
        steps = batch["step"].tolist()
        cuts = [0] + [i for i in range(1, len(steps)) if steps[i] != steps[i - 1]] + [len(steps)]
        for start, stop in zip(cuts[:-1], cuts[1:], strict=True):
            if start == stop:
                continue
            step = steps[start]
            if parts and step != expected:
                yield emit()
            if step != expected:
                raise ValueError(f"the input pipeline produced no sample for optimizer step "
                                 f"{expected} of this rank (undecodable files? see the "
                                 "skipped-sample lines)")
            parts.append({key: value[start:stop] for key, value in batch.items()})
    if parts:
        yield emit()
    if expected != num_steps:
        raise ValueError(f"the input pipeline ended after step {expected - 1} of "
                         f"{num_steps}: samples missing (undecodable files?)")
