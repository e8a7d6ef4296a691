"""Per-sample image transforms run inside Ray Data's map_batches: decode, the train
augmentations (random-resized-crop + flip, or a small random shift) and the val
resize/center-crop. Everything stays uint8 (C, H, W); the float conversion and the
normalisation happen late, on the worker's device (trainers/speed.py).

Encoded images (files, Parquet bytes) are decoded at the size the crop needs: the crop box
is drawn on the full size read from the header (`Image.open` decodes nothing), then
`Image.draft` lets libjpeg decode at 1/2, 1/4 or 1/8 scale, the smallest that still gives
the box at least the output's pixels, and one antialiased bilinear resize maps the box (in
the decoded image's coordinates, fractional) straight into the output: no full-size
tensor, no crop copy. A reduced scale needs a box >= 2x the output each way, so a
1000x750 photo at 224 decodes mostly at 1/2, a 500x375 one at full scale; the entropy
decoding, which no scale skips, stays (benchmarks/decode_bench.py). Other formats (PNG,
...) decode at full size through the same resize. Already decoded arrays (the digits)
take the tensor functions (`crop_flip`, `center`, `resize_to`).

Randomness is a pure function of (seed, epoch, sample id): `sample_rng` seeds one
generator per sample, so an image's augmentation does not depend on which task, block or
batch it lands in, nor on how many workers read the data. The draws are the same for both
paths (box, then flip), so an encoded image gets the box it got before decoding at scale.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch

# torchvision is imported in the functions that use it: Ray Train's controller imports this
# module (it unpickles the run's data recipes) but never transforms an image, and
# torchvision's import (about 1.5 s on 2 cores) would delay each worker group's start.

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
    from torchvision.transforms.v2 import functional as TF

    top, left, h, w = crop_box(rng, height=image.shape[1], width=image.shape[2],
                               min_scale=min_scale)
    out = TF.resized_crop(image, top, left, h, w, [size, size],
                          interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
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
    from torchvision.transforms.v2 import functional as TF

    return TF.resize(image, [size, size], interpolation=TF.InterpolationMode.BILINEAR,
                     antialias=True)


def center(image: torch.Tensor, *, size: int, crop_fraction: float) -> torch.Tensor:
    """Val: resize the short side to size / crop_fraction, then center-crop size."""
    if crop_fraction >= 1.0:
        return resize_to(image, size=size)
    from torchvision.transforms.v2 import functional as TF

    short = round(size / crop_fraction)
    image = TF.resize(image, short, interpolation=TF.InterpolationMode.BILINEAR,
                      antialias=True)
    return TF.center_crop(image, [size, size])


# ---- encoded images: decode at the size the crop needs -----------------------------

def open_encoded(data: bytes):
    """A PIL image with only its header read: `.size` is (width, height)."""
    from PIL import Image

    try:
        return Image.open(io.BytesIO(data))
    except Exception as error:  # PIL raises several types for broken files
        raise DecodeError(f"{type(error).__name__}: {error}") from error


def draft_request(*, width: int, height: int, box: tuple, size: int) -> tuple[int, int]:
    """The (width, height) to ask `Image.draft` for: PIL picks the largest reduction s in
    (8, 4, 2, 1) with s <= min(width // w, height // h), so the box, 1/s as large once
    decoded, keeps >= size pixels each way."""
    _, _, box_h, box_w = box
    return (math.ceil(width * size / box_w), math.ceil(height * size / box_h))


def decoded_box(box: tuple, *, scale: float) -> tuple[float, float, float, float]:
    """PIL's (left, top, right, bottom) of a (top, left, h, w) full-size box in an image
    decoded at 1/scale (libjpeg keeps the extent: full x maps to x / scale)."""
    top, left, h, w = box
    return (left / scale, top / scale, (left + w) / scale, (top + h) / scale)


def resized_region(image, *, box: tuple, size: int, channels: int) -> np.ndarray:
    """The (top, left, h, w) box of an `open_encoded` image resized to (size, size, C)
    uint8, decoded at the smallest scale that keeps the box >= size pixels."""
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    width, height = image.size
    try:
        # None for formats without draft (all but JPEG): decoded at full size.
        drafted = image.draft(mode, draft_request(width=width, height=height, box=box,
                                                  size=size))
        scale = width / drafted[1][2] if drafted else 1.0
        if image.mode != mode:
            image = image.convert(mode)
        out = image.resize((size, size), Image.Resampling.BILINEAR,
                           box=decoded_box(box, scale=scale))
        array = np.asarray(out)
    except Exception as error:  # truncated data, bad tiles: raised when decoding
        raise DecodeError(f"{type(error).__name__}: {error}") from error
    return array[:, :, None] if array.ndim == 2 else array


def center_box(*, height: int, width: int, size: int,
               crop_fraction: float) -> tuple[float, float, float, float]:
    """The full-size (top, left, h, w) that `center` maps to its output: the short side
    resized to size / crop_fraction, the central size x size; the whole image at 1.0."""
    if crop_fraction >= 1.0:
        return 0.0, 0.0, float(height), float(width)
    extent = size * min(height, width) / round(size / crop_fraction)
    return (height - extent) / 2, (width - extent) / 2, extent, extent


def encoded_crop_flip(data: bytes, *, rng: np.random.Generator, size: int, min_scale: float,
                      channels: int) -> np.ndarray:
    """`crop_flip` of encoded bytes: (C, size, size) uint8, a view (no copy made here)."""
    image = open_encoded(data)
    width, height = image.size
    box = crop_box(rng, height=height, width=width, min_scale=min_scale)
    out = resized_region(image, box=box, size=size, channels=channels)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return out.transpose(2, 0, 1)


def encoded_center(data: bytes, *, size: int, crop_fraction: float,
                   channels: int) -> np.ndarray:
    """`center` (or, crop_fraction 1, `resize_to`) of encoded bytes: (C, size, size)."""
    image = open_encoded(data)
    width, height = image.size
    box = center_box(height=height, width=width, size=size, crop_fraction=crop_fraction)
    return resized_region(image, box=box, size=size, channels=channels).transpose(2, 0, 1)
