"""Synthetic images for throughput runs: generated inside Ray Data from each row's id, so
the set is the same on every run and never has to be held by the driver."""

from __future__ import annotations

import numpy as np


def synthetic_batch(batch: dict, *, image_size: int, num_classes: int, seed: int) -> dict:
    ids = batch["id"].astype(np.int64)
    images = np.empty((len(ids), 3, image_size, image_size), dtype=np.uint8)
    labels = np.empty(len(ids), dtype=np.int64)
    for row, sample_id in enumerate(ids):
        rng = np.random.default_rng([seed, int(sample_id)])
        images[row] = rng.integers(0, 256, size=images.shape[1:], dtype=np.uint8)
        labels[row] = rng.integers(0, num_classes)
    return {"image": images, "label": labels, "id": ids}
