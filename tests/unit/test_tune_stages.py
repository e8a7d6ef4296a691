"""The coarse-to-fine search plan, without Ray."""

import math

import pytest

from tune.stages import fine_grid, grid_trials, log_grid, neighbour_warmups


def test_log_grid_half_decades_cover_the_range():
    grid = log_grid(low=0.1, high=100.0, points_per_decade=2)
    assert len(grid) == 7
    assert grid[0] == 0.1 and grid[-1] == 100.0
    ratios = [b / a for a, b in zip(grid, grid[1:], strict=False)]
    assert all(r == pytest.approx(math.sqrt(10), rel=1e-5) for r in ratios)


def test_fine_grid_is_centred_with_constant_factor_and_clipped():
    grid = fine_grid(center=4.0, factor=2 ** 0.5, num_points=5)
    assert grid == pytest.approx([2.0, 2.82843, 4.0, 5.65685, 8.0], rel=1e-5)
    assert fine_grid(center=4.0, factor=2 ** 0.5, num_points=5, high=5.0) == pytest.approx(
        [2.0, 2.82843, 4.0], rel=1e-5)


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
