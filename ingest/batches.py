"""Worker-side batch handling: the uint8 batches from Ray Data become normalised float
tensors on the device, with the seeded train augmentation (random translation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def normalize(images_u8: torch.Tensor, *, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    # Float conversion happens late, on the device, so the pipeline moves 4x fewer bytes.
    return (images_u8.float().div_(255.0) - mean) / std


def random_shift(images: torch.Tensor, *, max_shift_px: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to max_shift_px pixels (zero padding), drawn from generator."""
    if max_shift_px == 0:
        return images
    batch, _, height, width = images.shape
    padded = F.pad(images, [max_shift_px] * 4)
    offsets = torch.randint(0, 2 * max_shift_px + 1, (batch, 2), generator=generator)
    # Gather crops with one indexing op: rows/cols grids offset per sample.
    rows = offsets[:, 0, None] + torch.arange(height)
    cols = offsets[:, 1, None] + torch.arange(width)
    index = torch.arange(batch)[:, None, None]
    cropped = padded.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]]
    return cropped.permute(0, 3, 1, 2).contiguous()
