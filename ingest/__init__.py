"""The input pipeline: builds the Ray Datasets handed to Ray Train and describes them.

For now the in-memory digits set and a synthetic set; the ingest issue adds ImageFolder
and Parquet readers with decode/augment in `map_batches`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ingest.config import DataConfig
from ingest.digits import NUM_CLASSES as DIGITS_CLASSES
from ingest.digits import digits_sizes, load_digits_arrays
from ingest.synthetic import synthetic_batch


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


def dataset_sizes(config: DataConfig, *, seed: int) -> tuple[int, int]:
    """(num_train, num_val) without loading the data, for validation before Ray starts."""
    del seed  # the split sizes do not depend on it
    if config.name == "digits":
        return digits_sizes(val_fraction=config.val_fraction)
    return config.num_train_samples, config.num_val_samples


def build_datasets(config: DataConfig, *, seed: int) -> tuple[dict, DatasetInfo]:
    """Return ({"train": ray.data.Dataset, "val": ...}, DatasetInfo). Needs Ray running."""
    if config.name == "digits":
        return _digits(config, seed=seed)
    return _synthetic(config, seed=seed)


def _digits(config: DataConfig, *, seed: int) -> tuple[dict, DatasetInfo]:
    import ray.data

    arrays = load_digits_arrays(
        image_size=config.image_size, val_fraction=config.val_fraction, seed=seed
    )
    datasets = {}
    for split, (images, labels, ids) in arrays.items():
        rows = [{"image": img, "label": lab, "id": i} for img, lab, i in zip(images, labels, ids, strict=True)]
        datasets[split] = ray.data.from_items(rows, override_num_blocks=config.num_blocks)
    train_pixels = arrays["train"][0].astype(np.float64) / 255.0
    info = DatasetInfo(
        num_classes=DIGITS_CLASSES,
        in_channels=1,
        image_size=config.image_size,
        num_train=len(arrays["train"][1]),
        num_val=len(arrays["val"][1]),
        mean=(float(train_pixels.mean()),),
        std=(float(train_pixels.std()),),
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
