"""Worker-side batch handling: the uint8 batches from Ray Data become normalised float
tensors on the worker's device. Augmentation happens earlier, in the pipeline's
map_batches (ingest/pipeline.py); only the float conversion is left this late, so the
pipeline and the host-to-device copy move 4x fewer bytes."""

from __future__ import annotations

import torch


def normalize(images_u8: torch.Tensor, *, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (images_u8.float().div_(255.0) - mean) / std
