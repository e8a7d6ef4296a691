"""scikit-learn's handwritten digits as a Ray Dataset: 1797 8x8 images upsampled to
the configured size, split train/val (stratified, seeded), kept as uint8 in the pipeline."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

NUM_DIGITS = 1797  # images in sklearn.datasets.load_digits
NUM_CLASSES = 10


def digits_sizes(*, val_fraction: float) -> tuple[int, int]:
    # train_test_split rounds the test share up.
    num_val = math.ceil(NUM_DIGITS * val_fraction)
    return NUM_DIGITS - num_val, num_val


def load_digits_arrays(*, image_size: int, val_fraction: float, seed: int) -> dict:
    """Return uint8 images (N, 1, S, S) and int64 labels for the train and val splits."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # Pixel values are 0..16; bilinear upsampling keeps them in range.
    small = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    large = F.interpolate(small, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = (large.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    labels = digits.target.astype(np.int64)
    ids = np.arange(len(labels), dtype=np.int64)
    train_idx, val_idx = train_test_split(
        ids, test_size=val_fraction, stratify=labels, random_state=seed
    )
    return {
        "train": (images[train_idx], labels[train_idx], ids[train_idx]),
        "val": (images[np.sort(val_idx)], labels[np.sort(val_idx)], np.sort(val_idx)),
    }
