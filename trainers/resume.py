"""What a resume needs to say where it continued and what it cost, and the sample-id
record that shows each sample trained once across it.

- `ProgressMark`: rank 0 notes its last finished global step in the run directory
  (`progress.json`), so that the next group, resumed from an earlier checkpoint, can count
  the steps it trains again (work lost).
- `resume_record`: one entry of the summary's `resumes`: global step, epoch, step and
  sample position inside it, world size, steps and samples lost.
- `SampleRecord` (`data.record_sample_ids`): each rank's trained sample ids, one file per
  epoch and checkpoint segment, written once the segment is checkpointed or the epoch is
  done; a segment cut short by a failure is never written, so the files of a run show
  exactly the samples whose training counted.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import torch

PROGRESS_FILE = "progress.json"


class ProgressMark:
    """Rank 0's last finished global step, in `progress.json`. On a cluster the run
    directory is shared storage, where a create, write, close and rename are each a round
    trip to the file server, which every rank would wait for at the next allreduce (on this
    machine's local disk the write alone took 0.26 ms a step). So `step_done` only hands the
    number to a writer thread and never touches the file system; the thread writes the
    newest number it holds (steps that finish while it writes are folded into the next
    write). A crash can lose the write in flight: the mark then lags by the steps finished
    during one write, and a resume counts that many fewer lost steps. `flush` waits until
    the newest step is on disk (the fault injector does before its kill, so injected crashes
    count exactly)."""

    def __init__(self, *, run_dir: str | None, rank: int):
        self.path = Path(run_dir) / PROGRESS_FILE if run_dir is not None and rank == 0 else None
        self._changed = threading.Condition()
        self._newest: int | None = None
        self._written: int | None = None
        self._closing = False
        self._warned = False
        self._thread = None
        if self.path is not None:
            self._thread = threading.Thread(target=self._write_newest, daemon=True,
                                            name="raylars-progress-mark")
            self._thread.start()

    def step_done(self, global_step: int) -> None:
        if self._thread is None:
            return
        with self._changed:
            self._newest = global_step
            self._changed.notify_all()

    def flush(self, *, timeout_s: float = 30.0) -> bool:
        """Wait (at most `timeout_s`: a hung file system is not waited on for ever) until
        the newest step is written, or its write failed with the warning; False on the
        timeout."""
        if self._thread is None:
            return True
        with self._changed:
            return self._changed.wait_for(
                lambda: self._written == self._newest or not self._thread.is_alive(),
                timeout=timeout_s) and self._written == self._newest

    def close(self, *, timeout_s: float = 30.0) -> None:
        """Write the newest step and stop the thread (bounded like `flush`)."""
        if self._thread is None:
            return
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._thread.join(timeout=timeout_s)

    def _write_newest(self) -> None:
        partial = self.path.with_name(self.path.name + ".partial")
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._newest != self._written or self._closing)
                if self._newest == self._written:
                    return  # closing, and the newest step is written
                step = self._newest
            try:
                partial.write_text(json.dumps({"global_step": step}))
                os.replace(partial, self.path)
            except OSError as e:
                # The mark only sizes the work a resume redoes: training goes on without it.
                if not self._warned:
                    print(f"[raylars] warning: cannot write {self.path} ({e}); a resume "
                          "will report its lost steps from the last mark written", flush=True)
                    self._warned = True
            with self._changed:
                self._written = step
                self._changed.notify_all()


def last_progress(run_dir: str | None) -> int | None:
    """The last global step rank 0 finished in this run directory (None: unknown)."""
    path = Path(run_dir) / PROGRESS_FILE if run_dir is not None else None
    if path is None or not path.is_file():
        return None
    try:
        return int(json.loads(path.read_text())["global_step"])
    except (ValueError, KeyError, OSError):
        return None


def resume_record(*, global_step: int, epoch: int, epoch_step: int, world_size: int,
                  global_batch_size: int, run_dir: str | None) -> dict:
    """Where a resume continues (`epoch` 0-based in, 1-based out) and the work it redoes:
    the steps rank 0 had finished past the checkpoint."""
    last = last_progress(run_dir)
    lost = max(0, last - global_step) if last is not None else None
    return {"global_step": global_step, "epoch": epoch + 1, "epoch_step": epoch_step,
            "sample_position": epoch_step * global_batch_size, "world_size": world_size,
            "lost_steps": lost, "lost_samples": None if lost is None else lost * global_batch_size}


class SampleRecord:
    def __init__(self, *, run_dir: str | None, rank: int, enabled: bool):
        self.directory = Path(run_dir) / "sample_ids" if enabled and run_dir else None
        self.rank = rank
        self.ids: list[torch.Tensor] = []
        self.first_step = 0

    def start(self, *, first_step: int) -> None:
        self.ids, self.first_step = [], first_step

    def add(self, ids: torch.Tensor) -> None:
        if self.directory is not None:
            self.ids.append(ids.cpu())

    def write(self, *, epoch: int, next_step: int) -> None:
        """Save the segment [first_step, next_step) of `epoch`; the next one starts there."""
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            ids = torch.cat(self.ids).numpy() if self.ids else np.empty(0, np.int64)
            np.save(self.directory / f"epoch{epoch:04d}_step{self.first_step:06d}"
                                     f"_rank{self.rank}.npy", ids)
        self.start(first_step=next_step)
