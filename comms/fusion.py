"""Tensor fusion: the bucket/segment plan, and the persistent flat buffers it lays out.

The plan is plain data computed from the gradients' sizes (tested without processes):
gradients in reverse registration order, which is roughly the order backward produces
them, are packed into buckets of at most `comms.fusion_threshold_mb`; a gradient larger
than the threshold travels alone. Consecutive buckets are grouped into `comms.segments`
segments; a segment's allreduce is launched once all its gradients are ready, so the first
segments overlap the rest of backward (the brief's segmented fusion). `FlatBuffers` then
allocates one flat tensor per bucket and makes every `param.grad` a view into it (in the
parameter's own layout, channels_last included), so no gradient is copied per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

MB = 1024 * 1024


@dataclass(frozen=True)
class Bucket:
    """Tensors (indices into the parameter list) that share one flat buffer."""

    tensors: tuple[int, ...]
    numels: tuple[int, ...]
    element_size: int
    dtype: str

    @property
    def numel(self) -> int:
        return sum(self.numels)

    @property
    def nbytes(self) -> int:
        return self.numel * self.element_size

    def offsets(self) -> tuple[int, ...]:
        starts, total = [], 0
        for numel in self.numels:
            starts.append(total)
            total += numel
        return tuple(starts)


@dataclass(frozen=True)
class FusionPlan:
    buckets: tuple[Bucket, ...]
    # Bucket indices of each segment, consecutive and in launch order.
    segments: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        flat = [index for segment in self.segments for index in segment]
        assert flat == list(range(len(self.buckets))), f"segments must cover buckets: {flat}"

    @property
    def nbytes(self) -> int:
        return sum(bucket.nbytes for bucket in self.buckets)

    def segment_bytes(self) -> list[int]:
        return [sum(self.buckets[i].nbytes for i in segment) for segment in self.segments]

    def describe(self) -> dict:
        return {
            "num_buckets": len(self.buckets),
            "bucket_mb": [round(bucket.nbytes / MB, 3) for bucket in self.buckets],
            "num_segments": len(self.segments),
            "segments": [list(segment) for segment in self.segments],
            "segment_mb": [round(nbytes / MB, 3) for nbytes in self.segment_bytes()],
            "total_mb": round(self.nbytes / MB, 3),
        }


def plan_buckets(*, numels: Sequence[int], element_sizes: Sequence[int], dtypes: Sequence[str],
                 threshold_bytes: int) -> tuple[Bucket, ...]:
    """Pack tensors (given in registration order) into buckets, last-registered first."""
    assert threshold_bytes > 0, threshold_bytes  # the schema checked the key
    buckets: list[Bucket] = []
    current: list[int] = []

    def close() -> None:
        if current:
            buckets.append(Bucket(tensors=tuple(current), numels=tuple(numels[i] for i in current),
                                  element_size=element_sizes[current[0]], dtype=dtypes[current[0]]))
            current.clear()

    used = 0
    for index in reversed(range(len(numels))):
        nbytes = numels[index] * element_sizes[index]
        # One buffer holds one dtype; a new dtype or an overflow starts the next bucket.
        if current and (dtypes[index] != dtypes[current[0]] or used + nbytes > threshold_bytes):
            close()
            used = 0
        current.append(index)
        used += nbytes
    close()
    return tuple(buckets)


def balanced_segments(*, bucket_bytes: Sequence[int], num_segments: int) -> tuple[tuple[int, ...], ...]:
    """Split consecutive buckets into at most `num_segments` groups of about equal bytes
    (the default before any timing is known; `cost_model.choose_split` refines it)."""
    assert num_segments >= 1, num_segments  # the schema checked the key
    num_buckets = len(bucket_bytes)
    num_segments = min(num_segments, num_buckets)
    cumulative = [0]
    for nbytes in bucket_bytes:
        cumulative.append(cumulative[-1] + nbytes)
    splits: list[int] = []
    for k in range(1, num_segments):
        target = cumulative[-1] * k / num_segments
        # Each segment keeps at least one bucket: search between the last split and the
        # last position that leaves one bucket per remaining segment.
        low, high = (splits[-1] + 1 if splits else 1), num_buckets - (num_segments - k)
        best = min(range(low, high + 1), key=lambda i: abs(cumulative[i] - target))
        splits.append(best)
    return segments_from_splits(num_buckets=num_buckets, splits=splits)


def segments_from_splits(*, num_buckets: int, splits: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """Split points (bucket indices where a new segment starts) -> segments."""
    bounds = [0, *splits, num_buckets]
    assert bounds == sorted(set(bounds)), f"bad split points {splits} for {num_buckets} buckets"
    return tuple(tuple(range(a, b)) for a, b in zip(bounds, bounds[1:], strict=False))


def plan_for_params(params: Sequence[torch.Tensor], *, threshold_mb: float,
                    num_segments: int) -> FusionPlan:
    buckets = plan_buckets(
        numels=[p.numel() for p in params], element_sizes=[p.element_size() for p in params],
        dtypes=[str(p.dtype) for p in params], threshold_bytes=int(threshold_mb * MB))
    segments = balanced_segments(bucket_bytes=[b.nbytes for b in buckets],
                                 num_segments=num_segments)
    return FusionPlan(buckets=buckets, segments=segments)


def _dense_strides(tensor: torch.Tensor) -> bool:
    """Whether the tensor covers exactly numel consecutive elements in some dimension
    order (contiguous, channels_last, any permutation of a dense layout)."""
    expected = 1
    for size, stride in sorted(zip(tensor.shape, tensor.stride(), strict=True),
                               key=lambda pair: pair[1]):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def grad_view(flat: torch.Tensor, offset: int, param: torch.Tensor) -> torch.Tensor:
    """The gradient view of `param` at `offset` in `flat`, with the parameter's strides
    when it is dense in another layout (channels_last convolution weights), as DDP's
    bucket views are: backward's gradient then accumulates into it without a layout
    change per step."""
    if not param.is_contiguous() and _dense_strides(param):
        return flat.as_strided(param.shape, param.stride(), flat.storage_offset() + offset)
    return flat[offset:offset + param.numel()].view_as(param)


class FlatBuffers:
    """One persistent flat tensor per bucket; `param.grad` of every parameter is a view."""

    def __init__(self, plan: FusionPlan, *, params: Sequence[torch.Tensor], pad_multiple: int = 1):
        self.plan = plan
        self.params = list(params)
        self.flat: list[torch.Tensor] = []
        # views[i]: the gradient view of params[i]; bucket_of[i]: its bucket index.
        self.views: list[torch.Tensor | None] = [None] * len(self.params)
        self.bucket_of: list[int] = [-1] * len(self.params)
        for index, bucket in enumerate(plan.buckets):
            first = self.params[bucket.tensors[0]]
            # Padding (zeros, never a gradient) lets the 2-D allreduce split a bucket into
            # equal shards, one per rank of a node.
            padded = -(-bucket.numel // pad_multiple) * pad_multiple
            flat = torch.zeros(padded, dtype=first.dtype, device=first.device)
            self.flat.append(flat)
            for tensor, offset in zip(bucket.tensors, bucket.offsets(), strict=True):
                self.views[tensor] = grad_view(flat, offset, self.params[tensor])
                self.bucket_of[tensor] = index

    def install_grad_views(self) -> None:
        """Point every param.grad at its view, keeping any gradient already there."""
        for param, view in zip(self.params, self.views, strict=True):
            if param.grad is not None and param.grad.data_ptr() != view.data_ptr():
                view.copy_(param.grad)
            param.grad = view

    def adopt(self, index: int) -> None:
        """Re-point one param.grad at its view if something replaced it (e.g. a loop that
        zeroes with set_to_none=True): copy once, then the view is back in place."""
        param, view = self.params[index], self.views[index]
        if param.grad is not None and param.grad.data_ptr() != view.data_ptr():
            view.copy_(param.grad)
            param.grad = view
