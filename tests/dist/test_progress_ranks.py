"""The step line's loss is the mean over every rank's steps since the last line: 2 real
gloo ranks with different losses, against a float64 mean computed plainly here."""

import torch
from dist_harness import run_ranks

STEPS = 6


def _rank_loss(rank: int, step: int) -> float:
    return 1.0 / (step + 1) + 0.37 * rank


def _step_log(rank, world_size):
    import torch.distributed as dist

    from trainers.config import TrainerConfig
    from trainers.progress import Progress
    from trainers.worker import TrainState

    def all_reduce_sum(values):
        dist.all_reduce(values)
        return values

    state = TrainState()
    progress = Progress(
        state=state, config=TrainerConfig(epochs=1, log_every_steps=4, num_workers=2),
        steps_per_epoch=STEPS, rank=rank, device=torch.device("cpu"),
        all_reduce_sum=all_reduce_sum, lr_at=lambda step: 0.5, loss_scale=lambda: 1.0,
        run_dir=None)
    for _ in range(STEPS):
        state.global_step += 1
        progress.after_step(torch.tensor(_rank_loss(rank, state.global_step)), epoch=0)
    progress.close()
    return state.step_log


def test_line_loss_is_the_mean_over_all_ranks():
    logs = run_ranks(_step_log, world_size=2)
    assert logs[0] == logs[1]  # every rank keeps the same records
    assert [r["step"] for r in logs[0]] == [4, 6]  # the multiple, then the run's last step
    for record, (first, last) in zip(logs[0], [(1, 4), (5, 6)], strict=True):
        values = [_rank_loss(rank, step) for rank in (0, 1) for step in range(first, last + 1)]
        assert abs(record["loss"] - sum(values) / len(values)) < 1e-6
