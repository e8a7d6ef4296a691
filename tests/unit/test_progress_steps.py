"""The step lines (trainers/progress.py): when a line is due, and what the accumulator
reports, on a real single-rank gloo group, with its TensorBoard scalars read back."""

from __future__ import annotations

import datetime
import re
import socket

import pytest
import torch
import torch.distributed as dist

from trainers.config import TrainerConfig
from trainers.progress import Progress, format_eta, is_log_step, resolve_log_every
from trainers.worker import TrainState

LINE = re.compile(r"^\[raylars\] step (\d+)/(\d+) epoch (\d+\.\d\d)/(\d+) loss (\S+) "
                  r"lr (\S+) img/s (\S+) eta (\S+)$")


def test_default_is_five_lines_per_epoch_and_zero_turns_them_off():
    assert resolve_log_every(None, steps_per_epoch=22) == 4
    assert resolve_log_every(None, steps_per_epoch=3) == 1  # never 0 steps
    assert resolve_log_every(7, steps_per_epoch=22) == 7
    assert resolve_log_every(0, steps_per_epoch=22) == 0
    with pytest.raises(ValueError, match="trainer.log_every_steps"):
        resolve_log_every(-1, steps_per_epoch=22)


def test_a_negative_interval_fails_in_config_validation():
    with pytest.raises(ValueError, match="trainer.log_every_steps must be >= 0"):
        TrainerConfig(log_every_steps=-2)
    assert TrainerConfig(log_every_steps=0).log_every_steps == 0


def test_log_steps_are_the_multiples_and_the_last_step():
    due = [s for s in range(1, 23) if is_log_step(global_step=s, every=4, total_steps=22)]
    assert due == [4, 8, 12, 16, 20, 22]
    assert not any(is_log_step(global_step=s, every=0, total_steps=22) for s in range(1, 23))


def test_eta_is_hours_minutes_seconds():
    assert format_eta(65.4) == "0:01:05"
    assert format_eta(3 * 3600 + 7) == "3:00:07"
    assert format_eta(None) == "-" and format_eta(float("nan")) == "-"


@pytest.fixture
def single_rank_group():
    assert not dist.is_initialized(), "another test left a process group"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0,
                            world_size=1, timeout=datetime.timedelta(seconds=60))
    yield
    dist.destroy_process_group()


def _all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(values)
    return values


def test_records_hold_the_mean_loss_since_the_last_line(single_rank_group, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps_per_epoch, epochs = 5, 2
    losses = [2.0, 1.5, 1.25, 1.0, 0.75, 0.5, 0.4, 0.3, 0.2, 0.1]
    state = TrainState()
    progress = Progress(
        state=state, config=TrainerConfig(epochs=epochs, global_batch_size=8, log_every_steps=2),
        steps_per_epoch=steps_per_epoch, rank=0, device=torch.device("cpu"),
        all_reduce_sum=_all_reduce_sum, lr_at=lambda step: 0.1 * (step + 1),
        loss_scale=lambda: 1.0, run_dir=tmp_path / "train")
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            state.global_step += 1
            progress.after_step(torch.tensor(losses[state.global_step - 1]), epoch=epoch)
        state.epoch = epoch + 1
        record = {"epoch": state.epoch, "global_step": state.global_step, "train_loss": 0.5,
                  "val_top1": 0.25 * state.epoch, "val_top5": 0.5, "epoch_images_per_sec": 10.0,
                  "world_size": 1}
        state.history.append(record)
        progress.end_epoch(record)
    progress.close()

    # Lines at the multiples of 2 and at the last step; each mean covers the steps since
    # the line before (across the epoch boundary: steps 5 and 6 share a line).
    windows = {2: (0, 2), 4: (2, 4), 6: (4, 6), 8: (6, 8), 10: (8, 10)}
    assert [r["step"] for r in state.step_log] == list(windows)
    for record in state.step_log:
        start, stop = windows[record["step"]]
        expected = sum(float(x) for x in losses[start:stop]) / (stop - start)
        assert record["loss"] == pytest.approx(expected, rel=1e-6)
        assert record["lr"] == pytest.approx(0.1 * record["step"])
    assert [r["epoch"] for r in state.step_log] == pytest.approx([0.4, 0.8, 1.2, 1.6, 2.0])
    # An epoch's first step is not timed: the line at step 6 rests on step 6 alone.
    assert all(r["images_per_sec"] > 0 for r in state.step_log)

    lines = [LINE.match(line) for line in capsys.readouterr().out.splitlines()]
    assert all(lines) and len(lines) == 5
    assert [(m[1], m[2], m[4]) for m in lines] == [(str(s), "10", "2") for s in windows]
    assert lines[-1][3] == "2.00" and float(lines[0][5]) == pytest.approx(1.75, abs=1e-4)

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    loss_events = events.Scalars("train/loss")
    assert [e.step for e in loss_events] == list(windows)
    assert [e.value for e in loss_events] == pytest.approx([r["loss"] for r in state.step_log])
    assert [(e.step, e.value) for e in events.Scalars("epoch/val_top1")] == [(5, 0.25), (10, 0.5)]
    assert {"train/lr", "train/images_per_sec", "train/loss_scale", "epoch/train_loss",
            "epoch/val_top5", "epoch/world_size"} <= set(events.Tags()["scalars"])


def test_zero_keeps_only_the_epoch_scalars(single_rank_group, tmp_path, capsys):
    state = TrainState()
    progress = Progress(
        state=state, config=TrainerConfig(epochs=1, log_every_steps=0), steps_per_epoch=3,
        rank=0, device=torch.device("cpu"), all_reduce_sum=_all_reduce_sum,
        lr_at=lambda step: 1.0, loss_scale=lambda: 1.0, run_dir=None)
    for _ in range(3):
        state.global_step += 1
        progress.after_step(torch.tensor(1.0), epoch=0)
    progress.close()
    assert state.step_log == [] and "[raylars] step" not in capsys.readouterr().out


def _train(progress: Progress, state: TrainState, losses: dict[int, float], *, upto: int,
           steps_per_epoch: int) -> None:
    """Steps state.global_step+1 .. upto, closing epochs at multiples of steps_per_epoch."""
    while state.global_step < upto:
        state.global_step += 1
        progress.after_step(torch.tensor(losses[state.global_step]), epoch=state.epoch)
        if state.global_step % steps_per_epoch == 0:
            state.epoch += 1
            record = {"epoch": state.epoch, "global_step": state.global_step,
                      "train_loss": 1.0, "val_top1": 0.5, "val_top5": 0.9,
                      "epoch_images_per_sec": 1.0, "world_size": 1}
            state.history.append(record)
            progress.end_epoch(record)


def test_a_restarted_group_continues_the_records_and_purges_the_event_files(
        single_rank_group, tmp_path):
    import copy

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def progress_for(state):
        return Progress(
            state=state, config=TrainerConfig(epochs=2, log_every_steps=2), steps_per_epoch=4,
            rank=0, device=torch.device("cpu"), all_reduce_sum=_all_reduce_sum,
            lr_at=lambda step: 1.0, loss_scale=lambda: 1.0, run_dir=tmp_path / "train")

    state = TrainState()
    first = progress_for(state)
    _train(first, state, {s: 10.0 + s for s in range(1, 9)}, upto=4, steps_per_epoch=4)
    checkpoint = copy.deepcopy(state)  # what an epoch-1 checkpoint holds
    _train(first, state, {s: 10.0 + s for s in range(1, 9)}, upto=6, steps_per_epoch=4)
    first.writer.flush()  # the failed group got its step-6 line out before it died

    restored = checkpoint
    second = progress_for(restored)
    assert second.total_steps == 8
    _train(second, restored, {s: 20.0 + s for s in range(1, 9)}, upto=8, steps_per_epoch=4)
    second.close()
    first.close()

    # The records: the checkpoint's (steps 2, 4), then the new group's (6, 8) only.
    assert [(r["step"], r["loss"]) for r in restored.step_log] == [
        (2, 11.5), (4, 13.5), (6, 25.5), (8, 27.5)]
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [
        (2, 11.5), (4, 13.5), (6, 25.5), (8, 27.5)]
