"""GPU speed settings of one rank's model, and the matching input layout.

This module owns what makes the same model run faster without changing what it computes
beyond float rounding: cuDNN autotuning and TF32 on CUDA (process-wide flags), the
channels_last memory format (model and inputs), and torch.compile. The trainer calls
`configure_for_speed` once, right after the model is built and moved to its device, and
converts its inputs with `model_input` (or `to_model_layout`).

Why each setting:
- cudnn.benchmark: the step's shapes repeat, so timing the conv algorithms once pays.
- TF32: fp32 matmuls and convolutions on tensor cores (Ampere and later), 10 mantissa
  bits; PyTorch already does it for convolutions, not for matmuls. Only `precision=fp32`
  is affected: under autocast the convolutions run in bf16/fp16 anyway.
- channels_last (NHWC): cuDNN's tensor-core convolutions and BatchNorm are NHWC kernels;
  with NCHW tensors every layer pays transposes. On CPU it rarely helps, so it is on by
  default for CUDA only (`channels_last=None`).
- torch.compile: fuses BatchNorm/ReLU/adds into fewer kernels. The model is compiled in
  place (`nn.Module.compile`), so its state_dict keys, the checkpoints and every
  reference to it stay the same. Off by default: the first steps pay the compile time,
  and a compiled backward hands all gradients over at its end, which delays the gradient
  hooks of our comms (overlap) until then.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def resolve_channels_last(channels_last: bool | None, *, device: torch.device) -> bool:
    """`trainer.channels_last`: null means on for CUDA, off elsewhere."""
    return device.type == "cuda" if channels_last is None else bool(channels_last)


def enable_cuda_fast_paths(*, tf32: bool = True) -> None:
    """cuDNN autotuning, and TF32 for fp32 matmuls and convolutions (process-wide).

    The `allow_tf32` flags, not torch 2.9+'s `fp32_precision` strings: in torch 2.14
    setting only the new API leaves the legacy state behind, and then
    `torch.get_float32_matmul_precision()` and `torch.backends.cuda.matmul.allow_tf32`
    raise "mix of the legacy and new APIs", and inductor (torch.compile) reads both. The
    legacy setters update both states and warn about nothing."""
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def configure_for_speed(model: nn.Module, *, device: torch.device,
                        channels_last: bool | None, compile: bool, tf32: bool = True,
                        compile_backend: str = "inductor") -> nn.Module:
    """Return `model` (the same object, changed in place) set up to run fast on `device`.

    Call it after the model is on its device and in its precision's dtype, and before the
    optimizer's state or the gradient sync's buffers are made from its parameters.
    `compile_backend` other than inductor is for tests (aot_eager: the same tracing, no
    code generation)."""
    if device.type == "cuda":
        enable_cuda_fast_paths(tf32=tf32)
    if resolve_channels_last(channels_last, device=device):
        # Only 4-D tensors (conv weights) change; the optimizer state made later follows
        # (zeros_like keeps the format).
        model.to(memory_format=torch.channels_last)
    if compile:
        model.compile(backend=compile_backend)
    return model


def to_model_layout(images: torch.Tensor, *, channels_last: bool) -> torch.Tensor:
    """Images (N, C, H, W) in the model's memory format. Convert the uint8 batch, before
    normalising: the copy moves a quarter of the bytes of a float one. A model in
    channels_last also takes NCHW input (its first convolution converts it), so this saves
    time but is never needed for correctness."""
    if channels_last and images.dim() == 4:
        return images.contiguous(memory_format=torch.channels_last)
    return images


def normalization_constants(mean: Sequence[float], std: Sequence[float], *,
                            device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each (1, C, 1, 1) fp32, with
    x_u8 * scale + shift == (x_u8 / 255 - mean) / std."""
    mean64 = torch.tensor(mean, dtype=torch.float64)
    std64 = torch.tensor(std, dtype=torch.float64)
    shape = (1, len(mean), 1, 1)
    scale = (1.0 / (255.0 * std64)).view(shape)
    shift = (-mean64 / std64).view(shape)
    return scale.to(device, torch.float32), shift.to(device, torch.float32)


def model_input(images_u8: torch.Tensor, *, scale: torch.Tensor, shift: torch.Tensor,
                dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    """uint8 images -> the normalised model input in one elementwise pass: computed in
    fp32 and written directly in `dtype` (the dtype the first layer computes in: the
    autocast dtype under autocast, else the parameters'), in the model's memory format.
    One rounding to `dtype`, the one the first layer's autocast cast would have made."""
    images_u8 = to_model_layout(images_u8, channels_last=channels_last)
    out = torch.empty_like(images_u8, dtype=dtype)  # keeps the layout
    return torch.addcmul(shift, images_u8, scale, out=out)
