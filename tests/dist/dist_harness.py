"""Run a function on N real gloo ranks (torch.multiprocessing, spawn) and collect results.

Test modules import `run_ranks`; the function must be top-level (picklable) and returns
something picklable per rank. No mocks: each rank is a process with its own process group.
"""

from __future__ import annotations

import datetime
import io
import socket
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(rank, world_size, port, fn, args, queue):
    try:
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world_size, timeout=datetime.timedelta(seconds=180))
        result = fn(rank, world_size, *args)
        dist.barrier()
        dist.destroy_process_group()
        # Bytes, not tensors: torch's queue shares tensors through shared memory that
        # vanishes when this process exits, before the test reads it.
        payload = io.BytesIO()
        torch.save(result, payload)
        queue.put((rank, "ok", payload.getvalue()))
    except BaseException:  # report it to the test rather than hang the other ranks
        queue.put((rank, "error", traceback.format_exc()))
        raise


def run_ranks(fn, *, world_size: int, args: tuple = (), timeout_s: float = 300.0) -> list:
    """fn(rank, world_size, *args) on every rank; returns the results ordered by rank."""
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    port = free_port()
    procs = [context.Process(target=_entry, args=(rank, world_size, port, fn, args, queue),
                             daemon=True) for rank in range(world_size)]
    for proc in procs:
        proc.start()
    results: dict = {}
    try:
        for _ in range(world_size):
            rank, status, value = _get(queue, procs, timeout_s)
            if status == "error":
                raise AssertionError(f"rank {rank} failed:\n{value}")
            results[rank] = torch.load(io.BytesIO(value), weights_only=False)
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    return [results[rank] for rank in range(world_size)]


def _get(queue, procs, timeout_s):
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not queue.empty():
            return queue.get()
        if any(p.exitcode not in (None, 0) for p in procs) and queue.empty():
            time.sleep(1.0)  # give the failing rank's report a moment to arrive
            if queue.empty():
                raise AssertionError(f"a rank died: exit codes {[p.exitcode for p in procs]}")
        time.sleep(0.05)
    raise AssertionError(f"ranks did not finish within {timeout_s} s")
