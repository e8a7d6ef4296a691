"""Step lines, TensorBoard event files and curves.png of a real run (trainer.log_every_steps).

The step lines are read from the rank-0 worker's own stdout file in Ray's session logs:
what reaches the driver is rewritten by Ray's log deduplication (lines from different
processes that differ only in numbers within 5 s, e.g. an earlier test's rank 0), so
the driver's stream is not a reliable record of every line.
"""

import re
import time
from pathlib import Path

import matplotlib.image
import pytest

from job.config import compose
from job.trainer import run_training

STEP_LINE = re.compile(r"\[raylars\] step (\d+)/8 epoch (\d+\.\d\d)/2 loss (\d+\.\d{4}) "
                       r"lr \S+ img/s (?:\d+|-) eta \d+:\d\d:\d\d$")


def _worker_lines(cluster, nodes, *, since: float) -> list[str]:
    directories = {Path(node.get_logs_dir_path()) for node in (cluster.head_node, *nodes)}
    lines = []
    for directory in directories:
        for path in directory.glob("worker-*.out"):
            if path.stat().st_mtime >= since:
                lines += [line for line in path.read_text(errors="replace").splitlines()
                          if "[raylars] step" in line]
    return lines


def test_step_lines_tensorboard_and_curves(local_cluster, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    started = time.time()
    summary = run_training(compose([
        "trainer.epochs=2", "optim.warmup_epochs=1", "trainer.max_steps_per_epoch=4",
        "trainer.log_every_steps=2", f"run.output_dir={tmp_path}"]))
    history, step_log = summary["history"], summary["step_log"]
    assert summary["global_steps"] == 8 and [r["global_step"] for r in history] == [4, 8]

    # Step lines at 2, 4, 6, 8 on rank 0 only; each line's loss is its record's.
    lines = [STEP_LINE.search(line) for line in _worker_lines(*local_cluster, since=started)]
    assert all(lines), lines
    assert [int(m[1]) for m in lines] == [2, 4, 6, 8]
    assert [m[2] for m in lines] == ["0.50", "1.00", "1.50", "2.00"]
    assert [r["step"] for r in step_log] == [2, 4, 6, 8]
    assert [float(m[3]) for m in lines] == pytest.approx([r["loss"] for r in step_log], abs=6e-5)
    # Two lines of two steps each per epoch: their mean is the epoch's train loss, which
    # the epoch path computes on its own (its own sums and all-reduce).
    for epoch, record in enumerate(history):
        window = step_log[2 * epoch: 2 * epoch + 2]
        assert sum(r["loss"] for r in window) / 2 == pytest.approx(record["train_loss"], rel=1e-5)

    # TensorBoard: event files beside summary.json, the same numbers as the summary.
    tb = tmp_path / "tb"
    assert list(tb.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(tb))
    events.Reload()
    for tag, key in (("epoch/val_top1", "val_top1"), ("epoch/train_loss", "train_loss")):
        scalars = events.Scalars(tag)
        assert [e.step for e in scalars] == [4, 8]
        assert [e.value for e in scalars] == pytest.approx([r[key] for r in history], rel=1e-6)
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6, 8]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(
        [r["loss"] for r in step_log], rel=1e-6)
    assert [e.value for e in events.Scalars("epoch/world_size")] == [2, 2]

    curves = tmp_path / "curves.png"
    assert curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(curves).ndim == 3
