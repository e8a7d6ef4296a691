"""Step checkpoints and exact mid-epoch resume on the multi-node test cluster: a worker
killed mid-epoch (same world size: bit-identical to an uninterrupted run) and a resume at
another world size (2 -> 3 workers). Each checks, through `data.record_sample_ids`, that
every sample of every epoch is trained exactly once across the resume. A real preemption
notice (a node drained with a preemption reason and deadline) is test_tune.py's: the same
run inside a Tune trial, where the trial's driver placement is checked too."""

from pathlib import Path

import numpy as np
import pytest
from ray.train import TrainingFailedError

from job.config import compose
from job.trainer import run_training
from trainers.checkpoint import load_state

STEPS = 1437 // 64  # digits train samples // global batch: 22, whatever the world size
BASE = ["optim.warmup_epochs=1", "trainer.epochs=2", "data.record_sample_ids=true",
        "data.preprocess_on=tasks"]


def epoch_ids(run_dirs: list[Path], *, epoch: int) -> np.ndarray:
    """Every sample id trained in `epoch`, over the runs' segments (one file per rank and
    checkpoint segment; a segment cut short by a failure is never written)."""
    files = [path for run_dir in run_dirs
             for path in (run_dir / "train" / "sample_ids").glob(f"epoch{epoch:04d}_*.npy")]
    return np.concatenate([np.load(path) for path in files])


def assert_each_sample_once(run_dirs: list[Path], *, epochs: int) -> None:
    for epoch in range(epochs):
        seen = epoch_ids(run_dirs, epoch=epoch)
        assert len(seen) == STEPS * 64, (epoch, len(seen))
        assert len(np.unique(seen)) == len(seen), f"epoch {epoch}: a sample trained twice"


def test_worker_killed_mid_epoch_resumes_at_its_step_bit_identically(ray_cluster, tmp_path):
    every = ["trainer.checkpoint_every_steps=5"]
    # Killed (SIGKILL, rank 0) before global step 28: epoch 2, step 6; the last checkpoint
    # was at step 25 (epoch 2, step 3, sample position 192).
    killed = run_training(compose(BASE + every + [
        "trainer.max_failures=1", "debug.kill_at_step=28", f"run.output_dir={tmp_path / 'k'}"]))
    plain = run_training(compose(BASE + every + [f"run.output_dir={tmp_path / 'p'}"]))
    assert killed["restarts"] == 1 and killed["restart_events"][1]["reason"] == "failure"
    restart = killed["restart_events"][1]
    assert restart["resume_checkpoint"] == "checkpoint_step_00000025"
    assert (restart["resume_step"], restart["resume_epoch"],
            restart["resume_sample_position"]) == (25, 2, 3 * 64)
    resume = killed["resumes"][0]
    assert (resume["global_step"], resume["epoch"], resume["epoch_step"]) == (25, 2, 3)
    assert resume["lost_steps"] == 3 <= 5 and resume["lost_samples"] == 3 * 64
    assert killed["global_steps"] == plain["global_steps"] == 2 * STEPS
    # Same world size: the resumed run is the uninterrupted one, bit for bit.
    for key in ("train_loss", "val_top1", "val_top5"):
        assert [h[key] for h in killed["history"]] == [h[key] for h in plain["history"]], key
    assert_each_sample_once([tmp_path / "k"], epochs=2)


def test_resume_mid_epoch_at_another_world_size_trains_each_sample_once(ray_cluster, tmp_path):
    # 2 workers, checkpoints every 4 steps; killed before step 15 with no restart allowed:
    # the run fails, its last checkpoint at step 12 (epoch 1, sample position 768).
    first = tmp_path / "two"
    with pytest.raises(TrainingFailedError):
        run_training(compose(BASE + ["trainer.checkpoint_every_steps=4", "debug.kill_at_step=15",
                                     f"run.output_dir={first}"]))
    checkpoint = first / "train" / "checkpoint_step_00000012"
    assert load_state(checkpoint / "state.pt")["train_state"]["epoch_step"] == 12
    second = tmp_path / "three"
    summary = run_training(compose(BASE + [
        "trainer.num_workers=3", f"trainer.resume_from={checkpoint}", f"run.output_dir={second}"]))
    assert summary["world_size"] == 3 and summary["global_steps"] == 2 * STEPS
    resume = summary["resumes"][0]
    assert (resume["epoch"], resume["sample_position"], resume["world_size"]) == (1, 768, 3)
    # The rest of epoch 1 on 3 workers plus its first 12 steps on 2: each sample once.
    assert_each_sample_once([first, second], epochs=1)
    seen = epoch_ids([second], epoch=1)
    assert len(seen) == STEPS * 64 and len(np.unique(seen)) == len(seen)
    assert np.isfinite([r["train_loss"] for r in summary["history"]]).all()
    assert summary["val_samples"] == 360
