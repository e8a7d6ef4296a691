"""In-process preprocessing: each training worker maps its own shard of an in-memory set
(the digits) through the same per-sample transforms the Ray Data tasks run, with no tasks,
no object-store copies and no per-epoch pipeline start-up.

Why: for a decoded set whose per-sample work is cheap, a Ray Data task costs more than the
work it carries, and on a small cluster the tasks take cores from the training processes
(BENCHMARKS.md, framework tax). `use_worker_preprocessing` decides from the cluster's CPUs,
the workers' share of them and the format; large or encoded sets keep the pipeline.

Same guarantees as the pipeline: step s of epoch e trains the positions
[s * G, (s + 1) * G) of a permutation seeded by (seed, e) (`ingest.order`), rank r taking
its contiguous share, so a run resumed mid-epoch at any world size trains each remaining
sample once; each sample's augmentation is seeded by (seed, e, sample id). Validation:
rank r evaluates its contiguous slice of the val set ([r * n // w, (r + 1) * n // w)), so
every val sample is decoded and evaluated once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ingest.info import DatasetInfo
from ingest.order import StepSlices, unit_order
from ingest.pipeline import ArraySource, TransformSpec, cached_get
from ingest.sizing import rank_slices


@dataclass(frozen=True)
class MemorySplits:
    """What a worker needs to preprocess an in-memory set itself (picklable: the images
    stay one ObjectRef per split in the object store)."""

    train: ArraySource
    val: ArraySource
    train_spec: TransformSpec
    val_spec: TransformSpec
    seed: int
    shuffle: bool


def use_worker_preprocessing(*, choice: str, in_memory: bool, cluster_cpus: float,
                             training_cpus: float, num_workers: int) -> bool:
    """`data.preprocess_on`: `workers`/`tasks` as asked (workers only for a set held in
    memory); `auto`: in the workers when the set is in memory and the cluster has less
    than one spare CPU per worker for tasks."""
    if not in_memory or choice == "tasks":
        return False
    return choice == "workers" or cluster_cpus - training_cpus < num_workers


class MemoryFeed:
    """A rank's `trainers.worker.DataFeed` over `MemorySplits`."""

    name = "workers"  # where the preprocessing runs (summary.json's `data_feed`)
    step_aligned = True  # runs `ingest.order`'s steps: exact mid-epoch resume

    def __init__(self, splits: MemorySplits, info: DatasetInfo, *, rank: int, world_size: int,
                 device: torch.device):
        self.splits, self.rank, self.world_size, self.device = splits, rank, world_size, device
        self.num_classes, self.in_channels = info.num_classes, info.in_channels
        self.num_train, self.mean, self.std = info.num_train, info.mean, info.std

    def train_batches(self, *, epoch: int, slices: StepSlices, first_step: int,
                      num_steps: int) -> Iterator[dict]:
        source, splits = self.splits.train, self.splits
        order = unit_order(num_units=source.num_units, seed=splits.seed, epoch=epoch,
                           shuffle=splits.shuffle)
        for step in range(first_step, num_steps):
            positions = slices.positions(first_step=step, stop_step=step + 1)
            yield self._batch(source, order[positions], spec=splits.train_spec, epoch=epoch)

    def val_batches(self, *, batch_size: int) -> Iterator[dict]:
        source = self.splits.val
        start, stop = rank_slices(source.num_units, self.world_size)[self.rank]
        mine = np.arange(start, stop)
        for start in range(0, len(mine), batch_size):
            yield self._batch(source, mine[start:start + batch_size],
                              spec=self.splits.val_spec, epoch=0)

    def _batch(self, source: ArraySource, units: np.ndarray, *, spec: TransformSpec,
               epoch: int) -> dict:
        images = cached_get(source.images)
        out = torch.empty((len(units), *images.shape[1:]), dtype=torch.uint8)
        for row, unit in enumerate(units):
            sample = source.sample(int(unit), images)
            out[row] = spec.apply(sample, seed=self.splits.seed, epoch=epoch)
        return {"image": out.to(self.device, non_blocking=True),
                "label": torch.from_numpy(source.labels[units]).to(self.device),
                "id": torch.from_numpy(source.ids[units])}

    def num_skipped(self) -> int:
        return 0  # decoded arrays: nothing to fail decoding
