"""The one seam between comms and torch.distributed: every collective comms issues goes
through a `Collectives` object (allreduce, reduce, broadcast, reduce-scatter, allgather,
the topology's string exchange, barrier, new_group).

Why one seam: on nccl every tensor must be on the rank's CUDA device (a CPU tensor raises
"No backend type associated with device type cpu" deep inside c10d, and an object
collective silently uses whatever CUDA device is current). `Collectives` checks each
tensor against the sync's device before handing it over and raises a clear error instead.
It can also record every call ((op, group ranks, device, dtype, numel), per process) while
a `recording()` block is open, so tests compare what each rank issued.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.distributed as dist

# torch >= 2.x names; older releases only have the *_tensor spellings (same semantics).
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class Call(NamedTuple):
    """One collective as the seam handed it to torch.distributed."""

    op: str
    ranks: tuple[int, ...]  # global ranks of the group (the whole world for group=None)
    group: str              # the group's name: two groups may have the same ranks
    device: str | None      # None for calls without tensors (new_group, barrier)
    dtype: str | None
    numel: int


_lock = threading.Lock()
_recorders: list[list[Call]] = []


@contextlib.contextmanager
def recording() -> Iterator[list[Call]]:
    """Collect every call any `Collectives` of this process issues (from any thread)
    until the block ends; yields the list it fills, in issue order."""
    calls: list[Call] = []
    with _lock:
        _recorders.append(calls)
    try:
        yield calls
    finally:
        with _lock:
            _recorders.remove(calls)


def default_device() -> torch.device:
    """The device the default group's collectives run on: this rank's current CUDA device
    on nccl (Ray Train sets it per worker), else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _resolve(device: torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class Collectives:
    """Issues comms' collectives on `device` (default: `default_device()`)."""

    def __init__(self, device: torch.device | str | None = None):
        self.device = _resolve(device) if device is not None else default_device()

    # ---- checks and records --------------------------------------------------------
    def _hand(self, op: str, group, *tensors: torch.Tensor) -> None:
        for tensor in tensors:
            if tensor.device != self.device:
                raise RuntimeError(
                    f"comms: {op} was handed a tensor on {tensor.device}, but this sync "
                    f"communicates on {self.device} (backend {_backend()}): create or move it "
                    f"there first ({tuple(tensor.shape)} {tensor.dtype})")
        if _recorders:
            first = tensors[0] if tensors else None
            self._record(Call(op, _ranks(group), _name(group), str(first.device) if first is not None else None,
                              str(first.dtype) if first is not None else None,
                              first.numel() if first is not None else 0))

    @staticmethod
    def _record(call: Call) -> None:
        with _lock:
            for calls in _recorders:
                calls.append(call)

    # ---- collectives ----------------------------------------------------------------
    def all_reduce(self, tensor: torch.Tensor, *, group=None, async_op: bool = False):
        self._hand("all_reduce", group, tensor)
        return dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group, async_op=async_op)

    def reduce(self, tensor: torch.Tensor, *, dst: int, group=None, async_op: bool = False):
        self._hand("reduce", group, tensor)
        return dist.reduce(tensor, dst=dst, op=dist.ReduceOp.SUM, group=group, async_op=async_op)

    def broadcast(self, tensor: torch.Tensor, *, src: int, group=None, async_op: bool = False):
        self._hand("broadcast", group, tensor)
        return dist.broadcast(tensor, src=src, group=group, async_op=async_op)

    def reduce_scatter(self, output: torch.Tensor, input: torch.Tensor, *, group=None,
                       async_op: bool = False):
        """Sum `input` over the group; this rank keeps its 1/size slice in `output`."""
        self._hand("reduce_scatter", group, input, output)
        return _reduce_scatter(output, input, group=group, async_op=async_op)

    def all_gather(self, output: torch.Tensor, input: torch.Tensor, *, group=None,
                   async_op: bool = False):
        """Concatenate every rank's `input` into `output` (rank order)."""
        self._hand("all_gather", group, input, output)
        return _all_gather(output, input, group=group, async_op=async_op)

    def barrier(self, group=None) -> None:
        self._hand("barrier", group)
        if self.device.type == "cuda":
            # Without device_ids an nccl barrier guesses the GPU (rank % local count).
            dist.barrier(group=group, device_ids=[self.device.index])
        else:
            dist.barrier(group=group)

    def new_group(self, ranks: list[int]):
        """Collective over the default group: every rank creates every group, in one order."""
        group = dist.new_group(list(ranks))
        if _recorders:
            member = group is not dist.GroupMember.NON_GROUP_MEMBER
            self._record(Call("new_group", tuple(ranks), _name(group) if member else "",
                              None, None, 0))
        return group

    def all_gather_strings(self, text: str) -> list[str]:
        """Every rank's `text`, in rank order. Tensors on this sync's device rather than
        all_gather_object, which on nccl uses whatever CUDA device happens to be current."""
        world = dist.get_world_size()
        data = torch.tensor(list(text.encode()), dtype=torch.uint8)
        lengths = torch.zeros(world, dtype=torch.int64, device=self.device)
        self.all_gather(lengths, torch.tensor([len(data)], dtype=torch.int64, device=self.device))
        longest = int(lengths.max())
        padded = torch.zeros(longest, dtype=torch.uint8)
        padded[:len(data)] = data
        gathered = torch.zeros(world * longest, dtype=torch.uint8, device=self.device)
        self.all_gather(gathered, padded.to(self.device))
        rows = gathered.view(world, longest).cpu().tolist()
        return [bytes(row[:n]).decode() for row, n in zip(rows, lengths.tolist(), strict=True)]

    def all_reduce_sum(self, values: torch.Tensor, *, world_size: int) -> torch.Tensor:
        """Sum `values` over all ranks in place (a no-op on one rank); returned for chaining."""
        if world_size > 1 and dist.is_initialized():
            self.all_reduce(values)
        return values


def _ranks(group) -> tuple[int, ...]:
    if group is None:
        return tuple(range(dist.get_world_size()))
    return tuple(dist.get_process_group_ranks(group))


def _name(group) -> str:
    # torch names groups by a counter (or ranks + counter): the same on every rank that
    # created its groups in the same order.
    return "world" if group is None else str(getattr(group, "group_name", id(group)))


def _backend() -> str:
    return str(dist.get_backend()) if dist.is_initialized() else "none"
