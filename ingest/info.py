"""`DatasetInfo`: what every format's builder returns alongside its Datasets, and what
the workers read (class count, channels, sizes, normalisation, the pipeline's state)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    in_channels: int
    num_train: int
    num_val: int
    # Per-channel mean/std of train pixels scaled to [0, 1], for normalisation.
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # The PipelineState actor (epoch for the preprocessing, skipped samples); None when
    # the data needs neither (synthetic).
    state: object = None
    # {"train": ingest.pipeline.SplitRecipe, "val": ...}: what the Datasets are built
    # from, so the trainer's DataConfig can rebuild them for its workers
    # (ingest/sharding.py); None when they are not pipeline Datasets (synthetic).
    recipes: object = None
    # ingest.memory.MemorySplits for a set held in memory (digits), which the workers
    # can preprocess themselves; None for the others.
    in_memory: object = None
