"""curves.png, beside summary.json: a run's curves against the global step, from its summary.

Top: the train loss of each step line (`step_log`) and of each epoch (`history`), with
val top-1 (and top-5 when there are more than 5 classes) on the right axis. Bottom: the
LR schedule at every step, with the logged LRs on it. Both mark each worker-group
restart (a failure, resize or preemption) at the step it resumed from.

Drawn with matplotlib's Agg canvas directly (no pyplot, so no global backend is chosen
for the process that imports it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from job.config import Config
from trainers.batching import nominal_steps_per_epoch
from trainers.schedule import WarmupPolySchedule

CURVES_FILE = "curves.png"


def run_schedule(config: Config, *, num_train: int) -> WarmupPolySchedule:
    """The LR schedule the trainer follows (trainers/worker.py): world-size independent."""
    trainer = config.trainer
    return WarmupPolySchedule.from_config(
        config.optim, epochs=trainer.epochs, steps_per_epoch=nominal_steps_per_epoch(
            num_train=num_train, global_batch_size=trainer.global_batch_size,
            max_steps=trainer.max_steps_per_epoch))


def write_curves(summary: dict, *, config: Config, num_train: int, num_classes: int,
                 path: Path) -> Path:
    """Plot `summary` (see job/trainer.py) with the run's schedule into `path`."""
    return plot_curves(summary, path=path, lr_at=run_schedule(config, num_train=num_train),
                       show_top5=num_classes > 5)


def plot_curves(summary: dict, *, path: Path, lr_at: Callable[[int], float],
                show_top5: bool) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 6.5), layout="constrained")
    FigureCanvasAgg(figure)
    loss_axes, lr_axes = figure.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    _plot_loss_and_accuracy(loss_axes, summary, show_top5=show_top5)
    _plot_lr(lr_axes, summary, lr_at=lr_at)
    for axes in (loss_axes, lr_axes):
        _mark_restarts(axes, summary.get("restart_events", []), label=axes is lr_axes)
        axes.grid(alpha=0.3)
    lr_axes.set_xlabel("global step")
    val = summary.get("val_top1")
    figure.suptitle(f"{summary.get('global_steps', 0)} steps, "
                    f"{summary.get('epochs_completed', 0)} epochs"
                    + (f", val top-1 {val:.4f}" if val is not None else ""), fontsize=10)
    figure.savefig(path, dpi=100)
    return path


def _plot_loss_and_accuracy(axes, summary: dict, *, show_top5: bool) -> None:
    steps = summary.get("step_log", [])
    history = summary.get("history", [])
    if steps:
        axes.plot([r["step"] for r in steps], [r["loss"] for r in steps], color="tab:blue",
                  linewidth=1, label="train loss (step lines)")
    epoch_steps = [r["global_step"] for r in history]
    axes.plot(epoch_steps, [r["train_loss"] for r in history], "o", color="tab:blue",
              markersize=4, label="train loss (epoch)")
    values = [r["loss"] for r in steps] + [r["train_loss"] for r in history]
    if values and min(values) > 0:
        axes.set_yscale("log")
    axes.set_ylabel("train loss")
    accuracy = axes.twinx()
    accuracy.plot(epoch_steps, [r["val_top1"] for r in history], "s-", color="tab:red",
                  markersize=4, linewidth=1, label="val top-1")
    if show_top5:
        accuracy.plot(epoch_steps, [r["val_top5"] for r in history], "^--", color="tab:orange",
                      markersize=4, linewidth=1, label="val top-5")
    accuracy.set_ylim(0, 1.02)
    accuracy.set_ylabel("val accuracy")
    lines = axes.get_legend_handles_labels()
    more = accuracy.get_legend_handles_labels()
    axes.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="center right")


def _plot_lr(axes, summary: dict, *, lr_at: Callable[[int], float]) -> None:
    num_steps = summary.get("global_steps", 0)
    # Step s (1-based, as in the step lines) trains with the LR of schedule(s - 1).
    axes.plot(range(1, num_steps + 1), [lr_at(step - 1) for step in range(1, num_steps + 1)],
              color="tab:green", linewidth=1, label="LR schedule")
    logged = summary.get("step_log", [])
    if logged:
        axes.plot([r["step"] for r in logged], [r["lr"] for r in logged], ".", color="black",
                  markersize=3, label="LR at step lines")
    axes.set_ylabel("learning rate")


def _mark_restarts(axes, events: list[dict], *, label: bool) -> None:
    for event in events:
        if event.get("reason") == "start":
            continue
        step = event.get("resume_step") or 0
        axes.axvline(step, color="gray", linestyle="--", linewidth=1)
        if label:
            axes.annotate(f"{event['reason']}: {event.get('num_workers')} workers", (step, 1),
                          xycoords=("data", "axes fraction"), xytext=(3, -12),
                          textcoords="offset points", fontsize=7, color="gray")
    if label and axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=8, loc="upper right")
