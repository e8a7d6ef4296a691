"""The builders behind ingest/formats.py: each format's train and val Ray Datasets and
their `DatasetInfo`. digits and the file formats go through the shared pipeline
(ingest/pipeline.py); synthetic generates its images in a plain map_batches. `config` is an
ingest.config.DataConfig (not imported: ingest/config.py imports the registry that
imports this module)."""

from __future__ import annotations

from types import ModuleType

import numpy as np

from ingest.info import DatasetInfo
from ingest.listing import SPLITS

# Per-channel statistics of ImageNet, the default normalisation of the file formats.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def file_sizes(config, *, reader: ModuleType) -> tuple[int, int]:
    # Listing checks the files: a bad data.path fails here, before Ray starts.
    listings = reader.list_dataset(root=config.path, num_classes=config.num_classes)
    return listings["train"].num_rows, listings["val"].num_rows


def file_datasets(config, *, reader: ModuleType, seed: int) -> tuple[dict, DatasetInfo]:
    """imagefolder/parquet: `reader` lists data.path and makes each split's source."""
    listings = reader.list_dataset(root=config.path, num_classes=config.num_classes)
    sources = {split: reader.make_source(listing) for split, listing in listings.items()}
    num_rows = {split: listing.num_rows for split, listing in listings.items()}
    datasets, state, recipes = _splits(config, sources=sources, num_rows=num_rows,
                                       channels=config.channels,
                                       crop_fraction=config.val_crop_fraction, seed=seed)
    gray = config.channels == 1
    default_mean = (float(np.mean(IMAGENET_MEAN)),) if gray else IMAGENET_MEAN
    default_std = (float(np.mean(IMAGENET_STD)),) if gray else IMAGENET_STD
    info = DatasetInfo(
        num_classes=config.num_classes or reader.num_classes_of(listings),
        in_channels=config.channels,
        num_train=num_rows["train"],
        num_val=num_rows["val"],
        mean=tuple(config.mean) if config.mean else default_mean,
        std=tuple(config.std) if config.std else default_std,
        state=state,
        recipes=recipes,
    )
    return datasets, info


def digits_datasets(config, *, seed: int, in_workers: bool = False) -> tuple[dict, DatasetInfo]:
    """The digits as Ray Datasets, or, `in_workers`, only as the `MemorySplits` the
    workers preprocess themselves (no Datasets, no PipelineState actor to start)."""
    import ray

    from ingest.digits import NUM_CLASSES, load_digits_arrays
    from ingest.memory import MemorySplits
    from ingest.pipeline import ArraySource

    arrays = load_digits_arrays(
        image_size=config.image_size, val_fraction=config.val_fraction, seed=seed
    )
    sources = {split: ArraySource(ray.put(images), labels, ids)
               for split, (images, labels, ids) in arrays.items()}
    num_rows = {split: len(labels) for split, (_, labels, _) in arrays.items()}
    datasets, state, recipes = {}, None, None
    if not in_workers:
        # The images are already image_size: val needs no resize or crop.
        datasets, state, recipes = _splits(config, sources=sources, num_rows=num_rows,
                                           channels=1, crop_fraction=1.0, seed=seed)
    specs = {split: _spec(config, train=split == "train", channels=1, crop_fraction=1.0)
             for split in SPLITS}
    train_pixels = arrays["train"][0].astype(np.float64) / 255.0
    info = DatasetInfo(
        num_classes=NUM_CLASSES,
        in_channels=1,
        num_train=len(arrays["train"][1]),
        num_val=len(arrays["val"][1]),
        mean=(float(train_pixels.mean()),),
        std=(float(train_pixels.std()),),
        state=state,
        recipes=recipes,
        in_memory=MemorySplits(train=sources["train"], val=sources["val"],
                               train_spec=specs["train"], val_spec=specs["val"], seed=seed,
                               shuffle=config.shuffle),
    )
    return datasets, info


def synthetic_datasets(config, *, seed: int) -> tuple[dict, DatasetInfo]:
    import ray.data

    from ingest.synthetic import synthetic_batch

    datasets, cpus, sizing = {}, build_cpus(config), sizing_of(config)
    for split, count, split_seed in (
        ("train", config.num_train_samples, seed),
        ("val", config.num_val_samples, seed + 1),
    ):
        # Blocks for the cluster's CPUs, as the pipeline's (generated: no per-epoch order).
        blocks = sizing.count(num_rows=count, num_units=count, cpus=cpus)
        datasets[split] = ray.data.range(count, override_num_blocks=blocks).map_batches(
            synthetic_batch,
            fn_kwargs={"image_size": config.image_size, "num_classes": config.num_classes,
                       "seed": split_seed},
            batch_size=64,
        )
    info = DatasetInfo(
        num_classes=config.num_classes,
        in_channels=3,
        num_train=config.num_train_samples,
        num_val=config.num_val_samples,
        mean=(0.5, 0.5, 0.5),
        std=(0.29, 0.29, 0.29),  # uniform on [0, 1]: std = 1/sqrt(12)
    )
    return datasets, info


def _spec(config, *, train: bool, channels: int, crop_fraction: float):
    from ingest.pipeline import TransformSpec

    return TransformSpec(
        train=train, augment=config.augment, size=config.image_size, channels=channels,
        max_shift_px=config.max_shift_px, min_crop_scale=config.min_crop_scale,
        val_crop_fraction=crop_fraction, on_error=config.on_error)


def sizing_of(config):
    """data.num_blocks, rows_per_block, preprocess_batch_size, blocks_per_cpu as the
    block sizing (ingest/sizing.py)."""
    from ingest.sizing import BlockSizing

    return BlockSizing(min_blocks=config.num_blocks, max_rows=config.rows_per_block,
                       min_rows=config.preprocess_batch_size,
                       blocks_per_cpu=config.blocks_per_cpu)


def build_cpus(config) -> int:
    """The CPUs the Datasets made here are sized for: data.preprocess_cpus, else the
    whole cluster's (no training workers are known yet; the trainer's DataConfig sizes
    its own copies for the CPUs they leave, ingest/sharding.py)."""
    import ray

    return config.preprocess_cpus or max(1, int(ray.cluster_resources().get("CPU", 1)))


def _splits(config, *, sources: dict, num_rows: dict, channels: int,
            crop_fraction: float, seed: int):
    """The train and val Datasets over `sources`, the PipelineState they share, and the
    recipes they are built from (DatasetInfo.recipes)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from ingest.pipeline import PipelineState, SplitRecipe, build_split

    # On the driver's node, which outlives worker nodes that leave an elastic run (the
    # restarted workers still find the epoch and skip counts there).
    state = PipelineState.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        ray.get_runtime_context().get_node_id(), soft=True)).remote()
    recipes = {
        split: SplitRecipe(
            source=sources[split],
            spec=_spec(config, train=split == "train", channels=channels,
                       crop_fraction=crop_fraction),
            state=state, split=split, seed=seed, shuffle=config.shuffle,
            num_rows=num_rows[split], sizing=sizing_of(config),
            chunk_rows=config.preprocess_batch_size, preprocess_cpus=config.preprocess_cpus)
        for split in SPLITS
    }
    cpus = build_cpus(config)
    datasets = {split: build_split(recipe, cpus=cpus) for split, recipe in recipes.items()}
    return datasets, state, recipes
