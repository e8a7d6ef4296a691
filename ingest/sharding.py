"""How the splits reach the training workers: `IngestDataConfig`, the `ray.train.DataConfig`
job/trainer.py hands to the TorchTrainer (`ingest.trainer_data_config`).

Ray Train calls `configure` for each split when a worker group starts (again after every
restart or resize), with the group's world size. The Datasets given to the trainer are the
templates; the recipes they were built from (DatasetInfo.recipes) are rebuilt here:

- train: one Dataset per rank over its share of every optimizer step (ingest/order.py:
  step s trains positions [s * G, (s + 1) * G) of the epoch's sequence, whatever the world
  size, so a resume mid-epoch at any world size trains each remaining sample once), in
  blocks of whole steps sized for 1/world of the CPUs the workers leave (the cluster's
  CPUs minus world size x trainer.cpus_per_worker, or data.preprocess_cpus;
  ingest/sizing.py), so the tasks per epoch grow with the cluster and follow a resize.
  Generated data (synthetic, no recipe): Ray's equal streaming split.
- val: one Dataset per rank over its contiguous slice of the val units,
  [r * n // w, (r + 1) * n // w). Every val sample is decoded and evaluated once per
  evaluation, by a rank fixed by (n, w), and the shares differ by at most one unit (a
  Parquet row group; a sample otherwise). Why not one Dataset: a plain iterator reads it
  whole on every worker (as before: each worker decoded all of val and kept 1/world of
  the batches), and streaming_split(equal=False) drops nothing but deals whole output
  blocks (up to 128 MiB, ~850 images at 224 px) to the worker with the fewest rows, so on
  a large cluster most workers get none and a few get a block each. `configure` may
  return any iterator per rank, so it builds a Dataset per rank from the recipe; each
  runs in its worker's own executor, sized for 1/world of the spare CPUs.
- Without recipes (synthetic data): val through streaming_split(equal=False), still once
  per sample, and deterministic with preserve_order.

Determinism: which samples each step trains is a function of (seed, epoch, step, global
batch) only; the block layout (a function of the world size and the CPU count) decides
only which task preprocesses them.
"""

from __future__ import annotations

import copy

from ray.train import DataConfig

from ingest.order import StepSlices, epoch_steps
from ingest.pipeline import build_split, build_train_shard
from ingest.sizing import rank_slices


def spare_cpus(*, cluster_cpus: float, world_size: int, cpus_per_worker: float,
               preprocess_cpus: int | None) -> int:
    """The CPUs the pipeline may use: data.preprocess_cpus, else those the workers leave
    (at least 1: the tasks then queue behind each other, and still run)."""
    if preprocess_cpus:
        return preprocess_cpus
    return max(1, int(cluster_cpus - world_size * cpus_per_worker))


class IngestDataConfig(DataConfig):
    """Train split equally and sized for the spare CPUs; val read once, a slice per rank."""

    def __init__(self, *, recipes: dict | None, cpus_per_worker: float,
                 preprocess_cpus: int | None, global_batch_size: int,
                 max_steps: int | None = None, execution_options=None):
        from ray.data import ExecutionOptions

        # preserve_order: the split, and so each worker's data, is deterministic.
        self._options = execution_options or ExecutionOptions(preserve_order=True)
        super().__init__(datasets_to_split=["train", "val"], execution_options=self._options)
        self._recipes = dict(recipes or {})
        self._cpus_per_worker = cpus_per_worker
        self._preprocess_cpus = preprocess_cpus
        self._global_batch_size, self._max_steps = global_batch_size, max_steps

    def spare_cpus(self, world_size: int) -> int:
        import ray

        return spare_cpus(cluster_cpus=ray.cluster_resources().get("CPU", 0.0),
                          world_size=world_size, cpus_per_worker=self._cpus_per_worker,
                          preprocess_cpus=self._preprocess_cpus)

    def configure(self, datasets: dict, world_size: int, worker_handles, worker_node_ids,
                  **kwargs) -> list[dict]:
        output = [{} for _ in range(world_size)]
        cpus = self.spare_cpus(world_size)
        for name, dataset in datasets.items():
            if name == "val":
                shards = self.val_shards(dataset, world_size=world_size, cpus=cpus)
            elif name in self._recipes:
                shards = self.train_shards(self._recipes[name], world_size=world_size,
                                           cpus=cpus)
            else:  # generated data (synthetic): Ray's equal streaming split
                split = super().configure({name: dataset}, world_size, worker_handles,
                                          worker_node_ids, **kwargs)
                shards = [per_rank[name] for per_rank in split]
            for rank, shard in enumerate(shards):
                output[rank][name] = shard
        return output

    def train_shards(self, recipe, *, world_size: int, cpus: int) -> list:
        """One iterator per rank over its share of every step (ingest/order.py)."""
        num_steps = epoch_steps(num_rows=recipe.num_rows, global_batch_size=self._global_batch_size,
                                max_steps=self._max_steps)
        shards = []
        for rank in range(world_size):
            slices = StepSlices(global_batch_size=self._global_batch_size,
                                world_size=world_size, rank=rank)
            shard = build_train_shard(recipe, cpus=max(1, cpus // world_size), slices=slices,
                                      num_steps=num_steps)
            shard.set_name(f"train_rank{rank}")
            shard.context.execution_options = copy.deepcopy(self._options)
            shards.append(shard.iterator())
        return shards

    def val_shards(self, dataset, *, world_size: int, cpus: int) -> list:
        """One iterator per rank, together reading every val sample once."""
        recipe = self._recipes.get("val")
        if recipe is None:
            dataset = dataset.copy(dataset)
            dataset.context.execution_options = copy.deepcopy(self._options)
            return dataset.streaming_split(world_size, equal=False)
        shards = []
        for rank, units in enumerate(rank_slices(recipe.source.num_units, world_size)):
            shard = build_split(recipe, cpus=max(1, cpus // world_size), units=units)
            shard.set_name(f"val_rank{rank}")
            shard.context.execution_options = copy.deepcopy(self._options)
            shards.append(shard.iterator())
        return shards
