"""The stage pipeline of the hierarchical allreduce: dependent collective stages (e.g.
reduce -> leaders' allreduce -> broadcast) run over a stream of chunks, and `Handle`,
the completion of one launch. The ordering argument is in comms/allreduce.py's docstring.

Two modes, chosen by the caller (comms/allreduce.py: ordered on nccl):
- ordered: the calling thread issues every stage of every chunk, chunk after chunk and
  stage after stage, before `launch` returns. On nccl `work.wait()` only makes the current
  stream wait (ProcessGroupNCCL.hpp, WorkNCCL::wait/synchronize), so nothing blocks the
  host and the chunks still overlap on the GPU; on gloo each wait blocks (tests only).
- threaded: the caller issues stage 0; stage k > 0 is issued by thread k, in submit order,
  once the chunk's stage k-1 work is done (gloo, where a wait blocks the host).
On CUDA every stage runs on a stream of its own: a stage waits for the chunk's previous
stage by `work.wait()` under its stream (a stream-on-stream dependency, never the compute
stream), and stage 0 waits on an event recorded on the caller's stream at launch, so the
gradients that backward just wrote are complete before the first collective reads them.
The chunks are views of the persistent flat buffers and the 2d shards are persistent too,
so no tensor used on a side stream can be freed and reused early (no record_stream).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import torch


class Handle:
    """Completion of one launched list of buffers: backend works, or futures that resolve
    to the work of each chunk's last stage. `wait` makes the caller's current stream wait
    on CUDA (the compute stream, called from `finish` before the optimizer)."""

    def __init__(self, *, works: Sequence = (), futures: Sequence[Future] = ()):
        self.works, self.futures = list(works), list(futures)

    def wait(self) -> None:
        for work in self.works:
            if work is not None:
                work.wait()
        for future in self.futures:
            work = future.result()
            if work is not None:
                work.wait()


class StagePipeline:
    """Runs `stages` (each: tensor -> async work or None) over chunks. In threaded mode a
    failed stage fails that chunk's future and every later chunk's (a broken group cannot
    serve the rest); in ordered mode the failure is raised by `submit` itself."""

    _STOP = object()

    def __init__(self, stages: Sequence[Callable], *, device: torch.device, ordered: bool):
        self.stages, self.device, self.ordered = list(stages), torch.device(device), ordered
        self.streams = ([torch.cuda.Stream(device=self.device) for _ in self.stages]
                        if self.device.type == "cuda" else None)
        threaded = not ordered and len(self.stages) > 1
        self._queues = [queue.SimpleQueue() for _ in self.stages[1:]] if threaded else []
        self._threads = [threading.Thread(target=self._run, args=(k,), daemon=True,
                                          name=f"raylars-comms-stage{k}")
                         for k in range(1, len(self.stages))] if threaded else []
        for thread in self._threads:
            thread.start()

    def submit(self, chunks: Sequence[torch.Tensor]) -> Handle:
        """Issue (ordered) or start (threaded) every stage of every chunk, in order."""
        ready = self._ready_event()
        if self.ordered or not self._queues:
            return Handle(works=[self._issue_chunk(chunk, ready) for chunk in chunks])
        return Handle(futures=[self._start_chunk(chunk, ready) for chunk in chunks])

    # ---- both modes -------------------------------------------------------------------
    def _ready_event(self):
        """An event on the caller's stream now: the gradients of this launch are in the
        buffers once it has passed (None on CPU, where kernels are synchronous)."""
        if self.streams is None:
            return None
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        return event

    def _stage(self, index: int, tensor: torch.Tensor, previous, ready):
        """Issue stage `index` of one chunk after `previous` (the chunk's stage index-1)."""
        if self.streams is None:
            stream = contextlib.nullcontext()
        else:
            stream = torch.cuda.stream(self.streams[index])
            if ready is not None:  # the gradients first: the compute stream never waits
                self.streams[index].wait_event(ready)
        with stream:
            if previous is not None:
                previous.wait()  # nccl: this stage's stream waits; gloo: the host waits
            return self.stages[index](tensor)

    # ---- ordered ----------------------------------------------------------------------
    def _issue_chunk(self, tensor: torch.Tensor, ready):
        work = None
        for index in range(len(self.stages)):
            work = self._stage(index, tensor, work, ready if index == 0 else None)
        return work

    # ---- threaded ---------------------------------------------------------------------
    def _start_chunk(self, tensor: torch.Tensor, ready) -> Future:
        done: Future = Future()
        try:
            work = self._stage(0, tensor, None, ready)
        except BaseException as error:  # noqa: BLE001 - handed to whoever waits
            done.set_exception(error)
            return done
        self._queues[0].put((tensor, work, done))
        return done

    def _run(self, index: int) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # a new thread starts on the default device
        inbox = self._queues[index - 1]
        outbox = self._queues[index] if index < len(self._queues) else None
        failure: BaseException | None = None
        while (item := inbox.get()) is not self._STOP:
            tensor, work, done = item
            try:
                if failure is not None:
                    raise failure
                work = self._stage(index, tensor, work, None)
            except BaseException as error:  # noqa: BLE001 - handed to whoever waits
                failure = error
                done.set_exception(error)
                continue
            if outbox is not None:
                outbox.put((tensor, work, done))
            else:
                done.set_result(work)
        if outbox is not None:
            outbox.put(self._STOP)

    def close(self, *, timeout_s: float = 10.0) -> None:
        """Stop the stage threads. A thread still blocked in a collective whose peer died
        (a failure path) is left behind after `timeout_s`: it is a daemon, and waiting
        for the backend's own timeout (30 min for gloo) would hold the worker."""
        if self._queues:
            self._queues[0].put(self._STOP)
        for thread in self._threads:
            thread.join(timeout=timeout_s)
        self._queues, self._threads = [], []
