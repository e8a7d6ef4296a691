"""Per-sample image transforms run inside Ray Data's map_batches: decode, the train
augmentations (random-resized-crop + flip, or a small random shift) and the val
resize/center-crop. Everything stays uint8 (C, H, W); the float conversion and the
normalisation happen late, on the worker's device (ingest/batches.py).

Randomness is a pure function of (seed, epoch, sample id): `sample_rng` seeds one
generator per sample, so an image's augmentation does not depend on which task, block or
batch it lands in, nor on how many workers read the data.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

# torchvision's default aspect-ratio range for random-resized-crop.
CROP_RATIOS = (3 / 4, 4 / 3)
# Tries at drawing a crop that fits before falling back to the central crop.
CROP_TRIES = 10


class DecodeError(ValueError):
    """The bytes of one sample are not an image we can decode."""


def sample_rng(*, seed: int, epoch: int, sample_id: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, sample_id])


def decode(data: bytes, *, channels: int) -> torch.Tensor:
    """Encoded image bytes (PNG, JPEG, ... anything PIL reads) -> uint8 (C, H, W)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            array = np.asarray(image)
    except Exception as error:  # PIL raises several types for broken files
        raise DecodeError(f"{type(error).__name__}: {error}") from error
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def crop_box(rng: np.random.Generator, *, height: int, width: int,
             min_scale: float) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop covering [min_scale, 1] of the area with an aspect
    ratio drawn log-uniformly from CROP_RATIOS; the central crop when no draw fits."""
    area = height * width
    log_low, log_high = math.log(CROP_RATIOS[0]), math.log(CROP_RATIOS[1])
    for _ in range(CROP_TRIES):
        target = area * rng.uniform(min_scale, 1.0)
        ratio = math.exp(rng.uniform(log_low, log_high))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # Clamp the aspect ratio into range and take the largest central crop.
    ratio = width / height
    if ratio < CROP_RATIOS[0]:
        w, h = width, round(width / CROP_RATIOS[0])
    elif ratio > CROP_RATIOS[1]:
        w, h = round(height * CROP_RATIOS[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def crop_flip(image: torch.Tensor, *, rng: np.random.Generator, size: int,
              min_scale: float) -> torch.Tensor:
    top, left, h, w = crop_box(rng, height=image.shape[1], width=image.shape[2],
                               min_scale=min_scale)
    out = TF.resized_crop(image, top, left, h, w, [size, size],
                          interpolation=InterpolationMode.BILINEAR, antialias=True)
    return TF.horizontal_flip(out) if rng.random() < 0.5 else out


def shift(image: torch.Tensor, *, rng: np.random.Generator, max_px: int) -> torch.Tensor:
    """Translate by up to max_px pixels each way, filling with zeros (digits style)."""
    if max_px == 0:
        return image
    dy, dx = (int(v) for v in rng.integers(-max_px, max_px + 1, size=2))
    out = torch.zeros_like(image)
    height, width = image.shape[1:]
    out[:, max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
        image[:, max(-dy, 0):height + min(-dy, 0), max(-dx, 0):width + min(-dx, 0)]
    return out


def resize_to(image: torch.Tensor, *, size: int) -> torch.Tensor:
    if tuple(image.shape[1:]) == (size, size):
        return image
    return TF.resize(image, [size, size], interpolation=InterpolationMode.BILINEAR,
                     antialias=True)


def center(image: torch.Tensor, *, size: int, crop_fraction: float) -> torch.Tensor:
    """Val: resize the short side to size / crop_fraction, then center-crop size."""
    if crop_fraction >= 1.0:
        return resize_to(image, size=size)
    short = round(size / crop_fraction)
    image = TF.resize(image, short, interpolation=InterpolationMode.BILINEAR, antialias=True)
    return TF.center_crop(image, [size, size])
