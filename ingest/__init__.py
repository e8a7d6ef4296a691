"""The input pipeline: builds the Ray Datasets handed to Ray Train and describes them.

Formats (`data=`): `digits` (scikit-learn's set, in memory), `imagefolder` and `parquet`
(`data.path`, see their modules) and `synthetic` (random images, for throughput runs).
Every format but synthetic goes through ingest/pipeline.py: a range of positions mapped
to samples, decoded and augmented in `map_batches` on the cluster's CPUs, uint8 to the
worker, which normalises on its device (ingest/batches.py).

Public API: `dataset_sizes` (sizes and path checks before Ray starts), `build_datasets`
(the Datasets and their `DatasetInfo`), `announce_epoch` (the worker's epoch, for the
preprocessing), `num_skipped` (undecodable samples dropped so far).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ingest.config import DataConfig
from ingest.digits import NUM_CLASSES as DIGITS_CLASSES
from ingest.digits import digits_sizes, load_digits_arrays
from ingest.synthetic import synthetic_batch

# Per-channel statistics of ImageNet, the default normalisation of the file formats.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    in_channels: int
    image_size: int
    num_train: int
    num_val: int
    # Per-channel mean/std of train pixels scaled to [0, 1], for normalisation.
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # The PipelineState actor (epoch for the preprocessing, skipped samples); None when
    # the data needs neither (synthetic).
    state: object = None


def announce_epoch(info: DatasetInfo, *, epoch: int) -> None:
    """Call on every worker before reading epoch `epoch` of the train split."""
    from ingest.pipeline import announce_epoch as announce

    announce(info.state, epoch=epoch)


def num_skipped(info: DatasetInfo) -> int:
    """Distinct samples dropped as undecodable so far (train and val)."""
    if info.state is None:
        return 0
    import ray

    return ray.get(info.state.num_skipped.remote())


def dataset_sizes(config: DataConfig, *, seed: int) -> tuple[int, int]:
    """(num_train, num_val) without loading the data, for validation before Ray starts."""
    del seed  # the split sizes do not depend on it
    if config.name == "digits":
        return digits_sizes(val_fraction=config.val_fraction)
    if config.reads_path:
        # Lists (and so checks) the files: a bad data.path fails here, before Ray starts.
        listings = _list_files(config)
        return _num_rows(listings["train"]), _num_rows(listings["val"])
    return config.num_train_samples, config.num_val_samples


def build_datasets(config: DataConfig, *, seed: int) -> tuple[dict, DatasetInfo]:
    """Return ({"train": ray.data.Dataset, "val": ...}, DatasetInfo). Needs Ray running."""
    if config.name == "digits":
        return _digits(config, seed=seed)
    if config.reads_path:
        return _files(config, seed=seed)
    return _synthetic(config, seed=seed)


def _list_files(config: DataConfig) -> dict:
    from ingest import imagefolder, parquet

    module = imagefolder if config.name == "imagefolder" else parquet
    return module.list_dataset(root=config.path, num_classes=config.num_classes)


def _num_rows(listing) -> int:
    return len(listing.labels) if hasattr(listing, "labels") else listing.num_rows


def _spec(config: DataConfig, *, train: bool, channels: int, crop_fraction: float):
    from ingest.pipeline import TransformSpec

    return TransformSpec(
        train=train, augment=config.augment, size=config.image_size, channels=channels,
        max_shift_px=config.max_shift_px, min_crop_scale=config.min_crop_scale,
        val_crop_fraction=crop_fraction, on_error=config.on_error)


def _splits(config: DataConfig, *, sources: dict, num_rows: dict, channels: int,
            crop_fraction: float, seed: int):
    """The train and val Datasets over `sources`, and the PipelineState they share."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from ingest.pipeline import PipelineState, build_split

    # On the driver's node, which outlives worker nodes that leave an elastic run (the
    # restarted workers still find the epoch and skip counts there).
    state = PipelineState.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        ray.get_runtime_context().get_node_id(), soft=True)).remote()
    datasets = {
        split: build_split(
            source=sources[split],
            spec=_spec(config, train=split == "train", channels=channels,
                       crop_fraction=crop_fraction),
            state=state, split=split, seed=seed, shuffle=config.shuffle,
            num_rows=num_rows[split], num_blocks=config.num_blocks,
            rows_per_block=config.rows_per_block, chunk_rows=config.preprocess_batch_size,
            preprocess_cpus=config.preprocess_cpus)
        for split in ("train", "val")
    }
    return datasets, state


def _files(config: DataConfig, *, seed: int) -> tuple[dict, DatasetInfo]:
    from ingest.imagefolder import FolderSource
    from ingest.parquet import ParquetSource, num_classes_of

    listings = _list_files(config)
    if config.name == "imagefolder":
        sources = {split: FolderSource.put(listing) for split, listing in listings.items()}
        found_classes = len(listings["train"].classes)
    else:
        sources = {split: ParquetSource(listing) for split, listing in listings.items()}
        found_classes = num_classes_of(listings)
    num_rows = {split: _num_rows(listing) for split, listing in listings.items()}
    datasets, state = _splits(config, sources=sources, num_rows=num_rows,
                              channels=config.channels, crop_fraction=config.val_crop_fraction,
                              seed=seed)
    gray = config.channels == 1
    default_mean = (float(np.mean(IMAGENET_MEAN)),) if gray else IMAGENET_MEAN
    default_std = (float(np.mean(IMAGENET_STD)),) if gray else IMAGENET_STD
    info = DatasetInfo(
        num_classes=config.num_classes or found_classes,
        in_channels=config.channels,
        image_size=config.image_size,
        num_train=num_rows["train"],
        num_val=num_rows["val"],
        mean=tuple(config.mean) if config.mean else default_mean,
        std=tuple(config.std) if config.std else default_std,
        state=state,
    )
    return datasets, info


def _digits(config: DataConfig, *, seed: int) -> tuple[dict, DatasetInfo]:
    import ray

    from ingest.pipeline import ArraySource

    arrays = load_digits_arrays(
        image_size=config.image_size, val_fraction=config.val_fraction, seed=seed
    )
    sources = {split: ArraySource(ray.put(images), labels, ids)
               for split, (images, labels, ids) in arrays.items()}
    num_rows = {split: len(labels) for split, (_, labels, _) in arrays.items()}
    # The images are already image_size: val needs no resize or crop.
    datasets, state = _splits(config, sources=sources, num_rows=num_rows, channels=1,
                              crop_fraction=1.0, seed=seed)
    train_pixels = arrays["train"][0].astype(np.float64) / 255.0
    info = DatasetInfo(
        num_classes=DIGITS_CLASSES,
        in_channels=1,
        image_size=config.image_size,
        num_train=len(arrays["train"][1]),
        num_val=len(arrays["val"][1]),
        mean=(float(train_pixels.mean()),),
        std=(float(train_pixels.std()),),
        state=state,
    )
    return datasets, info


def _synthetic(config: DataConfig, *, seed: int) -> tuple[dict, DatasetInfo]:
    import ray.data

    datasets = {}
    for split, count, split_seed in (
        ("train", config.num_train_samples, seed),
        ("val", config.num_val_samples, seed + 1),
    ):
        datasets[split] = ray.data.range(count, override_num_blocks=config.num_blocks).map_batches(
            synthetic_batch,
            fn_kwargs={"image_size": config.image_size, "num_classes": config.num_classes,
                       "seed": split_seed},
            batch_size=64,
        )
    info = DatasetInfo(
        num_classes=config.num_classes,
        in_channels=3,
        image_size=config.image_size,
        num_train=config.num_train_samples,
        num_val=config.num_val_samples,
        mean=(0.5, 0.5, 0.5),
        std=(0.29, 0.29, 0.29),  # uniform on [0, 1]: std = 1/sqrt(12)
    )
    return datasets, info
