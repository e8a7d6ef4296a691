"""The coarse-to-fine search plan, without Ray."""

import math

import pytest

from tune.stages import (
    coarse_grid,
    fine_grid,
    grid_trials,
    lattice_grid,
    log_grid,
    neighbour_warmups,
    split_known_trials,
)

ROOT2 = 2 ** 0.5


def test_log_grid_half_decades_cover_the_range():
    grid = log_grid(low=0.1, high=100.0, points_per_decade=2)
    assert len(grid) == 7
    assert grid[0] == 0.1 and grid[-1] == 100.0
    ratios = [b / a for a, b in zip(grid, grid[1:], strict=False)]
    assert all(r == pytest.approx(math.sqrt(10), rel=1e-5) for r in ratios)


def test_lattice_grid_is_the_exhaustive_sqrt2_grid():
    grid = lattice_grid(low=0.3, high=30.0, factor=ROOT2)
    assert len(grid) == 14 and grid[0] == 0.3 and grid[-1] == pytest.approx(27.1529, rel=1e-5)
    assert all(b / a == pytest.approx(ROOT2, rel=1e-5) for a, b in zip(grid, grid[1:], strict=False))


def test_coarse_grid_is_half_decades_snapped_onto_the_lattice():
    lattice = lattice_grid(low=0.3, high=30.0, factor=ROOT2)
    grid = coarse_grid(low=0.3, high=30.0, points_per_decade=2, factor=ROOT2)
    # 0.3, 0.949, 3, 9.49, 30 move to the nearest lattice points (30 is past the lattice's top).
    assert grid == [lattice[0], lattice[3], lattice[7], lattice[10], lattice[13]]
    assert grid == pytest.approx([0.3, 0.848528, 3.39411, 9.6, 27.1529], rel=1e-5)


def test_fine_grid_is_consecutive_lattice_points_around_the_centre():
    lattice = lattice_grid(low=0.3, high=30.0, factor=ROOT2)
    assert fine_grid(center=9.6, low=0.3, factor=ROOT2, num_points=3) == lattice[9:12]
    # Off-lattice centres snap; the grid may reach past the range's top.
    assert fine_grid(center=9.0, low=0.3, factor=ROOT2, num_points=5) == lattice[8:13]
    assert fine_grid(center=27.1529, low=0.3, factor=ROOT2, num_points=3) == pytest.approx(
        [19.2, 27.1529, 38.4], rel=1e-5)
    with pytest.raises(ValueError, match="odd"):
        fine_grid(center=9.6, low=0.3, factor=ROOT2, num_points=4)


def _record(lr, *, epochs_run, error=None, checkpoint=None):
    return {"lr": lr, "warmup_epochs": 1.0, "val_top1": None if error else 0.5,
            "epochs_run": epochs_run, "error": error, "checkpoint": checkpoint}


def test_split_known_trials_reuses_finished_and_failed_and_continues_stopped():
    done = [_record(9.6, epochs_run=4), _record(13.5765, epochs_run=1, checkpoint="/c/ep1"),
            _record(27.1529, epochs_run=2, error="loss is nan"), _record(6.78823, epochs_run=1)]
    trials = grid_trials(lrs=[4.8, 6.78823, 9.6, 13.5765, 27.1529], warmups=[1.0, 2.0])
    reused, to_run = split_known_trials(trials=trials, done=done, epochs=4)
    assert [(r["lr"], r["reused"]) for r in reused] == [(9.6, True), (27.1529, True)]
    assert reused[1]["error"] == "loss is nan"
    starts = {(t["lr"], t["warmup_epochs"]): (t["resume_from"], t["start_epoch"]) for t in to_run}
    assert starts[(13.5765, 1.0)] == ("/c/ep1", 1)
    # Stopped without a checkpoint, or never run at this warmup: from scratch.
    assert starts[(6.78823, 1.0)] == (None, 0)
    assert starts[(9.6, 2.0)] == (None, 0)
    assert len(to_run) + len(reused) == len(trials)


def test_neighbour_warmups():
    assert neighbour_warmups(best=1.0, warmups=[0.0, 1.0, 2.0, 3.0]) == [0.0, 1.0, 2.0]
    assert neighbour_warmups(best=0.0, warmups=[2.0, 0.0, 1.0]) == [0.0, 1.0]
    assert neighbour_warmups(best=3.0, warmups=[0.0, 3.0]) == [0.0, 3.0]


def test_grid_trials_is_the_cross_product():
    trials = grid_trials(lrs=[1.0, 2.0], warmups=[0.0, 1.0])
    assert trials == [{"lr": 1.0, "warmup_epochs": 0.0}, {"lr": 1.0, "warmup_epochs": 1.0},
                      {"lr": 2.0, "warmup_epochs": 0.0}, {"lr": 2.0, "warmup_epochs": 1.0}]


@pytest.mark.parametrize("kwargs", [dict(low=0, high=1, points_per_decade=1),
                                    dict(low=2, high=1, points_per_decade=1),
                                    dict(low=1, high=10, points_per_decade=0)])
def test_bad_grid_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        log_grid(**kwargs)
