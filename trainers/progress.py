"""Step progress of one rank's training: the step lines between the epoch lines, the step
records kept in the trainer's state, and the TensorBoard event files.

Every `trainer.log_every_steps` optimizer steps (and at the run's last step) each rank sums
its losses since the last step line with every other rank's in one all-reduce; rank 0 then
prints a line such as

    [raylars] step 44/330 epoch 2.00/15 loss 1.2345 lr 4.5 img/s 1234 eta 0:01:05

and writes the same values as TensorBoard scalars. Between those steps the loss only
accumulates on the device (no host sync per step). Every rank appends the all-reduced
record to `TrainState.step_log`, which is checkpointed with the state, so the records of
a restarted run continue where its checkpoint left them.

TensorBoard tags (rank 0, under `<run output dir>/tb/`, x axis the global step):
`train/loss`, `train/lr`, `train/images_per_sec`, `train/loss_scale` at each step line;
`epoch/train_loss`, `epoch/val_top1`, `epoch/val_top5`, `epoch/images_per_sec`,
`epoch/world_size` at each epoch's last step.

It knows nothing of Ray: the trainer hands it the state, the schedule and its sync's
`all_reduce_sum`.
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from trainers.config import TrainerConfig

TB_DIR = "tb"
# Epoch record key -> TensorBoard tag.
EPOCH_TAGS = {"train_loss": "epoch/train_loss", "val_top1": "epoch/val_top1",
              "val_top5": "epoch/val_top5", "epoch_images_per_sec": "epoch/images_per_sec",
              "world_size": "epoch/world_size"}


def resolve_log_every(value: int | None, *, steps_per_epoch: int) -> int:
    """`trainer.log_every_steps`: null is five lines per epoch; 0 turns step lines off."""
    if value is None:
        return max(1, steps_per_epoch // 5)
    if value < 0:
        raise ValueError(f"trainer.log_every_steps must be >= 0 or null, got {value}")
    return value


def is_log_step(*, global_step: int, every: int, total_steps: int) -> bool:
    """Whether the step just taken ends a step line. Every rank decides from the same
    global step, so all of them reach the line's all-reduce together; the run's last
    step always ends one, so the records cover every step."""
    return every > 0 and (global_step % every == 0 or global_step == total_steps)


def format_eta(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    return str(datetime.timedelta(seconds=round(max(0.0, seconds))))


def tensorboard_dir(run_dir: str | Path) -> Path:
    """`tb/` beside summary.json: the parent of the trainer's run directory (`train/`)."""
    return Path(run_dir).parent / TB_DIR


class Progress:
    """The step lines of one rank. `state` is the trainer's TrainState (read: global_step,
    epoch, history; appended to: step_log); call `after_step` after each optimizer step,
    `end_epoch` with each epoch's record and `close` at the end."""

    def __init__(self, *, state, config: TrainerConfig, steps_per_epoch: int, rank: int,
                 device: torch.device, all_reduce_sum: Callable[[torch.Tensor], torch.Tensor],
                 lr_at: Callable[[int], float], loss_scale: Callable[[], float],
                 run_dir: str | Path | None):
        self.state, self.rank, self.device = state, rank, device
        self.epochs, self.global_batch_size = config.epochs, config.global_batch_size
        self.steps_per_epoch = steps_per_epoch
        self.every = resolve_log_every(config.log_every_steps, steps_per_epoch=steps_per_epoch)
        self.all_reduce_sum, self.lr_at, self.loss_scale = all_reduce_sum, lr_at, loss_scale
        # Where the current epoch began: a group restored from a checkpoint starts there.
        self._epoch_start = state.history[-1]["global_step"] if state.history else 0
        self.total_steps = self._epoch_start + (self.epochs - state.epoch) * steps_per_epoch
        self._reset_window()
        self._last_step_time: float | None = None
        self._first: tuple[int, float] | None = None  # (global step, time) of the first step
        self.writer = None
        if rank == 0 and run_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            # A restarted group drops what the failed one wrote past the checkpoint, so
            # the event files agree with the restored history.
            purge = state.global_step + 1 if state.global_step else None
            self.writer = SummaryWriter(log_dir=str(tensorboard_dir(run_dir)), purge_step=purge)

    def _reset_window(self) -> None:
        self._loss_sum = torch.zeros((), device=self.device)
        self._num_steps = 0
        self._timed_steps, self._timed_seconds = 0, 0.0

    def after_step(self, loss: torch.Tensor, *, epoch: int) -> None:
        """Count one optimizer step of epoch `epoch` (0-based) with this rank's (weighted)
        loss, a device tensor; at a log step, all-reduce, record and print."""
        now = time.perf_counter()
        self._loss_sum += loss.detach()
        self._num_steps += 1
        # Throughput from step to step inside an epoch: an epoch's first step waits for
        # the evaluation, checkpoint and data start of the epoch before it.
        if self._last_step_time is not None:
            self._timed_steps += 1
            self._timed_seconds += now - self._last_step_time
        self._last_step_time = now
        step = self.state.global_step
        if self._first is None:
            self._first = (step, now)
        if is_log_step(global_step=step, every=self.every, total_steps=self.total_steps):
            self._log(epoch=epoch, now=now)

    def _log(self, *, epoch: int, now: float) -> None:
        step = self.state.global_step
        # With the loss: the steps, and the timed seconds averaged over the ranks, so
        # every rank keeps the same record (a checkpoint holds rank 0's).
        counts = torch.tensor([self._num_steps, self._timed_seconds, 1.0], dtype=torch.float64,
                              device=self.device)
        local = torch.cat([self._loss_sum.double().reshape(1), counts])
        loss_sum, num_steps, seconds, num_ranks = self.all_reduce_sum(local).tolist()
        seconds /= num_ranks
        record = {
            "step": step,
            "epoch": epoch + (step - self._epoch_start) / self.steps_per_epoch,
            "loss": loss_sum / num_steps,
            "lr": self.lr_at(step - 1),  # the LR the last step used
            "images_per_sec": (self._timed_steps * self.global_batch_size / seconds
                               if seconds > 0 else None),
        }
        self.state.step_log.append(record)
        self._reset_window()
        if self.rank == 0:
            first_step, first_time = self._first
            eta = ((now - first_time) / (step - first_step) * (self.total_steps - step)
                   if step > first_step else None)
            self._print(record, eta=eta)
            self._write_step(record)

    def _print(self, record: dict, *, eta: float | None) -> None:
        rate = record["images_per_sec"]
        print(f"[raylars] step {record['step']}/{self.total_steps} "
              f"epoch {record['epoch']:.2f}/{self.epochs} loss {record['loss']:.4f} "
              f"lr {record['lr']:.4g} img/s {'-' if rate is None else f'{rate:.0f}'} "
              f"eta {format_eta(eta)}", flush=True)

    def _write_step(self, record: dict) -> None:
        if self.writer is None:
            return
        step = record["step"]
        self.writer.add_scalar("train/loss", record["loss"], step)
        self.writer.add_scalar("train/lr", record["lr"], step)
        if record["images_per_sec"] is not None:
            self.writer.add_scalar("train/images_per_sec", record["images_per_sec"], step)
        self.writer.add_scalar("train/loss_scale", self.loss_scale(), step)

    def end_epoch(self, record: dict) -> None:
        """After an epoch's record is in the history: its scalars, and a fresh epoch."""
        self._epoch_start = record["global_step"]
        self._last_step_time = None
        if self.writer is not None:
            for key, tag in EPOCH_TAGS.items():
                self.writer.add_scalar(tag, record[key], record["global_step"])
            # An epoch's scalars on disk before its checkpoint is reported.
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
