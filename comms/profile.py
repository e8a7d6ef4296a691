"""Measured per-tensor backward times: the input the cost model's split selection needs.

Post-accumulate-grad hooks stamp the moment each parameter's gradient is complete; the gap
since the previous stamp (or since backward started) is that tensor's share of backward.
Runs the model in this process only; no collectives.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn


def profile_backward(model: nn.Module, *, images: torch.Tensor, labels: torch.Tensor,
                     repeats: int = 3) -> dict:
    """Median forward seconds, backward seconds and per-tensor backward seconds (in the
    parameters' registration order) over `repeats` steps after one warm-up step."""
    params = [p for p in model.parameters() if p.requires_grad]
    stamps: dict[int, float] = {}
    handles = [p.register_post_accumulate_grad_hook(
        lambda _p, i=i: stamps.__setitem__(i, time.perf_counter())) for i, p in enumerate(params)]
    forwards, backwards, shares = [], [], []
    try:
        for step in range(repeats + 1):
            model.zero_grad(set_to_none=True)
            stamps.clear()
            start = time.perf_counter()
            loss = nn.functional.cross_entropy(model(images), labels)
            middle = time.perf_counter()
            loss.backward()
            end = time.perf_counter()
            if step == 0:
                continue  # warm-up: allocator and kernels
            forwards.append(middle - start)
            backwards.append(end - middle)
            shares.append(_gaps(stamps, num_params=len(params), start=middle))
    finally:
        for handle in handles:
            handle.remove()
    per_tensor = [statistics.median(s[i] for s in shares) for i in range(len(params))]
    return {"forward_s": statistics.median(forwards), "backward_s": statistics.median(backwards),
            "tensor_backward_s": per_tensor, "tensor_bytes": [p.numel() * p.element_size()
                                                             for p in params]}


def _gaps(stamps: dict[int, float], *, num_params: int, start: float) -> list[float]:
    order = sorted(stamps, key=stamps.get)
    gaps, previous = [0.0] * num_params, start
    for index in order:
        gaps[index] = stamps[index] - previous
        previous = stamps[index]
    return gaps
