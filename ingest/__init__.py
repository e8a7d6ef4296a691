"""The input pipeline: builds the Ray Datasets handed to Ray Train and describes them.

Formats (`data=`, registered in ingest/formats.py): `digits` (scikit-learn's set, in
memory), `imagefolder` and `parquet` (`data.path`, see their modules) and `synthetic`
(random images, for throughput runs). Every format but synthetic goes through
ingest/pipeline.py: a range of positions mapped to samples, decoded and augmented in
`map_batches` on the cluster's CPUs, uint8 to the worker, which normalises on its device
(`trainers.speed.model_input`). The digits set can be written to disk in the file formats with
ingest/prepare.py.

Public API: `dataset_sizes` (sizes and path checks before Ray starts), `build_datasets`
(the Datasets and their `DatasetInfo`), `announce_epoch` (the worker's epoch, for the
preprocessing), `num_skipped` (undecodable samples dropped so far), `trainer_data_config`
(the `ray.train.DataConfig` that shards the splits over the workers, ingest/sharding.py).
Importing this package is cheap (no torch, no Ray): the config check imports it.
"""

from __future__ import annotations

from ingest.config import DataConfig
from ingest.formats import FORMATS, format_of
from ingest.info import DatasetInfo

__all__ = ["DatasetInfo", "announce_epoch", "build_datasets", "dataset_sizes", "num_skipped",
           "trainer_data_config"]


def announce_epoch(info: DatasetInfo, *, epoch: int, first_step: int = 0) -> None:
    """Call on every worker before reading epoch `epoch` of the train split (from its
    optimizer step `first_step` on, for a resumed epoch)."""
    from ingest.pipeline import announce_epoch as announce

    announce(info.state, epoch=epoch, first_step=first_step)


def num_skipped(info: DatasetInfo) -> int:
    """Distinct samples dropped as undecodable so far (train and val)."""
    if info.state is None:
        return 0
    import ray

    return ray.get(info.state.num_skipped.remote())


def dataset_sizes(config: DataConfig) -> tuple[int, int]:
    """(num_train, num_val) without loading the data, for validation before Ray starts."""
    return format_of(config.name).sizes(config)


def build_datasets(config: DataConfig, *, seed: int,
                   in_workers: bool = False) -> tuple[dict, DatasetInfo]:
    """Return ({"train": ray.data.Dataset, "val": ...}, DatasetInfo). Needs Ray running.
    `in_workers` (an in-memory format the workers preprocess themselves): no Datasets,
    and DatasetInfo.in_memory holds what the workers need."""
    return FORMATS.build(config.name, config=config, seed=seed, in_workers=in_workers)


def trainer_data_config(info: DatasetInfo, *, config: DataConfig, cpus_per_worker: float,
                        global_batch_size: int, max_steps: int | None = None):
    """The `ray.train.DataConfig` for the Datasets of `build_datasets`: train as each
    rank's share of every global batch (ingest/order.py), sized for the CPUs the workers
    leave; val once, a slice per rank."""
    from ingest.sharding import IngestDataConfig

    return IngestDataConfig(recipes=info.recipes, cpus_per_worker=cpus_per_worker,
                            preprocess_cpus=config.preprocess_cpus,
                            global_batch_size=global_batch_size, max_steps=max_steps)
