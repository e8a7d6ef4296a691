"""When each gradient bucket was complete in one backward pass, relative to the pass's
first gradient: the measurement `comms.split=auto` feeds to the cost model.

On CPU the host clock is the truth (kernels run synchronously). On CUDA the host only
enqueues, running far ahead of the GPU, so a host timestamp says when a kernel was queued,
not when it ran: there the clock records a CUDA event on the current stream at each mark
and reads the elapsed times once, after one synchronize, when the step is over. The sync
measures the second step: the first one pays cuDNN autotuning, allocator growth and the
communicators' set-up.
"""

from __future__ import annotations

import time

import torch

MEASURED_STEP = 2  # the 1-based step whose backward is measured; the split follows it


class BucketClock:
    """Marks of one backward: `hook()` at every gradient hook, `bucket_ready(b)` when
    bucket b is complete; `ready_s()` after the step: seconds per bucket since the first
    hook (a bucket never completed, e.g. unused parameters, counts as ready at the last)."""

    def __init__(self, num_buckets: int, *, device: torch.device):
        self.num_buckets = num_buckets
        self.cuda = torch.device(device).type == "cuda"
        self.device = device
        self._first = self._last = None
        self._ready: dict[int, object] = {}

    def _now(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    def hook(self) -> None:
        self._last = self._now()
        if self._first is None:
            self._first = self._last

    def bucket_ready(self, bucket: int) -> None:
        self._ready[bucket] = self._last  # the hook that completed it has just marked

    @property
    def started(self) -> bool:
        return self._first is not None

    def ready_s(self) -> list[float]:
        assert self.started, "no backward was measured"
        marks = [self._ready.get(b, self._last) for b in range(self.num_buckets)]
        if not self.cuda:
            return [mark - self._first for mark in marks]
        torch.cuda.synchronize(self.device)  # once: every event has completed
        return [self._first.elapsed_time(mark) / 1e3 for mark in marks]
