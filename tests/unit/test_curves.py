"""curves.png (job/curves.py) from a summary with step lines, epochs and a restart."""

import matplotlib.image

from job.config import compose
from job.curves import plot_curves, run_schedule
from trainers.batching import nominal_steps_per_epoch

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_curves_png_is_written_and_reads_back(tmp_path):
    history = [{"global_step": 10 * e, "train_loss": 2.0 / e, "val_top1": 0.3 * e,
                "val_top5": 0.9} for e in (1, 2, 3)]
    steps = [{"step": s, "epoch": s / 10, "loss": 3.0 / s, "lr": 0.1 * s, "images_per_sec": 100}
             for s in range(2, 31, 2)]
    summary = {"history": history, "step_log": steps, "global_steps": 30,
               "epochs_completed": 3, "val_top1": 0.9,
               "restart_events": [{"reason": "start", "num_workers": 2, "resume_step": None},
                                  {"reason": "resize", "num_workers": 3, "resume_step": 20}]}
    path = plot_curves(summary, path=tmp_path / "curves.png", lr_at=lambda step: 0.1 * (step + 1),
                       show_top5=True)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 400


def test_run_schedule_is_the_trainers():
    config = compose(["trainer.epochs=4", "optim.warmup_epochs=1"])
    schedule = run_schedule(config, num_train=1437)
    steps = nominal_steps_per_epoch(num_train=1437, global_batch_size=64, max_steps=None)
    assert schedule.total_steps == 4 * steps and schedule.warmup_steps == steps
    assert schedule(steps) == config.optim.lr  # warmup ends at the base LR
